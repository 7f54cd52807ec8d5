"""A value as bytes with a type's serializer (msgpack, or cloudpickle for types that chose
it), and back: what call arguments, results and object states are made of."""

from __future__ import annotations

import functools
from typing import Any, Callable

import msgpack

from derecho_actors.wire.packing import packb
from runtime.errors import SerializationError

unpack_msgpack: Callable[[bytes], Any] = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)


def unpack_pickle(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


def pack(value: Any, serializer: str, what: str) -> bytes:
    if serializer == "cloudpickle":
        import cloudpickle

        try:
            return cloudpickle.dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from None
    try:
        return packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data msgpack can encode ({exc}); pass plain values or use "
            f'@replicated(serializer="cloudpickle")'
        ) from None


def unpack(data: bytes, serializer: str) -> Any:
    return unpack_pickle(data) if serializer == "cloudpickle" else unpack_msgpack(data)
