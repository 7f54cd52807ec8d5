"""The actor layer's messages: calls, replies, state transfer, signed log marks and state digests.

They travel inside the engine's opaque ``AppMessage`` frames (member to member, and between a
client and its contact), under the sender's proven identity. Each is one msgpack array
``[tag, field, ...]``; :func:`decode` checks every field (``runtime.wire.checks``) and raises
``WireError`` naming the field for anything :func:`encode` could not have produced, so the
layer only ever handles well-typed messages. A message that names its sender (a reply's
``node``, a member's call's ``caller``) must name the connection's proven speaker: see
:func:`claimed_sender`.

Calls (``wire.calls``) and answers (``wire.replies``) are defined in their own modules and
re-exported here. Kinds are enums, never strings a peer could spell: a call's ``CallKind`` (a
user's method, or one of the group's own requests), a state chunk's :class:`ChunkKind`. Who
gets the answer to a call is one ``ReplyTo`` value, which builds every answer the group itself
makes (a refusal, an error of a malformed request), in one place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Final

from derecho_actors.wire.calls import (
    LEGACY_KINDS,
    Call,
    CallBatch,
    CallKind,
    OverfullBatch,
    call_fields,
    decode_call,
    decode_calls,
    decode_client_calls,
)
from derecho_actors.wire.large_frames import BIG_BIN, ends_large, pack_answer_frame, unpack_large_frame
from derecho_actors.wire.packing import packb
from derecho_actors.wire.replies import (
    AnswerBatch,
    Features,
    MergedEntry,
    Reply,
    ReplyBatch,
    ReplyEntry,
    ReplyTo,
    ViewNotice,
    answer_batch_fields,
    decode_answer_batch,
    decode_features,
    decode_view_notice,
    node_ids,
)
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
    version_int,
)

__all__ = [
    "LEGACY_KINDS",
    "AnswerBatch",
    "AppFrame",
    "Call",
    "CallBatch",
    "CallKind",
    "ChunkKind",
    "Features",
    "MergedEntry",
    "OverfullBatch",
    "Reply",
    "ReplyBatch",
    "ReplyEntry",
    "ReplyTo",
    "SignedMark",
    "StateAck",
    "StateChunk",
    "StateDigest",
    "StateRequest",
    "ViewNotice",
    "claimed_sender",
    "decode",
    "decode_from_client",
    "encode",
]


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
    see ``wire.digest``): the shard's other replicas compare it with their own at that version.
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


class ChunkKind(str, Enum):
    """What a state chunk carries. On the wire as its value (the strings the release before
    sent, so either end may be the older)."""

    OBJECT = "obj"
    """Bytes of the object state, encoded with the type's serializer."""
    LOG = "log"
    """A msgpack list of ``[version, timestamp_ns, body]`` log records."""
    ERROR = "err"
    """The source cannot send the state; the data says why (UTF-8)."""


_CHUNK_KINDS: Final = {k.value: k for k in ChunkKind}


@dataclass(frozen=True, slots=True)
class StateChunk:
    """One piece of a state transfer: ``part`` says what ``data`` is; ``final`` ends it;
    ``reset`` (first chunk only) tells the receiver its log disagrees and must be replaced."""

    shard: Any
    vid: int
    seq: int
    part: ChunkKind
    data: bytes
    final: bool
    reset: bool


@dataclass(frozen=True, slots=True)
class StateAck:
    """The receiver has written chunk ``seq``: flow control for the sender's window."""

    shard: Any
    vid: int
    seq: int


