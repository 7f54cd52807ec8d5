"""A daemon thread for the object segments' slow system calls (``shm_objects``), so the node's
loop does not stall on them.

Freeing a large segment frees every page at once: closing the last descriptor of 512 MB in
/dev/shm, or unmapping the last mapping of it, took 127 ms here (a gigabyte 150-250 ms, with
suspicion at 500 ms); reserving a new segment's pages (``posix_fallocate``) costs 0.26 ms/MB.
CPython releases the GIL around ``close``, ``munmap`` and ``posix_fallocate``, so on this
thread they cost the loop nothing but the hand-over.

One thread, jobs in order. A job's result (or the ``OSError`` it raised) goes back to the loop
that submitted it (``call_soon_threadsafe``); submitted with no running loop (tools, unit
tests that drive the segments by hand), a job runs at once, inline.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("derecho.shm")

Job = tuple[Callable[[], Any], Callable[[Any], None] | None, asyncio.AbstractEventLoop | None]


class SlowCalls:
    """Runs jobs on one daemon thread (started with the first job) in the order submitted."""

    def __init__(self, name: str = "shm-slow-calls") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], Any], then: Callable[[Any], None] | None = None) -> None:
        """Run ``job`` off the loop; then ``then(result)`` on the loop (the result is the
        ``OSError`` the job raised, if it did)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            result = _run(job)
            if then is not None:
                then(result)
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put((job, then, loop))

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every job submitted so far ran (close, tests); False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put((done.set, None, None))
        return done.wait(timeout)

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, then, loop = item
            result = _run(job)
            if then is not None and loop is not None:
                try:
                    loop.call_soon_threadsafe(then, result)
                except RuntimeError:  # the loop closed meanwhile: nobody waits for the answer
                    pass


def _run(job: Callable[[], Any]) -> Any:
    try:
        return job()
    except OSError as exc:
        return exc
    except Exception:  # a job's bug must not end the thread every later close waits on
        log.exception("a slow call failed")
        return None


SLOW_CALLS = SlowCalls()  # the one thread of this process (every transport's segments)
# A sender's blocks into its segments (``pwrite``, ~0.5 ms per 4 MiB block, and a turn of the
# engine sends a window of blocks of every object in flight: 90 ms of writes in one turn, when
# they ran on the loop). A thread of their own, so a block waits for no close or reservation.
BLOCK_WRITES = SlowCalls("shm-block-writes")

__all__ = ["BLOCK_WRITES", "SLOW_CALLS", "SlowCalls"]
