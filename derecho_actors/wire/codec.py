"""Encoding of call arguments, results and remote errors.

Plain data (None, bool, int, float, str, bytes, lists, tuples, dicts) goes through msgpack;
a type that needs more opts in with ``@replicated(serializer="cloudpickle")``. The choice is
per type, so both ends agree on it by construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Final, Mapping, NamedTuple, Sequence

import msgpack

from derecho_actors.exceptions import ResultTooLarge, ShardAwaitingLog, ShardStateLost
from derecho_actors.wire.call_views import MIN_VIEW_BYTES, ordered_views
from derecho_actors.wire.error_text import error_text
from derecho_actors.wire.packing import packb
from derecho_actors.wire.serializers import pack_args as _pack_args
from derecho_actors.wire.serializers import pack_result as _pack_result
from derecho_actors.wire.serializers import result_packer as _result_packer
from derecho_actors.wire.serializers import unpack as _unpack
from derecho_actors.wire.serializers import unpack_msgpack as _unpack_msgpack
from derecho_actors.wire.serializers import unpack_msgpack_large as _unpack_msgpack_large
from derecho_actors.wire.serializers import unpack_pickle as _unpack_pickle
from derecho_actors.wire.state_codec import decode_state as decode_state  # re-exported
from derecho_actors.wire.state_codec import encode_state as encode_state  # re-exported
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
    ReplyForgotten,
    SessionExpired,
    SessionLimit,
    ShardUnavailable,
    UnknownMethod,
    VersionLost,
    WatchHistoryLost,
    WireError,
)


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], serializer: str) -> bytes:
    return _pack_args([list(args), kwargs], serializer, "the call's arguments")


def decode_args(data: bytes, serializer: str) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """A call's positional and keyword arguments, as decoded (a list and a dict: no copies)."""
    args, kwargs = _unpack(data, serializer)
    return args, kwargs


def encode_result(value: Any, serializer: str) -> bytes:
    return _pack_result(value, serializer, "the method's result")


def decode_result(data: bytes, serializer: str) -> Any:
    return _unpack(data, serializer)


def result_decoder(serializer: str) -> Callable[[bytes], Any]:
    """``decode_result`` for one serializer, as one function made once (a caller keeps one
    per call: no closure per call). Also what ``decode_args`` decodes before it splits the pair.
    A large msgpack value's large bins are copied with the GIL released (``large_args``)."""
    return _unpack_pickle if serializer == "cloudpickle" else _unpack_msgpack_large


def args_decoder(serializer: str) -> Callable[[bytes], Any]:
    """What decodes a call's ``[args, kwargs]`` pair that arrived as ``bytes`` (a small call's:
    a large one arrives as a view, read by ``large_args``): msgpack's decoder at once."""
    return _unpack_pickle if serializer == "cloudpickle" else _unpack_msgpack


def result_encoder(serializer: str) -> Callable[[Any], bytes]:
    """``encode_result`` for one serializer, made once, for one thread at a time (a replica's):
    for msgpack a ``Packer`` of its own, one C call per value. A value it cannot encode raises
    msgpack's own error, not ``SerializationError``: call ``encode_result`` then (it raises that)."""
    return (
        _result_packer(msgpack.Packer(use_bin_type=True).pack)
        if serializer != "cloudpickle"
        else lambda v: encode_result(v, serializer)
    )


MAYBE_LARGE: Final = frozenset((bytes, bytearray, str, list, tuple, dict))
"""The types of result ``result_encoder`` may lay out (``large_pack``); any other result can go
to ``plain_result_encoder`` at once (a replica skips a Python call per small result)."""


def plain_result_encoder(serializer: str) -> Callable[[Any], bytes]:
    """``result_encoder`` for a result whose type is not in ``MAYBE_LARGE``: for msgpack a
    ``Packer``'s own ``pack`` (one C call), for one thread at a time."""
    return msgpack.Packer(use_bin_type=True).pack if serializer != "cloudpickle" else result_encoder(serializer)


def encode_error(exc: BaseException) -> bytes:
    tb = error_text(exc)
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
        ResultTooLarge,
        ReplicaLost,
        ReplyForgotten,
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
    if len(calls) > 1:
        # Most batches are far below ``max_size``: an upper bound summed in C (a method name's
        # UTF-8 takes at most 4 bytes a character) spares measuring each call in Python.
        bound = (
            16 + sum(map(len, map(_ARGS, calls))) + 4 * sum(map(len, map(_METHOD, calls))) + CALL_OVERHEAD * len(calls)
        )
        if bound <= max_size:
            return [packb([now, calls])]
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


_METHOD = itemgetter(2)
_ARGS = itemgetter(3)


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


def decode_ordered(payload: bytes | memoryview) -> list[OrderedCall] | UndecodableBatch:
    """The calls of one multicast payload; an :class:`UndecodableBatch` saying why and naming
    the calls it could read if it is not one of ours. Every replica decodes the same payload
    alike, so none of its calls runs anywhere. A large payload's calls carry their arguments
    as views of it, not copies (``call_views``)."""
    if len(payload) >= MIN_VIEW_BYTES and (views := ordered_views(payload)) is not None:
        return views
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


def _bad(payload: bytes | memoryview, reason: str) -> UndecodableBatch:
    return UndecodableBatch(reason, _salvage(payload))


def _salvage(payload: bytes | memoryview) -> tuple[IdentifiedCall, ...]:
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
