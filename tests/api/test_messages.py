"""The actor layer's messages: round trips, every malformed field named on decode, kinds as
enums on the wire (calls, state chunks), the legacy names of the group's own requests read as
their kinds, and the replies a ``ReplyTo`` builds."""

from __future__ import annotations

import msgpack
import pytest

from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import (
    Call,
    CallBatch,
    CallKind,
    ChunkKind,
    Reply,
    ReplyBatch,
    ReplyTo,
    SignedMark,
    StateAck,
    StateChunk,
    StateRequest,
    ViewNotice,
    claimed_sender,
    decode,
    encode,
)
from runtime.core.layout import ShardId
from runtime.errors import ClientLimit, ReplicaLost, SessionLimit, WireError

KV = ShardId("KV", 0, 1)
CALL = Call(7, 2, KV, "put", True, b"args", 99, 123, 5)

ROUND_TRIPS = {
    "call": CALL,
    "call batch": CallBatch((CALL, Call(8, 2, KV, "get", False, b"", 0, 0, 0))),
    "client call with a target": Call(9, 0, KV, "get", False, b"", 0, 0, 3, 2),
    "relayed call with its owner": Call(9, 1, KV, "put", True, b"", 77, 5, 3, 0, owner=12345),
    "watch poll": Call(9, 0, KV, "", False, b"poll", 0, 0, 3, 2, kind=CallKind.WATCH_POLL),
    "relayed persistence query with an owner": Call(
        9, 1, KV, "", False, b"\x05", 77, 5, 3, 0, owner=12, kind=CallKind.PERSISTED_QUERY
    ),
    "call batch, empty": CallBatch(()),
    "reply with version": Reply(7, 2, 3, (1, 2, 3), True, b"v", 99, 2**41 + 5),
    "reply batch": ReplyBatch(2, 3, (1, 2, 3), ((7, True, b"v", 0, -1), (8, False, b"err", 99, 12))),
    "signed mark": SignedMark(KV, 12, bytes(64), bytes(32)),
    "state request": StateRequest(KV, 4, -1, 0),
    "state chunk, log": StateChunk(KV, 4, 9, ChunkKind.LOG, b"x" * 100, True, False),
    "state chunk, object": StateChunk(KV, 4, 0, ChunkKind.OBJECT, b"o", False, True),
    "state chunk, error": StateChunk(KV, 4, 0, ChunkKind.ERROR, "no state".encode(), True, False),
    "state ack": StateAck(KV, 4, 9),
    "view notice": ViewNotice(5, (1, 2), (3,), "view 5 has 2 members"),
}


