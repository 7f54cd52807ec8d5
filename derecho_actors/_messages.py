"""The actor layer's messages: calls, replies, state transfer, signed log marks and state digests.

They travel inside the engine's opaque ``AppMessage`` frames (member to member, and between a
client and its contact), under the sender's proven identity. Each is one msgpack array
``[tag, field, ...]``; :func:`decode` checks every field (``runtime.wire.checks``) and raises
``WireError`` naming the field for anything :func:`encode` could not have produced, so the
layer only ever handles well-typed messages. A message that names its sender (a reply's
``node``, a member's call's ``caller``) must name the connection's proven speaker: see
:func:`claimed_sender`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Final

import msgpack

from runtime.errors import WireError
from runtime.wire.checks import (
    Decoders,
    blob,
    decode_tagged,
    describe,
    flag,
    nat,
    shard_id,
    shard_to_wire,
    text,
    version_int,
)


@dataclass(frozen=True, slots=True)
class Call:
    """A request sent straight to one member: a P2P call to run there, or (``ordered``) a
    call that member must multicast into its shard on the caller's behalf (relaying). Replies
    go to ``caller``, whichever path the call took. A client's call names no caller (0: its
    contact answers it on the client's connection); ``target`` is the replica a client's P2P
    call asks for (``node=``; 0: any)."""

    call_id: int
    caller: int
    shard: Any  # ShardId
    method: str
    ordered: bool
    args: bytes
    origin: int = 0  # the caller's exactly-once session, for retried calls (0: none)
    session_ns: int = 0  # when that session started (see derecho_actors._sessions)
    floor: int = 0  # the caller's oldest call still waiting for an answer
    target: int = 0  # a client's P2P call: the replica it asks for (0: any)
    # A client's ordered call relayed by its contact: the identity owning its session
    # (``_sessions.owner_of``), stamped by the contact. On the wire only when set, so a
    # client's frames are as before; a contact ignores what a client puts here.
    owner: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """One replica's answer to a call. ``vid`` and ``replicas`` say which view delivered the
    call and which members will each answer it, so the caller knows when it has them all."""

    call_id: int
    node: int
    vid: int
    replicas: tuple[int, ...]
    ok: bool
    value: bytes
    origin: int = 0  # the external client the call came from, if any (see Call.origin)
    version: int = -1  # the ordered call's version in a persistent shard (-1: none)


@dataclass(frozen=True, slots=True)
class ReplyBatch:
    """Many answers of one replica in one frame (one delivered batch's worth, for one caller
    or one client): ``entries`` are ``(call_id, ok, value, origin, version)``, each as in
    :class:`Reply`. In Python the cost is per object and per frame, not per byte."""

    node: int
    vid: int
    replicas: tuple[int, ...]
    entries: tuple[tuple[int, bool, bytes, int, int], ...]


@dataclass(frozen=True, slots=True)
class SignedMark:
    """A replica of a signed shard: its log is on disk up to ``version``, whose record it
    signed with its own key: ``signature`` covers the record chain digest up to there. A peer
    checks it against its *own* chain digest with the sender's ``public_key`` (taken from the
    sender's certificate under TLS; the field must then match it): a valid signature means
    both logs are identical up to that version."""

    shard: Any  # ShardId
    version: int
    signature: bytes
    public_key: bytes = b""


@dataclass(frozen=True, slots=True)
class StateDigest:
    """A replica's digest of its state right after ``version`` (``@replicated(digest_every=N)``,
    see ``_digest``): the shard's other replicas compare it with their own at that version.
    It names no sender: it is the connection's proven speaker, so no member can send one in
    another's name."""

    shard: Any  # ShardId
    version: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class StateRequest:
    """A replica new to ``shard`` in view ``vid`` asks the view's state source for the state.
    ``have_version`` is the last version in its own log (-1: none) and ``digest`` the crc32 of
    that record's body: the source sends only later records if its own record agrees."""

    shard: Any  # ShardId
    vid: int
    have_version: int
    digest: int


@dataclass(frozen=True, slots=True)
class StateChunk:
    """One piece of a state transfer: ``part`` is "obj" (bytes of the object state, encoded
    with the type's serializer), "log" (msgpack list of [version, timestamp_ns, body]
    records) or "err" (the source cannot send the state; ``data`` says why, UTF-8); ``final`` ends it;
    ``reset`` (first chunk only) tells the receiver its log disagrees and must be replaced."""

    shard: Any
    vid: int
    seq: int
    part: str
    data: bytes
    final: bool
    reset: bool


