"""Virtual time: a heap of timed actions, popped in (time, insertion) order.

Ties are broken by insertion order, so a run depends only on the seed that shaped it.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any, Callable, Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a simulation's run or check.

    Both allocate millions of short-lived objects and grow a large trace but make almost no
    reference cycles, so the collector's passes (the full ones rescan the whole trace) cost
    up to a tenth of a protocol run's time and free next to nothing. What cycles there are
    get collected by the collector's first pass once it runs again. Nesting is fine: only the
    outermost pause turns it back on.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


@dataclass(slots=True)
class Scheduler:
    now: float = 0.0
    steps: int = 0
    _heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)
    _seq: int = 0
    stopped: bool = False

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` at virtual time ``when`` (never earlier than now)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heappush(self._heap, (when, self._seq, action, args))

    def run(self, until: float, max_steps: int | None = None) -> bool:
        """Run actions up to virtual time ``until``; True if the queue ran dry first.

        ``max_steps`` bounds the work (a livelocked core can spin without time passing).
        The garbage collector is paused meanwhile (see :func:`gc_paused`).
        """
        with gc_paused():
            return self._run(until, max_steps)

    def _run(self, until: float, max_steps: int | None) -> bool:
        heap = self._heap
        limit = self.steps + max_steps if max_steps is not None else None
        while heap and not self.stopped:
            if limit is not None and self.steps >= limit:
                return False
            if heap[0][0] > until:
                return False
            when, _, action, args = heappop(heap)
            self.now = when
            self.steps += 1
            action(*args)
        return not heap

    def stop(self) -> None:
        """End :meth:`run` after the current action."""
        self.stopped = True

    def pending(self) -> int:
        return len(self._heap)
