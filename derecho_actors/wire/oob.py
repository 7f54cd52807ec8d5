"""Pickle protocol 5 with out-of-band buffers: a cloudpickle type's large buffers (NumPy
arrays, ``pickle.PickleBuffer``s, ``bytearray``s) travel beside the pickle, not inside it.

Why: pickled in-band, a 100 MB array is copied into the pickle stream at the caller (and the
stream re-grown as it fills), and copied out of it again at every replica. Out of band, the
caller's encoded arguments are the pickle (small) followed by the buffers' raw bytes, and a
replica hands ``pickle.loads`` views of the bytes it received: a NumPy array or a
``PickleBuffer``-backed object is then a (read-only) view of the received object, not a copy;
a ``bytearray`` is rebuilt from its view in one copy (a ``bytearray`` cannot view another
object's memory, and users get the type they passed).

Layout (all integers little-endian)::

    b"OOB5" | u32 count | u64 pickle length | count x u64 buffer length | pickle | buffer 0 | ...

Only arguments with at least one buffer of ``MIN_OOB_BYTES`` or more take it; anything else is
a plain pickle stream as before (cloudpickle writes protocol 2 or later, whose first byte is
``0x80``, never ``O``), so small calls cost what they did and a stream of an older caller still
decodes. A table that does not describe its bytes exactly is refused with ``WireError``.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, Final, SupportsIndex, Union

from runtime.errors import WireError

MAGIC: Final = b"OOB5"
MIN_OOB_BYTES: Final = 64 << 10
"""Buffers smaller than this stay in the pickle: a view is not worth a table entry."""
MAX_BUFFERS: Final = 1 << 16
"""At most this many buffers per value: a table is bounded before it is read."""

_HEAD: Final = struct.Struct("<4sIQ")
_LEN: Final = struct.Struct("<Q")

Part = Union[bytes, memoryview]


class _Lent:
    """A large ``bytearray`` to pickle out of band. The C pickler writes a ``bytearray``
    in-band (a copy into the stream) without asking ``reducer_override`` or the dispatch
    table, so one is swapped for this before pickling; it unpickles as a ``bytearray``."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return bytearray, (pickle.PickleBuffer(self.data),)


def _lend(value: Any) -> Any:
    """A call's ``[args, kwargs]`` with its large ``bytearray`` arguments swapped for
    :class:`_Lent` (the arguments themselves: one inside an argument stays in-band, so a call
    costs a look per argument, made in C, not a walk of its lists); anything else as it is.
    The same ``bytearray`` twice is one ``_Lent`` (the pickle's memo keeps them one object)."""
    if type(value) is not list or len(value) != 2:
        return value
    args, kwargs = value
    if type(args) is not list or type(kwargs) is not dict:
        return value
    if bytearray not in map(type, args) and bytearray not in map(type, kwargs.values()):
        return value  # the common case: no bytearray argument at all
    lent: dict[int, _Lent] = {}

    def swap(v: Any) -> Any:
        if type(v) is not bytearray or len(v) < MIN_OOB_BYTES:
            return v
        got = lent.get(id(v))
        if got is None:
            got = lent[id(v)] = _Lent(v)
        return got

    return [[swap(v) for v in args], {k: swap(v) for k, v in kwargs.items()}]


_cloudpickle_dumps: Any = None


def dump_parts(value: Any) -> list[Part]:
    """``value`` encoded as parts to be written one after the other: one ``bytes`` (a plain
    pickle stream) if no buffer went out of band, else the header with its table and the
    pickle, then each buffer as a ``memoryview`` of the caller's own memory (not copied here:
    the caller must not change them until they are written)."""
    buffers: list[memoryview] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: in-band
            return True
        if raw.nbytes < MIN_OOB_BYTES:
            return True
        buffers.append(raw)
        return False

    global _cloudpickle_dumps
    if _cloudpickle_dumps is None:  # imported on first use: a process that never pickles skips it
        import cloudpickle

        _cloudpickle_dumps = cloudpickle.dumps
    stream = _cloudpickle_dumps(_lend(value), protocol=5, buffer_callback=keep)
    if not buffers:
        return [stream]
    if len(buffers) > MAX_BUFFERS:
        raise WireError(f"{len(buffers)} out-of-band buffers in one value; at most {MAX_BUFFERS}")
    head = _HEAD.pack(MAGIC, len(buffers), len(stream)) + b"".join(_LEN.pack(b.nbytes) for b in buffers)
    return [head + stream, *buffers]


def dumps(value: Any) -> bytes:
    """``dump_parts`` joined: one copy of each buffer (the one a pickle made in-band)."""
    parts = dump_parts(value)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[return-value]


def split(data: bytes | memoryview) -> tuple[memoryview, list[memoryview]]:
    """The pickle and the buffers of an out-of-band layout, as views of ``data`` (no copy);
    ``WireError`` naming what is wrong if the table does not describe ``data`` exactly."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    total = view.nbytes
    if total < _HEAD.size:
        raise WireError(f"out-of-band arguments: {total} bytes, shorter than their {_HEAD.size}-byte header")
    magic, count, stream_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError(f"out-of-band arguments: header {bytes(magic)!r}, not {MAGIC!r}")
    if count > MAX_BUFFERS:
        raise WireError(f"out-of-band arguments: a table of {count} buffers; at most {MAX_BUFFERS}")
    at = _HEAD.size + count * _LEN.size
    if at > total:
        raise WireError(f"out-of-band arguments: a table of {count} buffers needs {at} bytes, got {total}")
    lengths = [_LEN.unpack_from(view, _HEAD.size + i * _LEN.size)[0] for i in range(count)]
    need = at + stream_len + sum(lengths)
    if need != total:
        raise WireError(
            f"out-of-band arguments: the table says {need} bytes (pickle {stream_len}, buffers {lengths[:8]}"
            f"{'...' if count > 8 else ''}), got {total}"
        )
    stream = view[at : at + stream_len]
    at += stream_len
    buffers = []
    for n in lengths:
        buffers.append(view[at : at + n])
        at += n
    return stream, buffers


def loads(data: bytes | memoryview) -> Any:
    """A value ``dumps`` (or plain cloudpickle) encoded. Out-of-band buffers are handed to the
    unpickler as read-only views of ``data``: whatever they rebuild refers to ``data``'s memory
    and keeps it alive (for a received object, its buffer is not reused while so held)."""
    if not data[:4] == MAGIC:  # a plain pickle (bytes or a view: == compares the bytes)
        return pickle.loads(data)
    stream, buffers = split(data)
    try:
        return pickle.loads(stream, buffers=[b.toreadonly() for b in buffers])
    finally:
        stream.release()
