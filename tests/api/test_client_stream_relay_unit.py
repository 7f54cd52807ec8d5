"""Relayed streamed calls in one process, without sockets: the relay messages read back, a
contact forwarding blocks as they arrive but the last until the call is whole, the member's
payload as the ordered path makes it, its bounds and refusals (which free the contact's bytes
at once), aborts, a member leaving mid-relay and a contact leaving."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from blake3 import blake3

from derecho_actors.node.answer_queue import AnswerQueue
from derecho_actors.node.client_proxy import ClientProxy
from derecho_actors.node.client_stream_calls import _ProxyGlue
from derecho_actors.node.client_table import ClientTable, Relay
from derecho_actors.node.relayed_streams import RelayedStreams
from derecho_actors.node.stream_relay import StreamRelay
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Call, Reply, decode
from derecho_actors.wire.streams import (
    RelayAbort,
    RelayBlock,
    RelayStart,
    StreamStart,
    parse_relay,
    relay_abort_data,
    relay_block_data,
    relay_start_data,
)
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.errors import WireError
from tests.api.stream_fakes import ORIGIN, SHARD, Conn, Node, block_messages, contact_streams, start_message

pytestmark = pytest.mark.timeout(30)

CONTACT, MEMBER, OTHER = 4, 2, 3


class Queue:
    """The contact's queue to members: what it was handed, per member, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.queued: dict[int, Any] = {}  # nothing waits: each is "written" when handed over

    def send(self, dest: int, data: bytes) -> None:
        self.sent.append((dest, data))

    offer = send


class View:
    def __init__(self, vid: int, members: tuple[int, ...], shard_members: tuple[int, ...]) -> None:
        self.vid = vid
        self.members = members
        self.layout = SimpleNamespace(members_of=lambda shard: shard_members)


class Outbox:
    def __init__(self) -> None:
        self.flushed = 0
        self.limits = SimpleNamespace(ordered=1 << 40)
        self.submitted: list[int] = []  # call ids multicast by this node, in order

    def flush(self) -> None:
        self.flushed += 1

    def submit(self, shard: ShardId, call: _codec.PendingCall) -> None:
        self.submitted.append(call[1])

    def submit_all(self, shard: ShardId, calls: list[_codec.PendingCall]) -> None:
        self.submitted.extend(c[1] for c in calls)


class Pair:
    """A contact (its ``ClientStreams`` relaying through a ``StreamRelay``) and a member."""

    def __init__(self, **limits: Any) -> None:
        self.contact_node = Node(CONTACT)
        self.queue = Queue()
        self.delivered: list[StreamStart] = []
        self.refused: list[tuple[int, Any]] = []
        self.locals: list[tuple[int, int]] = []
        self.streams = contact_streams(
            self.contact_node,
            self._deliver,
            lambda conn, call_id, error: self.refused.append((call_id, error)),
            **limits,
        )
        self.relay = StreamRelay(
            self.queue,  # type: ignore[arg-type]
            lambda key, start, payload: self.locals.append(key),
            lambda key, start, view: None,
            CONTACT,
        )
        self.streams.relay = self.relay
        self.streams.begun = self._begin
        self.streams.progress = self.relay.progress
        self.streams.ended = self.relay.drop
        self.streams.departed = lambda gone, view: [self.relay.resend(k, view) for k in self.relay.moved(gone)]
        self.member_node = Node(MEMBER)
        self.outbox = Outbox()
        self.view = View(1, (1, MEMBER, OTHER, CONTACT), (1, MEMBER, OTHER))
        self.holding = True  # the member holds a replica of the shard (in its view)
        self.member = RelayedStreams(
            self.member_node,  # type: ignore[arg-type]
            lambda: self.view,  # type: ignore[arg-type,return-value]
            lambda shard: self.holding,
            self.outbox,  # type: ignore[arg-type]
            LimitsSection(**limits),
        )
        self.carried = 0  # of queue.sent, what reached the member

    def _begin(self, conn: Any, start: StreamStart, payload: bytearray, base: int, budget: str) -> bool:
        self.relay.begin(MEMBER, start, (conn.origin, 5, 9), budget, payload, base)
        return True

    def _deliver(self, conn: Any, start: StreamStart, payload: bytearray, base: int) -> None:
        self.delivered.append(start)
        assert self.relay.finish(conn.origin, start.call_id, payload)

    def carry(self) -> None:
        """What the contact queued for the member reaches it (as the link would carry it)."""
        for dest, data in self.queue.sent[self.carried :]:
            if dest == MEMBER:
                self.member.on_data(CONTACT, data)
        self.carried = len(self.queue.sent)

    def send(self, conn: Conn, call_id: int, data: bytes, upto: int | None = None, begin: int = 0) -> None:
        """The client's messages for one call (its start, unless ``begin``: blocks from there),
        to byte ``upto`` (the last, if None), as the contact reads them."""
        head = [] if begin else [start_message(call_id, data)]
        for message in [*head, *block_messages(call_id, data, begin, upto)]:
            self.streams.on_data(conn, message)  # type: ignore[arg-type]


