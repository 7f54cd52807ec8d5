"""``ClientSession`` alone, no sockets: bytes and clock readings in, frames and steps out. A
fake contact speaks the wire (Welcome, answers, view notices, goodbyes) and reads what the
session writes (its Hello, its calls)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from derecho_actors.caller.calls import Request
from derecho_actors.caller.handles import WindowedCaller, spec_checked
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session import ClientSession, Dial, Disconnect, Phase, Stop, Wait
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import (
    AnswerBatch,
    Call,
    CallBatch,
    CallKind,
    Features,
    ReplyBatch,
    ViewNotice,
    decode,
    encode,
)
from runtime.core.layout import ShardId
from runtime.errors import GroupClosed, Refused, ReplicaLost, ShardUnavailable
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage, Goodbye, GoodbyeKind, Hello, Ping, Pong, Welcome

SHARD = ShardId("KV", 0, 0)
CONTACTS = ["a:1", "b:2", "c:3"]


def session(contacts: list[str] = CONTACTS, **kwargs: Any) -> ClientSession:
    return ClientSession(contacts, "test", session_ns=123, rng=random.Random(7), **kwargs)


def call(s: ClientSession, n: int, ordered: bool = True) -> QueryResults:
    return s.call(Request(SHARD, CallKind.METHOD, "put", msgpack.packb(n), ordered, 0, f"KV.put({n})", msgpack.unpackb))


def connect(s: ClientSession, now: float = 0.0) -> tuple[str, list[Any]]:
    """Dial the next contact and connect: (its address, what the session wrote first)."""
    step = s.next_step(now)
    assert isinstance(step, Dial), step
    return step.address, written(s.connected(now, step.address))


def written(data: bytes) -> list[Any]:
    """The session's frames, calls taken out of their batches."""
    out: list[Any] = []
    for item in FrameDecoder().feed(data):
        if isinstance(item, AppMessage):
            msg = decode(item.data)
            out.extend(msg.calls if isinstance(msg, CallBatch) else [msg])
        else:
            out.append(item)
    return out


def feed(s: ClientSession, now: float, data: bytes) -> Disconnect | None:
    """Bytes from the contact, and the answers in them delivered, as the drivers do."""
    ended = s.receive_data(now, data)
    answers = s.answers()
    if answers is not None:
        s.answered(answers.deliver())
    return ended


def ids(frames: list[Any]) -> list[int]:
    return [f.call_id for f in frames if isinstance(f, Call)]


def answer(node: int, replicas: tuple[int, ...], *entries: tuple[int, bool, bytes], vid: int = 1) -> bytes:
    batch = ReplyBatch(node, vid, replicas, tuple((cid, ok, value, 0, -1) for cid, ok, value in entries))
    return frame(AppMessage(encode(batch)))


def ok(call_id: int, value: Any) -> tuple[int, bool, bytes]:
    return (call_id, True, msgpack.packb(value))


WELCOME = frame(Welcome(4096, 8192, 30_000))


def test_failover_resends_the_unanswered_calls_in_order_in_the_same_session() -> None:
    s = session()
    first, hello = connect(s)
    assert isinstance(hello[0], Hello) and hello[0].node_id == s.session and hello[0].incarnation == 123
    results = [call(s, n) for n in range(1, 5)]
    assert feed(s, 0.05, WELCOME) is None
    assert ids(written(s.data_to_send())) == [1, 2, 3, 4]
    assert feed(s, 0.1, answer(1, (1,), ok(2, "two"))) is None
    assert results[1].get(0) == {1: "two"}
    s.connection_lost(0.2, "reset")
    second, frames = connect(s, 0.3)
    assert second != first
    hello2 = frames[0]
    assert isinstance(hello2, Hello) and (hello2.node_id, hello2.incarnation) == (s.session, 123)
    assert ids(frames) == [], "the Hello alone: the calls wait for the contact's Welcome"
    assert feed(s, 0.35, WELCOME) is None
    assert ids(written(s.data_to_send())) == [1, 3, 4], "every unanswered call again, in order, under its number"
    assert s.connections == 2 and s.connected_to == second
    feed(s, 0.4, answer(2, (2,), ok(1, "one"), ok(3, "three"), ok(4, "four")))
    assert [r.get(0) for r in results] == [{2: "one"}, {1: "two"}, {2: "three"}, {2: "four"}]
    assert s.in_flight == 0