@dataclass(frozen=True, slots=True)
class StateAck:
    """The receiver has written chunk ``seq``: flow control for the sender's window."""

    shard: Any
    vid: int
    seq: int


@dataclass(frozen=True, slots=True)
class CallBatch:
    """A client's calls sent in one frame (its writer thread takes whatever queued)."""

    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class ViewNotice:
    """A contact tells its clients of a view change: who left (their replicas will not answer)
    and, when no shard can run, why."""

    vid: int
    members: tuple[int, ...]
    departed: tuple[int, ...]
    unavailable: str = ""


AppFrame = (
    Call | CallBatch | Reply | ReplyBatch | SignedMark | StateRequest | StateChunk | StateAck | ViewNotice | StateDigest
)

TAG_CALL: Final = 1
TAG_CALL_BATCH: Final = 2
TAG_REPLY: Final = 3
TAG_REPLY_BATCH: Final = 4
TAG_SIGNED_MARK: Final = 5
TAG_STATE_REQUEST: Final = 6
TAG_STATE_CHUNK: Final = 7
TAG_STATE_ACK: Final = 8
TAG_VIEW_NOTICE: Final = 9
TAG_STATE_DIGEST: Final = 10
MAX_DIGEST = 64


# ------------------------------------------------------------------------------- encoding
def _call_fields(m: Call) -> list[Any]:
    fields = [
        m.call_id,
        m.caller,
        shard_to_wire(m.shard),
        m.method,
        m.ordered,
        m.args,
        m.origin,
        m.session_ns,
        m.floor,
        m.target,
    ]
    if m.owner:
        fields.append(m.owner)
    return fields


_ENCODERS: Final[dict[type, Callable[[Any], list[Any]]]] = {
    Call: lambda m: [TAG_CALL, *_call_fields(m)],
    CallBatch: lambda m: [TAG_CALL_BATCH, [_call_fields(c) for c in m.calls]],
    Reply: lambda m: [TAG_REPLY, m.call_id, m.node, m.vid, list(m.replicas), m.ok, m.value, m.origin, m.version],
    ReplyBatch: lambda m: [TAG_REPLY_BATCH, m.node, m.vid, list(m.replicas), [list(e) for e in m.entries]],
    SignedMark: lambda m: [TAG_SIGNED_MARK, shard_to_wire(m.shard), m.version, m.signature, m.public_key],
    StateRequest: lambda m: [TAG_STATE_REQUEST, shard_to_wire(m.shard), m.vid, m.have_version, m.digest],
    StateChunk: lambda m: [TAG_STATE_CHUNK, shard_to_wire(m.shard), m.vid, m.seq, m.part, m.data, m.final, m.reset],
    StateAck: lambda m: [TAG_STATE_ACK, shard_to_wire(m.shard), m.vid, m.seq],
    ViewNotice: lambda m: [TAG_VIEW_NOTICE, m.vid, list(m.members), list(m.departed), m.unavailable],
    StateDigest: lambda m: [TAG_STATE_DIGEST, shard_to_wire(m.shard), m.version, m.digest],
}


def encode(msg: AppFrame) -> bytes:
    """``msg`` as bytes for an ``AppMessage`` (``TypeError`` for what is not a message here)."""
    enc = _ENCODERS.get(type(msg))
    if enc is None:
        raise TypeError(f"cannot encode {type(msg).__name__}: not an actor-layer message")
    return msgpack.packb(enc(msg), use_bin_type=True)