def _refusal(data: bytes) -> tuple[int, str]:
    reply = decode(data)
    assert isinstance(reply, Reply) and not reply.ok
    name, message, _ = msgpack.unpackb(reply.value)
    return reply.call_id, f"{name}: {message}"


def test_relay_messages_read_back() -> None:
    start = StreamStart(9, SHARD, "put", 3, 5000, bytes(range(32)))
    got = parse_relay(relay_start_data(start, ORIGIN, 77, 88, "identity alice"))
    assert got == RelayStart(start, ORIGIN, 77, 88, "identity alice")
    block = parse_relay(relay_block_data(ORIGIN, 9, 4096, memoryview(b"abc")))
    assert isinstance(block, RelayBlock) and (block.origin, block.call_id, block.offset) == (ORIGIN, 9, 4096)
    assert bytes(block.data) == b"abc"
    assert parse_relay(relay_abort_data(ORIGIN, 9)) == RelayAbort(ORIGIN, 9)
    for bad in (b"", b"\xc1", b"\xc1\x09", b"\xc1\x04short", b"\xc1\x03" + msgpack.packb([1, 2])):
        with pytest.raises(WireError):
            parse_relay(bad)
    with pytest.raises(WireError, match="whose bytes"):
        parse_relay(relay_start_data(start, ORIGIN, 77, 88, ""))
    # The client's start a relay carries is checked as the client's own start is.
    for bad, why in (
        (StreamStart(0, SHARD, "put", 3, 5000, bytes(32)), "call id, floor and size"),
        (StreamStart(9, SHARD, "put", 3, 5000, bytes(5)), "digest must be 32 bytes"),
    ):
        with pytest.raises(WireError, match=why):
            parse_relay(relay_start_data(bad, ORIGIN, 77, 88, "identity alice"))


def test_blocks_go_on_as_they_arrive_and_the_member_multicasts_the_callers_payload() -> None:
    pair, conn = Pair(), Conn()
    data = os.urandom(10_500)
    pair.send(conn, 5, data, upto=6000)
    pair.carry()
    assert pair.member.status()["relayed_in"] == 1
    assert pair.member.total == len(data)
    assert pair.member_node.ordered == []  # not before its last byte
    pair.send(conn, 5, data, begin=6000)
    # The last block waits for ``deliver`` (after the client's earlier calls): then it goes.
    assert pair.delivered and pair.queue.sent[-1][1][1] == 4
    pair.carry()
    assert pair.outbox.flushed == 1  # calls relayed before it go first
    [(shard, payload)] = pair.member_node.ordered
    assert shard == SHARD
    calls = _codec.decode_ordered(payload)
    assert isinstance(calls, list) and len(calls) == 1
    caller, call_id, method, args, origin = calls[0][:5]
    assert (caller, call_id, method, bytes(args), origin) == (CONTACT, 5, "put", data, ORIGIN)
    assert pair.member.total == 0 and pair.member.status()["relayed_delivered"] == 1
    # The contact holds its bytes until a replica answers, then frees them and ends the relay.
    assert pair.streams.total == len(data) and pair.relay.relays
    pair.streams.replied([(5, True, b"x", ORIGIN, 1)])
    assert pair.streams.total == 0 and not pair.relay.relays