def test_calls_made_while_disconnected_go_once_the_connection_is_up() -> None:
    s = session()
    call(s, 1)
    assert s.data_to_send() == b"" and not s.has_output()
    _, frames = connect(s)
    assert ids(frames) == [] and s.data_to_send() == b"", "the Hello alone, until the contact's Welcome"
    feed(s, 0.1, WELCOME)
    assert ids(written(s.data_to_send())) == [1]
    assert s.data_to_send() == b"", "sent once, not twice"
    call(s, 2)
    assert ids(written(s.data_to_send())) == [2]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # a replica answering twice (a resend's first reply comes back again): counted once
        (
            [answer(1, (1, 2), ok(1, "x")), answer(1, (1, 2), ok(1, "y")), answer(2, (1, 2), ok(1, "x"))],
            {1: "x", 2: "x"},
        ),
        # answers of calls the session does not know (answered already, or never made): ignored
        ([answer(1, (1,), ok(99, "z"), ok(1, "x"))], {1: "x"}),
        # every replica of the call answers: done once the last does
        ([answer(1, (1, 2), ok(1, "x")), answer(2, (1, 2), ok(1, "x"))], {1: "x", 2: "x"}),
    ],
)
def test_replies_are_matched_to_their_calls_once(frames: list[bytes], expected: dict[int, Any]) -> None:
    s = session()
    connect(s)
    r = call(s, 1)
    for data in frames:
        feed(s, 0.1, data)
    assert r.done() and r.wait_all(0) == expected and s.in_flight == 0


def test_a_refusal_fails_its_call_and_no_other() -> None:
    s = session()
    connect(s)
    first, second, third = call(s, 1), call(s, 2), call(s, 3)
    refusal = _codec.encode_refusal(ShardUnavailable("call 2 was not run: no shard KV/0/0"))
    feed(s, 0.1, answer(1, (1,), ok(1, "a"), (2, False, refusal), ok(3, "c")))
    assert first.get(0) == {1: "a"} and third.get(0) == {1: "c"}
    with pytest.raises(ShardUnavailable, match="call 2 was not run"):
        second.get(0)
    assert s.in_flight == 0


def test_a_view_notice_resolves_calls_whose_replicas_left() -> None:
    s = session()
    connect(s)
    r = call(s, 1)
    feed(s, 0.1, answer(1, (1, 2), ok(1, "a")))
    assert not r.done()
    feed(s, 0.2, notice(2, (2,)))
    assert r.get(0) == {1: "a"} and set(r.lost) == {2} and s.in_flight == 0
    # In one read: node 2's answer, then the notice that it left: the answer came first and counts.
    r2 = call(s, 2)
    feed(s, 0.3, answer(2, (1, 2), ok(2, "b"), vid=1) + notice(2, (2,)))
    assert not r2.done() and r2.pending == (1,)
    feed(s, 0.4, answer(1, (1, 2), ok(2, "b"), vid=1))
    assert r2.get(0) == {1: "b", 2: "b"} and not r2.lost


def notice(vid: int, departed: tuple[int, ...]) -> bytes:
    return frame(AppMessage(encode(ViewNotice(vid, (), departed, ""))))


