"""How long a thread in a node loop's place waits for the GIL while work runs on another."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


def worst_wait_share(work: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``work`` on a thread while this one, in the loop's place, wakes every millisecond:
    this thread's longest wait as a share of the work's time, and what the work returned (kept:
    freeing 128 MB is not part of the work measured)."""
    out: list[Any] = []

    def timed() -> None:
        t0 = time.perf_counter()
        value = work()
        out.extend((value, time.perf_counter() - t0))

    worker = threading.Thread(target=timed)
    worst, last = 0.0, time.perf_counter()
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    worker.join()
    value, took = out
    return worst / took, value