# ------------------------------------------------------------------------------- decoding
def _call(f: list[Any], what: str) -> Call:
    if type(f) is not list or len(f) not in (10, 11):
        raise WireError(f"{what} needs 10 or 11 fields, got {describe(f)}")
    call_id, caller, shard, method, ordered, args, origin, session_ns, floor, target = f[:10]
    owner = f[10] if len(f) == 11 else 0
    # The common case in one test (a client's batch may hold thousands of calls); anything
    # off goes through the field-by-field checks below, which name the field.
    if (
        type(call_id) is int
        and type(caller) is int
        and type(method) is str
        and type(ordered) is bool
        and type(args) is bytes
        and type(origin) is int
        and type(session_ns) is int
        and type(floor) is int
        and type(target) is int
        and type(owner) is int
        and min(call_id, caller, origin, session_ns, floor, target, owner) >= 0
    ):
        return Call(
            call_id,
            caller,
            shard_id(shard, f"{what}.shard"),
            method,
            ordered,
            args,
            origin,
            session_ns,
            floor,
            target,
            owner,
        )
    return Call(
        nat(call_id, f"{what}.call_id"),
        nat(caller, f"{what}.caller"),
        shard_id(shard, f"{what}.shard"),
        text(method, f"{what}.method"),
        flag(ordered, f"{what}.ordered"),
        blob(args, f"{what}.args"),
        nat(origin, f"{what}.origin"),
        nat(session_ns, f"{what}.session_ns"),
        nat(floor, f"{what}.floor"),
        nat(target, f"{what}.target"),
        nat(owner, f"{what}.owner"),
    )


def _dec_call(f: list[Any]) -> Call:
    return _call(f[1:], "Call")


def _dec_call_batch(f: list[Any]) -> CallBatch:
    calls = f[1]
    if type(calls) is not list:
        raise WireError(f"CallBatch.calls must be a list, got {describe(calls)}")
    return CallBatch(tuple(_call(c, "CallBatch.calls[]") for c in calls))


@dataclass(frozen=True, slots=True)
class OverfullBatch:
    """A client's ``CallBatch`` holding more calls than it may have unanswered: the first
    ``calls`` decoded, and only the numbers of the others (``overflow``), to refuse them."""

    calls: tuple[Call, ...]
    overflow: tuple[int, ...]


def _dec_client_batch(f: list[Any], max_calls: int) -> CallBatch | OverfullBatch:
    calls = f[1]
    if type(calls) is not list or len(calls) <= max_calls:
        return _dec_call_batch(f)
    overflow = []
    for c in calls[max_calls:]:  # only each call's number: it is refused, not run
        if type(c) is not list or not c or type(c[0]) is not int or c[0] < 0:
            raise WireError(f"CallBatch.calls[] must be calls, got {describe(c)}")
        overflow.append(c[0])
    return OverfullBatch(tuple(_call(c, "CallBatch.calls[]") for c in calls[:max_calls]), tuple(overflow))


def _replicas(value: object, what: str) -> tuple[int, ...]:
    if type(value) is not list:
        raise WireError(f"{what} must be a list, got {describe(value)}")
    return tuple(nat(r, f"{what}[]") for r in value)


def _dec_reply(f: list[Any]) -> Reply:
    _, call_id, node, vid, replicas, ok, value, origin, version = f
    return Reply(
        nat(call_id, "Reply.call_id"),
        nat(node, "Reply.node"),
        nat(vid, "Reply.vid"),
        _replicas(replicas, "Reply.replicas"),
        flag(ok, "Reply.ok"),
        blob(value, "Reply.value"),
        nat(origin, "Reply.origin"),
        version_int(version, "Reply.version"),
    )


def _dec_reply_batch(f: list[Any]) -> ReplyBatch:
    _, node, vid, replicas, entries = f
    if type(entries) is not list:
        raise WireError(f"ReplyBatch.entries must be a list, got {describe(entries)}")
    out = []
    for e in entries:
        if type(e) is not list or len(e) != 5:
            raise WireError(f"ReplyBatch entries are [call_id, ok, value, origin, version], got {describe(e)}")
        call_id, ok, value, origin, version = e
        if (
            type(call_id) is not int
            or call_id < 0
            or type(ok) is not bool
            or type(value) is not bytes
            or type(origin) is not int
            or origin < 0
            or type(version) is not int
            or version < -1
        ):
            raise WireError(f"malformed ReplyBatch entry {describe(e)}")
        out.append((call_id, ok, value, origin, version))
    return ReplyBatch(
        nat(node, "ReplyBatch.node"), nat(vid, "ReplyBatch.vid"), _replicas(replicas, "ReplyBatch.replicas"), tuple(out)
    )


def _dec_signed_mark(f: list[Any]) -> SignedMark:
    _, shard, version, signature, public_key = f
    if type(signature) is not bytes or len(signature) != 64:
        raise WireError(f"SignedMark.signature must be 64 bytes, got {describe(signature)}")
    if type(public_key) is not bytes or len(public_key) != 32:
        raise WireError(f"SignedMark.public_key must be 32 bytes, got {describe(public_key)}")
    return SignedMark(shard_id(shard, "SignedMark.shard"), nat(version, "SignedMark.version"), signature, public_key)


