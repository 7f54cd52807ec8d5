"""Encoding of call arguments, results and remote errors.

Plain data (None, bool, int, float, str, bytes, lists, tuples, dicts) goes through msgpack;
a type that needs more opts in with ``@replicated(serializer="cloudpickle")``. The choice is
per type, so both ends agree on it by construction.
"""

from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import msgpack

from derecho_actors.exceptions import ShardAwaitingLog, ShardStateLost
from derecho_actors.wire.packing import packb
from runtime.errors import (
    CallTimeout,
    ClientLimit,
    DerechoError,
    EmitError,
    NotPersistedYet,
    NotPersistent,
    P2PMutationError,
    PayloadTooLarge,
    RemoteError,
    ReplicaLost,
    SerializationError,
    SessionExpired,
    SessionLimit,
    ShardUnavailable,
    UnknownMethod,
    VersionLost,
    WatchHistoryLost,
    WireError,
)

_unpack_msgpack: Callable[[bytes], Any] = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)


def _unpack_pickle(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


def _pack(value: Any, serializer: str, what: str) -> bytes:
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


def _unpack(data: bytes, serializer: str) -> Any:
    return _unpack_pickle(data) if serializer == "cloudpickle" else _unpack_msgpack(data)


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], serializer: str) -> bytes:
    return _pack([list(args), kwargs], serializer, "the call's arguments")


def decode_args(data: bytes, serializer: str) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """A call's positional and keyword arguments, as decoded (a list and a dict: no copies)."""
    args, kwargs = _unpack(data, serializer)
    return args, kwargs


def encode_result(value: Any, serializer: str) -> bytes:
    return _pack(value, serializer, "the method's result")


def decode_result(data: bytes, serializer: str) -> Any:
    return _unpack(data, serializer)


def result_decoder(serializer: str) -> Callable[[bytes], Any]:
    """``decode_result`` for one serializer, as one function made once (a caller keeps one
    per call: no closure per call). Also what ``decode_args`` decodes before it splits the pair."""
    return _unpack_pickle if serializer == "cloudpickle" else _unpack_msgpack


def result_encoder(serializer: str) -> Callable[[Any], bytes]:
    """``encode_result`` for one serializer, made once, for one thread at a time (a replica's):
    for msgpack a ``Packer`` of its own, one C call per value. A value it cannot encode raises
    msgpack's own error, not ``SerializationError``: call ``encode_result`` then (it raises that)."""
    return (
        msgpack.Packer(use_bin_type=True).pack
        if serializer != "cloudpickle"
        else lambda v: encode_result(v, serializer)
    )


# Object state for state transfer, plain data only unless the type opted into pickle: msgpack
# with three extension types so tuples, sets and frozensets come back as they went (a tuple
# used as a dict key must stay hashable). Nothing here can run code on decode.
_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET = 1, 2, 3


