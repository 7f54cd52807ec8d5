"""A value as bytes with a type's serializer (msgpack, or cloudpickle for types that chose
it), and back: what call arguments, results and object states are made of.

A cloudpickle type's call arguments go through :mod:`derecho_actors.wire.oob` (pickle protocol
5, large buffers out of band: not copied into the pickle, and views of the received bytes at a
replica). Results and states stay plain pickles: what they rebuild is kept and changed by the
caller or the replica, so it must not be a read-only view. Every cloudpickle decode reads both.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import msgpack

from derecho_actors.wire import oob
from derecho_actors.wire.packing import packb
from runtime.errors import SerializationError

unpack_msgpack: Callable[[bytes], Any] = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)

unpack_pickle: Callable[[bytes], Any] = oob.loads
"""A plain pickle stream, or arguments in the out-of-band layout (``oob.loads``)."""


def pack(value: Any, serializer: str, what: str) -> bytes:
    if serializer == "cloudpickle":
        import cloudpickle

        try:
            return cloudpickle.dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from None
    return _pack_msgpack(value, what)


def pack_args(value: Any, serializer: str, what: str) -> bytes:
    """``pack`` for a call's arguments: a cloudpickle type's large buffers out of band."""
    if serializer == "cloudpickle":
        try:
            return oob.dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from None
    return _pack_msgpack(value, what)


def _pack_msgpack(value: Any, what: str) -> bytes:
    try:
        return packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data msgpack can encode ({exc}); pass plain values or use "
            f'@replicated(serializer="cloudpickle")'
        ) from None


def unpack(data: bytes, serializer: str) -> Any:
    return unpack_pickle(data) if serializer == "cloudpickle" else unpack_msgpack(data)