def _dec_state_request(f: list[Any]) -> StateRequest:
    _, shard, vid, have, digest = f
    return StateRequest(
        shard_id(shard, "StateRequest.shard"),
        nat(vid, "StateRequest.vid"),
        version_int(have, "StateRequest.have_version"),
        nat(digest, "StateRequest.digest"),
    )


def _dec_state_chunk(f: list[Any]) -> StateChunk:
    _, shard, vid, seq, part, data, final, reset = f
    if part not in ("obj", "log", "err"):
        raise WireError(f"StateChunk.part must be 'obj', 'log' or 'err', got {describe(part)}")
    return StateChunk(
        shard_id(shard, "StateChunk.shard"),
        nat(vid, "StateChunk.vid"),
        nat(seq, "StateChunk.seq"),
        part,
        blob(data, "StateChunk.data"),
        flag(final, "StateChunk.final"),
        flag(reset, "StateChunk.reset"),
    )


def _dec_state_ack(f: list[Any]) -> StateAck:
    _, shard, vid, seq = f
    return StateAck(shard_id(shard, "StateAck.shard"), nat(vid, "StateAck.vid"), nat(seq, "StateAck.seq"))


def _dec_view_notice(f: list[Any]) -> ViewNotice:
    _, vid, members, departed, unavailable = f
    return ViewNotice(
        nat(vid, "ViewNotice.vid"),
        _replicas(members, "ViewNotice.members"),
        _replicas(departed, "ViewNotice.departed"),
        text(unavailable, "ViewNotice.unavailable"),
    )


def _dec_state_digest(f: list[Any]) -> StateDigest:
    _, shard, version, digest = f
    if type(digest) is not bytes or not 0 < len(digest) <= MAX_DIGEST:
        raise WireError(f"StateDigest.digest must be 1 to {MAX_DIGEST} bytes, got {describe(digest)}")
    return StateDigest(shard_id(shard, "StateDigest.shard"), nat(version, "StateDigest.version"), digest)


_DECODERS: Final[Decoders] = {
    TAG_CALL: ("Call", (10, 11), _dec_call),
    TAG_CALL_BATCH: ("CallBatch", 1, _dec_call_batch),
    TAG_REPLY: ("Reply", 8, _dec_reply),
    TAG_REPLY_BATCH: ("ReplyBatch", 4, _dec_reply_batch),
    TAG_SIGNED_MARK: ("SignedMark", 4, _dec_signed_mark),
    TAG_STATE_REQUEST: ("StateRequest", 4, _dec_state_request),
    TAG_STATE_CHUNK: ("StateChunk", 7, _dec_state_chunk),
    TAG_STATE_ACK: ("StateAck", 3, _dec_state_ack),
    TAG_VIEW_NOTICE: ("ViewNotice", 4, _dec_view_notice),
    TAG_STATE_DIGEST: ("StateDigest", 3, _dec_state_digest),
}


def decode(data: bytes) -> AppFrame:
    """The message in an ``AppMessage``'s data; ``WireError`` naming the problem otherwise."""
    return decode_tagged(data, _DECODERS, "message")


@functools.lru_cache(maxsize=8)
def _client_decoders(max_calls: int) -> Decoders:
    return {**_DECODERS, TAG_CALL_BATCH: ("CallBatch", 1, lambda f: _dec_client_batch(f, max_calls))}


def decode_from_client(data: bytes, max_calls: int) -> AppFrame | OverfullBatch:
    """As :func:`decode`, for a client's message: of a ``CallBatch`` only the first
    ``max_calls`` calls (what the client may have unanswered) are decoded; the others come as
    numbers in an :class:`OverfullBatch`, to be refused. So one frame costs the node's loop
    little beyond its size, however many calls it packs."""
    return decode_tagged(data, _client_decoders(max_calls), "message")


def claimed_sender(msg: AppFrame) -> int | None:
    """The node a member's message names as its sender (a reply's ``node``, a call's
    ``caller``), which must be the connection's proven speaker; None if it names none."""
    t = type(msg)
    if t is ReplyBatch or t is Reply:
        return msg.node  # type: ignore[union-attr]
    if t is Call:
        return msg.caller  # type: ignore[union-attr]
    return None
