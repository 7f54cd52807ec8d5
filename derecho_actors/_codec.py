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

from runtime.errors import RemoteError, SerializationError


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

PendingCall = tuple[int, int, str, bytes, int]
"""``(caller, call_id, method, args, origin)``: an ordered call waiting to be multicast."""

_CALL_OVERHEAD = 48  # msgpack framing per call, generously


def encode_ordered(calls: list[PendingCall], max_size: int) -> list[bytes]:
    """Multicast payloads carrying ``calls`` in order, as few as ``max_size`` allows: one
    multicast message (one slot, one stability step, one upcall) carries many calls.

    Replies go to node ``caller`` under ``call_id``; a non-zero ``origin`` (an external client,
    or a member retrying through a relay) makes ``call_id`` that origin's sequence number, which
    replicas use to apply a retried call only once. The sender's wall clock goes along, so every
    replica stamps the calls' versions with the same time."""
    now = time.time_ns()
    out: list[bytes] = []
    batch: list[PendingCall] = []
    size = 16
    for call in calls:
        need = len(call[3]) + len(call[2]) + _CALL_OVERHEAD
        if batch and size + need > max_size:
            out.append(msgpack.packb([now, batch], use_bin_type=True))
            batch, size = [], 16
        batch.append(call)
        size += need
    if batch:
        out.append(msgpack.packb([now, batch], use_bin_type=True))
    return out


def decode_ordered(payload: bytes) -> list[OrderedCall] | None:
    """The calls of one multicast payload, or None if it is not one of ours (malformed)."""
    try:
        ts, calls = msgpack.unpackb(payload, raw=False)
        if type(ts) is not int or type(calls) is not list:
            return None
        out = []
        for caller, call_id, method, args, origin in calls:
            if type(caller) is not int or type(call_id) is not int or type(origin) is not int:
                return None
            if type(method) is not str or type(args) is not bytes:
                return None
            out.append((caller, call_id, method, args, origin, ts))
        return out
    except Exception:
        return None