def _state_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack_state(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, _pack_state(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_EXT_SET, _pack_state(list(value)))
    raise TypeError(f"{type(value).__name__} is not plain data")


def _state_ext(code: int, data: bytes) -> Any:
    items = _unpack_state(data)
    if code == _EXT_TUPLE:
        return tuple(items)
    if code == _EXT_SET:
        return set(items)
    if code == _EXT_FROZENSET:
        return frozenset(items)
    raise ValueError(f"unknown extension type {code} in an object state")


def _pack_state(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=True, default=_state_default)


def _unpack_state(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_state_ext)


def encode_state(value: Any, serializer: str, what: str) -> bytes:
    """An object's state for state transfer, with the type's serializer (plain data for
    msgpack types; pickle only for types that chose ``serializer="cloudpickle"``)."""
    if serializer == "cloudpickle":
        return _pack(value, serializer, what)
    try:
        return _pack_state(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"{what} is not plain data ({exc}); give the class __getstate__/__setstate__ that return and take "
            'plain data (dicts, lists, tuples, sets, str, bytes, numbers), or use @replicated(serializer="cloudpickle")'
        ) from None


def decode_state(data: bytes, serializer: str) -> Any:
    if serializer == "cloudpickle":
        return _unpack(data, serializer)
    return _unpack_state(data)


def encode_error(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return msgpack.packb([type(exc).__name__, str(exc), tb], use_bin_type=True)


# Errors the group itself answers with (not the user's method): they come back as themselves,
# so a caller can catch ``da.PayloadTooLarge`` whichever node refused the call.
_OWN_ERRORS: dict[str, type[DerechoError]] = {
    cls.__name__: cls
    for cls in (
        ShardAwaitingLog,
        ShardStateLost,
        ClientLimit,
        PayloadTooLarge,
        ReplicaLost,
        SessionExpired,
        SessionLimit,
        ShardUnavailable,
        UnknownMethod,
        P2PMutationError,
        CallTimeout,
        WatchHistoryLost,
        WireError,
    )
}


_OWN_ERRORS["TimeoutError"] = CallTimeout  # its name before 2026-12-06 (peers of the release before)


def decode_error(data: bytes, node: int | None) -> BaseException:
    try:
        name, message, tb = msgpack.unpackb(data, raw=False)
    except Exception:
        return RemoteError("UnknownError", "the replica's error could not be decoded", "", node)
    own = _OWN_ERRORS.get(str(name)) if tb == "" else None
    if own is not None:
        if own is ReplicaLost:
            return ReplicaLost(str(message), applied=False)
        return own(str(message))
    read = _READ_ERRORS.get(str(name))
    if read is not None:  # a read of the past the method did not catch: the caller's to handle
        exc = read(str(message))
        exc.remote_traceback = str(tb)  # type: ignore[attr-defined]
        return exc
    return RemoteError(str(name), str(message), str(tb), node)


# Raised inside a replicated method by da.at_version / da.at_time (or by a call's at_version= /
# at_time=) and not caught there: they say what the version is (not yet on disk everywhere, or
# lost, or the type keeps no versions), which is what the caller needs. Likewise EmitError
# (da.emit outside an ordered method): the method must change, not the call.
_READ_ERRORS: dict[str, type[DerechoError]] = {
    cls.__name__: cls for cls in (NotPersistedYet, VersionLost, NotPersistent, EmitError)
}


def encode_refusal(exc: DerechoError) -> bytes:
    """A refusal by the group (no traceback: it is not the user's code that failed). A
    refusal repeated word for word (a burst of refused calls) is encoded once."""
    return _refusal(type(exc).__name__, str(exc))


@functools.lru_cache(maxsize=256)
def _refusal(name: str, message: str) -> bytes:
    return msgpack.packb([name, message, ""], use_bin_type=True)


CALL_OVERHEAD = 96
"""Bytes one call adds to a multicast message besides its method name and arguments: the
msgpack framing of the batch and of seven integers (nine bytes each at most), generously."""


def call_size(method: str, args: bytes) -> int:
    """What one call takes of a multicast message (an upper bound): the limit every path
    checks against ``multicast.max_message_size`` before sending, so no call is dropped
    later for being too large."""
    return len(args) + len(method.encode()) + CALL_OVERHEAD


OrderedCall = tuple[int, int, str, bytes, int, int, int, int, int]
"""``(caller, call_id, method, args, origin, session_ns, floor, owner, timestamp_ns)`` of one
delivered ordered call (fields as in :class:`PendingCall`)."""


class PendingCall(NamedTuple):
    """An ordered call waiting to be multicast (it goes on the wire as an array, in this
    order). A non-zero ``origin`` (a client's session, or a member retrying through a relay)
    makes ``call_id`` that session's call number, ``session_ns`` when the session started and
    ``floor`` its oldest call still waiting for an answer (see ``replica.sessions``); all 0 for a
    member's own calls. ``owner``: the client identity that owns the session
    (``replica.sessions.owner_of``), stamped by the contact from the certificate it checked, so every
    replica bounds sessions per identity alike (0: none)."""

    caller: int
    call_id: int
    method: str
    args: bytes
    origin: int = 0
    session_ns: int = 0
    floor: int = 0
    owner: int = 0


def encode_ordered(calls: list[PendingCall], max_size: int, now: int) -> list[bytes]:
    """Multicast payloads carrying ``calls`` in order, as few as ``max_size`` allows: one
    multicast message (one slot, one stability step, one upcall) carries many calls.

    Replies go to node ``caller`` under ``call_id``; a non-zero ``origin`` (an external client,
    or a member retrying through a relay) makes ``call_id`` that origin's sequence number, which
    replicas use to apply a retried call only once. The sender's wall clock goes along, so every
    replica stamps the calls' versions with the same time (and ages sessions by it): ``now``,
    in ns, from the node's clock (virtual in the simulator)."""
    out: list[bytes] = []
    batch: list[PendingCall] = []
    size = 16
    for call in calls:
        need = call_size(call[2], call[3])
        if batch and size + need > max_size:
            out.append(packb([now, batch]))
            batch, size = [], 16
        batch.append(call)
        size += need
    if batch:
        out.append(packb([now, batch]))
    return out


def empty_ordered(now: int) -> bytes:
    """A multicast payload with no calls: every replica delivers it and runs nothing. It moves
    every member's delivered count, which a stable read may wait for (``replica.reads``)."""
    return msgpack.packb([now, []], use_bin_type=True)


class IdentifiedCall(NamedTuple):
    """A call of a payload that failed to decode, as far as it could be read: enough to tell its
    caller (fields as in :class:`PendingCall`; 0 where unreadable)."""

    caller: int
    call_id: int
    origin: int = 0
    session_ns: int = 0
    floor: int = 0

    @classmethod
    def of(cls, call: OrderedCall) -> IdentifiedCall:
        """A decoded call, to be refused like the others of its delivery."""
        return cls(call[0], call[1], call[4], call[5], call[6])


@dataclass(frozen=True, slots=True)
class UndecodableBatch:
    """A multicast payload that is not a batch of calls as :func:`encode_ordered` makes them
    (a member of another release, or a bug): ``reason`` says what is wrong, ``calls`` are the
    calls whose callers could be read from it (empty: none could)."""

    reason: str
    calls: tuple[IdentifiedCall, ...] = ()


def decode_ordered(payload: bytes) -> list[OrderedCall] | UndecodableBatch:
    """The calls of one multicast payload; an :class:`UndecodableBatch` saying why and naming
    the calls it could read if it is not one of ours. Every replica decodes the same payload
    alike, so none of its calls runs anywhere."""
    try:
        ts, calls = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        return UndecodableBatch(f"not a [time, calls] msgpack array ({type(exc).__name__}: {exc})", _salvage(payload))
    if type(ts) is not int or type(calls) is not list:
        return UndecodableBatch(f"not [time, calls] but [{type(ts).__name__}, {type(calls).__name__}]")
    out: list[OrderedCall] = []
    append = out.append
    for call in calls:
        if type(call) is list and len(call) == 8:
            caller, call_id, method, args, origin, session, floor, owner = call
        elif type(call) is list and len(call) == 7:  # the release before stamped no owner
            caller, call_id, method, args, origin, session, floor = call
            owner = 0
        else:
            return _bad(payload, f"call {len(out)} is not an array of 7 or 8 fields")
        # One chained test for the six integers (the common case costs one line, not eight).
        if not (
            type(caller) is type(call_id) is type(origin) is type(session) is type(floor) is type(owner) is int
            and type(method) is str
            and type(args) is bytes
        ):
            return _bad(payload, f"call {len(out)} has a field of the wrong type")
        append((caller, call_id, method, args, origin, session, floor, owner, ts))
    return out


def _bad(payload: bytes, reason: str) -> UndecodableBatch:
    return UndecodableBatch(reason, _salvage(payload))


def _salvage(payload: bytes) -> tuple[IdentifiedCall, ...]:
    """The calls of a payload that failed to decode whose caller and number can be read: read
    field by field (msgpack is a stream), up to the first byte that makes no sense, so a call
    cut short still counts if its first two fields were read."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(payload), 1024))
    unpacker.feed(payload)
    found: list[IdentifiedCall] = []
    try:
        if unpacker.read_array_header() != 2:
            return ()
        unpacker.skip()  # the time
        for _ in range(unpacker.read_array_header()):
            fields: list[object] = []
            try:
                for j in range(unpacker.read_array_header()):
                    if j < 7:
                        fields.append(unpacker.unpack())
                    else:
                        unpacker.skip()
            finally:
                call = _identified(fields)
                if call is not None:
                    found.append(call)
    except Exception:
        pass  # the rest cannot be read: what was found is all there is
    return tuple(found)


def _identified(fields: list[object]) -> IdentifiedCall | None:
    """A call's first fields (as many as could be read) as an :class:`IdentifiedCall`, if they
    name a caller, a call number and whose call it is (origin and session; the floor is only a
    hint): without the origin, the answer would go to the caller node's own call of that number, which is another
    call (its clients' calls are numbered apart), so such a call counts as unidentified."""

    def number(i: int) -> int | None:
        value = fields[i] if i < len(fields) else None
        return value if type(value) is int else None

    caller, call_id, origin, session, floor = (number(i) for i in (0, 1, 4, 5, 6))
    if caller is None or call_id is None or caller < 0 or call_id < 0:
        return None
    if origin is None or session is None:
        return None
    return IdentifiedCall(caller, call_id, origin, session, floor or 0)
