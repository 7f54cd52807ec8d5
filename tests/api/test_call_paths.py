"""The node's call paths (``node.call_paths`` and its parts), in-process on a fake node (fast):

- parked watch polls expire on the clock the node's timers run on: a timer that runs before
  its deadline re-arms (it used to leave no timer pending, so polls never expired), a step
  of the wall clock changes nothing, and a poll with an earlier deadline re-arms earlier;
- a client's call that fails while clients take turns closes that client only;
- a P2P call is taken by its kind, never its name, and answered with the reason when it
  cannot be taken; clients' calls are counted under their method or their request's label;
- answers split between this node's own calls and its clients'; the outbox sends one turn's
  ordered calls together; this node's calls go to the right place with their kind.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import msgpack
import pytest

from derecho_actors.model.reads import LINEARIZABLE, STABLE, ReadOptions
from derecho_actors.node.call_limits import CallLimits
from derecho_actors.node.call_paths import CallPaths
from derecho_actors.node.client_turns import CALLS_PER_TURN, LONE_CALLS
from derecho_actors.node.watch_holds import HOLD_SLACK
from derecho_actors.replica.events import PollCall, WatchExpire, WatchPoll
from derecho_actors.replica.replica import P2PRequest
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import PollArgs, encode_poll
from derecho_actors.wire.messages import (
    AnswerBatch,
    Call,
    CallKind,
    Features,
    Reply,
    ReplyBatch,
    ReplyTo,
    decode,
)
from derecho_actors.wire.read_options import READ_IN_ORDER, encode_read
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.view import View
from runtime.errors import ReplicaLost

SHARD = ShardId("Feed", 0, 0)


class FakeNode:
    """What the call paths use of a node: timers are recorded, run by the test; what is sent
    is kept."""

    node_id = 1
    incarnation = 1

    def __init__(self) -> None:
        self.now = 100.0  # the timer clock, seconds
        self.wall = 1_800_000_000 * 10**9
        self.timers: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []  # (due, fn, args)
        self.sent: list[tuple[int, bytes]] = []
        self.multicast: list[tuple[ShardId, list[bytes]]] = []
        self.to_clients: list[tuple[Any, tuple[bytes, ...]]] = []

    def wall_ns(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.timers.append((self.now + delay, fn, args))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        self.call_later(0, fn, *args)
        return True

    def send_app(self, node: int, data: bytes) -> None:
        self.sent.append((node, data))

    def send_ordered(self, shard: ShardId, payloads: list[bytes]) -> None:
        self.multicast.append((shard, list(payloads)))

    def link_backlog(self, node: int) -> int:
        return 0

    def reply_client(self, conn: Any, *messages: bytes) -> bool:
        self.to_clients.append((conn, messages))
        return True

    def expiry_timers(self) -> list[tuple[float, Callable[..., Any], tuple[Any, ...]]]:
        return [t for t in self.timers if getattr(t[1], "__name__", "") == "_expire_due"]

    def fire_next(self, early: float = 0.0) -> None:
        """Run the soonest timer, ``early`` seconds before its time on the clock."""
        self.timers.sort(key=lambda t: t[0])
        due, fn, args = self.timers.pop(0)
        self.now = max(self.now, due - early)
        fn(*args)

    def run_all(self) -> None:
        """Run the timers due now (the end of this loop turn), not the later ones."""
        while any(t[0] <= self.now for t in self.timers):
            self.fire_next()


class FakeHost:
    def __init__(self, holds: bool = True) -> None:
        self.told: list[tuple[ShardId, Any]] = []
        self.holding = holds

    def tell(self, shard: ShardId, msg: Any) -> bool:
        if not self.holding:
            return False
        self.told.append((shard, msg))
        return True

    def holds(self, shard: ShardId) -> bool:
        return self.holding

    def refusal(self, shard: ShardId) -> None:
        return None


class FakeTracker:
    def __init__(self) -> None:
        self.queries: list[tuple[ShardId, ReplyTo, bytes]] = []

    def query(self, shard: ShardId, to: ReplyTo, args: bytes) -> None:
        self.queries.append((shard, to, args))


def paths(
    node: FakeNode,
    host: FakeHost,
    tracker: FakeTracker | None = None,
    view: View | None = None,
    specs: dict[str, Any] | None = None,
) -> CallPaths:
    return CallPaths.build(
        node,  # type: ignore[arg-type]
        CallLimits.plain(1 << 20),
        lambda: view,
        lambda: None,
        host,  # type: ignore[arg-type]
        tracker or FakeTracker(),  # type: ignore[arg-type]
        lambda shard: None,
        specs or {},
    )


def one_view(*members: int) -> View:
    policy = LayoutPolicy.of({"Feed": ShardPolicy(min_nodes=1, max_nodes=len(members))})
    return View(1, members, tuple(f"n{m}" for m in members), compute_layout(policy, members))


# ------------------------------------------------------------------ watch holds
def park(c: CallPaths, call_id: int, hold: float) -> None:
    poll = encode_poll(PollArgs(call_id, None, 10, hold))
    c.inbound.run_p2p(SHARD, ReplyTo(2, call_id, 1), CallKind.WATCH_POLL, "", poll)


def expired(host: FakeHost) -> list[int]:
    return [c.call_id for _, m in host.told if isinstance(m, WatchExpire) for c in m.calls]


def test_a_timer_running_early_re_arms_and_the_poll_expires() -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host)
    park(c, 7, 5.0)
    assert [m for _, m in host.told if isinstance(m, WatchPoll)]
    assert len(node.expiry_timers()) == 1
    node.wall -= 3600 * 10**9  # the wall clock steps back an hour: no matter
    node.fire_next(early=0.25)  # runs 250 ms before the deadline (105.0) on the timer clock
    assert expired(host) == []
    assert len(node.expiry_timers()) == 1, "a timer that ran early left no timer pending"
    node.fire_next(early=HOLD_SLACK / 2)  # within the slack: due
    assert expired(host) == [7]
    assert node.expiry_timers() == [] and c.holds.idle
    park(c, 8, 1.0)  # the next poll arms a timer again
    node.fire_next()
    assert expired(host) == [7, 8]


def test_an_earlier_deadline_re_arms_earlier_and_the_later_poll_still_expires() -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host)
    park(c, 1, 30.0)
    park(c, 2, 1.0)  # earlier than the pending timer: a new one, the first superseded
    park(c, 3, 10.0)  # later: no new timer
    assert len(node.expiry_timers()) == 2
    node.fire_next()
    assert expired(host) == [2] and node.now == pytest.approx(101.0)
    node.fire_next()
    assert expired(host) == [2, 3] and node.now == pytest.approx(110.0)
    node.fire_next()  # the superseded timer, at 130: it does nothing itself ...
    node.fire_next()  # ... the live one, also at 130, expires the poll
    assert expired(host) == [2, 3, 1]
    assert node.expiry_timers() == [] and c.holds.idle


def test_an_expiry_names_the_parked_call() -> None:
    """The expiry names the poll's call as the replica parked it (caller, call, origin)."""
    node, host = FakeNode(), FakeHost()
    park(paths(node, host), 5, 0.5)
    node.fire_next()
    msgs = [m for _, m in host.told if isinstance(m, WatchExpire)]
    assert msgs == [WatchExpire((PollCall(2, 5, 0),))]