def test_the_member_refuses_over_the_clients_bound_and_the_contact_frees_at_once() -> None:
    pair, conn = Pair(client_stream_bytes=50_000), Conn()
    # The same client (by its budget: its host, without TLS) streams through another contact.
    other = StreamStart(1, SHARD, "put", 0, 40_000, bytes(32))
    pair.member.on_data(OTHER, relay_start_data(other, ORIGIN + 2, 5, 9, "host 127.0.0.1"))
    pair.send(conn, 6, os.urandom(20_000), upto=3000)
    pair.carry()
    [(to, data)] = pair.member_node.app
    assert to == CONTACT
    call_id, why = _refusal(data)
    assert call_id == 6 and "ClientLimit" in why and "limits.client_stream_bytes" in why
    # The refusal reaches the contact as the call's answer: the stream still coming is dropped.
    assert pair.streams.total == 20_000
    pair.streams.replied([(6, False, b"", ORIGIN, -1)])
    assert pair.streams.total == 0 and not pair.streams.streams and not pair.relay.relays
    assert pair.streams.status()["refused"] == 1


def test_a_stream_dropped_at_the_contact_is_aborted_at_the_member() -> None:
    pair, conn = Pair(), Conn()
    pair.send(conn, 7, os.urandom(8000), upto=4000)
    pair.carry()
    assert pair.member.total == 8000
    pair.streams.forget(conn)  # the client's connection closed
    pair.carry()
    assert pair.member.total == 0 and not pair.member.streams
    assert pair.member_node.app == []  # an abort is not refused back


def test_a_bad_digest_at_the_member_is_refused_never_multicast() -> None:
    pair = Pair()
    data = os.urandom(3000)
    start = StreamStart(8, SHARD, "put", 0, len(data), blake3(b"other bytes").digest())
    pair.member.on_data(CONTACT, relay_start_data(start, ORIGIN, 5, 9, "host h"))
    pair.member.on_data(CONTACT, relay_block_data(ORIGIN, 8, 0, memoryview(data)))
    assert pair.member_node.ordered == []
    assert "do not match the digest" in _refusal(pair.member_node.app[0][1])[1]
    assert pair.member.total == 0


def test_a_member_leaving_mid_relay_gets_the_call_again_at_another_from_its_first_byte() -> None:
    pair, conn = Pair(), Conn()
    data = os.urandom(5000)
    pair.send(conn, 9, data, upto=3000)
    pair.carry()
    before = len(pair.queue.sent)
    view = View(2, (1, OTHER, CONTACT), (1, OTHER))
    pair.streams.on_view({MEMBER}, view)  # type: ignore[arg-type]
    resent = pair.queue.sent[before:]
    target = (1, OTHER)[ORIGIN % 2]
    assert {d for d, _ in resent} == {target}
    assert isinstance(parse_relay(resent[0][1]), RelayStart)
    blocks = [m for _, d in resent[1:] if isinstance(m := parse_relay(d), RelayBlock)]
    assert blocks[0].offset == 0 and b"".join(bytes(b.data) for b in blocks) == data[:3000]
    assert pair.relay.status()["relays_resent"] == 1


def test_a_whole_call_whose_member_left_is_multicast_here_once_this_node_holds_a_replica() -> None:
    pair, conn = Pair(), Conn()
    pair.send(conn, 10, os.urandom(2000))
    assert pair.delivered
    pair.streams.on_view({MEMBER}, View(2, (1, OTHER, CONTACT), (1, OTHER, CONTACT)))  # type: ignore[arg-type]
    assert pair.locals == [(ORIGIN, 10)] and not pair.relay.relays


def test_relays_from_a_contact_that_left_are_dropped_at_the_member() -> None:
    pair, conn = Pair(), Conn()
    pair.send(conn, 11, os.urandom(4000), upto=2000)
    pair.carry()
    assert pair.member.total == 4000
    pair.member.on_view(View(2, (1, MEMBER, OTHER), (1, MEMBER, OTHER)))  # type: ignore[arg-type]
    assert pair.member.total == 0 and not pair.member.streams


def test_a_silent_relay_is_dropped_and_refused_at_the_member() -> None:
    pair, conn = Pair(client_stream_stall_ms=1000), Conn()
    pair.send(conn, 12, os.urandom(4000), upto=1000)
    pair.carry()
    pair.member_node.advance(2.5)
    assert pair.member.total == 0
    assert "sent nothing" in _refusal(pair.member_node.app[0][1])[1]


