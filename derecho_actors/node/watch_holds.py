"""The holds of watch polls parked at this node's replicas: when each ends, on one timer.

A watch's poll that finds no new events is parked at the replica for up to its ``hold``; when
the hold ends the replica answers it with none (the watch then asks again). The ends of hold
sit in one heap, soonest first: one timer is pending for the soonest, and every poll due at
once expires in one message per shard (no scan of the parked polls). Deadlines are taken on
the clock the node's timers run on, so a step of the wall clock moves none. Runs on the
node's loop.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable

from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.replica.events import PollCall, WatchExpire
from runtime.core.layout import ShardId
from runtime.node_api import NodeHandle

HOLD_SLACK = 0.001
"""How early (s) a parked poll's hold may end: a loop may run a timer a little before its time
(asyncio: within its clock's resolution); the poll is then answered, not re-armed for an instant."""


@dataclass(order=True, slots=True)
class _Expiry:
    """A parked poll's end of hold (ordered by time on the timer clock)."""

    deadline: float
    seq: int
    shard: ShardId = field(compare=False)
    call: PollCall = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Timer:
    """The pending expiry timer: set for ``deadline``; only the one holding the latest
    ``token`` acts (a timer set for an earlier deadline supersedes it)."""

    deadline: float
    token: int


class WatchHolds:
    def __init__(self, node: NodeHandle, host: ReplicaHost, clock: Callable[[], float] | None = None) -> None:
        """``clock``: the clock ``node.call_later`` runs on, in seconds (``node.monotonic`` if
        not given)."""
        self.node = node
        self.host = host
        self._clock = clock or node.monotonic
        self._expiries: list[_Expiry] = []
        self._seq = itertools.count()
        self._timer: _Timer | None = None  # pending while the heap is not empty
        self._tokens = itertools.count(1)

    def park(self, shard: ShardId, call: PollCall, hold: float) -> None:
        """``call``, a poll the replica of ``shard`` parked, is answered after ``hold`` s at most."""
        deadline = self._clock() + hold
        heapq.heappush(self._expiries, _Expiry(deadline, next(self._seq), shard, call))
        if self._timer is None or deadline < self._timer.deadline:
            self._arm(deadline)

    @property
    def idle(self) -> bool:
        """No hold pending and no timer set."""
        return not self._expiries and self._timer is None

    def _arm(self, deadline: float) -> None:
        """Set the expiry timer for ``deadline`` (on the timer clock), superseding any other."""
        token = next(self._tokens)
        self._timer = _Timer(deadline, token)
        self.node.call_later(max(0.0, deadline - self._clock()), self._expire_due, token)

    def _expire_due(self, token: int) -> None:
        """The timer of the soonest hold: answer every poll whose hold has ended, one message
        per shard, and set the timer for the next; while any poll is in the heap one timer is
        pending, even if this one ran before its time. (A poll answered earlier leaves its
        entry here until its time; the replica ignores what is no longer parked.)"""
        if self._timer is None or self._timer.token != token:
            return  # superseded by a timer for an earlier deadline, which re-arms
        self._timer = None
        now = self._clock()
        heap = self._expiries
        due: dict[ShardId, list[PollCall]] = {}
        while heap and heap[0].deadline <= now + HOLD_SLACK:
            e = heapq.heappop(heap)
            due.setdefault(e.shard, []).append(e.call)
        if heap:
            self._arm(heap[0].deadline)  # before telling: re-armed whatever the replicas do
        for shard, calls in due.items():
            self.host.tell(shard, WatchExpire(tuple(calls)))