def test_the_simulators_node_handle_times_timers_on_virtual_time() -> None:
    from runtime.sim.app_node import SimNodeHandle

    class Sched:
        now = 12.5

    class Cluster:
        sched = Sched()

    handle = SimNodeHandle.__new__(SimNodeHandle)
    handle.cluster = Cluster()  # type: ignore[assignment]
    assert handle.monotonic() == 12.5
    Sched.now = 13.0
    assert handle.monotonic() == 13.0


# ------------------------------------------------------------------ client turns
class FakeConn:
    def __init__(self, name: str) -> None:
        self.address = name
        self.identity = None
        self.origin = 99
        self.incarnation = 1
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_failing_call_in_a_deferred_turn_closes_only_its_client(caplog: pytest.LogCaptureFixture) -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host)
    bad, good = FakeConn("10.0.0.1:1"), FakeConn("10.0.0.2:2")
    taken: list[int] = []

    def take(conn: Any, calls: list[Call]) -> None:
        if conn is bad:
            raise RuntimeError("boom")
        taken.extend(msg.call_id for msg in calls)

    turns = c.turns
    turns.take = take
    turns.taken = CALLS_PER_TURN  # this turn's budget is spent: the calls wait for the next
    calls = tuple(Call(i, 0, SHARD, "state", False, b"") for i in range(1, 4))
    turns.on_calls(bad, calls)  # type: ignore[arg-type]
    turns.on_calls(good, calls)  # type: ignore[arg-type]
    assert taken == [] and len(turns.waiting) == 2
    with caplog.at_level(logging.ERROR, logger="derecho.routing"):
        turns.next_turn()
    assert taken == [1, 2, 3], "the other client lost its turn"
    assert bad.closed and not good.closed
    assert bad not in c.clients.table.clients and not turns.waiting
    assert [rec for rec in caplog.records if "10.0.0.1:1" in rec.getMessage() and rec.exc_info]
    # The bad client is gone; the good one is served on later turns as before.
    turns.taken = CALLS_PER_TURN
    turns.on_calls(good, (Call(4, 0, SHARD, "state", False, b""),))  # type: ignore[arg-type]
    turns.next_turn()
    assert taken == [1, 2, 3, 4]


