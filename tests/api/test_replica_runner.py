"""The replica's actor thread (``node.runners.ThreadRunner``): its inbox is a C ``SimpleQueue``
(the loop hands a replica each delivered batch: at low rates one hand-off per call, and pykka's
default ``queue.Queue`` waits on a ``Condition`` in Python), and it keeps pykka's behaviour:
messages in order, one at a time, the rest handled before the stop, a tell after it ignored."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from derecho_actors.node.runners import ReplicaActor, ThreadRunner

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
