"""The safety and liveness checker: reads a run's trace, names the first broken invariant.

The trace records what the application saw (messages accepted by ``send``, messages
delivered) and when each member's core state moved (its received counts and its delivery
frontier, sampled after every core step). The checker trusts none of the core's own
bookkeeping: it recomputes every property from these records, so a buggy core cannot vouch
for itself. ``tests/sim/test_invariants.py`` plants violations to prove that it catches them.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from runtime.core.effects import DeliveredMessage


@dataclass(slots=True)
class Trace:
    """Everything one shard's run left behind, per member (node id)."""

    members: tuple[int, ...]
    senders: tuple[int, ...]
    sent: dict[int, list[bytes]] = field(default_factory=dict)
    delivered: dict[int, list[DeliveredMessage]] = field(default_factory=dict)
    # received[m][s] = [(count, step), ...]: after core step `step`, m held `count` of s's messages
    received: dict[int, dict[int, list[tuple[int, int]]]] = field(default_factory=dict)
    # frontier[m] = [(frontier, step), ...]: after core step `step`, m had delivered `frontier`
    frontier: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.members:
            self.delivered.setdefault(m, [])
            self.frontier.setdefault(m, [(0, 0)])
            self.received.setdefault(m, {s: [(0, 0)] for s in self.senders})
        for s in self.senders:
            self.sent.setdefault(s, [])


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    member: int | None
    detail: str

    def __str__(self) -> str:
        who = f" at node {self.member}" if self.member is not None else ""
        return f"{self.invariant}{who}: {self.detail}"


class _Counter:
    """A monotone counter's checkpoints, searchable by value."""

    __slots__ = ("counts", "steps")

    def __init__(self, checkpoints: list[tuple[int, int]]) -> None:
        self.counts = [c for c, _ in checkpoints]
        self.steps = [s for _, s in checkpoints]

    def step_reaching(self, count: int) -> int | None:
        """First step at which the counter was at least ``count``, or None if never."""
        i = bisect_right(self.counts, count - 1)
        return None if i == len(self.counts) else self.steps[i]


def check_trace(trace: Trace, expect_complete: bool = True) -> list[Violation]:
    """All invariant violations in ``trace`` (empty list: the run was correct).

    Safety: prefix agreement, round-robin consistency, per-sender order, no duplicate, no
    phantom, nothing delivered before stable. Liveness (``expect_complete``): every message
    accepted by ``send`` is delivered at every member by the end of the run.
    """
    out: list[Violation] = []
    n = len(trace.senders)
    pos_of = {s: i for i, s in enumerate(trace.senders)}
    sent_index = {s: {p: k for k, p in enumerate(msgs)} for s, msgs in trace.sent.items()}
    frontier = {m: _Counter(trace.frontier[m]) for m in trace.members}
    received = {
        (m, s): _Counter(trace.received[m][s]) for m in trace.members for s in trace.senders
    }

    for m in trace.members:
        log = trace.delivered[m]
        seen: set[tuple[int, int]] = set()
        next_app: dict[int, int] = {s: 0 for s in trace.senders}
        last_g = -1
        for i, (g, sender, k, payload) in enumerate(log):
            if (sender, k) in seen:
                out.append(Violation("duplicate", m, f"delivery #{i} repeats message {k} of node {sender}"))
                break
            seen.add((sender, k))
            if sender not in pos_of:
                out.append(Violation("phantom", m, f"delivery #{i} claims sender {sender}, not a sender"))
                break
            if g <= last_g:
                out.append(Violation("order", m, f"delivery #{i} has global index {g} after {last_g}"))
                break
            last_g = g
            if g != k * n + pos_of[sender]:
                out.append(Violation("round-robin", m, f"delivery #{i}: index {g} is not {k}*{n}+{pos_of[sender]}"))
                break
            app_k = sent_index.get(sender, {}).get(payload)
            if app_k is None:
                out.append(Violation("phantom", m, f"delivery #{i} payload {payload!r:.60} was never sent by {sender}"))
                break
            if app_k != next_app[sender]:
                out.append(
                    Violation(
                        "sender-order", m,
                        f"delivery #{i} is message {app_k} of node {sender}; expected its message {next_app[sender]}",
                    )
                )
                break
            next_app[sender] += 1
            reached = frontier[m].step_reaching(g + 1)
            if reached is None:
                out.append(Violation("frontier", m, f"delivery #{i} (index {g}) beyond the recorded frontier"))
                break
            for other in trace.members:
                got = received[(other, sender)].step_reaching(k + 1)
                if got is None or got > reached:
                    out.append(
                        Violation(
                            "unstable-delivery", m,
                            f"delivered message {k} of node {sender} (index {g}) at step {reached} "
                            f"but node {other} received it {'never' if got is None else f'at step {got}'}",
                        )
                    )
                    break
            else:
                continue
            break

    out.extend(_prefix_agreement(trace))
    if expect_complete:
        total = sum(len(v) for v in trace.sent.values())
        for m in trace.members:
            got = len(trace.delivered[m])
            if got != total:
                out.append(Violation("liveness", m, f"delivered {got} of {total} sent messages by the end"))
    return out


def _prefix_agreement(trace: Trace) -> list[Violation]:
    logs = {m: trace.delivered[m] for m in trace.members}
    longest_m = max(logs, key=lambda m: len(logs[m]))
    longest = logs[longest_m]
    out = []
    for m, log in logs.items():
        for i, item in enumerate(log):
            if item != longest[i]:
                out.append(
                    Violation(
                        "prefix-agreement", m,
                        f"first divergence at delivery #{i}: {item[:3]} here, {longest[i][:3]} at node {longest_m}",
                    )
                )
                break
    return out
