"""A simulated network: per directed link, seeded delays and FIFO delivery, like TCP."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.sim.scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Delay of one link: uniform in [base, base + jitter], times ``slowdown``."""

    base: float = 50e-6
    jitter: float = 500e-6
    slowdown: float = 1.0


@dataclass(slots=True)
class SimNetwork:
    scheduler: Scheduler
    rng: random.Random
    default: LinkProfile = LinkProfile()
    links: dict[tuple[int, int], LinkProfile] = field(default_factory=dict)
    _last_arrival: dict[tuple[int, int], float] = field(default_factory=dict)
    frames: int = 0

    def send(self, src: int, dst: int, deliver: Callable[[int, Any], None], item: Any) -> None:
        """Schedule ``deliver(src, item)`` at ``dst`` after the link's delay, in link order."""
        prof = self.links.get((src, dst), self.default)
        delay = (prof.base + self.rng.random() * prof.jitter) * prof.slowdown
        when = self.scheduler.now + delay
        last = self._last_arrival.get((src, dst), 0.0)
        if when < last:
            when = last  # FIFO: never overtake an earlier frame on the same link
        self._last_arrival[(src, dst)] = when
        self.frames += 1
        self.scheduler.at(when, deliver, src, item)
