"""A value holding large ``bytes`` encoded as msgpack encodes it, the large ones copied into
the encoding while the GIL is released.

Why: ``Packer.pack`` copies a ``bin`` into its growing buffer and then into the ``bytes`` it
returns, holding the GIL the whole time: measured, a replica packing a 100 MB ``bytes`` result
kept every other thread of its node waiting 136-800 ms (the node's loop first, its heartbeats
with it), and an object state of 100 MB for a joiner 300-1400 ms. The same stall as a large
call's arguments decoded by msgpack (``large_args``).

So a value that holds a ``bytes``, ``bytearray`` or ``str`` of ``BIG_BIN`` bytes or more, in
arrays and maps of the exact built-in types, few values in all (``values_for`` the large ones'
size), is laid out here: each container's header as msgpack writes it, each large bin as its
header and its bytes, each large ``str`` as its header and its UTF-8 encoded a mebibyte at a
time (``large_text``), every other value packed by msgpack itself; the parts are then copied into one new
``bytes``, the large ones with the GIL released. The bytes are those msgpack writes (msgpack's
encoding of an array or map is its header followed by its items' encodings). Anything else (no
large bin, more values, a bin of 4 GiB or more) returns ``None``: msgpack packs it as before.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable, Final

from derecho_actors.wire import large_args
from derecho_actors.wire.large_args import BIG_BIN, MAX_DEPTH, values_for
from derecho_actors.wire.large_text import encode_text

__all__ = ["MAX_WALK", "ExtOf", "pack_large"]

ExtOf = Callable[[Any], "tuple[int, list[Any]] | None"]
"""For a packer with ``strict_types`` whose ``default`` makes ``ExtType(code, pack(items))`` of
some types (``state_codec``'s tuples and sets): a value -> ``(code, items)``, or ``None`` for a
value that is no such extension."""

_BIN32: Final = struct.Struct(">BI")
_EXT32: Final = struct.Struct(">BIb")
_U16, _U32 = struct.Struct(">BH"), struct.Struct(">BI")
_MAX_BIN: Final = (1 << 32) - 1
MAX_WALK: Final = 1 << 16
"""Values walked at most before giving up (msgpack packs the value): ~50 ms of Python at most,
which lets the other threads in every few milliseconds."""


class _Off(Exception):
    """Not a value laid out here (msgpack packs it)."""


class _Walk:
    """What the measuring walk saw: values, and bytes in large bins."""

    __slots__ = ("values", "large", "depth")

    def __init__(self) -> None:
        self.values = 0
        self.large = 0
        self.depth = 0  # arrays and maps open now


def pack_large(
    value: Any, pack: Callable[[Any], bytes], ext: ExtOf | None = None, values: int | None = None
) -> bytes | None:
    """``value`` as ``pack`` (a msgpack ``Packer``'s, ``use_bin_type=True``) encodes it, its
    large bins copied with the GIL released; ``None`` if it holds no large bin or is not a value
    this lays out (then ``pack`` it). ``ext``: ``pack`` has ``strict_types`` and makes these
    extension values (tuples are not arrays then); ``None``: tuples are arrays. ``values``: how
    many values it may hold to be laid out (``values_for`` its large ones' size if not given; at
    most ``MAX_WALK``)."""
    if not large_args._RELEASED:
        return None
    walk = _Walk()
    try:
        _measure(value, walk, ext)
        if walk.large == 0 or walk.values > (values_for(walk.large) if values is None else values):
            return None
        parts: list[bytes | memoryview] = []
        _lay_out(value, pack, ext, parts)
    except (_Off, RecursionError):  # a deep value near the interpreter's limit: msgpack's
        return None
    return _joined(parts)


def _items(v: Any, ext: ExtOf | None) -> tuple[int, list[Any] | tuple[Any, ...]] | None:
    """The items of an array ``v`` (code -1) or an extension's (its code); ``None``: neither."""
    t = type(v)
    if t is list or (t is tuple and ext is None):
        return -1, v
    if ext is not None and t in (tuple, set, frozenset):
        return ext(v)
    return None


def _measure(v: Any, walk: _Walk, ext: ExtOf | None) -> None:
    """Count ``v``'s values and large bins' bytes from types and sizes only; ``_Off`` past
    ``MAX_WALK`` values or for a bin too large for msgpack."""
    walk.values += 1
    if walk.values > MAX_WALK:
        raise _Off
    t = type(v)
    if t is bytes or t is bytearray:
        if len(v) > _MAX_BIN:
            raise _Off
        if len(v) >= BIG_BIN:
            walk.large += len(v)
        return
    if t is str:
        if len(v) >= BIG_BIN:
            walk.large += len(v)
        return
    if t is dict:
        walk.depth += 1
        if walk.depth > MAX_DEPTH:  # msgpack packs it (and refuses what it cannot nest)
            raise _Off
        for key, item in v.items():
            _measure(key, walk, ext)
            _measure(item, walk, ext)
        walk.depth -= 1
        return
    array = _items(v, ext)
    if array is not None:
        walk.depth += 1
        if walk.depth > MAX_DEPTH:
            raise _Off
        for item in array[1]:
            _measure(item, walk, ext)
        walk.depth -= 1


def _lay_out(v: Any, pack: Callable[[Any], bytes], ext: ExtOf | None, parts: list[bytes | memoryview]) -> int:
    """Append ``v``'s encoding to ``parts`` (headers and small values packed, large bins as they
    are: copied when the parts are joined); its length."""
    t = type(v)
    if (t is bytes or t is bytearray) and len(v) >= BIG_BIN:
        # A bytearray's view pins its size until the copy (another thread cannot resize it):
        # taken first, so the header says the length that is copied.
        data = v if t is bytes else memoryview(v)
        parts.append(_BIN32.pack(0xC6, len(data)))
        parts.append(data)
        return 5 + len(data)
    if t is str and len(v) >= BIG_BIN:
        pieces = encode_text(v)  # a step per mebibyte: the GIL goes around between them
        n = sum(map(len, pieces))
        if n > _MAX_BIN:
            raise _Off
        parts.append(_BIN32.pack(0xDB, n))  # a str 32's header
        parts.extend(pieces)
        return 5 + n
    if t is dict:
        parts.append(_header(len(v), 0x80, 0xDE))
        n = len(parts[-1])
        for key, item in v.items():
            n += _lay_out(key, pack, ext, parts)
            n += _lay_out(item, pack, ext, parts)
        return n
    array = _items(v, ext)
    if array is None:
        parts.append(pack(v))
        return len(parts[-1])
    code, items = array
    at = len(parts)
    parts.append(_header(len(items), 0x90, 0xDC))
    n = len(parts[-1])
    for item in items:
        n += _lay_out(item, pack, ext, parts)
    if code < 0:
        return n
    if n < BIG_BIN:  # no large bin inside: packed whole, as msgpack would
        del parts[at:]
        parts.append(pack(v))
        return len(parts[-1])
    if n > _MAX_BIN:
        raise _Off
    parts.insert(at, _EXT32.pack(0xC9, n, code))
    return 6 + n


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