# ------------------------------------------------------------------ P2P calls by kind
TO = ReplyTo(2, 7, 1, 55)
POLL = encode_poll(PollArgs(7, None, 10, 0.0))

BY_KIND = {
    # name: (kind, method, args, holds a replica) -> what it became
    "a persistence query goes to the tracker": (CallKind.PERSISTED_QUERY, "", b"\x05", True, "tracker"),
    "a watch poll to the replica": (CallKind.WATCH_POLL, "", POLL, True, WatchPoll),
    "a method to the replica": (CallKind.METHOD, "get", b"\x90", True, P2PRequest),
    "a method named like a poll is a method": (CallKind.METHOD, "__watch__", b"", True, P2PRequest),
    "a stable read to the replica": (
        CallKind.METHOD,
        "get",
        encode_read(ReadOptions(STABLE), b"\x90"),
        True,
        P2PRequest,
    ),
    "a linearizable read into the order": (
        CallKind.METHOD,
        "get",
        encode_read(ReadOptions(LINEARIZABLE), b"\x90"),
        True,
        "multicast",
    ),
    "malformed read options: failed": (CallKind.METHOD, "get", bytes([0xC1, 5]) + b"xx", True, "RemoteError"),
    "a malformed poll: failed": (CallKind.WATCH_POLL, "", b"\xc1", True, "RemoteError"),
    "no replica here: refused": (CallKind.METHOD, "get", b"", False, "ReplicaLost"),
    "a poll, no replica here: refused": (CallKind.WATCH_POLL, "", POLL, False, "ReplicaLost"),
}


@pytest.mark.parametrize("kind, method, args, holds, became", BY_KIND.values(), ids=BY_KIND.keys())
def test_a_p2p_call_is_taken_by_its_kind(kind: CallKind, method: str, args: bytes, holds: bool, became: Any) -> None:
    node, host, tracker = FakeNode(), FakeHost(holds), FakeTracker()
    c = paths(node, host, tracker)
    c.inbound.run_p2p(SHARD, TO, kind, method, args)
    node.run_all()
    if became == "tracker":
        assert tracker.queries == [(SHARD, TO, args)] and not host.told
    elif became == "multicast":
        ((shard, (payload,)),) = node.multicast
        ((caller, call_id, m, _, origin, session, floor, _, _),) = _codec.decode_ordered(payload)  # type: ignore[misc]
        assert (shard, caller, call_id, m, origin, session, floor) == (SHARD, 2, 7, "get", 55, READ_IN_ORDER, 1)
    elif isinstance(became, type):
        ((shard, msg),) = host.told
        assert type(msg) is became and (msg.caller, msg.call_id, msg.vid, msg.origin) == (2, 7, 1, 55)
    else:  # answered at once: to node 2, in one ReplyBatch
        ((to, data),) = node.sent
        batch = decode(data)
        assert to == 2 and isinstance(batch, ReplyBatch)
        ((call_id, ok, value, origin, _),) = batch.entries
        assert (call_id, ok, origin) == (7, False, 55)
        assert type(_codec.decode_error(value, 1)).__name__ == became


