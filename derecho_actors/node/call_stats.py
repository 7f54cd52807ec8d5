"""Counts of the calls clients make through this node, by method and outcome, with a latency
histogram: what ``status`` shows and the metrics endpoint exports.

A contact node sees a client's call arrive and its first answer leave, so the latency is the
group's part of the call (client and network excluded). Outcomes: ``ok`` (the first answer is
a result), ``error`` (it is an error the method raised, or a refusal on the way), ``refused``
(this node refused it at once: too large, shard unavailable, no such replica, a client limit).

Bounded by what the code defines, never by what clients send: the contact counts a call under
its method's name only if the type defines that method (or it is one of the group's own
internal calls); every other name, refused or not, counts under :data:`UNKNOWN`. So a client
sending 400,000 distinct names adds one entry, not 400,000 (to the node and to ``/metrics``).
Kept on the node's loop; :class:`~runtime.core.status.ClientCalls` out (the type the metrics
endpoint, ``top`` and ``status`` read back).
"""

from __future__ import annotations

import bisect

from runtime.core.status import CallCount, CallLatency, ClientCalls

BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0)
"""Upper bounds of the latency buckets (ms); a last bucket counts everything above."""

OUTCOMES = ("ok", "error", "refused")

UNKNOWN = "<unknown>"
"""The label of every call to a method its type does not define."""


class CallStats:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}  # (method, outcome) -> calls
        self.buckets: dict[str, list[int]] = {}  # method -> counts per bucket (+ overflow)
        self.sum_ms: dict[str, float] = {}

    def done(self, method: str, outcome: str, ms: float | None, n: int = 1) -> None:
        """``n`` calls of ``method`` ended with ``outcome``, the first answer after ``ms``."""
        key = (method, outcome)
        self.calls[key] = self.calls.get(key, 0) + n
        if ms is None:
            return
        counts = self.buckets.get(method)
        if counts is None:
            counts = self.buckets[method] = [0] * (len(BUCKETS_MS) + 1)
        counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1  # the first bucket whose bound is >= ms
        self.sum_ms[method] = self.sum_ms.get(method, 0.0) + ms

    def done_all(self, method: str, outcome: str, ms: list[float]) -> None:
        """As :meth:`done` for ``len(ms)`` calls of ``method`` with this outcome, one latency
        each: a contact counts a delivered batch's first answers in one step (they come
        together, ~100 at a time; a step per call was ~2% of its loop)."""
        key = (method, outcome)
        self.calls[key] = self.calls.get(key, 0) + len(ms)
        counts = self.buckets.get(method)
        if counts is None:
            counts = self.buckets[method] = [0] * (len(BUCKETS_MS) + 1)
        where = bisect.bisect_left
        for one in ms:
            counts[where(BUCKETS_MS, one)] += 1
        self.sum_ms[method] = self.sum_ms.get(method, 0.0) + sum(ms)

    def status(self) -> ClientCalls:
        """The counts by method and outcome (sorted) and each method's latency histogram over
        :data:`BUCKETS_MS`."""
        return ClientCalls(
            calls=tuple(CallCount(m, o, n) for (m, o), n in sorted(self.calls.items())),
            latency=tuple(CallLatency(m, tuple(c), round(self.sum_ms.get(m, 0.0), 3)) for m, c in self.buckets.items()),
            bounds_ms=BUCKETS_MS,
        )