def test_a_node_that_left_and_came_back_answers_the_resent_call() -> None:
    """Node 12 left in view 1 before answering; the group restarted (view 2) with node 12 in
    it again, and the call, sent again, is answered there: the answer counts (it hung, the
    results waiting for themselves, before the simulator ran client sessions)."""
    s = session()
    connect(s)
    r = call(s, 1)
    feed(s, 0.1, notice(1, (12,)))
    s.connection_lost(0.2, "reset")
    connect(s, 0.3)
    feed(s, 0.4, answer(12, (12,), ok(1, "v"), vid=2))
    assert r.get(0) == {12: "v"} and s.in_flight == 0


@pytest.mark.parametrize("vid", [None, 0])
def test_a_late_answer_from_before_a_departure_still_counts_the_departed_as_lost(vid: int | None) -> None:
    r = QueryResults("KV.put", msgpack.unpackb)
    r.mark_left({2}, "left the group in view 3", None if vid is None else 3)
    r.add_reply(1, (1, 2), True, msgpack.packb("a"), vid=vid)  # delivered before node 2 left
    assert r.done() and r.get(0) == {1: "a"} and set(r.lost) == {2}
    gone = QueryResults("KV.get", msgpack.unpackb)
    gone.mark_left({1}, "left the group")  # no view known (a member's router): its own answer still counts
    gone.add_reply(1, (1,), True, msgpack.packb("b"))
    assert gone.done() and gone.get(0) == {1: "b"}


# What the session does after a connection ends, by what the contact said on it.
# (contacts, goodbyes said before any answer on connections in a row, answered last) -> back off?
@pytest.mark.parametrize(
    ("contacts", "turned_away", "answered_last", "backs_off"),
    [
        (3, 1, False, False),  # one contact turned us away: try the next at once
        (3, 3, False, True),  # every contact did: wait (with jitter) before the next round
        (1, 1, False, True),  # the only contact did
        (3, 3, True, False),  # the last one answered before its goodbye (an idle close): no wait
    ],
)
def test_a_goodbye_before_any_answer_backs_off_once_every_contact_said_one(
    contacts: int, turned_away: int, answered_last: bool, backs_off: bool
) -> None:
    s = session(CONTACTS[:contacts])
    r = call(s, 1)
    now = 0.0
    for i in range(turned_away):
        connect(s, now)
        feed(s, now, WELCOME)
        if answered_last and i == turned_away - 1:
            feed(s, now, answer(1, (1, 2), ok(1, "a")))
        ended = feed(s, now, frame(Goodbye("node 3 is joining the group and not in a view yet; call another member")))
        assert isinstance(ended, Disconnect) and s.phase is Phase.DISCONNECTED
        now += 0.001
    step = s.next_step(now)
    if backs_off:
        assert isinstance(step, Wait) and step.until > now
        assert "the last contact said: node 3 is joining" in (s.why_waiting() or "")
        assert isinstance(s.next_step(step.until), Dial)
    else:
        assert isinstance(step, Dial)
    assert not r.done(), "turned away is not refused: the call waits for a contact that serves"


def test_a_refusing_goodbye_is_final() -> None:
    goodbye = Goodbye("wrong cluster name", GoodbyeKind.REFUSED)  # the kind says it, not the words
    s = session()
    connect(s)
    r = call(s, 1)
    ended = feed(s, 0.1, frame(goodbye))
    assert isinstance(ended, Disconnect)
    step = s.next_step(0.2)
    assert isinstance(step, Stop) and isinstance(step.error, Refused) and "wrong cluster name" in str(step.error)
    with pytest.raises(Refused):
        r.get(0)
    with pytest.raises(Refused):
        call(s, 2)


def test_a_closing_goodbye_is_not_final_whatever_its_words() -> None:
    s = session()
    connect(s)
    r = call(s, 1)
    assert isinstance(feed(s, 0.1, frame(Goodbye("refused: only words"))), Disconnect)
    assert isinstance(s.next_step(0.2), Dial)  # fails over: the kind, not the reason, is final
    assert not r.done()