def test_a_members_call_this_node_cannot_take_is_refused_to_it() -> None:
    node, host = FakeNode(), FakeHost(holds=False)
    c = paths(node, host, view=one_view(1, 2))
    c.inbound.on_member_call(2, Call(4, 2, SHARD, "", False, POLL, 8, kind=CallKind.WATCH_POLL))
    ((to, data),) = node.sent
    reply = decode(data)
    assert to == 2 and isinstance(reply, Reply) and (reply.call_id, reply.origin, reply.ok) == (4, 8, False)
    assert isinstance(_codec.decode_error(reply.value, 1), ReplicaLost)


# ------------------------------------------------------------------ clients' calls
class FakeSpec:
    name = "Feed"
    methods = {"post": "ordered", "read": "p2p"}


LABELS = {
    # (method, ordered, kind) -> label
    "an ordered method": (("post", True, CallKind.METHOD), "post"),
    "a P2P method": (("read", False, CallKind.METHOD), "read"),
    "a method sent as the wrong kind": (("post", False, CallKind.METHOD), "<unknown>"),
    "no such method": (("nope", True, CallKind.METHOD), "<unknown>"),
    "a dunder name is no request": (("__watch__", False, CallKind.METHOD), "<unknown>"),
    "a watch poll": (("", False, CallKind.WATCH_POLL), "__watch__"),
    "a persistence query": (("", False, CallKind.PERSISTED_QUERY), "__persisted__"),
}


@pytest.mark.parametrize("sent, label", LABELS.values(), ids=LABELS.keys())
def test_a_clients_call_is_counted_under_its_method_or_its_requests_label(
    sent: tuple[str, bool, CallKind], label: str
) -> None:
    method, ordered, kind = sent
    c = paths(FakeNode(), FakeHost(), specs={"Feed": FakeSpec()})
    assert c.clients.checks.label(Call(1, 0, SHARD, method, ordered, b"", kind=kind)) == label


def test_a_clients_watch_poll_counts_against_its_polls_and_is_parked_here() -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host, view=one_view(1, 2), specs={"Feed": FakeSpec()})
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(3, 0, SHARD, "", False, POLL, kind=CallKind.WATCH_POLL))  # type: ignore[arg-type]
    ((_, msg),) = host.told
    assert isinstance(msg, WatchPoll) and (msg.caller, msg.call_id, msg.origin) == (1, 3, 99)
    assert c.clients.table.status().watch_polls == 1
    c.clients.on_closed(conn)  # type: ignore[arg-type]
    assert host.told[-1] == (SHARD, WatchExpire((PollCall(1, 3, 99),)))
    assert c.clients.table.status().watch_polls == 0


# ------------------------------------------------------------------ answers and own calls
def test_answers_split_between_this_nodes_calls_and_its_clients() -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host, view=one_view(1, 2), specs={"Feed": FakeSpec()})
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(3, 0, SHARD, "read", False, b"\x90", target=2))  # type: ignore[arg-type]
    results = c.member.watch_poll(SHARD, "watch", PollArgs(1, None, 10, 0.0), 2)
    node.run_all()
    (relayed, own) = [decode(data) for _, data in node.sent]
    assert isinstance(relayed, Call) and (relayed.caller, relayed.origin, relayed.kind) == (1, 99, CallKind.METHOD)
    assert isinstance(own, Call) and (own.method, own.kind, own.ordered) == ("", CallKind.WATCH_POLL, False)
    answer = msgpack.packb([[5, 0], []])
    c.replies.take_batch(ReplyBatch(2, 1, (2,), ((own.call_id, True, answer, 0, -1), (3, True, b"\xc0", 99, -1))))
    node.run_all()
    assert results.get(timeout=0) == {2: ((5, 0), [])}
    assert {to for to, _ in node.to_clients} == {conn}
    offer, data = [m for _, messages in node.to_clients for m in messages]  # the offer at the first call
    forwarded = decode(data)
    assert decode(offer) == Features(merged_answers=True)
    assert isinstance(forwarded, ReplyBatch) and forwarded.entries == ((3, True, b"\xc0", 99, -1),)
    assert c.clients.table.status().calls == 0 and not c.member.calls


