"""The calls of a large multicast payload with their arguments as views of it, not copies.

``msgpack.unpackb`` copies every ``bin`` it decodes into a new ``bytes``: for a 100 MB call
delivered as an object, that is 100 MB allocated (page-faulted) and copied at every replica
before the arguments are even decoded. A payload of one or a few calls is small to walk in
Python, so :func:`ordered_views` reads its msgpack structure itself (only what
``codec.encode_ordered`` writes: arrays, integers, a string, a ``bin``) and returns each
call's arguments as a ``memoryview`` of the payload. Anything it does not expect, it leaves
to the msgpack path (``None``), which decodes or refuses the payload as it always did: the
calls are the same either way, only the arguments' type differs (bytes-like, decoded by
msgpack and pickle alike, so a msgpack type's ``bytes`` argument is still ``bytes``).

Lifetime: a view holds the payload's buffer; for a received object that is the receive
buffer, which :class:`runtime.core.rdmc_buffers.BufferPool` reuses only once nothing refers
to it, so a replica holding an argument (or a NumPy array built on it) keeps it from reuse.
This holds because a delivered payload is ``bytes`` or such a receive buffer
(``runtime.core.effects.DeliveredMessage``): a transport that delivered views of memory it
reuses by another rule (a ring slot, an arena) would have to copy before delivery, or views
made here could change under a call. Whoever decodes the arguments lets go of the view at once (:func:`let_go`): the delivered
batch that carried it may live on (the actor thread's loop keeps its last message until the
next one comes), and holding the buffer until then made every receiver map a second buffer
for the next object instead of reusing the first.
"""

from __future__ import annotations

import struct
from typing import Any, Final

MIN_VIEW_BYTES: Final = 256 << 10
"""Payloads from this size on are read here: below it a copy costs less than the walk."""
MAX_VIEW_CALLS: Final = 4
"""More calls than this in a payload: msgpack's C decoder walks them faster."""

_U8, _U16, _U32, _U64 = (struct.Struct(f">{c}") for c in "BHIQ")
_S8, _S16, _S32, _S64 = (struct.Struct(f">{c}") for c in "bhiq")
_INTS: Final = {0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64, 0xD0: _S8, 0xD1: _S16, 0xD2: _S32, 0xD3: _S64}


class _Off(Exception):
    """Not a payload this reader takes (the msgpack path decides what it is)."""


def _array(v: memoryview, at: int) -> tuple[int, int]:
    b = v[at]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F, at + 1
    if b == 0xDC:
        return _U16.unpack_from(v, at + 1)[0], at + 3
    if b == 0xDD:
        return _U32.unpack_from(v, at + 1)[0], at + 5
    raise _Off


def _int(v: memoryview, at: int) -> tuple[int, int]:
    b = v[at]
    if b <= 0x7F:
        return b, at + 1
    if b >= 0xE0:
        return b - 0x100, at + 1
    s = _INTS.get(b)
    if s is None:
        raise _Off
    return s.unpack_from(v, at + 1)[0], at + 1 + s.size


def _raw(v: memoryview, at: int, fix: int, codes: tuple[int, int, int]) -> tuple[memoryview, int]:
    """A str (``fix`` 0xA0) or bin (``fix`` -1: none) header's body, as a view."""
    b = v[at]
    if fix >= 0 and fix <= b <= fix + 0x1F:
        n, at = b & 0x1F, at + 1
    elif b == codes[0]:
        n, at = v[at + 1], at + 2
    elif b == codes[1]:
        n, at = _U16.unpack_from(v, at + 1)[0], at + 3
    elif b == codes[2]:
        n, at = _U32.unpack_from(v, at + 1)[0], at + 5
    else:
        raise _Off
    if at + n > len(v):
        raise _Off
    return v[at : at + n], at + n


def ordered_views(payload: bytes | memoryview) -> list[tuple[Any, ...]] | None:
    """The calls of ``payload`` as ``codec.decode_ordered`` returns them, each call's arguments
    a view of ``payload``; ``None`` if the payload is small, holds many calls, or is not
    exactly what ``encode_ordered`` writes (then msgpack decides)."""
    v = memoryview(payload)
    if v.ndim != 1 or v.itemsize != 1 or v.nbytes < MIN_VIEW_BYTES:
        return None
    try:
        n, at = _array(v, 0)
        if n != 2:
            return None
        ts, at = _int(v, at)
        count, at = _array(v, at)
        if count > MAX_VIEW_CALLS:
            return None
        out: list[tuple[Any, ...]] = []
        for _ in range(count):
            fields, at = _array(v, at)
            if fields not in (7, 8):
                return None
            caller, at = _int(v, at)
            call_id, at = _int(v, at)
            name, at = _raw(v, at, 0xA0, (0xD9, 0xDA, 0xDB))
            args, at = _raw(v, at, -1, (0xC4, 0xC5, 0xC6))
            origin, at = _int(v, at)
            session, at = _int(v, at)
            floor, at = _int(v, at)
            owner = 0
            if fields == 8:
                owner, at = _int(v, at)
            out.append((caller, call_id, str(name, "utf-8"), args, origin, session, floor, owner, ts))
        return out if at == len(v) else None
    except (_Off, IndexError, struct.error, UnicodeDecodeError):
        return None


def let_go(args: object) -> None:
    """Release ``args`` if it is a view (what it decoded into keeps its own references to the
    buffer, if it needs them), so the received buffer may be reused as soon as nothing
    decoded from it is held. A view something still exports from directly is left as it is."""
    if type(args) is memoryview:
        try:
            args.release()
        except BufferError:
            pass