def test_a_sessions_calls_relayed_to_a_member_that_left_go_again_in_call_order() -> None:
    """A whole streamed call (5) and the same session's small calls before (4) and after (6)
    it, all relayed to a member that left: sent again to the next member in call order (the
    client proxy's own retry, later, finds them sent and passes them by)."""
    queue = Queue()
    relay = StreamRelay(queue, lambda k, s, p: None, lambda k, s, v: None, CONTACT)  # type: ignore[arg-type]
    calls = {n: Call(n, CONTACT, SHARD, "put", True, b"small %d" % n, ORIGIN, 5, 0) for n in (4, 6)}
    table = SimpleNamespace(relays={(ORIGIN, n): Relay(MEMBER, c, None) for n, c in calls.items()})  # type: ignore[arg-type]
    proxy = SimpleNamespace(table=table, node_id=CONTACT, to_members=queue, outbox=Outbox())
    glue = _ProxyGlue(proxy)  # type: ignore[arg-type]
    glue.relay = relay
    data = os.urandom(3000)
    start = StreamStart(5, SHARD, "put", 0, len(data), blake3(data).digest())
    payload = bytearray(data)
    relay.begin(MEMBER, start, (ORIGIN, 5, 9), "host h", payload, 0)
    assert relay.finish(ORIGIN, 5, payload)
    queue.sent.clear()
    view = View(2, (1, OTHER, CONTACT), (1, OTHER))
    glue.departed({MEMBER}, view)  # type: ignore[arg-type]
    target = (1, OTHER)[ORIGIN % 2]
    assert {d for d, _ in queue.sent} == {target}
    order = []
    for _, msg in queue.sent:
        if msg[:1] == b"\xc1":
            relayed = parse_relay(msg)
            order.append("start 5" if isinstance(relayed, RelayStart) else "block 5")
        else:
            call = decode(msg)
            assert isinstance(call, Call)
            order.append(f"call {call.call_id}")
    assert order == ["call 4", "start 5", "block 5", "call 6"]
    assert all(r.target == target for r in table.relays.values())  # the proxy's retry passes them by


def test_a_client_streaming_the_call_again_on_a_new_connection_is_relayed_from_the_new_buffer() -> None:
    """A client that reconnects (it took its contact for frozen) streams the same call again
    while its old connection still drains here: blocks of the old stream must not be forwarded
    from the new stream's buffer (found under load: empty blocks refused by the member)."""
    pair, old, new = Pair(), Conn(), Conn()
    data = os.urandom(6000)
    pair.send(old, 13, data, upto=3000)
    pair.send(new, 13, data, upto=1000)  # the same call, from its first byte
    pair.send(old, 13, data, upto=5000, begin=3000)  # the old connection drains
    pair.streams.forget(old)  # then closes: the new stream's relay goes on
    pair.send(new, 13, data, begin=1000)
    pair.carry()
    assert pair.member_node.app == []  # nothing refused
    [(_, payload)] = pair.member_node.ordered
    calls = _codec.decode_ordered(payload)
    assert isinstance(calls, list) and bytes(calls[0][3]) == data


TWO_SHARDS = (ShardId("Blobs", 0, 0), ShardId("Blobs", 0, 1))


