"""Large payloads are digested off the node's loop (issue 22): the app queue holds each one in
its place until its digest is done, so nothing of its shard overtakes it, and the core takes
the digest as given (no pass of its own over the bytes)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import pytest

from runtime.core.layout import ShardId
from runtime.core.rdmc_descriptor import Digested, object_digest
from runtime.drivers.app_queue import AppQueue
from runtime.drivers.object_digests import ObjectDigests, Pending

pytestmark = pytest.mark.timeout(30)

SHARD = ShardId("T", 0, 0)
ABOVE = 1000


class FakeCore:
    """Takes everything it is offered, recording the order."""

    def __init__(self) -> None:
        self.shards = {SHARD: None}
        self.taken: list[Any] = []

    def send(self, shard: ShardId, payloads: Sequence[Any], now: float) -> int:
        assert not any(type(p) is Pending for p in payloads), "a payload still being digested reached the core"
        self.taken.extend(payloads)
        return len(payloads)


class Posted:
    """``post`` that queues the loop's calls, run by the test as its loop would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def __call__(self, fn: Callable[..., Any], *args: Any) -> bool:
        with self.lock:
            self.calls.append((fn, args))
        return True

    def run(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)
        return len(calls)


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_small_message_after_a_large_object_waits_for_its_digest() -> None:
    core, posted = FakeCore(), Posted()
    queue: AppQueue
    digests = ObjectDigests(ABOVE, posted, lambda shard: queue.offer(shard, core, 0.0))  # type: ignore[arg-type]
    queue = AppQueue(digests)
    big1, big2 = b"x" * 200_000, bytes(range(256)) * 4000
    try:
        queue.send(SHARD, [b"a", big1, b"b"], core, 0.0)  # type: ignore[arg-type]
        queue.send(SHARD, [b"c", big2], core, 0.0)  # type: ignore[arg-type]
        queue.send(SHARD, [b"d"], core, 0.0)  # type: ignore[arg-type]
        _wait(lambda: digests.digested == 2)
        posted.run()
    finally:
        digests.close()
    got = core.taken
    assert [p if type(p) is bytes else "obj" for p in got] == [b"a", "obj", b"b", b"c", "obj", b"d"]
    assert got[1] == Digested(big1, object_digest(big1)) and got[4].digest == object_digest(big2)
    assert got[1].data is big1  # the bytes themselves, not a copy
    assert queue.queued(SHARD) == 0


def test_payloads_kept_before_a_core_exists_keep_their_order_too() -> None:
    core, posted = FakeCore(), Posted()
    digests = ObjectDigests(ABOVE, posted, lambda shard: None)
    queue = AppQueue(digests)
    big = b"y" * 50_000
    try:
        queue.add(SHARD, [big, b"after"])
        _wait(lambda: digests.digested == 1)
    finally:
        digests.close()
    assert queue.offer(SHARD, core, 0.0)
    assert core.taken == [Digested(big, object_digest(big)), b"after"]


def test_small_payloads_go_straight_to_the_core() -> None:
    core = FakeCore()
    digests = ObjectDigests(ABOVE, Posted(), lambda shard: None)
    queue = AppQueue(digests)
    payloads = [b"a" * ABOVE, b"b"]
    queue.send(SHARD, payloads, core, 0.0)  # type: ignore[arg-type]
    assert core.taken == payloads and digests.digested == 0


def test_a_trimmed_object_comes_back_with_its_digest() -> None:
    core = FakeCore()
    digests = ObjectDigests(ABOVE, Posted(), lambda shard: None)
    queue = AppQueue(digests)
    back = Digested.of(b"z" * 5000)
    queue.put_back(SHARD, [back, b"s"])
    assert queue.offer(SHARD, core, 0.0) and core.taken == [back, b"s"]
    assert digests.digested == 0  # no second pass


def test_the_loop_thread_keeps_turning_while_a_large_object_is_digested() -> None:
    """The digest (BLAKE3, like hashlib) drops the GIL on large buffers: while the worker
    digests 256 MiB, the thread that handed it over (the node's loop) keeps running at its own
    pace."""
    core, posted = FakeCore(), Posted()
    digests = ObjectDigests(ABOVE, posted, lambda shard: None)
    queue = AppQueue(digests)
    big = bytes(range(256)) * (1 << 20)  # 256 MiB
    gaps: list[float] = []
    try:
        t0 = last = time.perf_counter()
        queue.send(SHARD, [big, b"after"], core, 0.0)  # type: ignore[arg-type]
        while digests.digested == 0:
            time.sleep(0.002)  # a loop turn
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        took = time.perf_counter() - t0
    finally:
        digests.close()
    assert core.taken == []  # the small one waited behind the object
    assert took > 0.03 and len(gaps) > 10, (took, len(gaps))  # the digest took a while (~0.06 s here)...
    assert max(gaps) < min(0.15, took / 3), (max(gaps), took)  # ...and no turn waited for it
