"""A value as bytes with a type's serializer (msgpack, or cloudpickle for types that chose
it), and back: what call arguments, results and object states are made of.

A cloudpickle type's call arguments go through :mod:`derecho_actors.wire.oob` (pickle protocol
5, large buffers out of band: not copied into the pickle, and views of the received bytes at a
replica). Results and states stay plain pickles: what they rebuild is kept and changed by the
caller or the replica, so it must not be a read-only view. Every cloudpickle decode reads both.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Final

import msgpack

from derecho_actors.wire import oob
from derecho_actors.wire.large_args import BIG_BIN, decode_view
from derecho_actors.wire.large_pack import pack_large
from derecho_actors.wire.packing import packb
from runtime.errors import SerializationError

_unpackb = msgpack.unpackb
_unpack_any_keys: Callable[[bytes], Any] = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)


def unpack_msgpack(data: bytes) -> Any:
    """A msgpack value, maps with keys of any type allowed (as ``strict_map_key=False``).

    Why not that partial alone: every call's arguments (at every replica) and result (at the
    caller) are decoded here, and msgpack parses keyword arguments at each call: ~0.13 µs of
    the ~0.35 µs a put's arguments take. Plain ``unpackb`` (``raw=False`` is msgpack 1.0's
    default) decodes the same values, only refusing maps keyed by other than text or bytes
    with a ``ValueError``: those (and any other error, raised again the same) take the
    permissive path, one decode more."""
    try:
        return _unpackb(data)
    except ValueError:
        pass  # decoded again outside the handler: the first error (``ExtraData`` holds the whole
        # value) is freed before the second decode and not chained into the caller's traceback
    return _unpack_any_keys(data)


def unpack_msgpack_large(data: bytes, values: int | None = None) -> Any:
    """``unpack_msgpack``, a value of ``BIG_BIN`` bytes or more read by ``large_args`` (its
    large bins copied with the GIL released): a result decoded by its caller, on the caller's
    loop (a 100 MB ``bin`` held the GIL ~60-110 ms in msgpack's decoder); a persistent log's
    record or checkpoint at a replica (``values``: as ``decode_view`` takes it)."""
    if len(data) >= BIG_BIN:
        return decode_view(memoryview(data), unpack_msgpack, values=values)  # (a view of a view if one came)
    try:
        return _unpackb(data)
    except ValueError:
        pass  # as in ``unpack_msgpack``
    return _unpack_any_keys(data)


_LARGE = (bytes, bytearray, str)
_CONTAINERS = (list, tuple, dict)
FEW: Final = 4
"""Items a result's top-level list, tuple or dict may have for it to be laid out when one of
them (a dict's values) is large (a pair ``(meta, data)``, a ``{"data": ...}``); a longer one,
or one whose large value is deeper, is packed at once (looking through it cost more than
packing a small result does)."""


def result_packer(pack: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``pack`` (a msgpack ``Packer``'s, ``use_bin_type=True``) for results: a large ``bytes``,
    or a container of ``FEW`` items holding one, is laid out by ``pack_large`` (copied without
    the GIL: a replica packing a 100 MB result held it 136-800 ms); anything else is packed by
    ``pack`` at once."""

    def pack_result(value: Any) -> bytes:
        t = type(value)
        if t in _LARGE:
            large = len(value) >= BIG_BIN
        elif t in _CONTAINERS and len(value) <= FEW:
            large = False
            for item in value.values() if t is dict else value:
                if type(item) in _LARGE and len(item) >= BIG_BIN:
                    large = True
                    break
        else:
            large = False
        if large:
            packed = pack_large(value, pack)
            if packed is not None:
                return packed
        return pack(value)

    return pack_result


_pack_result = result_packer(packb)


unpack_pickle: Callable[[bytes], Any] = oob.loads
"""A plain pickle stream, or arguments in the out-of-band layout (``oob.loads``)."""


def pickle_plain(value: Any) -> bytes:
    """A plain cloudpickle stream (cloudpickle imported on first use: a process that never
    pickles skips it)."""
    import cloudpickle

    return cloudpickle.dumps(value)


def pack(
    value: Any,
    serializer: str,
    what: str,
    dumps: Callable[[Any], bytes] = pickle_plain,
    packer: Callable[[Any], bytes] = packb,
) -> bytes:
    """``value`` with ``serializer``; ``dumps`` is how a cloudpickle type's value is pickled
    (``oob.dumps`` for a call's arguments: their large buffers out of band), ``packer`` how
    msgpack packs it (``pack_result`` for a result: large bins copied without the GIL). A value the
    serializer cannot encode raises ``SerializationError`` naming ``what`` it is."""
    if serializer == "cloudpickle":
        try:
            return dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from None
    try:
        return packer(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data msgpack can encode ({exc}); pass plain values or use "
            f'@replicated(serializer="cloudpickle")'
        ) from None


_oob_dumps: Callable[[Any], bytes] = oob.dumps  # a global: one lookup less per call than ``oob.dumps``


def pack_args(value: Any, serializer: str, what: str) -> bytes:
    """``pack`` for a call's arguments: a cloudpickle type's large buffers out of band."""
    return pack(value, serializer, what, _oob_dumps)


def pack_result(value: Any, serializer: str, what: str) -> bytes:
    """``pack`` for a method's result: a large ``bin`` in it copied without the GIL."""
    return pack(value, serializer, what, packer=_pack_result)


def unpack(data: bytes, serializer: str) -> Any:
    return unpack_pickle(data) if serializer == "cloudpickle" else unpack_msgpack_large(data)
