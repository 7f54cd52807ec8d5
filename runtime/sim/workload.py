"""Seeded application workloads: who sends how much, when, in what bursts.

A plan mixes steady senders, bursty senders, late starters and idle members (idle senders are
what make null messages necessary: without them the others' messages would wait forever).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendBurst:
    at: float
    node: int
    count: int


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    bursts: tuple[SendBurst, ...]
    idle: tuple[int, ...]
    style: dict[int, str]

    @property
    def total(self) -> int:
        return sum(b.count for b in self.bursts)


def make_plan(rng: random.Random, members: tuple[int, ...], messages: int, span: float) -> WorkloadPlan:
    """About ``messages`` messages spread over ``span`` virtual seconds.

    At least one member sends; with three or more members, up to a third are idle.
    """
    n_idle = rng.randint(0, max(0, len(members) // 3)) if len(members) >= 3 else 0
    idle = tuple(sorted(rng.sample(members, n_idle)))
    active = [m for m in members if m not in idle]
    weights = [rng.choice((1, 1, 2, 5, 20)) for _ in active]
    total_w = sum(weights)
    bursts: list[SendBurst] = []
    style: dict[int, str] = {m: "idle" for m in idle}
    for node, w in zip(active, weights):
        share = max(1, messages * w // total_w)
        kind = rng.choice(("steady", "bursty", "late", "one-shot"))
        style[node] = kind
        if kind == "one-shot":
            bursts.append(SendBurst(rng.random() * span, node, share))
            continue
        start = rng.random() * span * 0.7 if kind == "late" else 0.0
        left = share
        while left > 0:
            size = rng.randint(1, 3) if kind == "steady" else rng.randint(1, max(1, share // 4))
            size = min(size, left)
            bursts.append(SendBurst(start + rng.random() * (span - start), node, size))
            left -= size
    bursts.sort(key=lambda b: (b.at, b.node))
    return WorkloadPlan(tuple(bursts), idle, style)
