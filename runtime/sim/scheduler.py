"""Virtual time: a heap of timed actions, popped in (time, insertion) order.

Ties are broken by insertion order, so a run depends only on the seed that shaped it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable


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
        heapq.heappush(self._heap, (when, self._seq, action, args))

    def run(self, until: float, max_steps: int | None = None) -> bool:
        """Run actions up to virtual time ``until``; True if the queue ran dry first.

        ``max_steps`` bounds the work (a livelocked core can spin without time passing).
        """
        heap = self._heap
        limit = self.steps + max_steps if max_steps is not None else None
        while heap and not self.stopped:
            if limit is not None and self.steps >= limit:
                return False
            when, _, action, args = heap[0]
            if when > until:
                return False
            heapq.heappop(heap)
            self.now = when
            self.steps += 1
            action(*args)
        return not heap

    def stop(self) -> None:
        """End :meth:`run` after the current action."""
        self.stopped = True

    def pending(self) -> int:
        return len(self._heap)
