"""The actor layer's messages: round trips, and every malformed field named on decode."""

from __future__ import annotations

import msgpack
import pytest

from derecho_actors._messages import (
    Call,
    CallBatch,
    Reply,
    ReplyBatch,
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
from runtime.errors import WireError

KV = ShardId("KV", 0, 1)
CALL = Call(7, 2, KV, "put", True, b"args", 99, 123, 5)

ROUND_TRIPS = {
    "call": CALL,
    "call batch": CallBatch((CALL, Call(8, 2, KV, "get", False, b"", 0, 0, 0))),
    "client call with a target": Call(9, 0, KV, "get", False, b"", 0, 0, 3, 2),
    "relayed call with its owner": Call(9, 1, KV, "put", True, b"", 77, 5, 3, 0, owner=12345),
    "call batch, empty": CallBatch(()),
    "reply with version": Reply(7, 2, 3, (1, 2, 3), True, b"v", 99, 2**41 + 5),
    "reply batch": ReplyBatch(2, 3, (1, 2, 3), ((7, True, b"v", 0, -1), (8, False, b"err", 99, 12))),
    "signed mark": SignedMark(KV, 12, bytes(64), bytes(32)),
    "state request": StateRequest(KV, 4, -1, 0),
    "state chunk": StateChunk(KV, 4, 9, "log", b"x" * 100, True, False),
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
    "wrong arity": (p([1, 2]), "Call message needs 10 or 11 fields"),
    "call owner negative": (p([1, 1, 2, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0, -1]), "Call.owner"),
    "call id negative": (p([1, -1, 2, ["KV", 0, 1], "put", True, b"", 0, 0, 0, 0]), "Call.call_id"),
    "call shard": (p([1, 1, 2, ["KV", 0], "put", True, b"", 0, 0, 0, 0]), "Call.shard"),
    "call ordered not bool": (p([1, 1, 2, ["KV", 0, 1], "put", 1, b"", 0, 0, 0, 0]), "Call.ordered must be a bool"),
    "call target negative": (p([1, 1, 0, ["KV", 0, 1], "get", False, b"", 0, 0, 0, -3]), "Call.target"),
    "batch not a list": (p([2, 5]), "CallBatch.calls must be a list"),
    "batch item short": (p([2, [[1, 2]]]), "needs 10 or 11 fields, got list"),
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


def test_claimed_senders() -> None:
    assert claimed_sender(CALL) == 2
    assert claimed_sender(ROUND_TRIPS["reply batch"]) == 2  # type: ignore[arg-type]
    assert claimed_sender(ROUND_TRIPS["state ack"]) is None  # type: ignore[arg-type]


def test_a_client_batch_beyond_its_limit_is_refused_undecoded() -> None:
    """Calls of a client's frame beyond what it may have unanswered come back as numbers only."""
    from derecho_actors._messages import OverfullBatch, decode_from_client

    calls = tuple(Call(i, 0, KV, "put", True, b"", 0, 0, 0) for i in range(1, 11))
    got = decode_from_client(encode(CallBatch(calls)), 4)
    assert got == OverfullBatch(calls[:4], tuple(range(5, 11)))
    assert decode_from_client(encode(CallBatch(calls)), 10) == CallBatch(calls)
    with pytest.raises(WireError, match="must be calls"):
        decode_from_client(p([2, [[1] + [0] * 9, "x", [2] + [0] * 9]]), 1)