@pytest.mark.parametrize(
    ("shard_members", "starts", "locals_"),
    [
        ((1, OTHER), 2, 0),  # both relays go again to the one member left, once each
        ((1, OTHER, CONTACT), 0, 2),  # this node holds both shards now: each multicast here once
    ],
)
def test_a_sessions_relays_to_two_shards_whose_member_left_are_each_handled_once(
    shard_members: tuple[int, ...], starts: int, locals_: int
) -> None:
    """One session relays a call to each of two shards through the same member, which leaves:
    each relay is handled once, by its own shard (handled once per shard, the second pass raised
    a KeyError out of the view change, or sent the RelayStart twice)."""
    queue, done = Queue(), []
    relay = StreamRelay(queue, lambda k, s, p: done.append(k), lambda k, s, v: None, CONTACT)  # type: ignore[arg-type]
    proxy = SimpleNamespace(table=SimpleNamespace(relays={}), node_id=CONTACT, to_members=queue, outbox=Outbox())
    glue = _ProxyGlue(proxy)  # type: ignore[arg-type]
    glue.relay = relay
    for call_id, shard in zip((5, 6), TWO_SHARDS):
        data = os.urandom(3000)
        payload = bytearray(data)
        start = StreamStart(call_id, shard, "put", 0, len(data), blake3(data).digest())
        relay.begin(MEMBER, start, (ORIGIN, 5, 9), "host h", payload, 0)
        assert relay.finish(ORIGIN, call_id, payload)
    queue.sent.clear()
    glue.departed({MEMBER}, View(2, (1, OTHER, CONTACT), shard_members))  # type: ignore[arg-type]
    sent = [m.start.call_id for _, d in queue.sent if d[:1] == b"\xc1" and isinstance(m := parse_relay(d), RelayStart)]
    assert sorted(sent) == [5, 6][:starts] and relay.resent == starts
    assert sorted(k[1] for k in done) == [5, 6][:locals_]


def _contact(views: list[View]) -> tuple[SimpleNamespace, _ProxyGlue, Queue]:
    """Enough of a contact (node 4, no replica of the shard) for ``ClientProxy.take_call`` and
    the glue that starts relays: one table, one relay, one queue to members."""
    queue, node = Queue(), Node(CONTACT)
    table = ClientTable(100, 10, node.wall_ns)
    relay = StreamRelay(queue, lambda *a: None, lambda *a: None, CONTACT)  # type: ignore[arg-type]
    proxy = SimpleNamespace(
        node=node,
        node_id=CONTACT,
        view=lambda: views[-1],
        table=table,
        to_members=queue,
        outbox=Outbox(),
        out=SimpleNamespace(send=lambda conn, data: None, refuse=lambda conn, to, err: pytest.fail(str(err))),
        check=lambda client, msg, view: ("put", view.layout.members_of(msg.shard), None),
        # A frame's calls taken at once when this node holds the shard (``take_calls``' short way).
        checks=SimpleNamespace(
            runs_here=lambda view, shard, method: ("put", 1 << 20) if CONTACT in view.layout.members_of(shard) else None
        ),
        streams=SimpleNamespace(relay=relay),
    )
    proxy.take_call = lambda conn, msg: ClientProxy.take_call(proxy, conn, msg)  # type: ignore[arg-type]
    glue = _ProxyGlue(proxy)  # type: ignore[arg-type]
    glue.relay = relay
    return proxy, glue, queue


def _take(proxy: SimpleNamespace, glue: _ProxyGlue, conn: Conn, step: str, batch: bool = False) -> int | None:
    """``step``: "stream N" (a streamed call starts) or "call N" (a small ordered call, alone
    or as a frame's calls are taken, ``batch``). The member it went to; None: run here."""
    kind, call_id = step.split()
    sent, here = len(proxy.to_members.sent), len(proxy.outbox.submitted)
    if kind == "stream":
        data = os.urandom(3000)
        start = StreamStart(int(call_id), SHARD, "put", 0, len(data), blake3(data).digest())
        if not glue.begin(conn, start, bytearray(data), 0, "host h"):  # type: ignore[arg-type]
            return None
    else:
        call = Call(int(call_id), 0, SHARD, "put", True, b"x", 0, 0, 0)
        if batch:
            ClientProxy.take_calls(proxy, conn, [call])  # type: ignore[arg-type]
        else:
            ClientProxy.take_call(proxy, conn, call)  # type: ignore[arg-type]
    if len(proxy.outbox.submitted) > here:
        assert len(proxy.to_members.sent) == sent and proxy.outbox.submitted[-1] == int(call_id)
        return None
    return int(proxy.to_members.sent[-1][0])


# ORIGIN_2's calls go to node 1 of (1, 2) and to node 5 of (1, 2, 5): a view that adds node 5
# to the shard moves where ``relay_target`` sends them.
ORIGIN_2 = 1234568