def test_unreachable_contacts_back_off_each_round_then_give_up_after_retry_for() -> None:
    s = session(retry_for=5.0)
    r = call(s, 1)
    now = 0.0
    waits = []
    while True:
        step = s.next_step(now)
        if isinstance(step, Stop):
            break
        if isinstance(step, Wait):
            waits.append(step.until - now)
            now = step.until
            continue
        s.dial_failed(now, step.address, "Connection refused")
        now += 0.01
    assert waits and all(w > 0 for w in waits) and max(waits) <= 3.0
    assert isinstance(step.error, GroupClosed) and "no member of the group reachable among a:1, b:2, c:3" in str(
        step.error
    )
    with pytest.raises(GroupClosed):
        r.get(0)
    assert now >= 5.0


def test_a_silent_contact_is_given_up_while_calls_wait_and_pinged_while_idle() -> None:
    s = session(liveness_timeout=1.0)
    connect(s)
    feed(s, 0.0, WELCOME)  # idle_timeout 30 s: idle pings every 10 s
    assert s.tick(5.0) is None and s.data_to_send() == b"", "idle: no ping before 10 s"
    assert s.tick(10.5) is None
    assert [type(f) for f in written(s.data_to_send())] == [Ping]
    feed(s, 10.6, frame(Pong(1)))
    call(s, 1)
    s.data_to_send()
    due = s.next_timer()
    assert due is not None and due <= 10.6 + 0.25 + 1e-9
    assert s.tick(due) is None and [type(f) for f in written(s.data_to_send())] == [Ping], "busy: ping every quarter"
    ended = s.tick(12.0)
    assert isinstance(ended, Disconnect) and s.phase is Phase.DISCONNECTED
    assert s.in_flight == 1, "the call waits for the next contact"


def test_close_fails_every_waiting_call_and_later_calls() -> None:
    s = session()
    connect(s)
    r = call(s, 1)
    s.close(0.5)
    with pytest.raises(GroupClosed, match="closed"):
        r.get(0)
    with pytest.raises(GroupClosed):
        call(s, 2)
    assert isinstance(s.next_step(1.0), Stop)


def test_the_welcome_sets_the_contacts_limits() -> None:
    s = session()
    connect(s)
    feed(s, 0.0, WELCOME)
    assert (s.max_message_size, s.max_frame, s.welcomed) == (4096, 8192, True)


def test_p2p_calls_lost_with_their_replica_say_not_applied() -> None:
    s = session()
    connect(s)
    r = call(s, 1, ordered=False)
    feed(s, 0.0, answer(1, (1,), (1, False, _codec.encode_refusal(ReplicaLost("gone", applied=False)))))
    with pytest.raises(ReplicaLost):
        r.get(0)


