"""A client's calls leave in the very bytes the wire messages' own encoder makes of them
(``wire.messages.encode`` of a ``Call`` or ``CallBatch``): the client builds their fields once
per call, on a path of its own (``caller.calls.outbound``), and a contact of the same release
decodes them. Checked here against the encoder, frame by frame. Likewise the answers it reads
on a path of its own (``wire.replies.client_answers``): what the messages' decoder reads."""

from __future__ import annotations

from typing import Any

import pytest

from derecho_actors.caller.calls import (
    Request,
    args_encoder,
    calls_frame,
    method_request,
    method_requests,
    outbound,
    persist_request,
    poll_request,
    request_size,
)
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import PollArgs
from derecho_actors.wire.messages import AnswerBatch, Call, CallBatch, Features, decode, encode
from derecho_actors.wire.packing import packb
from derecho_actors.wire.replies import client_answers
from runtime.core.layout import ShardId
from runtime.errors import SerializationError, WireError
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage

SHARD = ShardId("KV", 0, 2)
SPEC = TypeSpec("KV", object, {"put": "ordered", "get": "p2p"}, "msgpack")


def as_call(request: Request, call_id: int, floor: int) -> Call:
    """The ``Call`` a client's session made of a request before it built the fields itself."""
    r = request
    return Call(call_id, 0, r.shard, r.method, r.ordered, r.args, 0, 0, floor, r.target, 0, r.kind)


def encoded(calls: list[Call], max_frame: int) -> bytes:
    """The former ``calls_frame``: ``Call``s through the messages' encoder, split alike."""
    out: list[bytes] = []
    batch: list[Call] = []
    size = 0
    budget = max(1, max_frame - 4096)
    for call in calls:
        need = _codec.call_size(call.method, call.args) + len(call.shard.type_name) + 48
        if batch and size + need > budget:
            out.append(frame(AppMessage(encode(batch[0] if len(batch) == 1 else CallBatch(tuple(batch))))))
            batch, size = [], 0
        batch.append(call)
        size += need
    if batch:
        out.append(frame(AppMessage(encode(batch[0] if len(batch) == 1 else CallBatch(tuple(batch))))))
    return b"".join(out)


def requests() -> list[Request]:
    put = method_requests(SPEC, SHARD, "put")
    get = method_requests(SPEC, SHARD, "get")
    out = [
        put(("k", b"v" * 100), {}, None, None, 1 << 20),
        get(("k",), {}, 3, None, 1 << 20),
        method_request(SPEC, SHARD, "get", ("é",), {"x": 1}, None, None, 1 << 20),
        poll_request(SHARD, "watch of KV/0/2", PollArgs(7, (3, 5), 100, 2.0), 2),
    ]
    out.append(persist_request(out[0], 12, 1))
    return out


@pytest.mark.parametrize("max_frame", [1 << 20, 4096 + 300, 4096 + 1])
def test_call_frames_are_the_encoders_bytes(max_frame: int) -> None:
    reqs = requests() * 3
    calls = [as_call(r, i + 1, 1 + i // 2) for i, r in enumerate(reqs)]
    mine = [outbound(r, i + 1, 1 + i // 2) for i, r in enumerate(reqs)]
    size = sum(request_size(r) for r in reqs)  # as the session sums them
    assert calls_frame(mine, max_frame, size) == calls_frame(mine, max_frame) == encoded(calls, max_frame)
    for one, call, r in zip(mine, calls, reqs):  # each alone: a Call, not a batch of one
        assert calls_frame([one], max_frame, request_size(r)) == encoded([call], max_frame)


def test_prepared_requests_match_method_request() -> None:
    prepared = method_requests(SPEC, SHARD, "put")(("k", b"v"), {"n": 2}, None, None, 1 << 20)
    plain = method_request(SPEC, SHARD, "put", ("k", b"v"), {"n": 2}, None, None, 1 << 20)
    assert prepared[:7] == plain[:7] and prepared.compare == plain.compare == "raise"
    assert outbound(prepared, 5, 1) == outbound(plain, 5, 1)
    assert request_size(prepared) == request_size(plain)


def test_args_encoder_is_encode_args() -> None:
    encode_args = args_encoder("msgpack")
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {}), ((1, "a", b"b", [1, (2, 3)]), {"k": None})]
    for args, kwargs in cases:
        assert encode_args(args, kwargs) == _codec.encode_args(args, kwargs, "msgpack")
    with pytest.raises(SerializationError, match="not plain data"):
        encode_args((object(),), {})
    assert encode_args((1,), {}) == _codec.encode_args((1,), {}, "msgpack")  # the packer recovered
    pickled = args_encoder("cloudpickle")
    assert pickled((1,), {}) == _codec.encode_args((1,), {}, "cloudpickle")


def test_answers_read_apart_are_what_the_decoder_reads() -> None:
    batch = AnswerBatch(4, (1, 2, 3), ((7, True, b"\x01", -1, ()), (8, False, b"e", 12, (1, 3))))
    data = encode(batch)
    rows = client_answers(data)
    assert rows is not None and decode(data) == batch
    vid, replicas, entries = rows
    assert AnswerBatch(vid, replicas, tuple(map(tuple, entries))) == batch  # type: ignore[arg-type]
    assert client_answers(encode(Features(merged_answers=True))) is None  # any other message: decode it
    bad = encode(AnswerBatch(4, (1, 2, 3), ((7, True, b"", -1, ()),))).replace(b"\xc3", b"\x01")  # ok: 1
    with pytest.raises(WireError) as decoded:
        decode(bad)
    with pytest.raises(WireError, match=str(decoded.value).replace("[", r"\[")):
        client_answers(bad)


@pytest.mark.parametrize(
    "entries",
    [
        ((7, True, b"\x01", -1, (1, -2)),),  # a node id below 0
        ((7, True, b"\x01", -2, ()),),  # a version below -1
        ((7, True, "text", -1, ()),),  # a value not bytes
        ((7, True, b"\x01", -1),),  # four fields
    ],
)
def test_a_bad_answer_read_apart_fails_as_the_decoder_fails(entries: Any) -> None:
    data = packb([11, 4, [1, 2, 3], entries])  # an AnswerBatch, built by hand: the encoder checks its input
    with pytest.raises(WireError) as decoded:
        decode(data)
    with pytest.raises(WireError) as read:
        client_answers(data)
    assert str(read.value) == str(decoded.value)


def test_answers_read_apart_are_tuples_with_their_replicas() -> None:
    batch = AnswerBatch(4, (1, 2, 3), ((7, True, b"\x01", -1, ()), (8, True, b"\x02", 3, (1, 3))))
    rows = client_answers(encode(batch))
    assert rows == (4, (1, 2, 3), batch.entries)
