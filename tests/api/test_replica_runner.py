"""The replica's actor thread (``node.runners.ThreadRunner``): its inbox is a C ``SimpleQueue``
(the loop hands a replica each delivered batch: at low rates one hand-off per call, and pykka's
default ``queue.Queue`` waits on a ``Condition`` in Python), and it keeps pykka's behaviour:
messages in order, one at a time, the rest handled before the stop, a tell after it ignored."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from derecho_actors.node.hosting import RECENT_WAITS, SLOW_WAITS, WAIT_CALLS, WAIT_S, ReplicaHost
from derecho_actors.node.runners import ReplicaActor, ThreadRunner, Wait
from derecho_actors.replica.replica import OrderedBatch
from runtime.core.layout import ShardId

pytestmark = pytest.mark.timeout(30)


class FakeReplica:
    def __init__(self) -> None:
        self.got: list[Any] = []
        self.threads: set[int] = set()
        self.stopped = threading.Event()

    def start(self) -> None:
        self.threads.add(threading.get_ident())

    def receive(self, message: Any) -> None:
        self.threads.add(threading.get_ident())
        self.got.append(message)

    def failed_with(self, exc: BaseException) -> None:
        raise AssertionError(f"unexpected failure: {exc!r}")

    def stop(self) -> None:
        self.stopped.set()


def test_the_inbox_is_a_simple_queue() -> None:
    assert type(ReplicaActor._create_actor_inbox()) is queue.SimpleQueue


def test_messages_run_in_order_on_one_thread_and_all_before_the_stop() -> None:
    replica = FakeReplica()
    ref = ThreadRunner().start(replica, (0, 0))  # type: ignore[arg-type]
    for i in range(2000):
        ref.tell(i)  # type: ignore[arg-type]
    assert ref.stop()(10.0)
    assert replica.stopped.is_set()
    assert replica.got == list(range(2000))
    assert len(replica.threads) == 1 and threading.get_ident() not in replica.threads
    ref.tell(-1)  # type: ignore[arg-type]  # stopped: ignored, no error
    assert replica.got[-1] == 1999


class GatedReplica(FakeReplica):
    """Handles a message only once ``gate`` is set (a slow user method)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def receive(self, message: Any) -> None:
        assert self.gate.wait(10.0)
        super().receive(message)


def test_tell_and_wait_returns_once_an_idle_replica_handled_the_message() -> None:
    replica = FakeReplica()
    ref = ThreadRunner().start(replica, (0, 0))  # type: ignore[arg-type]
    try:
        for i in range(50):
            assert ref.tell_and_wait(i, 5.0) is Wait.HANDLED  # type: ignore[attr-defined]
            assert replica.got[-1] == i  # handled before the wait returned
    finally:
        assert ref.stop()(10.0)
    assert replica.got == list(range(50))


def test_tell_and_wait_does_not_wait_behind_queued_messages_and_gives_up_at_its_timeout() -> None:
    replica = GatedReplica()
    ref = ThreadRunner().start(replica, (0, 0))  # type: ignore[arg-type]
    try:
        assert ref.tell_and_wait("slow", 0.05) is Wait.RUNNING  # type: ignore[attr-defined]  # the method runs on
        ref.tell("queued")  # type: ignore[arg-type]
        assert ref.tell_and_wait("behind", 5.0) is Wait.QUEUED  # type: ignore[attr-defined]  # at once: one waits ahead
        replica.gate.set()
    finally:
        assert ref.stop()(10.0)
    assert replica.got == ["slow", "queued", "behind"]  # all handled, in order


class WaitingRef:
    """A replica reference whose waits take ``takes`` seconds and say whether it handled."""

    def __init__(self, takes: float = 0.0, ends: Wait = Wait.HANDLED) -> None:
        self.takes, self.ends = takes, ends
        self.told: list[tuple[str, Any]] = []

    def tell(self, message: Any) -> None:
        self.told.append(("tell", message))

    def tell_and_wait(self, message: Any, timeout: float) -> Wait:
        self.told.append(("wait", message))
        time.sleep(self.takes)
        return self.ends


class Held:
    def __init__(self) -> None:
        self.log: list[str] = []

    def hold(self) -> None:
        self.log.append("hold")

    def take_held(self) -> None:
        self.log.append("take")


def batch(calls: int) -> OrderedBatch:
    return OrderedBatch(1, (1, 2), [None] * calls, -1)  # type: ignore[list-item]


