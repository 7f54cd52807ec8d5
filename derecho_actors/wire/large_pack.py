"""A value holding large ``bytes`` encoded as msgpack encodes it, the large ones copied into
the encoding while the GIL is released.

Why: ``Packer.pack`` copies a ``bin`` into its growing buffer and then into the ``bytes`` it
returns, holding the GIL the whole time: measured, a replica packing a 100 MB ``bytes`` result
kept every other thread of its node waiting 136-800 ms (the node's loop first, its heartbeats
with it). The same stall as a large call's arguments decoded by msgpack (``large_args``).

So a value whose structure is small (``MAX_VALUES`` values in all, arrays and maps of the
exact built-in types) and that holds a ``bytes`` or ``bytearray`` of ``BIG_BIN`` bytes or more
is laid out here: each container's header as msgpack writes it, each large bin as its header
and its bytes, every other value packed by msgpack itself; the parts are then copied into one
new ``bytes``, the large ones with the GIL released. The bytes are those msgpack writes
(msgpack's encoding of an array or map is its header followed by its items' encodings).
Anything else (no large bin, more values, a bin of 4 GiB or more) returns ``None``: msgpack
packs it as before.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable, Final

from derecho_actors.wire import large_args
from derecho_actors.wire.large_args import BIG_BIN, MAX_VALUES

__all__ = ["pack_large"]

_BIN32: Final = struct.Struct(">BI")
_U16, _U32 = struct.Struct(">BH"), struct.Struct(">BI")
_MAX_BIN: Final = (1 << 32) - 1


class _Off(Exception):
    """Not a value laid out here (msgpack packs it)."""


def pack_large(value: Any, pack: Callable[[Any], bytes]) -> bytes | None:
    """``value`` as ``pack`` (a msgpack ``Packer``'s ``pack``, ``use_bin_type=True``) encodes
    it, its large bins copied with the GIL released; ``None`` if it holds no large bin or is
    not a value this lays out (then ``pack`` it)."""
    if not large_args._RELEASED:
        return None
    budget = [MAX_VALUES]
    try:
        if not _holds_large(value, budget):
            return None
        parts: list[bytes | memoryview] = []
        _lay_out(value, pack, parts)
    except _Off:
        return None
    return _joined(parts)


def _holds_large(v: Any, budget: list[int]) -> bool:
    """Whether ``v`` holds a large bin, read from types and sizes only; ``_Off`` past the
    budget or for a bin too large for msgpack."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _Off
    t = type(v)
    if t is bytes or t is bytearray:
        if len(v) > _MAX_BIN:
            raise _Off
        return len(v) >= BIG_BIN
    if t is list or t is tuple:
        found = False
        for item in v:
            found = _holds_large(item, budget) or found
        return found
    if t is dict:
        found = False
        for key, item in v.items():
            found = _holds_large(key, budget) or found
            found = _holds_large(item, budget) or found
        return found
    return False


def _lay_out(v: Any, pack: Callable[[Any], bytes], parts: list[bytes | memoryview]) -> None:
    """Append ``v``'s encoding to ``parts``: headers and small values packed, large bins as
    they are (copied when the parts are joined)."""
    t = type(v)
    if (t is bytes or t is bytearray) and len(v) >= BIG_BIN:
        # A bytearray's view pins its size until the copy (another thread cannot resize it).
        parts.append(_BIN32.pack(0xC6, len(v)))
        parts.append(v if t is bytes else memoryview(v))
    elif t is list or t is tuple:
        parts.append(_header(len(v), 0x90, 0xDC))
        for item in v:
            _lay_out(item, pack, parts)
    elif t is dict:
        parts.append(_header(len(v), 0x80, 0xDE))
        for key, item in v.items():
            _lay_out(key, pack, parts)
            _lay_out(item, pack, parts)
    else:
        parts.append(pack(v))


def _header(n: int, fix: int, wide: int) -> bytes:
    """An array's (``fix`` 0x90) or a map's (0x80) header for ``n`` items, as msgpack writes it."""
    if n < 16:
        return bytes((fix | n,))
    if n < 1 << 16:
        return _U16.pack(wide, n)
    return _U32.pack(wide + 1, n)


def _joined(parts: list[bytes | memoryview]) -> bytes:
    """The parts in one new ``bytes``, each large one copied with the GIL released."""
    out: bytes = large_args._new_bytes(None, sum(map(len, parts)))
    at = id(out) + large_args._DATA_AT
    for part in parts:
        n = len(part)
        if isinstance(part, memoryview) or n >= BIG_BIN:  # a large bin (a small part is bytes)
            large_args.copy_to(at, part if isinstance(part, memoryview) else memoryview(part))
        else:
            ctypes.memmove(at, part, n)
        at += n
    return out