def test_the_outbox_sends_one_turns_ordered_calls_together_and_refuses_what_cannot_fit() -> None:
    node = FakeNode()
    c = paths(node, FakeHost())
    for i in range(3):
        c.outbox.submit(SHARD, _codec.PendingCall(1, i, "post", b"x"))
    assert node.multicast == []
    node.run_all()
    ((shard, (payload,)),) = node.multicast
    assert [call[1] for call in _codec.decode_ordered(payload)] == [0, 1, 2]  # type: ignore[union-attr]
    assert c.outbox.too_large("post", b"x") is None
    with pytest.raises(Exception, match="multicast.max_message_size"):
        c.outbox.check_size("Feed.post", "post", bytes(1 << 20))


def test_a_frame_beyond_one_turns_budget_goes_on_in_chunks_as_it_is_taken() -> None:
    """A client's frame of more calls than a turn takes: each turn's calls leave as a multicast
    message at its end, before the next turn takes more (the replicas start on the first
    chunk meanwhile), all in order."""
    node = FakeNode()
    c = paths(node, FakeHost(), view=one_view(1, 2), specs={"Feed": OrderedSpec()})
    conn = FakeConn("10.0.0.3:3")
    n = 2 * CALLS_PER_TURN + 5
    c.turns.on_calls(conn, tuple(Call(i, 0, SHARD, "post", True, b"\x91\x01") for i in range(1, n + 1)))  # type: ignore[arg-type]
    assert len(node.multicast) == 1  # the first turn's calls went at once
    node.run_all()
    sizes = [len(_codec.decode_ordered(p)) for _, payloads in node.multicast for p in payloads]  # type: ignore[arg-type]
    assert sizes == [CALLS_PER_TURN, CALLS_PER_TURN, 5]
    ids = [call[1] for _, payloads in node.multicast for p in payloads for call in _codec.decode_ordered(p)]  # type: ignore[union-attr]
    assert ids == list(range(1, n + 1))


def test_answers_handed_over_before_the_loop_runs_go_on_together_in_order() -> None:
    """A replica's thread hands answers over; those that come before the loop runs join the
    one hand-off pending (P2P calls are answered one by one: a wake-up each would cost more
    than the answer)."""
    node = FakeNode()
    c = paths(node, FakeHost())
    for i in range(5):
        c.replies.send([(2, Reply(i, 1, 1, (1,), True, b"\xc0", 0))])
    assert len(node.timers) == 1  # one hand-off pending, however many answers
    node.run_all()
    ((to, data),) = node.sent
    batch = decode(data)
    assert to == 2 and isinstance(batch, ReplyBatch) and [e[0] for e in batch.entries] == [0, 1, 2, 3, 4]
    c.replies.send([(2, Reply(9, 1, 1, (1,), True, b"\xc0", 0))])
    assert len(node.timers) == 1  # a new hand-off once the last one ran
    node.run_all()
    assert [e[0] for e in decode(node.sent[-1][1]).entries] == [9]  # type: ignore[union-attr]


class OrderedSpec:
    name = "Feed"
    methods = {"post": "ordered"}
    serializer = "msgpack"
    on_divergence = "raise"
    persistent = False


def test_a_relayed_call_goes_again_through_another_relay_when_its_relay_leaves() -> None:
    """Node 1 holds no replica: its ordered call goes to a relay, numbered in node 1's session;
    when that relay leaves, the same call (same number, same session) goes to the next."""
    node = FakeNode()
    policy = LayoutPolicy.of({"Feed": ShardPolicy(min_nodes=2, max_nodes=3)})
    view = View(1, (1, 2, 3, 4), ("a", "b", "c", "d"), compute_layout(policy, (2, 3, 4)))
    current = [view]
    c = paths(node, FakeHost(holds=False))
    c.member.view = lambda: current[0]
    results = c.member.call(OrderedSpec(), SHARD, "post", (1,), {}, None)  # type: ignore[arg-type]
    node.run_all()
    ((relay, data),) = node.sent
    first = decode(data)
    assert relay == 3 and isinstance(first, Call) and first.ordered and first.origin == c.member.origin
    after = View(2, (1, 2, 4), ("a", "b", "d"), compute_layout(policy, (2, 4)))
    current[0] = after
    c.on_view(view, after)
    ((relay, data),) = node.sent[1:]
    again = decode(data)
    assert relay == 4 and isinstance(again, Call)
    assert (again.call_id, again.origin, again.session_ns) == (first.call_id, first.origin, first.session_ns)
    assert not results.done() and c.member.calls[first.call_id].relay == 4


