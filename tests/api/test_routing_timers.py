"""The router's loop-side bookkeeping, in-process on a fake node (fast):

- parked watch polls expire on the clock the node's timers run on: a timer that runs before
  its deadline re-arms (it used to leave no timer pending, so polls never expired), a step
  of the wall clock changes nothing, and a poll with an earlier deadline re-arms earlier;
- a client's call that fails while clients take turns closes that client only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

from derecho_actors._events import PollArgs, PollCall, WatchExpire, WatchPoll, encode_poll
from derecho_actors._messages import Call
from derecho_actors._routing import CALLS_PER_TURN, HOLD_SLACK, CallRouter
from runtime.core.layout import ShardId

SHARD = ShardId("Feed", 0, 0)


class FakeNode:
    """What the router uses of a node: timers are recorded, run by the test."""

    node_id = 1
    incarnation = 1

    def __init__(self) -> None:
        self.now = 100.0  # the timer clock, seconds
        self.wall = 1_800_000_000 * 10**9
        self.timers: list[tuple[float, Callable[..., Any], tuple[Any, ...]]] = []  # (due, fn, args)

    def wall_ns(self) -> int:
        return self.wall

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.timers.append((self.now + delay, fn, args))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        self.call_later(0, fn, *args)
        return True

    def expiry_timers(self) -> list[tuple[float, Callable[..., Any], tuple[Any, ...]]]:
        return [t for t in self.timers if getattr(t[1], "__name__", "") == "_expire_due"]

    def fire_next(self, early: float = 0.0) -> None:
        """Run the soonest timer, ``early`` seconds before its time on the clock."""
        self.timers.sort(key=lambda t: t[0])
        due, fn, args = self.timers.pop(0)
        self.now = max(self.now, due - early)
        fn(*args)


class FakeHost:
    def __init__(self) -> None:
        self.told: list[tuple[ShardId, Any]] = []

    def tell(self, shard: ShardId, msg: Any) -> bool:
        self.told.append((shard, msg))
        return True

    def holds(self, shard: ShardId) -> bool:
        return True


def router(node: FakeNode, host: FakeHost) -> CallRouter:
    return CallRouter(
        node,  # type: ignore[arg-type]
        1 << 20,
        lambda: None,
        lambda: None,
        host,
        None,
        lambda shard: None,
        {},
    )


def park(r: CallRouter, call_id: int, hold: float) -> None:
    r.p2p_here(SHARD, 1, 2, call_id, "__watch__", encode_poll(PollArgs(call_id, None, 10, hold)), 0)


def expired(host: FakeHost) -> list[int]:
    return [c.call_id for _, m in host.told if isinstance(m, WatchExpire) for c in m.calls]


def test_a_timer_running_early_re_arms_and_the_poll_expires() -> None:
    node, host = FakeNode(), FakeHost()
    r = router(node, host)
    park(r, 7, 5.0)
    assert [m for _, m in host.told if isinstance(m, WatchPoll)]
    assert len(node.expiry_timers()) == 1
    node.wall -= 3600 * 10**9  # the wall clock steps back an hour: no matter
    node.fire_next(early=0.25)  # runs 250 ms before the deadline (105.0) on the timer clock
    assert expired(host) == []
    assert len(node.expiry_timers()) == 1, "a timer that ran early left no timer pending"
    node.fire_next(early=HOLD_SLACK / 2)  # within the slack: due
    assert expired(host) == [7]
    assert node.expiry_timers() == [] and not r._expiries and r._timer is None
    park(r, 8, 1.0)  # the next poll arms a timer again
    node.fire_next()
    assert expired(host) == [7, 8]


def test_an_earlier_deadline_re_arms_earlier_and_the_later_poll_still_expires() -> None:
    node, host = FakeNode(), FakeHost()
    r = router(node, host)
    park(r, 1, 30.0)
    park(r, 2, 1.0)  # earlier than the pending timer: a new one, the first superseded
    park(r, 3, 10.0)  # later: no new timer
    assert len(node.expiry_timers()) == 2
    node.fire_next()
    assert expired(host) == [2] and node.now == pytest.approx(101.0)
    node.fire_next()
    assert expired(host) == [2, 3] and node.now == pytest.approx(110.0)
    node.fire_next()  # the superseded timer, at 130: it does nothing itself ...
    node.fire_next()  # ... the live one, also at 130, expires the poll
    assert expired(host) == [2, 3, 1]
    assert node.expiry_timers() == [] and r._timer is None


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
    r = router(node, host)
    bad, good = FakeConn("10.0.0.1:1"), FakeConn("10.0.0.2:2")
    taken: list[int] = []

    def on_client_call(conn: Any, msg: Call) -> None:
        if conn is bad:
            raise RuntimeError("boom")
        taken.append(msg.call_id)

    r.on_client_call = on_client_call  # type: ignore[method-assign]
    r._turn_calls = CALLS_PER_TURN  # this turn's budget is spent: the calls wait for the next
    calls = tuple(Call(i, 0, SHARD, "state", False, b"") for i in range(1, 4))
    r.on_client_calls(bad, calls)
    r.on_client_calls(good, calls)
    assert taken == [] and len(r._waiting) == 2
    with caplog.at_level(logging.ERROR, logger="derecho.routing"):
        r._next_turn()
    assert taken == [1, 2, 3], "the other client lost its turn"
    assert bad.closed and not good.closed
    assert bad not in r.clients.clients and not r._waiting
    assert [rec for rec in caplog.records if "10.0.0.1:1" in rec.getMessage() and rec.exc_info]
    # The bad client is gone; the good one is served on later turns as before.
    r._turn_calls = CALLS_PER_TURN
    r.on_client_calls(good, (Call(4, 0, SHARD, "state", False, b""),))
    r._next_turn()
    assert taken == [1, 2, 3, 4]


def test_an_expiry_names_the_parked_call() -> None:
    """The expiry names the poll's call as the replica parked it (caller, call, origin)."""
    node, host = FakeNode(), FakeHost()
    r = router(node, host)
    park(r, 5, 0.5)
    node.fire_next()
    msgs = [m for _, m in host.told if isinstance(m, WatchExpire)]
    assert msgs == [WatchExpire((PollCall(2, 5, 0),))]
