"""How many app messages a node outside the view may have handled per second.

A node certificate is enough to open a member connection. A node outside the view has few app
messages to send (a joiner's first state request can arrive before this node installs the view
that names it), yet one with a node certificate of the cluster's CA sent ReplyBatch frames and
garbage as fast as it could write: each was decoded and handled, the loop stalled 0.3-2.5 s, and
this node fell out of the group again and again. Each outsider gets a small token bucket; what
is over it is dropped before it is decoded. Members of the view are never counted here.
"""

from __future__ import annotations

from typing import Final

RATE: Final = 200.0  # app messages per second an outsider may have handled
BURST: Final = 400.0  # and at once
MAX_OUTSIDERS: Final = 1024  # buckets kept; past it they start again (bounded whatever peers do)


class OutsiderBudget:
    def __init__(self, rate: float = RATE, burst: float = BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, tuple[float, float]] = {}  # node -> (tokens, at)
        self.dropped = 0

    def take(self, node: int, now: float) -> bool:
        """Whether one more app message of ``node`` (outside the view) is handled now."""
        tokens, at = self._buckets.get(node, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) >= MAX_OUTSIDERS and node not in self._buckets:
            self._buckets.clear()
        if tokens < 1.0:
            self._buckets[node] = (tokens, now)
            self.dropped += 1
            return False
        self._buckets[node] = (tokens - 1.0, now)
        return True