def test_stable_marks_reach_the_replica_only_while_reads_wait() -> None:
    node, host = FakeNode(), FakeHost()
    c = paths(node, host)
    c.stable.on_stable(SHARD, 1, 5)
    assert host.told == []  # no read waits: one dict update, nothing told
    c.inbound.run_p2p(SHARD, TO, CallKind.METHOD, "get", encode_read(ReadOptions(STABLE), b"\x90"))
    ((_, read),) = host.told
    assert isinstance(read, P2PRequest) and read.mark == (1, 5) and read.seq == 1
    c.stable.on_stable(SHARD, 1, 6)
    assert [type(m).__name__ for _, m in host.told] == ["P2PRequest", "StableMark"]
    node.fire_next()  # the sync: an empty multicast moves every member's delivered count
    ((shard, (payload,)),) = node.multicast
    assert shard == SHARD and _codec.decode_ordered(payload) == []


def test_a_clients_refusals_of_one_turn_go_in_one_batch_per_view() -> None:
    node = FakeNode()
    c = paths(node, FakeHost())
    conn = FakeConn("10.0.0.4:4")
    out = c.clients.out
    for call_id, vid in ((1, 3), (2, 3), (3, 4)):
        out.refuse(conn, ReplyTo(1, call_id, vid, 99), ReplicaLost("gone", applied=False))  # type: ignore[arg-type]
    out.send(conn, b"first")  # type: ignore[arg-type]
    node.run_all()
    ((to, messages),) = node.to_clients
    assert to is conn and messages[0] == b"first"
    batches = [decode(m) for m in messages[1:]]
    assert [(b.vid, [e[0] for e in b.entries]) for b in batches] == [(3, [1, 2]), (4, [3])]  # type: ignore[union-attr]
    assert batches[0].entries[0][2] is batches[1].entries[0][2] or batches[0].entries[0][2] == batches[1].entries[0][2]  # type: ignore[union-attr]


A, B = b"\x01", b"\x02"


@pytest.mark.parametrize(
    "merged, answers, departs, expected",
    [
        # Every replica answers alike: one value for the call, from all of them.
        (True, [(1, A), (2, A), (3, A)], None, [AnswerBatch(1, (1, 2, 3), ((7, True, A, -1, ()),))]),
        # The last differs: what was held goes as each replica gave it, then the last one.
        (
            True,
            [(1, A), (2, A), (3, B)],
            None,
            [ReplyBatch(n, 1, (1, 2, 3), ((7, True, v, 99, -1),)) for n, v in [(1, A), (2, A), (3, B)]],
        ),
        # The second differs: from there on every answer goes as it came.
        (
            True,
            [(1, A), (2, B), (3, B)],
            None,
            [ReplyBatch(n, 1, (1, 2, 3), ((7, True, v, 99, -1),)) for n, v in [(1, A), (2, B), (3, B)]],
        ),
        # A replica leaves before answering: the others' agreed answer goes, naming who gave it.
        (True, [(1, A), (2, A)], 3, [AnswerBatch(1, (1, 2, 3), ((7, True, A, -1, (1, 2)),))]),
        # A client that did not say it reads merged answers gets each replica's as it came.
        (
            False,
            [(1, A), (2, A), (3, A)],
            None,
            [ReplyBatch(n, 1, (1, 2, 3), ((7, True, A, 99, -1),)) for n in (1, 2, 3)],
        ),
    ],
)
def test_a_contact_merges_its_clients_answers_when_the_replicas_agree(
    merged: bool, answers: list[tuple[int, bytes]], departs: int | None, expected: list[Any]
) -> None:
    node = FakeNode()
    c = paths(node, FakeHost(), view=one_view(1, 2, 3), specs={"Feed": OrderedSpec()})
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(7, 0, SHARD, "post", True, b"\x90"))
    if merged:
        c.clients.accept_features(conn, Features(merged_answers=True))
    for n, value in answers:
        c.replies.take_batch(ReplyBatch(n, 1, (1, 2, 3), ((7, True, value, 99, -1),)))
    if departs is not None:
        c.clients.on_departed({departs}, one_view(*(m for m in (1, 2, 3) if m != departs)))
    node.run_all()
    sent = [decode(m) for to, messages in node.to_clients for m in messages if to is conn]
    assert sent[0] == Features(merged_answers=True)  # offered at the client's first call
    assert sent[1:] == expected
    assert c.clients.table.status().calls == 0


