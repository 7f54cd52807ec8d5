"""The wire codec: exact round trips, a helpful WireError for every malformed body, and a
stream decoder that survives any bytes a peer can send.

Tables first (one row per case, so a failure names the case), then the framing decoder, then
hypothesis fuzzing of decode and FrameDecoder with random and corrupted input, and finally a
purity check: the wire package does no I/O and so imports none of the I/O modules.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.layout import ShardId
from runtime.core.layout import ShardId as _Sid
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, ShardPush, ViewAnnouncement
from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.sst import RowDelta
from runtime.errors import WireError
from runtime.wire import codec
from runtime.wire.codec import FrameDecoder, WireMessage, decode, encode, frame, frames
from runtime.wire.control import (
    AppMessage,
    Goodbye,
    GoodbyeKind,
    GroupRunning,
    Hello,
    Ping,
    Pong,
    RestartDecision,
    RestartHello,
    StatusReply,
    StatusRequest,
    Welcome,
)

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]
WIRE = ROOT / "runtime" / "wire"
KV = ShardId("KV", 0, 1)
BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB: above every msgpack small-length form
OBJ = describe(ObjectId(2, 1, 7, 3), (2, 0, 1), BIG, 1 << 20, ScheduleKind.CHAIN)
OBJ_WIRE = [2, 1, 7, 3, [2, 0, 1], len(BIG), 1 << 20, "chain", OBJ.digest]


# ------------------------------------------------------------------------ round trips
ROUND_TRIPS: dict[str, WireMessage] = {
    "shard push, row and messages": ShardPush(
        vid=3,
        shard=KV,
        rank=1,
        row=RowDelta(1, 7, {"received_num": (4, 0, 2), "delivered_num": 6}),
        first=4,
        messages=(b"a", None, b""),
    ),
    "shard push, messages only": ShardPush(0, KV, 0, None, 0, (b"x" * 10,)),
    "shard push, empty": ShardPush(0, ShardId("", 0, 0), 0, None, 0, ()),
    "shard push, null messages only": ShardPush(9, KV, 2, None, 12, (None, None, None)),
    "shard push, big payload": ShardPush(1, KV, 0, None, 0, (BIG, b"small", BIG[:70000])),
    "shard push, object descriptor": ShardPush(7, KV, 2, None, 0, (b"a", OBJ, None, OBJ)),
    "shard push, empty vector": ShardPush(1, KV, 0, RowDelta(0, 1, {"received_num": ()}), 0, ()),
    "group push, every value kind": GroupPush(
        vid=2,
        rank=0,
        row=RowDelta(
            0,
            1,
            {
                "heartbeat": 12,
                "suspected": (0, 1, 0),
                "frozen": None,
                "proposal": [[1, 2], [3, [4, None]], "text", b"raw"],
                "nested": {"a": [1, None], 2: {"b": 2.5}},
                "negative": -3,
                "flag": True,
            },
        ),
    ),
    "group push, empty row": GroupPush(0, 5, RowDelta(5, 0, {})),
    "group push, huge counter": GroupPush(2**40, 1, RowDelta(1, 2**63, {"commit": 2**64 - 1})),
    "view announcement": ViewAnnouncement(
        {"vid": 4, "members": [1, 2, 3], "addresses": {"1": "h:1"}, "by_id": {1: "h:1"}, "x": None}
    ),
    "view announcement, empty": ViewAnnouncement({}),
    "join request": JoinRequest(17, "10.0.0.5:7000"),
    "join reply, redirect": JoinReply("10.0.0.1:7000", "not the leader"),
    "join reply, refused": JoinReply(None, "cluster full"),
    "join request with a layout": JoinRequest(17, "10.0.0.5:7000", "KV(subgroups=1, shards=2)"),
    "join request with logs": JoinRequest(
        17, "h:1", "", ((ShardId("KV", 0, 1), 4294967301), (ShardId("KV", 0, 0), -1)), True
    ),
    "join reply, final": JoinReply(None, "layout differs", True),
    "hello member": Hello(3, "prod-east", "member"),
    "hello client, unicode cluster": Hello(0, "clüster-✓", "client"),
    "status request": StatusRequest(),
    "status reply, empty": StatusReply({}),
    "status reply, nested": StatusReply({"view": {"vid": 2, "members": [1, 2]}, 7: [1.5, "s", b"b", False]}),
    "goodbye": Goodbye("wrong cluster name 'x', expected 'y'"),
    "goodbye, empty reason": Goodbye(""),
    "goodbye, refused": Goodbye("refused: wrong cluster name", GoodbyeKind.REFUSED),
    "app message": AppMessage(b"\x93\x01\x02\x03"),
    "app message, empty": AppMessage(b""),
    "welcome": Welcome(1 << 20, (1 << 20) + 65536, 300_000),
    "welcome, with a window": Welcome(1 << 20, (1 << 20) + 65536, 300_000, 4096),
    "ping": Ping(7),
    "pong": Pong(7),
    "restart hello": RestartHello(
        3,
        "127.0.0.1:7003",
        {"vid": 5, "members": [1, 2, 3]},
        ((_Sid("KV", 0, 0), 12),),
        4,
        ((_Sid("KV", 0, 0), 11),),
        (_Sid("KV", 0, 1),),
    ),
    "restart decision": RestartDecision(1, {"vid": 6}, ((_Sid("KV", 0, 0), 3, 9),)),
    "group running": GroupRunning("127.0.0.1:7001", 8),
}


@pytest.mark.parametrize("msg", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip(msg: WireMessage) -> None:
    out = decode(encode(msg))
    assert out == msg
    assert type(out) is type(msg)


@pytest.mark.parametrize("msg", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_frame_round_trip_through_decoder(msg: WireMessage) -> None:
    data = frame(msg)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert FrameDecoder().feed(data) == [msg]


def test_decoded_types_are_what_the_core_expects() -> None:
    push = decode(encode(ROUND_TRIPS["shard push, row and messages"]))
    assert isinstance(push, ShardPush)
    assert type(push.shard) is ShardId and str(push.shard) == "KV/0/1"
    assert type(push.messages) is tuple
    assert push.row is not None and type(push.row.values["received_num"]) is tuple
    group = decode(encode(ROUND_TRIPS["group push, every value kind"]))
    assert isinstance(group, GroupPush)
    assert type(group.row.values["suspected"]) is tuple
    assert type(group.row.values["proposal"]) is list  # only the named vector columns become tuples


def test_plain_tuple_shard_key_decodes_to_shard_id() -> None:
    out = decode(encode(ShardPush(0, ("T", 1, 2), 0, None, 0, ())))
    assert isinstance(out, ShardPush) and out.shard == ShardId("T", 1, 2) and type(out.shard) is ShardId


def test_frames_concatenates_frames() -> None:
    msgs = list(ROUND_TRIPS.values())
    assert frames(msgs) == b"".join(frame(m) for m in msgs)
    assert frames([]) == b""
    assert FrameDecoder().feed(frames(msgs)) == msgs


@pytest.mark.parametrize(
    "bad, needle",
    [
        (object(), "not a wire message"),
        (RowDelta(0, 0, {}), "not a wire message"),
        (ShardPush(0, "KV/0/1", 0, None, 0, ()), "ShardId"),
        (StatusReply({"x": object()}), "cannot encode StatusReply"),
        (GroupPush(0, 0, RowDelta(0, 2**70, {})), "cannot encode GroupPush"),
    ],
)
def test_encode_rejects_what_cannot_travel(bad: Any, needle: str) -> None:
    with pytest.raises(TypeError, match=needle):
        encode(bad)


# ------------------------------------------------------------------- malformed bodies
def p(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


ROW = [0, 1, {"heartbeat": 1}]
SHARD = ["KV", 0, 0]


def shard_push(**kw: Any) -> bytes:
    fields = {"vid": 0, "shard": SHARD, "rank": 0, "row": None, "first": 0, "messages": []}
    fields.update(kw)
    return p([codec.TAG_SHARD_PUSH, *fields.values()])


def group_push_row(row: Any) -> bytes:
    return p([codec.TAG_GROUP_PUSH, 0, 0, row])


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "not valid msgpack"),
    "transfer magic alone (0xc1, the byte msgpack never uses)": (b"\xc1", "transfer frame body too short"),
    "trailing bytes": (p([codec.TAG_STATUS_REQUEST]) + b"\x00", "not valid msgpack"),
    "truncated": (p([codec.TAG_GOODBYE, "bye"])[:-1], "not valid msgpack"),
    "bad utf-8": (b"\x92\x13\xa1\xff", "not valid msgpack"),
    "unhashable map key": (b"\x92\x12\x81\x90\x01", "not valid msgpack"),
    "length beyond buffer": (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),
    "too deep": (b"\x91" * 100_000, "not valid msgpack"),
    "ext type": (p([codec.TAG_GOODBYE, msgpack.ExtType(5, b"x")]), "ext type 5"),
    "not an array": (p({"tag": 1}), "non-empty array"),
    "empty array": (p([]), "non-empty array"),
    "scalar": (p(5), "non-empty array"),
    "str tag": (p(["1"]), "tag must be an int"),
    "bool tag": (p([True]), "tag must be an int"),
    "unknown tag": (p([99]), "unknown frame type tag 99"),
    "negative tag": (p([-1]), "unknown frame type tag -1"),
    "too few fields": (p([codec.TAG_HELLO, 1, "c"]), "Hello frame needs 4 or 5 fields"),
    "too many fields": (p([codec.TAG_STATUS_REQUEST, 1]), "StatusRequest frame needs 0 fields"),
    "hello negative node": (p([codec.TAG_HELLO, -1, "c", "member", 7]), "Hello.node_id must be a non-negative"),
    "hello bool node": (p([codec.TAG_HELLO, True, "c", "member", 7]), "Hello.node_id must be a non-negative"),
    "hello float node": (p([codec.TAG_HELLO, 1.0, "c", "member", 7]), "Hello.node_id"),
    "hello bytes cluster": (p([codec.TAG_HELLO, 1, b"c", "member", 7]), "Hello.cluster must be a str"),
    "hello unknown role": (p([codec.TAG_HELLO, 1, "c", "admin", 7]), "Hello.role must be one of"),
    "hello list role": (p([codec.TAG_HELLO, 1, "c", ["member"], 7]), "Hello.role"),
    "hello negative incarnation": (p([codec.TAG_HELLO, 1, "c", "member", -7]), "Hello.incarnation"),
    "shard push str vid": (shard_push(vid="0"), "ShardPush.vid must be a non-negative int"),
    "shard push negative rank": (shard_push(rank=-2), "ShardPush.rank"),
    "shard push negative first": (shard_push(first=-1), "ShardPush.first"),
    "shard push shard as str": (shard_push(shard="KV/0/0"), r"ShardPush.shard must be \[type_name, subgroup"),
    "shard push shard too short": (shard_push(shard=["KV", 0]), "ShardPush.shard must be"),
    "shard push shard type": (shard_push(shard=[1, 0, 0]), "ShardPush.shard.type_name must be a str"),
    "shard push shard subgroup": (shard_push(shard=["KV", -1, 0]), "ShardPush.shard.subgroup"),
    "shard push shard index": (shard_push(shard=["KV", 0, None]), "ShardPush.shard.shard"),
    "shard push messages map": (shard_push(messages={}), "ShardPush.messages must be a list"),
    "shard push str message": (shard_push(messages=[b"ok", "x"]), r"messages\[1\] must be bytes, nil"),
    "shard push int message": (shard_push(messages=[3]), r"ShardPush.messages\[0\]"),
    "descriptor short": (shard_push(messages=[OBJ_WIRE[:8]]), r"messages\[0\] must be a 9-field object descriptor"),
    "descriptor kind": (shard_push(messages=[[*OBJ_WIRE[:7], "ring", OBJ.digest]]), r"messages\[0\].kind must be one"),
    "descriptor digest": (shard_push(messages=[[*OBJ_WIRE[:8], b"x"]]), r"messages\[0\]: digest must be 32 bytes"),
    "descriptor size": (shard_push(messages=[[*OBJ_WIRE[:5], -1, *OBJ_WIRE[6:]]]), r"messages\[0\].size"),
    "descriptor members": (shard_push(messages=[[*OBJ_WIRE[:4], [0, 2], *OBJ_WIRE[5:]]]), "sender 2 must be members"),
    "descriptor members str": (shard_push(messages=[[*OBJ_WIRE[:4], "012", *OBJ_WIRE[5:]]]), r"members must be a list"),
    "shard push row short": (shard_push(row=[0, 1]), r"ShardPush.row must be \[rank, seq, values\]"),
    "shard push row rank": (shard_push(row=[-1, 1, {}]), "ShardPush.row.rank"),
    "group push str rank": (p([codec.TAG_GROUP_PUSH, 0, "0", ROW]), "GroupPush.rank"),
    "group push null row": (group_push_row(None), "GroupPush.row must be"),
    "row negative seq": (group_push_row([0, -1, {}]), "GroupPush.row.seq"),
    "row bool seq": (group_push_row([0, False, {}]), "GroupPush.row.seq"),
    "row values list": (group_push_row([0, 1, []]), "GroupPush.row.values must be a map"),
    "row int column name": (group_push_row([0, 1, {1: 2}]), "column names must be str"),
    "vector not a list": (group_push_row([0, 1, {"suspected": 3}]), "must be a list of ints"),
    "vector of str": (group_push_row([0, 1, {"received_num": [1, "x"]}]), "must hold ints only"),
    "vector of bool": (group_push_row([0, 1, {"suspected": [0, True]}]), "must hold ints only"),
    "vector of nil": (group_push_row([0, 1, {"suspected": [None]}]), "must hold ints only"),
    "timestamp value": (group_push_row([0, 1, {"proposal": [msgpack.Timestamp(1)]}]), "Timestamp"),
    "view not a map": (p([codec.TAG_VIEW_ANNOUNCEMENT, [1, 2]]), "ViewAnnouncement.view must be a map"),
    "view int key": (p([codec.TAG_VIEW_ANNOUNCEMENT, {1: 2}]), "ViewAnnouncement.view keys must be str"),
    "view timestamp": (p([codec.TAG_VIEW_ANNOUNCEMENT, {"t": msgpack.Timestamp(0)}]), "Timestamp"),
    "join request address": (p([codec.TAG_JOIN_REQUEST, 1, None, "", [], False]), "JoinRequest.address must be a str"),
    "join request node": (p([codec.TAG_JOIN_REQUEST, "1", "h:1", "", [], False]), "JoinRequest.node_id"),
    "join request layout": (p([codec.TAG_JOIN_REQUEST, 1, "h:1", 7, [], False]), "JoinRequest.layout must be a str"),
    "join request logs": (p([codec.TAG_JOIN_REQUEST, 1, "h:1", "", [[["KV", 0, 0], -2]], False]), "JoinRequest.logs"),
    "join request accept_loss": (p([codec.TAG_JOIN_REQUEST, 1, "h:1", "", [], 1]), "JoinRequest.accept_loss"),
    "join reply redirect": (p([codec.TAG_JOIN_REPLY, 5, "why", False]), "JoinReply.redirect_to must be a str"),
    "join reply reason": (p([codec.TAG_JOIN_REPLY, None, None, False]), "JoinReply.reason must be a str"),
    "join reply final": (p([codec.TAG_JOIN_REPLY, None, "why", 1]), "JoinReply.final must be a bool"),
    "status not a map": (p([codec.TAG_STATUS_REPLY, "ok"]), "StatusReply.status must be a map"),
    "goodbye reason": (p([codec.TAG_GOODBYE, None]), "Goodbye.reason must be a str"),
    "app data not bytes": (p([codec.TAG_APP, "text"]), "AppMessage.data must be bytes"),
    "retired call tag": (p([20, 1, 2]), "unknown frame type tag 20"),
}


@pytest.mark.parametrize("body, needle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_raises_wire_error(body: bytes, needle: str) -> None:
    with pytest.raises(WireError, match=needle):
        decode(body)


def test_error_messages_stay_short_for_huge_values() -> None:
    body = shard_push(messages=["x" * 1_000_000])
    with pytest.raises(WireError) as info:
        decode(body)
    assert len(str(info.value)) < 300


# ------------------------------------------------------------------- Goodbye kinds
# A Goodbye says what it means as a kind (a client gives up on REFUSED, fails over otherwise).
# Each row: the body's fields after the tag, and the Goodbye it reads as, or the WireError.
GOODBYES: dict[str, tuple[list[Any], Goodbye | str]] = {
    "closed": (["idle: no frame for 30 s", "closed"], Goodbye("idle: no frame for 30 s")),
    "refused": (["refused: no certificate", "refused"], Goodbye("refused: no certificate", GoodbyeKind.REFUSED)),
    "old form: the reason alone reads as closed": (["not in a view"], Goodbye("not in a view")),
    "old form refusal: closed, words kept": (["refused: bad cluster"], Goodbye("refused: bad cluster")),
    "unknown kind": (["x", "rude"], r"Goodbye.kind must be one of \['closed', 'refused'\], got str 'rude'"),
    "kind by its enum name": (["x", "REFUSED"], "Goodbye.kind must be one of"),
    "kind as an int": (["x", 1], "Goodbye.kind must be one of .*got int 1"),
    "kind nil": (["x", None], "Goodbye.kind must be one of"),
    "kind as bytes": (["x", b"closed"], "Goodbye.kind must be one of"),
    "reason nil, with a kind": ([None, "closed"], "Goodbye.reason must be a str"),
    "a third field": (["x", "closed", 0], "Goodbye frame needs 1 or 2 fields after the tag, got 3"),
    "no field": ([], "Goodbye frame needs 1 or 2 fields after the tag, got 0"),
}


@pytest.mark.parametrize("fields, expected", GOODBYES.values(), ids=GOODBYES.keys())
def test_goodbye_kinds_decode_or_are_refused(fields: list[Any], expected: Goodbye | str) -> None:
    body = p([codec.TAG_GOODBYE, *fields])
    if isinstance(expected, str):
        with pytest.raises(WireError, match=expected):
            decode(body)
        assert isinstance(FrameDecoder().feed(frame_of(body))[0], WireError)  # an event, not an exception
    else:
        out = decode(body)
        assert isinstance(out, Goodbye) and out == expected and type(out.kind) is GoodbyeKind


@pytest.mark.parametrize("kind", list(GoodbyeKind), ids=[k.name for k in GoodbyeKind])
def test_a_goodbye_carries_its_kind_by_value(kind: GoodbyeKind) -> None:
    assert msgpack.unpackb(encode(Goodbye("why", kind))) == [codec.TAG_GOODBYE, "why", kind.value]
    assert decode(encode(Goodbye("why", kind))) == Goodbye("why", kind)


def test_a_welcome_of_an_older_node_decodes_with_no_window() -> None:
    """Nodes before ``max_in_flight`` sent three fields: a client reads 0 (not said)."""
    assert decode(p([codec.TAG_WELCOME, 1 << 20, 1 << 21, 30_000])) == Welcome(1 << 20, 1 << 21, 30_000, 0)
    with pytest.raises(WireError, match="Welcome.max_in_flight"):
        decode(p([codec.TAG_WELCOME, 1 << 20, 1 << 21, 30_000, -1]))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_client_of_an_older_protocol_gets_the_three_fields_it_reads(protocol: int) -> None:
    """A client of protocol 4 or before decodes exactly three fields: a fourth made it drop
    the Welcome as a bad frame, and it never connected to a node of this release."""
    from runtime.wire.control import WELCOME_SAYS_IN_FLIGHT

    welcome = Welcome(1 << 20, 1 << 21, 30_000, 64)
    data = codec.welcome_frame(welcome, protocol)
    fields = msgpack.unpackb(data[4:])
    if protocol >= WELCOME_SAYS_IN_FLIGHT:
        assert fields == [codec.TAG_WELCOME, 1 << 20, 1 << 21, 30_000, 64] and data == frame(welcome)
    else:
        assert fields == [codec.TAG_WELCOME, 1 << 20, 1 << 21, 30_000]


def frame_of(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


# ------------------------------------------------------------------- FrameDecoder
SAMPLE = [
    Hello(1, "c", "member"),
    ROUND_TRIPS["shard push, row and messages"],
    ROUND_TRIPS["group push, every value kind"],
    StatusRequest(),
    Goodbye("bye"),
]


def test_many_small_frames_in_one_feed() -> None:
    msgs = [ShardPush(1, KV, i % 3, None, i, (b"m%d" % i,)) for i in range(20_000)]
    dec = FrameDecoder()
    assert dec.feed(frames(msgs)) == msgs
    assert dec.buffered == 0 and not dec.broken


def test_frame_split_at_every_byte_boundary() -> None:
    stream = frames(SAMPLE)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == SAMPLE, cut


def test_byte_by_byte_feed() -> None:
    dec = FrameDecoder()
    out: list[Any] = []
    for i, byte in enumerate(frames(SAMPLE)):
        out += dec.feed(bytes([byte]))
        assert not dec.broken, i
    assert out == SAMPLE and dec.buffered == 0


def test_partial_frame_is_buffered_until_complete() -> None:
    data = frame(Goodbye("later"))
    dec = FrameDecoder()
    assert dec.feed(data[:3]) == [] and dec.buffered == 3
    assert dec.feed(data[3:-1]) == [] and dec.buffered == len(data) - 1
    assert dec.feed(data[-1:] + data[:2]) == [Goodbye("later")] and dec.buffered == 2


def test_bad_frame_between_good_ones_is_an_error_object() -> None:
    bad = b"\x92\x63\x00"  # unknown tag 99
    stream = frame(Goodbye("a")) + len(bad).to_bytes(4, "big") + bad + frame(Goodbye("b"))
    dec = FrameDecoder()
    out = dec.feed(stream)
    assert len(out) == 3
    assert out[0] == Goodbye("a") and out[2] == Goodbye("b")
    assert isinstance(out[1], WireError) and "unknown frame type tag 99" in str(out[1])
    assert out[1].__traceback__ is None and out[1].__cause__ is None
    assert not dec.broken
    assert dec.feed(frame(StatusRequest())) == [StatusRequest()]


def test_garbage_body_between_good_ones() -> None:
    stream = frame(Goodbye("a")) + b"\x00\x00\x00\x03\xc0\xc0\xc0" + frame(Goodbye("b"))
    out = FrameDecoder().feed(stream)
    assert out[0] == Goodbye("a") and out[2] == Goodbye("b")
    assert isinstance(out[1], WireError) and "not valid msgpack" in str(out[1])
    # 0xc1 (which msgpack never uses) starts a transfer frame: this one's kind is unknown.
    out = FrameDecoder().feed(frame(Goodbye("a")) + b"\x00\x00\x00\x03\xc1\xc1\xc1" + frame(Goodbye("b")))
    assert out[0] == Goodbye("a") and out[2] == Goodbye("b")
    assert isinstance(out[1], WireError) and "unknown transfer frame kind 193" in str(out[1])


@pytest.mark.parametrize("size", [0, 1025, 0xFFFFFFFF])
def test_bad_length_prefix_breaks_the_decoder(size: int) -> None:
    dec = FrameDecoder(max_frame=1024)
    # Only the header of the bad frame has arrived: that is already enough to give up.
    out = dec.feed(frame(Goodbye("a")) + size.to_bytes(4, "big"))
    assert out[0] == Goodbye("a")
    assert len(out) == 2 and isinstance(out[1], WireError)
    assert str(size) in str(out[1])
    assert dec.broken and dec.buffered == 0
    assert dec.feed(frame(Goodbye("b"))) == []


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    body = encode(Goodbye("x" * 100))
    dec = FrameDecoder(max_frame=len(body))
    assert dec.feed(frame(Goodbye("x" * 100))) == [Goodbye("x" * 100)]
    dec = FrameDecoder(max_frame=len(body) - 1)
    assert isinstance(dec.feed(frame(Goodbye("x" * 100)))[0], WireError) and dec.broken


@pytest.mark.parametrize("max_frame", [0, -1, 2**32, True])
def test_max_frame_must_be_sane(max_frame: Any) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=max_frame)


def test_accepts_bytearray_and_memoryview_without_pinning_them() -> None:
    bad = b"\xc1"
    stream = frame(Goodbye("a")) + b"\x00\x00\x00\x01" + bad + frame(Goodbye("b"))[:5]
    buf = bytearray(stream)
    dec = FrameDecoder()
    out = dec.feed(buf)
    assert out[0] == Goodbye("a") and isinstance(out[1], WireError)
    buf.clear()  # would raise BufferError if the decoder kept an export of the caller's buffer
    rest = frame(Goodbye("b"))[5:]
    assert dec.feed(memoryview(rest)) == [Goodbye("b")]
    held = bytearray(frame(Goodbye("c")) * 2)
    assert FrameDecoder().feed(memoryview(held)) == [Goodbye("c")] * 2
    held.extend(b"more")


def test_big_payload_in_chunks() -> None:
    msg = ROUND_TRIPS["shard push, big payload"]
    data = frame(msg)
    dec = FrameDecoder()
    out: list[Any] = []
    for i in range(0, len(data), 65536):
        out += dec.feed(data[i : i + 65536])
    assert out == [msg]


# ---------------------------------------------------------------------- fuzzing
ALLOWED_OUTPUT = (WireError, *codec._ENCODERS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_random_bytes_only_raises_wire_error(data: bytes) -> None:
    try:
        out = decode(data)
    except WireError:
        return
    assert isinstance(out, ALLOWED_OUTPUT)


# Bodies that look like ours: a known tag followed by random plain values, which reaches the
# field checks rather than dying in msgpack.
WIDE_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can represent
plain = st.recursive(
    st.none() | st.booleans() | WIDE_INT | st.floats(allow_nan=False) | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=3) | WIDE_INT, inner, max_size=3),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(codec._DECODERS)), st.lists(plain, max_size=7))
def test_decode_tagged_random_fields_only_raises_wire_error(tag: int, fields: list[Any]) -> None:
    try:
        out = decode(p([tag, *fields]))
    except WireError:
        return
    assert isinstance(out, ALLOWED_OUTPUT)
    assert decode(encode(out)) == out  # whatever decodes is canonical: it survives a round trip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_frame_decoder_random_bytes_never_raises(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_frame=4096)
    out: list[Any] = []
    prev = 0
    for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    assert all(isinstance(x, ALLOWED_OUTPUT) for x in out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(list(ROUND_TRIPS.values())[:4] + SAMPLE), min_size=1, max_size=4),
    st.data(),
)
def test_corrupted_or_truncated_valid_stream_never_raises(msgs: list[WireMessage], data: st.DataObject) -> None:
    stream = bytearray(frames(msgs))
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        i = data.draw(st.integers(0, len(stream) - 1), label="at")
        stream[i] = data.draw(st.integers(0, 255), label="byte")
    stream = stream[: data.draw(st.integers(0, len(stream)), label="keep")]
    dec = FrameDecoder(max_frame=1 << 20)
    out = dec.feed(bytes(stream))
    assert all(isinstance(x, ALLOWED_OUTPUT) for x in out)
    if not dec.broken:
        assert dec.buffered < 4 or len(out) <= len(msgs)


def msg_strategy() -> st.SearchStrategy[WireMessage]:
    nat = st.integers(0, 2**64 - 1)
    vec = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5).map(tuple)
    other = st.none() | st.integers(-5, 5) | st.lists(WIDE_INT | st.none() | st.text(max_size=3), max_size=3)
    values = st.fixed_dictionaries(
        {}, optional={"received_num": vec, "suspected": vec, "heartbeat": nat, "proposal": other}
    )
    row = st.builds(RowDelta, nat, nat, values)
    shard = st.builds(ShardId, st.text(max_size=6), nat, nat)
    payloads = st.lists(st.none() | st.binary(max_size=20), max_size=5).map(tuple)
    text = st.text(max_size=10)
    return st.one_of(
        st.builds(ShardPush, nat, shard, nat, st.none() | row, nat, payloads),
        st.builds(GroupPush, nat, nat, row),
        st.builds(ViewAnnouncement, st.dictionaries(text, other, max_size=3)),
        st.builds(JoinRequest, nat, text),
        st.builds(JoinReply, st.none() | text, text),
        st.builds(Hello, nat, text, st.sampled_from(["member", "client"])),
        st.just(StatusRequest()),
        st.builds(StatusReply, st.dictionaries(text | WIDE_INT, other, max_size=3)),
        st.builds(Goodbye, text, st.sampled_from(GoodbyeKind)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(msg_strategy(), max_size=5), st.integers(0, 10_000))
def test_generated_messages_round_trip_through_split_stream(msgs: list[WireMessage], cut: int) -> None:
    stream = frames(msgs)
    cut = min(cut, len(stream))
    dec = FrameDecoder()
    assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == msgs


# ------------------------------------------------------------------------ purity
FORBIDDEN = frozenset({"socket", "threading", "asyncio", "time", "os", "_socket", "_thread", "selectors"})


def forbidden_imports(source: str, filename: str) -> list[str]:
    """``file:line: module`` for every import of an I/O module, at any depth in the file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names = ["__import__"]
        line = getattr(node, "lineno", 0)
        found += [f"{filename}:{line}: {n}" for n in names if n.split(".")[0] in FORBIDDEN | {"__import__"}]
    return found


def test_scanner_sees_imports() -> None:
    snippet = "import os.path\ndef f():\n    from time import monotonic\n    import msgpack\n__import__('socket')\n"
    assert forbidden_imports(snippet, "x.py") == ["x.py:1: os.path", "x.py:3: time", "x.py:5: __import__"]


def test_wire_package_imports_no_io_modules() -> None:
    files = sorted(WIRE.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "codec.py", "control.py"}
    bad = [hit for f in files for hit in forbidden_imports(f.read_text(), f.name)]
    assert bad == []


def test_importing_wire_pulls_in_no_io_modules() -> None:
    """What ``import runtime.wire.codec`` adds to a fresh interpreter (dependencies included).

    Modules the interpreter loaded at start-up (``os`` always is) are not counted here; the
    static scan above covers the package's own imports of those.
    """
    code = (
        "import json, sys; before = set(sys.modules); import runtime.wire.codec; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    added = json.loads(res.stdout)
    assert [m for m in added if m.split(".")[0] in FORBIDDEN] == []