AppFrame = (
    Call
    | CallBatch
    | Reply
    | ReplyBatch
    | SignedMark
    | StateRequest
    | StateChunk
    | StateAck
    | ViewNotice
    | StateDigest
    | AnswerBatch
    | Features
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
TAG_ANSWER_BATCH: Final = 11
TAG_FEATURES: Final = 12
MAX_DIGEST = 64


# ------------------------------------------------------------------------------- encoding
_ENCODERS: Final[dict[type, Callable[[Any], list[Any]]]] = {
    Call: lambda m: [TAG_CALL, *call_fields(m)],
    CallBatch: lambda m: [TAG_CALL_BATCH, [call_fields(c) for c in m.calls]],
    Reply: lambda m: [TAG_REPLY, m.call_id, m.node, m.vid, list(m.replicas), m.ok, m.value, m.origin, m.version],
    # msgpack packs a tuple as the array a list makes: the same bytes, no copy per answer.
    ReplyBatch: lambda m: [TAG_REPLY_BATCH, m.node, m.vid, m.replicas, m.entries],
    SignedMark: lambda m: [TAG_SIGNED_MARK, shard_to_wire(m.shard), m.version, m.signature, m.public_key],
    StateRequest: lambda m: [TAG_STATE_REQUEST, shard_to_wire(m.shard), m.vid, m.have_version, m.digest],
    StateChunk: lambda m: [
        TAG_STATE_CHUNK,
        shard_to_wire(m.shard),
        m.vid,
        m.seq,
        ChunkKind(m.part).value,  # the kind (old code may hand the plain string)
        m.data,
        m.final,
        m.reset,
    ],
    StateAck: lambda m: [TAG_STATE_ACK, shard_to_wire(m.shard), m.vid, m.seq],
    ViewNotice: lambda m: [TAG_VIEW_NOTICE, m.vid, list(m.members), list(m.departed), m.unavailable],
    StateDigest: lambda m: [TAG_STATE_DIGEST, shard_to_wire(m.shard), m.version, m.digest],
    AnswerBatch: lambda m: [TAG_ANSWER_BATCH, *answer_batch_fields(m)],
    Features: lambda m: [TAG_FEATURES, m.merged_answers],
}


def encode(msg: AppFrame) -> bytes:
    """``msg`` as bytes for an ``AppMessage`` (``TypeError`` for what is not a message here).
    An answer frame ending with a large value is laid out by ``large_frames``: msgpack copied
    the value holding the GIL, on the node's loop itself."""
    t = type(msg)
    enc = _ENCODERS.get(t)
    if enc is None:
        raise TypeError(f"cannot encode {t.__name__}: not an actor-layer message")
    if t is ReplyBatch or t is AnswerBatch:
        large = ends_large(msg.entries)  # type: ignore[union-attr]
    else:
        large = t is Reply and len(msg.value) >= BIG_BIN  # type: ignore[union-attr]
    return pack_answer_frame(enc(msg)) if large else packb(enc(msg))


# ------------------------------------------------------------------------------- decoding
def _dec_call(f: list[Any]) -> Call:
    return decode_call(f[1:], "Call")


def _dec_call_batch(f: list[Any]) -> CallBatch:
    return decode_calls(f[1])


def _dec_reply(f: list[Any]) -> Reply:
    _, call_id, node, vid, replicas, ok, value, origin, version = f
    return Reply(
        nat(call_id, "Reply.call_id"),
        nat(node, "Reply.node"),
        nat(vid, "Reply.vid"),
        node_ids(replicas, "Reply.replicas"),
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
        nat(node, "ReplyBatch.node"), nat(vid, "ReplyBatch.vid"), node_ids(replicas, "ReplyBatch.replicas"), tuple(out)
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
    kind = _CHUNK_KINDS.get(part) if type(part) is str else None
    if kind is None:
        raise WireError(f"StateChunk.part must be 'obj', 'log' or 'err', got {describe(part)}")
    return StateChunk(
        shard_id(shard, "StateChunk.shard"),
        nat(vid, "StateChunk.vid"),
        nat(seq, "StateChunk.seq"),
        kind,
        blob(data, "StateChunk.data"),
        flag(final, "StateChunk.final"),
        flag(reset, "StateChunk.reset"),
    )


def _dec_state_ack(f: list[Any]) -> StateAck:
    _, shard, vid, seq = f
    return StateAck(shard_id(shard, "StateAck.shard"), nat(vid, "StateAck.vid"), nat(seq, "StateAck.seq"))


def _dec_state_digest(f: list[Any]) -> StateDigest:
    _, shard, version, digest = f
    if type(digest) is not bytes or not 0 < len(digest) <= MAX_DIGEST:
        raise WireError(f"StateDigest.digest must be 1 to {MAX_DIGEST} bytes, got {describe(digest)}")
    return StateDigest(shard_id(shard, "StateDigest.shard"), nat(version, "StateDigest.version"), digest)


_DECODERS: Final[Decoders] = {
    TAG_CALL: ("Call", (10, 11, 12), _dec_call),
    TAG_CALL_BATCH: ("CallBatch", 1, _dec_call_batch),
    TAG_REPLY: ("Reply", 8, _dec_reply),
    TAG_REPLY_BATCH: ("ReplyBatch", 4, _dec_reply_batch),
    TAG_SIGNED_MARK: ("SignedMark", 4, _dec_signed_mark),
    TAG_STATE_REQUEST: ("StateRequest", 4, _dec_state_request),
    TAG_STATE_CHUNK: ("StateChunk", 7, _dec_state_chunk),
    TAG_STATE_ACK: ("StateAck", 3, _dec_state_ack),
    TAG_VIEW_NOTICE: ("ViewNotice", 4, lambda f: decode_view_notice(f[1], f[2], f[3], f[4])),
    TAG_STATE_DIGEST: ("StateDigest", 3, _dec_state_digest),
    TAG_ANSWER_BATCH: (
        "AnswerBatch",
        3,
        lambda f: decode_answer_batch(f[1], node_ids(f[2], "AnswerBatch.replicas"), f[3]),
    ),
    TAG_FEATURES: ("Features", 1, lambda f: decode_features(f[1])),
}


def decode(data: bytes) -> AppFrame:
    """The message in an ``AppMessage``'s data; ``WireError`` naming the problem otherwise."""
    if len(data) >= BIG_BIN:
        return decode_tagged(data, _DECODERS, "message", unpack_large_frame)
    return decode_tagged(data, _DECODERS, "message")


@functools.lru_cache(maxsize=8)
def _client_decoders(max_calls: int) -> Decoders:
    return {**_DECODERS, TAG_CALL_BATCH: ("CallBatch", 1, lambda f: decode_client_calls(f[1], max_calls))}


def decode_from_client(data: bytes, max_calls: int) -> AppFrame | OverfullBatch:
    """As :func:`decode`, for a client's message: of a ``CallBatch`` only the first
    ``max_calls`` calls (what the client may have unanswered) are decoded; the others come as
    numbers in an :class:`OverfullBatch`, to be refused. So one frame costs the node's loop
    little beyond its size, however many calls it packs."""
    if len(data) >= BIG_BIN:
        return decode_tagged(data, _client_decoders(max_calls), "message", unpack_large_frame)
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
