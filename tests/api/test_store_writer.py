"""The persistent store's writer thread: batches go to the log in order, one flush covers
what queued meanwhile, nothing is reported durable before its flush returned, a full queue
holds the replica back, and a flush that hangs fails the store instead of blocking it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import derecho_actors as da
from derecho_actors.model.fields import persistent_fields
from derecho_actors.replica.store import PersistentStore

pytestmark = pytest.mark.timeout(30)


@da.replicated
class Counter:
    n = da.Persistent(0)

    @da.p2p
    def read(self) -> int:
        return self.n


class GatedLog:
    """A log in memory whose ``flush`` waits for ``gate`` (a slow or stuck disk)."""

    signed = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.appended: list[tuple[int, int, bytes]] = []
        self.flushes: list[int] = []  # records in the log at each flush
        self.flushing = threading.Event()
        self.closed = False

    def append(self, records: list[tuple[int, int, bytes]]) -> None:
        self.appended.extend(records)

    def flush(self) -> int:
        self.flushing.set()
        self.gate.wait()
        self.flushes.append(len(self.appended))
        return self.appended[-1][0] if self.appended else -1

    def __len__(self) -> int:
        return len(self.appended)

    def close(self, flush: bool = True) -> None:
        self.closed = True


def _store(log: GatedLog, durable: list[tuple[int, int]], **kw: Any) -> PersistentStore:
    obj = Counter()

    def on_durable(version: int) -> None:
        durable.append((version, len(log.flushes)))  # the flushes that had returned by then

    store = PersistentStore(obj, persistent_fields(Counter), "msgpack", log, on_durable, **kw)
    store.reset_tracking()
    return store


def _batch(store: PersistentStore, first: int, count: int) -> list[tuple[int, int, bytes]]:
    out = []
    for v in range(first, first + count):
        store.obj.n = v
        out.append(store.record(v, 1000 + v, 0, v))
    return out


def test_batches_queued_during_a_flush_share_the_next_one_and_report_after_it() -> None:
    log, durable = GatedLog(), []
    store = _store(log, durable)
    store.submit(_batch(store, 1, 3))
    assert log.flushing.wait(5)  # the writer is in the first flush, held by the gate
    for first in (4, 7, 10):
        store.submit(_batch(store, first, 3))
    assert durable == []  # nothing reported while its flush has not returned
    log.gate.set()
    assert store.wait_durable(12, timeout=5)
    store.close()
    assert [v for v, _t, _b in log.appended] == list(range(1, 13))
    assert log.flushes == [3, 12]  # the three batches that queued went into one flush
    assert durable == [(3, 1), (12, 2)]  # each report after the flush that covers it


def test_a_full_queue_holds_the_replica_back_until_the_writer_takes_it() -> None:
    log, durable = GatedLog(), []
    store = _store(log, durable, max_queued=2)
    store.submit(_batch(store, 1, 1))
    assert log.flushing.wait(5)
    store.submit(_batch(store, 2, 1))
    store.submit(_batch(store, 3, 1))  # two batches wait: the queue is full
    done = threading.Event()

    def third() -> None:
        store.submit(_batch(store, 4, 1))
        done.set()

    t = threading.Thread(target=third)
    t.start()
    assert not done.wait(0.3)  # held back while the disk is stuck
    log.gate.set()
    assert done.wait(5)
    t.join(5)
    assert store.wait_durable(4, timeout=5)
    store.close()
    assert [v for v, _t, _b in log.appended] == [1, 2, 3, 4]


def test_a_flush_that_hangs_fails_the_store_instead_of_blocking_it() -> None:
    log, durable = GatedLog(), []
    failures: list[str] = []
    store = _store(log, durable, max_queued=1, stall_timeout=0.3, on_failure=failures.append)
    store.submit(_batch(store, 1, 1))
    assert log.flushing.wait(5)
    store.submit(_batch(store, 2, 1))
    started = time.monotonic()
    store.submit(_batch(store, 3, 1))  # full: waits, sees the stall, fails the store
    assert time.monotonic() - started < 5
    assert store.write_error is not None and failures and "has not returned" in failures[0]
    assert durable == []
    store.submit(_batch(store, 4, 1))  # a failed store takes nothing more, at once
    log.gate.set()
    store.close()
