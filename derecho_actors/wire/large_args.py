"""A large call's msgpack arguments decoded with their large ``bin`` values copied while the
GIL is released.

Why: msgpack's C decoder copies every ``bin`` into a new ``bytes`` holding the GIL the whole
time (allocate, fault every page in, copy): ~0.06 s per 100 MB here when the machine is idle.
A replica decodes a call's arguments on its own thread, but every other thread of the node
waits for the GIL meanwhile, the node's loop first: measured (5 node processes, 100 MB relayed
to a shard of 3), each member had one loop turn of 70-180 ms, 330 ms with another test running
beside it, that ran ~1 ms of Python and waited for the GIL the rest; the replica thread held it
in ``msgpack.unpackb``. All the shard's members deliver the call at once, so all of them went
silent together, and a CI run on two shared cores saw 0.9-1.2 s: a member was removed for it.

So a call's arguments that arrive as a view of a received object (``call_views``), from
``BIG_BIN`` bytes on, are read here when their structure is small (``values_for`` its size):
each ``bin`` of ``BIG_BIN`` bytes or more becomes a ``bytes`` filled by a copy that releases
the GIL (:func:`released_copy`), each ``str`` that large is decoded a mebibyte at a time
(``large_text``), every other value is decoded by msgpack from its own slice, so the values are
the ones a whole decode gives (a ``bin`` is ``bytes`` either way). A caller's large result
(``serializers.unpack_msgpack_large``) and a joiner's object state (``state_codec``, with its
tuples and sets through ``ext``) are read the same way.
Anything else (many values, a type byte msgpack never writes, a malformed value) goes the
msgpack way, as before; so does every bin where the copy cannot be made so (not CPython).
Pickled arguments (cloudpickle types) need none of this: their large buffers are views already
(``oob``). Runs on a replica's thread, or the caller's.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any, Callable, Final

from derecho_actors.wire import large_text

__all__ = [
    "BIG_BIN",
    "BYTES_PER_VALUE",
    "MAX_VALUES",
    "ExtHook",
    "copy_to",
    "decode_view",
    "released_copy",
    "values_for",
]

BIG_BIN: Final = 1 << 20
"""A ``bin`` from this size on is copied with the GIL released (below it the copy takes under
a millisecond: not worth a walk in Python)."""
MAX_VALUES: Final = 64
"""Values (nested ones too) a view's arguments may hold to be read here, at least: msgpack's C
decoder walks more of them faster, and the walk here stays bounded."""
BYTES_PER_VALUE: Final = 16 << 10
"""A larger view may hold one value per this many bytes (6400 in 100 MB): walking them in Python
(~2 µs each) costs less than msgpack's copy of the view's bins holding the GIL (~60 ms per
100 MB), and a walk in Python lets the other threads in every few milliseconds."""


def values_for(size: int) -> int:
    """Values a view of ``size`` bytes may hold to be read here."""
    return max(MAX_VALUES, size // BYTES_PER_VALUE)


_U8, _U16, _U32 = (struct.Struct(f">{c}") for c in "BHI")
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}
_FIXED |= {0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
_SIZED = {0xD9: (_U8, 2), 0xDA: (_U16, 3), 0xDB: (_U32, 5), 0xC7: (_U8, 3), 0xC8: (_U16, 4), 0xC9: (_U32, 6)}
_BINS = {0xC4: (_U8, 2), 0xC5: (_U16, 3), 0xC6: (_U32, 5)}
_EXTS = {0xC7: 3, 0xC8: 4, 0xC9: 6}  # an ext of BIG_BIN bytes or more: its header's length
_I8 = struct.Struct(">b")


class _Off(Exception):
    """Not arguments this reader takes (msgpack decides what they are)."""


_DATA_AT = bytes.__basicsize__ - 1  # CPython: where a bytes object's bytes start (``ob_sval``)


class _Buffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (part of the stable ABI since 3.11): where a buffer's bytes are."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _copy_released(view: memoryview) -> bytes:
    """``bytes(view)`` for a contiguous ``view`` of at least 2 bytes: a new ``bytes`` of that
    size, made as C code makes one it is about to fill (``PyBytes_FromStringAndSize(NULL, n)``:
    allocated, not written), filled by ``ctypes.memmove``, which runs without the GIL (the page
    faults of a fresh allocation too), before anything else can see it. The source's address comes from the buffer protocol (``PyObject_GetBuffer``), which
    also holds the source for the copy; a delivered object's view is read-only (a relay of it
    may still be queued), so ``ctypes``' ``from_buffer`` would refuse it."""
    out: bytes = _new_bytes(None, len(view))  # its bytes not yet written (``bytes(n)`` would zero them)
    copy_to(id(out) + _DATA_AT, view)
    return out


def copy_to(address: int, view: memoryview) -> None:
    """Copy ``view``'s bytes to ``address`` (a new object's, not yet seen by anything else:
    ``_copy_released``, ``large_pack``) with ``ctypes.memmove``, which releases the GIL."""
    n = len(view)
    source = _Buffer()
    _get_buffer(view, ctypes.byref(source), 0)  # PyBUF_SIMPLE: contiguous bytes (raises if not)
    try:
        if source.len != n:
            raise ValueError("the view's buffer is not its bytes")
        ctypes.memmove(address, source.buf, n)
    finally:
        _release_buffer(ctypes.byref(source))


def _works() -> bool:
    """Whether ``_copy_released`` makes the right bytes here (CPython's layout), checked once."""
    if sys.implementation.name != "cpython":
        return False
    try:
        src = b"large_args: a self-check of the copy that releases the GIL"
        return _copy_released(memoryview(src)[3:-2]) == src[3:-2] and _copy_released(memoryview(bytearray(src))) == src
    except Exception:  # noqa: BLE001 - any failure: the plain copy is used
        return False


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
_release_buffer.restype = None
_RELEASED = _works()