@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        ("stream 7", "call 8", 1),  # a small call after a streamed one: where the stream goes
        ("stream 7", "stream 9", 1),  # a second stream too
        ("call 6", "stream 9", 1),  # a stream after an unanswered small call: where that went
        ("call 6", "call 8", 1),  # a small call after an unanswered small one: where that went
        ("stream 7, answered", "call 8", 5),  # nothing unanswered: the new member
        ("call 6, answered", "call 8", 5),
        ("call 6, answered", "stream 9", 5),
    ],
)
def test_a_sessions_calls_follow_its_unanswered_relayed_calls_when_a_view_adds_a_member(
    first: str, then: str, expected: int
) -> None:
    """A session's calls to a shard relayed while one of its relayed calls is unanswered go to
    that call's member, not to the member ``relay_target`` picks after a view added one to the
    shard: sent to two members, the later call could be ordered first, and replicas would take
    the earlier as applied already (lost, while the client is told it was applied)."""
    views = [View(1, (1, 2, 3, 4, 5), (1, 2))]
    proxy, glue, queue = _contact(views)
    conn = Conn(origin=ORIGIN_2)
    call_id = int(first.split(",")[0].split()[1])
    assert _take(proxy, glue, conn, first.split(",")[0]) == 1
    if "answered" in first:
        glue.relay.drop(ORIGIN_2, call_id)
        proxy.table.drop((ORIGIN_2, call_id))
    views.append(View(2, (1, 2, 3, 4, 5), (1, 2, 5)))  # node 5 joins the shard; nobody left
    assert _take(proxy, glue, conn, then) == expected


@pytest.mark.parametrize("batch", [False, True], ids=["alone", "in-a-frame"])
@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        ("stream 7", "call 8", 1),  # a small call after a streamed one: where the stream went
        ("stream 7", "stream 9", 1),  # a second stream too
        ("call 6", "stream 9", 1),  # a stream after an unanswered small call: where that went
        ("stream 7, answered", "call 8", None),  # nothing unanswered: run here
        ("stream 7, answered", "stream 9", None),
        ("call 6, answered", "stream 9", None),
        ("stream 7, dropped", "call 8", None),  # the relay dropped before its last byte
        ("call 6", "call 8", 1),  # a small call after an unanswered small one: where that went
        ("call 6, answered", "call 8", None),
    ],
)
def test_a_sessions_calls_follow_its_relayed_calls_when_the_contact_is_promoted_into_the_shard(
    first: str, then: str, expected: int | None, batch: bool
) -> None:
    """A contact that relayed a session's call and is then promoted into its shard sends that
    session's next calls to the shard to that call's member, not to itself, until the call is
    answered: run here, a small call after a streamed one was multicast at once, ordered before
    the large call the member multicasts at its last byte, and replicas took the large call as
    applied already (lost; seen between real processes)."""
    views = [View(1, (1, 2, 3, 4), (1, 2))]
    proxy, glue, queue = _contact(views)
    conn = Conn(origin=ORIGIN_2)
    step = first.split(",")[0]
    call_id = int(step.split()[1])
    if step.startswith("stream"):
        data = os.urandom(3000)
        start = StreamStart(call_id, SHARD, "put", 0, len(data), blake3(data).digest())
        payload = bytearray(data)
        assert glue.begin(conn, start, payload, 0, "host h")  # type: ignore[arg-type]
        if "dropped" not in first:
            assert glue.relay.finish(ORIGIN_2, call_id, payload)  # whole: its last block went
    else:
        assert _take(proxy, glue, conn, step) == 1
    assert queue.sent[-1][0] == 1
    if "answered" in first or "dropped" in first:
        glue.relay.drop(ORIGIN_2, call_id)
        proxy.table.drop((ORIGIN_2, call_id))
    views.append(View(2, (1, 2, 3, 4), (1, 2, CONTACT)))  # this node joins the shard
    proxy.table.state(conn).offered = True  # offered merged answers: a frame's calls may go the short way
    assert _take(proxy, glue, conn, then, batch) == expected


