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


def _lend(value: Any, lent: dict[int, _Lent], depth: int = 2) -> Any:
    """``value`` with its large ``bytearray``s swapped for :class:`_Lent`, looked for in lists,
    tuples and dicts down to ``depth`` (a call's ``[args, kwargs]``: the arguments themselves;
    a ``bytearray`` inside an argument stays in-band, so a call costs a look per argument,
    not per item of its lists). The same ``bytearray`` twice is one ``_Lent`` (the pickle's memo keeps
    them one object). Containers are rebuilt only where something was swapped."""
    kind = type(value)
    if kind is bytearray:
        if len(value) < MIN_OOB_BYTES:
            return value
        got = lent.get(id(value))
        if got is None:
            got = lent[id(value)] = _Lent(value)
        return got
    if depth == 0:
        return value
    if kind is list or kind is tuple:
        items = [_lend(v, lent, depth - 1) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if kind is list else tuple(items)
    if kind is dict:
        swapped = {k: _lend(v, lent, depth - 1) for k, v in value.items()}
        return value if all(swapped[k] is v for k, v in value.items()) else swapped
    return value


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

    import cloudpickle

    stream = cloudpickle.dumps(_lend(value, {}), protocol=5, buffer_callback=keep)
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
    if bytes(data[:4]) != MAGIC:
        return pickle.loads(data)
    stream, buffers = split(data)
    try:
        return pickle.loads(stream, buffers=[b.toreadonly() for b in buffers])
    finally:
        stream.release()