def test_a_merged_answer_goes_when_the_replica_missing_left_before_the_others_answered() -> None:
    """The departure reached the contact first, the survivors' answers (of the view before)
    after: they go at once, not held for a replica that will never answer."""
    node = FakeNode()
    current = [one_view(1, 2, 3)]
    c = paths(node, FakeHost(), specs={"Feed": OrderedSpec()})
    c.clients.view = lambda: current[0]
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(7, 0, SHARD, "post", True, b"\x90"))
    c.clients.accept_features(conn, Features(merged_answers=True))
    after = one_view(1, 2)
    current[0] = View(2, after.members, after.addresses, after.layout)
    c.clients.on_departed({3}, current[0])
    for n in (1, 2):
        c.replies.take_batch(ReplyBatch(n, 1, (1, 2, 3), ((7, True, A, 99, -1),)))
    node.run_all()
    sent = [decode(m) for _, messages in node.to_clients for m in messages]
    assert sent[1:] == [AnswerBatch(1, (1, 2, 3), ((7, True, A, -1, (1, 2)),))]
    assert c.clients.table.status().calls == 0


def test_a_replica_joining_in_a_view_the_contact_has_not_installed_is_waited_for() -> None:
    """Answers from view 2 reach a contact still in view 1, which lacks node 3 (it joins in view
    2, after a restart): node 3 has not left, so the answer waits for it (the simulator found a
    call that never completed when node 3's answer then found no call kept for it)."""
    node = FakeNode()
    before = one_view(1, 2)
    c = paths(node, FakeHost(), specs={"Feed": OrderedSpec()})
    c.clients.view = lambda: before
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(7, 0, SHARD, "post", True, b"\x90"))
    c.clients.accept_features(conn, Features(merged_answers=True))
    for n in (1, 2):
        c.replies.take_batch(ReplyBatch(n, 2, (1, 2, 3), ((7, True, A, 99, -1),)))
    node.run_all()
    assert [type(decode(m)) for _, messages in node.to_clients for m in messages] == [Features]  # held
    c.replies.take_batch(ReplyBatch(3, 2, (1, 2, 3), ((7, True, A, 99, -1),)))
    node.run_all()
    sent = [decode(m) for _, messages in node.to_clients for m in messages]
    assert sent[1:] == [AnswerBatch(2, (1, 2, 3), ((7, True, A, -1, ()),))]
    assert c.clients.table.status().calls == 0


@pytest.mark.parametrize("budget, merged", [(8 << 20, True), (len(A), True), (len(A) - 1, False)])
def test_answers_held_for_merging_are_bounded_per_connection(budget: int, merged: bool) -> None:
    """A connection's answers held until every replica gave them stay within its budget
    (``limits.client_max_backlog_bytes``); beyond, they go on as each replica gives them. The
    count falls back to nothing once the answers went."""
    node = FakeNode()
    c = paths(node, FakeHost(), view=one_view(1, 2, 3), specs={"Feed": OrderedSpec()})
    c.clients.table.max_held_bytes = budget
    conn = FakeConn("10.0.0.3:3")
    c.clients.take_call(conn, Call(7, 0, SHARD, "post", True, b"\x90"))
    c.clients.accept_features(conn, Features(merged_answers=True))
    client = c.clients.table.state(conn)
    c.replies.take_batch(ReplyBatch(1, 1, (1, 2, 3), ((7, True, A, 99, -1),)))
    assert client.held == (len(A) if merged else 0)
    for n in (2, 3):
        c.replies.take_batch(ReplyBatch(n, 1, (1, 2, 3), ((7, True, A, 99, -1),)))
    node.run_all()
    sent = [decode(m) for _, messages in node.to_clients for m in messages][1:]
    if merged:
        assert sent == [AnswerBatch(1, (1, 2, 3), ((7, True, A, -1, ()),))]
    else:
        assert sent == [ReplyBatch(n, 1, (1, 2, 3), ((7, True, A, 99, -1),)) for n in (1, 2, 3)]
    assert client.held == 0 and c.clients.table.status().calls == 0