class EchoCaller:
    """A ``Caller`` of no group at all: answers every call at once through the results'
    producer side, as a member's router or a client's session does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def call(self, spec: Any, shard: ShardId, method: str, args: Any, kwargs: Any, node: Any, read: Any = None) -> Any:
        self.calls.append((method, args))
        results = QueryResults(f"{spec.name}.{method}", lambda b: b)
        results.expect((1,))
        results.add_reply(1, (1,), True, args[0])
        return results

    def watch_poll(self, shard: ShardId, what: str, poll: Any, node: Any) -> Any:
        results = QueryResults(what, lambda b: b)
        events = [(7, 0, _codec.encode_result("hello", "msgpack"))]
        results.add_reply(1, (1,), True, ((7, 0), events))  # type: ignore[arg-type]  # decoded by the identity
        return results


def test_handles_and_watches_work_over_any_caller() -> None:
    import derecho_actors as da

    @da.replicated
    class Box:
        @da.ordered
        def put(self, v: bytes) -> bytes:
            return v

    caller, spec = EchoCaller(), spec_checked(Box)
    box = da.Handle(caller, spec, ShardId("Box", 0, 0))
    assert box.put(b"x").get(0) == {1: b"x"} and caller.calls == [("put", (b"x",))]
    assert not isinstance(caller, WindowedCaller), "a caller without a window: asyncio does not await room"
    watch = da.Watch.over(caller, spec, ShardId("Box", 0, 0), since=-1)
    event = watch.next(timeout=1)
    assert event is not None and (event.version, event.value) == (7, "hello")


def merged(replicas: tuple[int, ...], *entries: tuple[int, bool, bytes, tuple[int, ...]], vid: int = 1) -> bytes:
    batch = AnswerBatch(vid, replicas, tuple((cid, ok_, value, -1, by) for cid, ok_, value, by in entries))
    return frame(AppMessage(encode(batch)))


def test_the_session_reads_merged_answers_once_the_contact_offers_them() -> None:
    s = session()
    connect(s)
    feed(s, 0.1, frame(AppMessage(encode(Features(merged_answers=True)))))
    assert Features(merged_answers=True) in written(s.data_to_send())  # it says it reads them
    r1, r2, r3 = call(s, 1), call(s, 2), call(s, 3)
    feed(s, 0.2, merged((1, 2, 3), (1, True, msgpack.packb("a"), ()), (2, True, msgpack.packb([1]), ())))
    assert r1.get(0) == {1: "a", 2: "a", 3: "a"}
    lists = r2.get(0)
    assert lists == {1: [1], 2: [1], 3: [1]}
    lists[1].append(2)  # a mutable answer is each replica's own, as if each had sent it
    assert lists[2] == [1]
    # Some replicas agreed, one left before answering: the call is done once the notice says so.
    feed(s, 0.3, merged((1, 2, 3), (3, True, msgpack.packb("c"), (1, 2))))
    assert not r3.done()
    feed(s, 0.4, notice(2, (3,)))
    assert r3.get(0) == {1: "c", 2: "c"} and set(r3.lost) == {3} and s.in_flight == 0


def test_answers_that_differ_reach_the_divergence_check_even_after_merged_ones() -> None:
    s = session()
    connect(s)
    r = s.call(Request(SHARD, CallKind.METHOD, "put", b"", True, 0, "KV.put", msgpack.unpackb, "raise"))
    feed(s, 0.1, answer(1, (1, 2), ok(1, "a")))
    feed(s, 0.2, merged((1, 2), (1, True, msgpack.packb("b"), (2,))))
    with pytest.raises(Exception, match="differ|diverge"):
        r.get(0)


def _refusal(call_id: int, exc_name: str, message: str) -> tuple[int, bool, bytes]:
    return (call_id, False, msgpack.packb([exc_name, message, ""]))  # a contact's own error: no traceback


def test_a_refusal_of_a_call_sent_again_after_its_connection_ended_is_an_unknown_outcome() -> None:
    """The contact says "not run" of the copy it refused; a copy in flight on the connection
    that ended may have been applied (a false failover back to a busy contact did that)."""
    from runtime.errors import ClientLimit

    s = session()
    connect(s)
    feed(s, 0.1, WELCOME)
    sent_before = call(s, 1)
    s.data_to_send()
    s.connection_lost(0.2, "no answer in time")
    made_after = call(s, 2)  # never on a connection that ended: a refusal stands as "not run"
    connect(s, 0.3)
    feed(s, 0.35, WELCOME)
    assert ids(written(s.data_to_send())) == [1, 2]
    feed(s, 0.4, answer(2, (2,), _refusal(1, "ClientLimit", "refused: too many bytes; the call was not run")))
    feed(s, 0.4, answer(2, (2,), _refusal(2, "ClientLimit", "refused: too many calls; the call was not run")))
    first = sent_before.wait_all(0)[2]
    assert isinstance(first, ClientLimit) and first.applied is None
    assert "an earlier copy may have been applied" in str(first)
    second = made_after.wait_all(0)[2]
    assert isinstance(second, ClientLimit) and second.applied is False