def test_a_relay_whose_member_left_the_shard_pins_nothing() -> None:
    relay = StreamRelay(Queue(), lambda *a: None, lambda *a: None, CONTACT)  # type: ignore[arg-type]
    data = os.urandom(100)
    relay.begin(1, StreamStart(7, SHARD, "put", 0, 100, blake3(data).digest()), (ORIGIN, 5, 9), "h", bytearray(data), 0)
    assert relay.pinned(ORIGIN, SHARD, (1, 2)) == 1
    assert relay.pinned(ORIGIN, SHARD, (2, 5)) is None  # no longer a member: the usual target
    assert relay.pinned(ORIGIN, TWO_SHARDS[1], (1, 2)) is None  # another shard's calls
    assert relay.pinned(ORIGIN + 1, SHARD, (1, 2)) is None  # another session's


def _backed_up(pair: Pair, ready: list[bool]) -> AnswerQueue[int]:
    """The contact's real queue to members, whose link to the member takes writes only while
    ``ready[0]``."""
    written: list[bytes] = []
    queue: AnswerQueue[int] = AnswerQueue(
        pair.contact_node,  # type: ignore[arg-type]
        lambda dest, messages: written.extend(messages) or True,
        ready=lambda dest: ready[0],
    )
    pair.relay.to_members = queue
    return queue


def test_relays_dropped_while_the_members_link_is_backed_up_leave_no_copies_queued() -> None:
    """A client that streams, closes and streams again while the member's link is backed up:
    each dropped relay's blocks leave the queue (they piled up there, outside every bound)."""
    pair = Pair(client_stream_bytes=10_000, client_streams_total_bytes=10_000)
    queue = _backed_up(pair, [False])
    for i in range(50):
        conn = Conn()
        pair.send(conn, 100 + i, os.urandom(9000), upto=8000)
        pair.streams.forget(conn)  # the client closes: the relay is dropped
    left = [m for q in queue.queued.values() for m in q]
    assert len(left) == 100 and sum(len(m) for m in left) < 20_000  # each relay's start and abort
    assert all(parse_relay(m).__class__ in (RelayStart, RelayAbort) for m in left)  # type: ignore[arg-type]


@pytest.mark.parametrize(("link_ready", "refused"), [(False, True), (True, False)])
def test_relayed_blocks_not_yet_written_count_against_the_clients_bound(link_ready: bool, refused: bool) -> None:
    """Bytes copied into the queue to a member count against the identity's bound until they
    are written: a second call fits beside the first's buffer only once they are."""
    pair, conn = Pair(client_stream_bytes=12_000), Conn()
    ready = [link_ready]
    queue = _backed_up(pair, ready)
    pair.send(conn, 20, os.urandom(9000), upto=8000)
    pair.contact_node.advance(1)  # the queue's flush: writes what the link takes
    assert bool(queue.queued) is not link_ready
    pair.send(Conn(), 21, os.urandom(2000), upto=1000)
    assert [c for c, _ in pair.refused] == ([21] if refused else [])
    if refused:
        assert "limits.client_stream_bytes" in str(pair.refused[0][1])


@pytest.mark.parametrize(
    ("first", "budgets", "limit"),
    [
        ("streamed", ("host 127.0.0.1", "host 127.0.0.1"), "limits.client_stream_bytes"),
        ("relayed", ("host 127.0.0.1", "host 127.0.0.1"), "limits.client_stream_bytes"),
        ("streamed", ("host 127.0.0.1", "host 10.0.0.9"), "limits.client_streams_total_bytes"),
        ("relayed", ("host 10.0.0.9", "host 127.0.0.1"), "limits.client_streams_total_bytes"),
    ],
)
def test_calls_streamed_to_a_member_and_relayed_to_it_share_its_bounds(
    first: str, budgets: tuple[str, str], limit: str
) -> None:
    """A member's bounds hold for a client's calls streamed to it and relayed to it together
    (each way kept its own count: an identity could hold twice its bound, the node twice its)."""
    node = Node(MEMBER)
    limits = LimitsSection(client_stream_bytes=10_000, client_streams_total_bytes=10_000)
    refused: list[tuple[int, Any]] = []
    streams = contact_streams(
        node,
        lambda conn, start, payload, base: None,
        lambda conn, call_id, error: refused.append((call_id, error)),
        client_stream_bytes=10_000,
        client_streams_total_bytes=10_000,
    )
    view = View(1, (1, MEMBER, CONTACT), (1, MEMBER))
    relayed = RelayedStreams(node, lambda: view, lambda shard: True, Outbox(), limits, streams.bytes)  # type: ignore[arg-type]

    def relay_in(call_id: int, size: int, budget: str) -> None:
        start = StreamStart(call_id, SHARD, "put", 0, size, bytes(32))
        relayed.on_data(CONTACT, relay_start_data(start, ORIGIN + 1, 5, 9, budget))

    def stream_here(call_id: int, size: int, budget: str) -> None:
        streams.on_data(Conn(address=budget.split()[1] + ":5000"), start_message(call_id, bytes(size)))  # type: ignore[arg-type]

    (relay_in if first == "relayed" else stream_here)(1, 7000, budgets[0])
    assert streams.bytes.total == 7000
    (stream_here if first == "relayed" else relay_in)(2, 4000, budgets[1])
    if first == "relayed":
        assert [c for c, _ in refused] == [2] and limit in str(refused[0][1])
    else:
        [(_, data)] = node.app
        call_id, why = _refusal(data)
        assert call_id == 2 and limit in why
    assert streams.bytes.total == 7000 and streams.bytes.held == {budgets[0]: 7000}