def released_copy(view: memoryview) -> bytes:
    """``bytes(view)``, copied with the GIL released when ``view`` is contiguous (a received
    object's view is) and this is CPython (``_copy_released``); else the plain copy."""
    if not _RELEASED or not view.c_contiguous or view.itemsize != 1 or len(view) < 2:
        return bytes(view)
    return _copy_released(view)


ExtHook = Callable[[int, memoryview], Any]
"""An extension value's code and data (a view) -> its value: ``unpack``'s ``ext_hook`` for a
large one, whose data then is read here too (``state_codec``'s tuples and sets)."""


def decode_view(
    view: memoryview, unpack: Callable[[Any], Any], ext: ExtHook | None = None, values: int | None = None
) -> Any:
    """The msgpack value in ``view``, its ``bin`` values of ``BIG_BIN`` bytes or more copied by
    :func:`released_copy`; ``unpack`` (the serializer's msgpack decoder) decodes the rest, and
    the whole of it if it is small or not what this reader takes. ``ext``: what an extension
    value of ``BIG_BIN`` bytes or more becomes (else ``unpack`` decodes it, small or large).
    ``values``: how many values it may hold to be read here (``values_for`` its size if not
    given; a checkpoint's long version lists need more)."""
    if len(view) < BIG_BIN or view.ndim != 1 or view.itemsize != 1:
        return unpack(view)
    try:
        # Measured first, decoded after: arguments over the budget go to msgpack before any
        # large bin was copied (a walk that ran out midway would have copied for nothing).
        if _end(view, 0, [values_for(len(view)) if values is None else values]) == len(view):
            value, _ = _value(view, 0, unpack, ext)
            return value
    except Exception:  # noqa: BLE001 - not read here: msgpack decodes it, or raises what it raises for it
        pass
    return unpack(view)


MAX_DEPTH: Final = 512
"""Arrays and maps nested deeper than this go to msgpack, which refuses what it cannot nest
(its stack is 1024 deep): this walk's depth must not depend on the interpreter's recursion
limit."""


def _end(v: memoryview, at: int, budget: list[int], depth: int = 0) -> int:
    """Where the value at ``at`` ends, read from its headers only (nothing decoded or copied);
    ``_Off`` past the budget, ``MAX_DEPTH`` or the view's end."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _Off
    b = v[at]
    if b in _BINS:
        size, head = _BINS[b]
        end = at + head + size.unpack_from(v, at + 1)[0]
    elif 0x90 <= b <= 0x9F or b in (0xDC, 0xDD) or 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        if depth >= MAX_DEPTH:
            raise _Off
        is_map = 0x80 <= b <= 0x8F or b in (0xDE, 0xDF)
        n, end = _count(v, at, b, 0x80, 0xDE) if is_map else _count(v, at, b, 0x90, 0xDC)
        for _ in range(2 * n if is_map else n):
            end = _end(v, end, budget, depth + 1)
    else:
        end = at + _length(v, at, b)
    if end > len(v):
        raise _Off
    return end


def _value(v: memoryview, at: int, unpack: Callable[[Any], Any], ext: ExtHook | None) -> tuple[Any, int]:
    """The value at ``at`` and where the next one starts; ``_end`` measured it first (within the
    budget and the view), so this walk only decodes."""
    b = v[at]
    if b in _BINS:
        size, head = _BINS[b]
        start = at + head
        end = start + size.unpack_from(v, at + 1)[0]
        return (released_copy(v[start:end]) if end - start >= BIG_BIN else bytes(v[start:end])), end
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        n, at = _count(v, at, b, 0x90, 0xDC)
        items = []
        for _ in range(n):
            item, at = _value(v, at, unpack, ext)
            items.append(item)
        return items, at
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        n, at = _count(v, at, b, 0x80, 0xDE)
        out: dict[Any, Any] = {}
        for _ in range(n):
            key, at = _value(v, at, unpack, ext)
            out[key], at = _value(v, at, unpack, ext)
        return out, at
    end = at + _length(v, at, b)
    if b == 0xDB and end - at >= BIG_BIN and large_text.WORKS:  # a large str (a str 32's header: 5 bytes)
        return large_text.decode_text(v[at + 5 : end]), end
    if ext is not None and end - at >= BIG_BIN and b in _EXTS:
        start = at + _EXTS[b]  # the code is the header's last byte, signed
        return ext(_I8.unpack_from(v, start - 1)[0], v[start:end]), end
    return unpack(v[at:end]), end


def _count(v: memoryview, at: int, b: int, fix: int, wide: int) -> tuple[int, int]:
    """How many items the array or map at ``at`` holds, and where its first item starts."""
    if b < fix + 0x10:
        return b & 0x0F, at + 1
    if b == wide:
        return _U16.unpack_from(v, at + 1)[0], at + 3
    return _U32.unpack_from(v, at + 1)[0], at + 5


def _length(v: memoryview, at: int, b: int) -> int:
    """Bytes of the scalar (integer, float, nil, boolean, string or ext) at ``at``."""
    if b <= 0x7F or b >= 0xE0:
        return 1
    if 0xA0 <= b <= 0xBF:
        return 1 + (b & 0x1F)
    fixed = _FIXED.get(b)
    if fixed is not None:
        return fixed
    sized = _SIZED.get(b)
    if sized is None:  # 0xC1, never written
        raise _Off
    size, head = sized
    n: int = size.unpack_from(v, at + 1)[0]
    return head + n