@pytest.mark.parametrize("msg", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


def p(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


MALFORMED = {
    "not msgpack": (b"\xc1", "not valid msgpack"),
    "not an array": (p({"a": 1}), "non-empty array"),
    "unknown tag": (p([99]), "unknown message type tag 99"),
    "wrong arity": (p([1, 2]), "Call message needs 10 or 11 or 12 fields"),
    "call owner negative": (p([1, 1, 2, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0, -1]), "Call.owner"),
    "call id negative": (p([1, -1, 2, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0]), "Call.call_id"),
    "call shard": (p([1, 1, 2, ["KV", 0], "put", True, b"", 0, 0, 0, 0]), "Call.shard"),
    "call ordered not bool": (p([1, 1, 2, ["KV", 0, 1], "put", 1, b"", 0, 0, 0, 0]), "Call.ordered must be a bool"),
    "call target negative": (p([1, 1, 0, ["KV", 0, 1], "get", False, b"", 0, 0, 0, -3]), "Call.target"),
    "batch not a list": (p([2, 5]), "CallBatch.calls must be a list"),
    "batch item short": (p([2, [[1, 2]]]), "needs 10 to 12 fields, got list"),
    "call kind unknown": (p([1, 1, 2, ["KV", 0, 1], "", False, b"", 0, 0, 0, 0, 0, 9]), "Call.kind must be one of"),
    "call kind not an int": (p([1, 1, 2, ["KV", 0, 1], "", False, b"", 0, 0, 0, 0, 0, "watch"]), "Call.kind"),
    "ordered call of a P2P kind": (
        p([1, 1, 2, ["KV", 0, 1], "", True, b"", 0, 0, 0, 0, 0, 1]),
        "but the call is ordered",
    ),
    "kind in a batch, bad": (
        p([2, [[1, 0, ["KV", 0, 1], "", False, b"", 0, 0, 0, 0, 0, -1]]]),
        r"CallBatch\.calls\[\]\.kind",
    ),
    # A client's batch: each call after a good one is still checked field by field (the
    # decoder takes the common call in one test and reuses the shard key of the call before).
    "batch shard subgroup a bool": (
        p(
            [
                2,
                [
                    [1, 0, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0],
                    [2, 0, ["KV", False, 1], "put", True, b"", 0, 0, 0, 0],
                ],
            ]
        ),
        r"CallBatch\.calls\[\]\.shard\.subgroup",
    ),
    "batch call id a bool": (
        p(
            [
                2,
                [
                    [1, 0, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0],
                    [True, 0, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0],
                ],
            ]
        ),
        r"CallBatch\.calls\[\]\.call_id",
    ),
    "batch floor negative": (
        p(
            [
                2,
                [
                    [1, 0, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0],
                    [2, 0, ["KV", 0, 1], "put", True, b"", 0, 0, -1, 0],
                ],
            ]
        ),
        r"CallBatch\.calls\[\]\.floor",
    ),
    "reply version": (p([3, 1, 2, 3, [1], True, b"", 0, -2]), "Reply.version"),
    "batch entry": (p([4, 2, 3, [1], [[1, True, "s", 0, -1]]]), "malformed ReplyBatch entry"),
    "mark signature": (p([5, ["KV", 0, 1], 1, b"short", bytes(32)]), "SignedMark.signature must be 64 bytes"),
    "chunk part": (p([7, ["KV", 0, 1], 1, 0, "zip", b"", True, False]), "StateChunk.part"),
    "notice members": (p([9, 1, "x", [], ""]), "ViewNotice.members must be a list"),
}


@pytest.mark.parametrize("body, needle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_raises_wire_error(body: bytes, needle: str) -> None:
    with pytest.raises(WireError, match=needle):
        decode(body)


LEGACY = {
    # (method, ordered, fields on the wire) -> (kind, method) as decoded
    "a watch poll of the release before": (("__watch__", False, 10), (CallKind.WATCH_POLL, "")),
    "a persistence query with a target": (("__persisted__", False, 10), (CallKind.PERSISTED_QUERY, "")),
    "a relayed legacy poll with an owner": (("__watch__", False, 11), (CallKind.WATCH_POLL, "")),
    "an ordered call so named is a method": (("__watch__", True, 10), (CallKind.METHOD, "__watch__")),
    "another dunder name is a method": (("__init__", False, 10), (CallKind.METHOD, "__init__")),
    "a user's method": (("get", False, 10), (CallKind.METHOD, "get")),
}


@pytest.mark.parametrize("sent, decoded", LEGACY.values(), ids=LEGACY.keys())
def test_the_group_s_own_requests_of_the_release_before_are_read_as_their_kinds(
    sent: tuple[str, bool, int], decoded: tuple[CallKind, str]
) -> None:
    method, ordered, n = sent
    fields = [7, 0, ["KV", 0, 1], method, ordered, b"a", 0, 0, 0, 0, 5][:n]
    for body in (p([1, *fields]), p([2, [fields]])):
        msg = decode(body)
        call = msg if isinstance(msg, Call) else msg.calls[0]  # type: ignore[union-attr]
        assert (call.kind, call.method) == decoded


def test_every_call_goes_in_the_form_the_release_before_reads() -> None:
    """A node of the release before reads 10 or 11 fields only, and a rolling upgrade mixes
    both: the group's own requests travel under their legacy names, with no kind field, and
    read back as their kind; a 12th field (the kind) is still read, for the next version."""
    assert len(msgpack.unpackb(encode(Call(1, 0, KV, "get", False, b"")))) == 11  # tag + 10
    assert len(msgpack.unpackb(encode(Call(1, 0, KV, "put", True, b"", owner=3)))) == 12
    for kind, name in ((CallKind.WATCH_POLL, "__watch__"), (CallKind.PERSISTED_QUERY, "__persisted__")):
        wire = msgpack.unpackb(encode(Call(1, 0, KV, "", False, b"", kind=kind)))
        assert len(wire) == 11 and wire[4] == name
        back = decode(encode(Call(1, 0, KV, "", False, b"", kind=kind)))
        assert (back.kind, back.method) == (kind, "")  # type: ignore[union-attr]
    with_kind = decode(p([1, 1, 0, ["KV", 0, 1], "", False, b"", 0, 0, 0, 0, 0, int(CallKind.WATCH_POLL)]))
    assert with_kind.kind is CallKind.WATCH_POLL  # type: ignore[union-attr]


def test_chunk_kinds_keep_their_wire_strings() -> None:
    """The strings the release before sent, so either end may be the older."""
    assert {k: k.value for k in ChunkKind} == {ChunkKind.OBJECT: "obj", ChunkKind.LOG: "log", ChunkKind.ERROR: "err"}
    body = encode(StateChunk(KV, 4, 0, ChunkKind.LOG, b"", True, False))
    assert msgpack.unpackb(body)[4] == "log"
    assert decode(p([7, ["KV", 0, 1], 4, 0, "err", b"why", True, False])).part is ChunkKind.ERROR  # type: ignore[union-attr]


TO = ReplyTo(caller=2, call_id=7, vid=5, origin=99)
BUILT = {
    # name: (reply, expected Reply fields but the value, what the caller decodes it as)
    "refused alone": (TO.refused(3, ClientLimit("busy")), (7, 3, 5, (3,), False, 99, -1), ClientLimit),
    "refused by every replica, with a version": (
        TO.refused(3, SessionLimit("full"), (1, 3), 12),
        (7, 3, 5, (1, 3), False, 99, 12),
        SessionLimit,
    ),
    "failed: a malformed request": (TO.failed(3, ValueError("bad")), (7, 3, 5, (3,), False, 99, -1), None),
    "answered": (TO.answered(3, b"\x05"), (7, 3, 5, (3,), True, 99, -1), None),
}


@pytest.mark.parametrize("reply, fields, error", BUILT.values(), ids=BUILT.keys())
def test_reply_to_builds_the_replies(reply: Reply, fields: tuple[object, ...], error: type | None) -> None:
    r = reply
    assert (r.call_id, r.node, r.vid, r.replicas, r.ok, r.origin, r.version) == fields
    if not r.ok:
        got = _codec.decode_error(r.value, r.node)
        assert type(got) is error if error is not None else type(got).__name__ == "RemoteError"
        if error is None:
            assert got.remote_type == "ValueError" and got.remote_traceback  # type: ignore[attr-defined]


def test_a_refusal_carries_no_traceback_and_is_encoded_once() -> None:
    a = TO.refused(1, ReplicaLost("gone", applied=False))
    b = ReplyTo(9, 1, 1).refused(4, ReplicaLost("gone", applied=False))
    assert msgpack.unpackb(a.value) == ["ReplicaLost", "gone", ""]
    assert a.value is b.value  # a refusal repeated word for word: one encoding
    assert TO.in_view(8) == ReplyTo(2, 7, 8, 99)


def test_claimed_senders() -> None:
    assert claimed_sender(CALL) == 2
    assert claimed_sender(ROUND_TRIPS["reply batch"]) == 2  # type: ignore[arg-type]
    assert claimed_sender(ROUND_TRIPS["state ack"]) is None  # type: ignore[arg-type]


def test_a_client_batch_beyond_its_limit_is_refused_undecoded() -> None:
    """Calls of a client's frame beyond what it may have unanswered come back as numbers only."""
    from derecho_actors.wire.messages import OverfullBatch, decode_from_client

    calls = tuple(Call(i, 0, KV, "put", True, b"", 0, 0, 0) for i in range(1, 11))
    got = decode_from_client(encode(CallBatch(calls)), 4)
    assert got == OverfullBatch(calls[:4], tuple(range(5, 11)))
    assert decode_from_client(encode(CallBatch(calls)), 10) == CallBatch(calls)
    with pytest.raises(WireError, match="must be calls"):
        decode_from_client(p([2, [[1] + [0] * 9, "x", [2] + [0] * 9]]), 1)
