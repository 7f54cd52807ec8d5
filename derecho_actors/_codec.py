"""Encoding of call arguments, results and remote errors.

Plain data (None, bool, int, float, str, bytes, lists, tuples, dicts) goes through msgpack;
a type that needs more opts in with ``@replicated(serializer="cloudpickle")``. The choice is
per type, so both ends agree on it by construction.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import msgpack

from derecho_actors.exceptions import RemoteError, SerializationError


def _pack(value: Any, serializer: str, what: str) -> bytes:
    if serializer == "cloudpickle":
        import cloudpickle

        try:
            return cloudpickle.dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from None
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data msgpack can encode ({exc}); pass plain values or use "
            f'@replicated(serializer="cloudpickle")'
        ) from None


def _unpack(data: bytes, serializer: str) -> Any:
    if serializer == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(data)
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], serializer: str) -> bytes:
    return _pack([list(args), kwargs], serializer, "the call's arguments")


def decode_args(data: bytes, serializer: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = _unpack(data, serializer)
    return tuple(args), dict(kwargs)


def encode_result(value: Any, serializer: str) -> bytes:
    return _pack(value, serializer, "the method's result")


def decode_result(data: bytes, serializer: str) -> Any:
    return _unpack(data, serializer)


def encode_error(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return msgpack.packb([type(exc).__name__, str(exc), tb], use_bin_type=True)  # type: ignore[no-any-return]


def decode_error(data: bytes, node: int | None) -> RemoteError:
    try:
        name, message, tb = msgpack.unpackb(data, raw=False)
        return RemoteError(str(name), str(message), str(tb), node)
    except Exception:
        return RemoteError("UnknownError", "the replica's error could not be decoded", "", node)


OrderedCall = tuple[int, int, str, bytes, int, int]
"""``(caller, call_id, method, args, origin, timestamp_ns)`` of one delivered ordered call."""


def encode_ordered(caller: int, call_id: int, method: str, args: bytes, origin: int = 0) -> bytes:
    """The multicast payload of one ordered call. Replies go to node ``caller`` under
    ``call_id``; a non-zero ``origin`` (an external client) makes ``call_id`` that client's
    sequence number, which replicas use to apply a retried call only once. The sender's wall
    clock goes along, so every replica stamps the call's version with the same time."""
    return msgpack.packb([caller, call_id, method, args, origin, time.time_ns()], use_bin_type=True)  # type: ignore[no-any-return]


def decode_ordered(payload: bytes) -> OrderedCall | None:
    try:
        caller, call_id, method, args, origin, ts = msgpack.unpackb(payload, raw=False)
    except Exception:
        return None
    if not all(type(x) is int for x in (caller, call_id, origin, ts)) or type(method) is not str or type(args) is not bytes:
        return None
    return caller, call_id, method, args, origin, ts