@pytest.mark.parametrize("again", [False, True])
def test_dropping_a_copy_streamed_again_keeps_the_whole_copy_queued_before_it(again: bool) -> None:
    """A call relayed whole (its blocks still queued: the member's link is backed up), then
    streamed again after a failover back here and that copy dropped: only the dropped copy's
    blocks leave the queue; the member still gets the whole first copy and multicasts it."""
    pair = Pair(client_stream_bytes=100_000)
    ready, written = [False], []
    queue: AnswerQueue[int] = AnswerQueue(
        pair.contact_node,  # type: ignore[arg-type]
        lambda dest, messages: written.extend((dest, m) for m in messages) or True,
        ready=lambda dest: ready[0],
    )
    pair.relay.to_members = queue
    data = os.urandom(9000)
    pair.send(Conn(), 7, data)
    if again:
        second = Conn()
        pair.send(second, 7, data, upto=3000)
        pair.streams.forget(second)  # that connection closes: its copy is dropped
    ready[0] = True
    pair.contact_node.advance(1)
    for dest, message in written:
        if dest == MEMBER:
            pair.member.on_data(CONTACT, message)
    assert len(pair.member_node.ordered) == 1


@pytest.mark.parametrize("holds_at_the_end", [True, False])
def test_a_relay_to_a_member_not_yet_holding_the_shard_is_decided_at_its_last_byte(holds_at_the_end: bool) -> None:
    """The contact relays again when a member leaves, to a member of the view it installed;
    that member may not have installed it yet. Refused at the start, the call came back "not
    run, call again"; now the member takes it and decides once it has the last byte."""
    pair, conn = Pair(), Conn()
    pair.holding = False
    pair.send(conn, 7, os.urandom(5000))
    dest, start = pair.queue.sent[0]
    assert dest == MEMBER
    pair.member.on_data(CONTACT, start)  # the relay's start, before this member's view moved
    pair.carried = 1
    pair.holding = holds_at_the_end
    pair.carry()
    assert len(pair.member_node.ordered) == (1 if holds_at_the_end else 0)
    assert pair.member.refused == (0 if holds_at_the_end else 1)


def test_a_sessions_small_calls_stay_with_their_member_when_another_member_leaves() -> None:
    """Node 1 leaves the shard (1, 2, 5): the session's unanswered call 6 went to 5, which
    stays; ``members[origin % n]`` now names 2, but call 8 must follow call 6 to 5 (sent to 2
    it could be ordered first, and call 6 taken as applied already)."""
    views = [View(1, (1, 2, 3, 4, 5), (1, 2, 5))]
    proxy, glue, queue = _contact(views)
    conn = Conn(origin=ORIGIN_2)
    assert _take(proxy, glue, conn, "call 6") == 5
    views.append(View(2, (2, 3, 4, 5), (2, 5)))
    assert _take(proxy, glue, conn, "call 8") == 5
    proxy.table.drop((ORIGIN_2, 6))  # answered: the usual member again
    proxy.table.drop((ORIGIN_2, 8))
    assert _take(proxy, glue, conn, "call 9") == 2