def test_a_lone_clients_call_is_multicast_at_once_and_a_turns_other_frames_at_its_end() -> None:
    """Calls made one at a time leave in the turn that read them (``client_turns.LONE_CALLS``);
    a larger frame, or another frame in the same turn, goes at the turn's end as before."""
    node = FakeNode()
    c = paths(node, FakeHost(), view=one_view(1, 2), specs={"Feed": OrderedSpec()})
    conn = FakeConn("10.0.0.3:3")
    c.turns.on_calls(conn, (Call(1, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 1  # at once
    c.turns.on_calls(conn, (Call(2, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 1  # the turn's second frame waits for its end
    node.run_all()
    assert len(node.multicast) == 2
    big = tuple(Call(i, 0, SHARD, "post", True, b"\x91\x01") for i in range(3, 3 + LONE_CALLS + 1))
    c.turns.on_calls(conn, big)  # type: ignore[arg-type]
    assert len(node.multicast) == 2  # not lone: at the turn's end
    node.run_all()
    ids = [call[1] for _, payloads in node.multicast for p in payloads for call in _codec.decode_ordered(p)]  # type: ignore[union-attr]
    assert ids == list(range(1, 3 + LONE_CALLS + 1))


def test_a_lone_frame_arms_no_outbox_timer_and_its_calls_go_even_if_taking_fails() -> None:
    """A lone frame's calls are sent as it is read (``Outbox.hold``/``release``): the only timer
    left is the turn budget's, not an outbox flush that would find nothing; a take that fails
    midway still sends what it queued (as the outbox's timer would have)."""
    node = FakeNode()
    c = paths(node, FakeHost(), view=one_view(1, 2), specs={"Feed": OrderedSpec()})
    conn = FakeConn("10.0.0.3:3")
    c.turns.on_calls(conn, (Call(1, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 1
    node.run_all()  # a new client's first frame also queues the offer of merged answers
    c.turns.on_calls(conn, (Call(2, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 2
    assert [getattr(fn, "__name__", "") for _, fn, _ in node.timers] == ["next_turn"]
    node.run_all()
    take = c.turns.take

    def failing(conn: Any, calls: Any) -> None:
        take(conn, calls)
        raise RuntimeError("a bug after the calls were queued")

    c.turns.take = failing
    with pytest.raises(RuntimeError):
        c.turns.on_calls(conn, (Call(3, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 3  # sent at once all the same
    c.turns.take = take
    node.run_all()
    c.turns.on_calls(conn, (Call(4, 0, SHARD, "post", True, b"\x91\x01"),))  # type: ignore[arg-type]
    assert len(node.multicast) == 4  # the hold ended: later lone frames go at once too
    c.outbox.submit(SHARD, _codec.PendingCall(1, 9, "post", b"\x91\x01"))
    assert any(getattr(fn, "__name__", "") == "_flush" for _, fn, _ in node.timers)  # outside a hold: timed
    node.run_all()
    ids = [call[1] for _, payloads in node.multicast for p in payloads for call in _codec.decode_ordered(p)]  # type: ignore[union-attr]
    assert ids == [1, 2, 3, 4, 9]


def test_answers_held_while_the_loop_waits_go_when_it_takes_them_not_through_a_wake_up() -> None:
    node = FakeNode()
    c = paths(node, FakeHost())
    c.replies.hold()
    c.replies.send([(2, Reply(1, 1, 1, (1,), True, b"\xc0", 0))])  # from the replica's thread
    assert node.timers == [] and node.sent == []
    c.replies.take_held()
    ((to, data),) = node.sent
    assert to == 2 and [e[0] for e in decode(data).entries] == [1]  # type: ignore[union-attr]
    c.replies.send([(2, Reply(2, 1, 1, (1,), True, b"\xc0", 0))])  # after the take: a hand-off as before
    assert len(node.timers) == 1
    node.run_all()
    assert [e[0] for e in decode(node.sent[-1][1]).entries] == [2]  # type: ignore[union-attr]