def test_the_host_waits_for_small_batches_only_and_not_for_a_while_after_a_wait_ran_out() -> None:
    host = ReplicaHost(1, {}, ThreadRunner(), None)  # type: ignore[arg-type]
    held = Held()
    host.held_answers = held
    sid = ShardId("KV", 0, 0)
    quick = WaitingRef()
    host._tell(sid, quick, batch(1))  # type: ignore[arg-type]
    host._tell(sid, quick, batch(WAIT_CALLS + 1))  # type: ignore[arg-type]
    assert [k for k, _ in quick.told] == ["wait", "tell"]
    assert held.log == ["hold", "take"]  # what the replica answered meanwhile is taken at once
    late = WaitingRef(takes=WAIT_S * 2, ends=Wait.NOT_STARTED)  # its thread was scheduled late once
    host._tell(sid, late, batch(1))  # type: ignore[arg-type]
    host._tell(sid, quick, batch(1))  # type: ignore[arg-type]
    host._tell(sid, late, batch(1))  # type: ignore[arg-type]
    assert [k for k, _ in late.told] == ["wait", "wait"]  # one run-out at a time: waits go on
    host._tell(sid, quick, batch(1))  # type: ignore[arg-type]
    assert held.log == ["hold", "take"] * 5
    once = WaitingRef(takes=WAIT_S * 2, ends=Wait.RUNNING)  # one run-out (preempted once)...
    fresh = ShardId("KV", 0, 3)
    host._tell(fresh, once, batch(1))  # type: ignore[arg-type]
    host._tell(fresh, quick, batch(1))  # type: ignore[arg-type]  # ...then a quick one
    host._tell(fresh, once, batch(1))  # type: ignore[arg-type]
    host._tell(fresh, quick, batch(1))  # type: ignore[arg-type]
    assert [k for k, _ in once.told] == ["wait", "wait"] and quick.told[-1][0] == "wait"
    assert held.log == ["hold", "take"] * 9
    slow = WaitingRef(takes=WAIT_S * 2, ends=Wait.RUNNING)
    for _ in range(SLOW_WAITS + 1):
        host._tell(sid, slow, batch(1))  # type: ignore[arg-type]
    assert [k for k, _ in slow.told] == ["wait"] * SLOW_WAITS + ["tell"]  # no wait for NO_WAIT_S
    assert held.log == ["hold", "take"] * (9 + SLOW_WAITS)
    busy = WaitingRef(takes=WAIT_S * 2, ends=Wait.NOT_STARTED)  # a machine too busy, turn after turn
    other = ShardId("KV", 0, 2)
    for _ in range(SLOW_WAITS + 1):
        host._tell(other, busy, batch(1))  # type: ignore[arg-type]
    assert [k for k, _ in busy.told] == ["wait"] * SLOW_WAITS + ["tell"]
    host.held_answers = None  # the simulator's inline replicas: never waited for
    host._tell(ShardId("KV", 0, 1), quick, batch(1))  # type: ignore[arg-type]
    assert quick.told[-1][0] == "tell"


def test_a_replica_still_in_a_message_is_not_waited_for() -> None:
    replica = GatedReplica()
    ref = ThreadRunner().start(replica, (0, 0))  # type: ignore[arg-type]
    try:
        assert ref.tell_and_wait("slow", 0.05) is Wait.RUNNING  # type: ignore[attr-defined]
        # The inbox is empty again (the thread took "slow" up) but the thread is in it: the
        # next message would wait behind it, so it is not waited for.
        t0 = time.monotonic()
        assert ref.tell_and_wait("next", 5.0) is Wait.QUEUED  # type: ignore[attr-defined]
        assert time.monotonic() - t0 < 1.0
        replica.gate.set()
    finally:
        assert ref.stop()(10.0)
    assert replica.got == ["slow", "next"]


def test_run_outs_that_alternate_with_handled_waits_stop_the_waits_too() -> None:
    """Never two in a row, but half of the recent waits ran out: each cost the loop WAIT_S."""
    host = ReplicaHost(1, {}, ThreadRunner(), None)  # type: ignore[arg-type]
    host.held_answers = Held()
    sid, quick = ShardId("KV", 0, 0), WaitingRef()
    late = WaitingRef(ends=Wait.NOT_STARTED)
    for _ in range(RECENT_WAITS // 2):
        host._tell(sid, late, batch(1))  # type: ignore[arg-type]
        host._tell(sid, quick, batch(1))  # type: ignore[arg-type]
    assert [k for k, _ in late.told] == ["wait"] * (RECENT_WAITS // 2)
    assert quick.told[-1][0] == "tell"  # half of the last RECENT_WAITS ran out: no waits now
    rare = ShardId("KV", 0, 1)  # one run-out in four: waits go on
    for _ in range(3):
        host._tell(rare, late, batch(1))  # type: ignore[arg-type]
        for _ in range(3):
            host._tell(rare, quick, batch(1))  # type: ignore[arg-type]
    assert quick.told[-1][0] == "wait"
