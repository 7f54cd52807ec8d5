"""A simulated network: per directed link, seeded delays and FIFO delivery, like TCP.

Links can be cut (a partition: frames across the cut are lost, as when a TCP connection
breaks) and slowed. Frames carry the destination's incarnation so that a node restarted under
the same id never receives frames meant for its previous life.
"""

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
    cut: set[tuple[int, int]] = field(default_factory=set)
    _last_arrival: dict[tuple[int, int], float] = field(default_factory=dict)
    frames: int = 0
    dropped: int = 0

    def send(
        self,
        src: int,
        dst: int,
        deliver: Callable[[int, Any], None],
        item: Any,
        lost: Callable[[Any], None] | None = None,
    ) -> None:
        """Schedule ``deliver(src, item)`` at ``dst`` after the link's delay, in link order;
        ``lost(item)`` if a cut drops it (a client's connection breaks with its first lost frame)."""
        link = (src, dst)
        if link in self.cut:
            self.dropped += 1
            if lost is not None:
                lost(item)
            return
        prof = self.links.get(link, self.default)
        delay = (prof.base + self.rng.random() * prof.jitter) * prof.slowdown
        when = self.scheduler.now + delay
        last = self._last_arrival.get(link, 0.0)
        if when < last:
            when = last  # FIFO: never overtake an earlier frame on the same link
        self._last_arrival[link] = when
        self.frames += 1
        self.scheduler.at(when, self._arrive, src, dst, deliver, item, lost)

    def _arrive(
        self, src: int, dst: int, deliver: Callable[[int, Any], None], item: Any, lost: Callable[[Any], None] | None
    ) -> None:
        if self.cut and (src, dst) in self.cut:  # cut while in flight: lost with the connection
            self.dropped += 1
            if lost is not None:
                lost(item)
            return
        deliver(src, item)

    def partition(self, side_a: set[int], side_b: set[int]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()
