"""A tiny hand-driven network of NodeCores for core tests: the test decides every step."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runtime.core.effects import DeliveredMessage
from runtime.core.events import PushArrived, Tick
from runtime.core.messages import ShardPush
from runtime.core.node_core import NodeCore
from runtime.core.smc import MulticastConfig

SHARD = ("T", 0, 0)


@dataclass
class ShardNet:
    """Cores of one shard plus one FIFO queue per directed link."""

    members: tuple[int, ...]
    config: MulticastConfig = field(default_factory=MulticastConfig)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.cores = {m: NodeCore(m, {SHARD: self.members}, self.config) for m in self.members}
        self.links: dict[tuple[int, int], deque[ShardPush]] = {}
        self.delivered: dict[int, list[DeliveredMessage]] = {m: [] for m in self.members}
        self.window_opened: dict[int, int] = {m: 0 for m in self.members}
        self.rejected: list[object] = []
        self.batches: dict[int, list[int]] = {m: [] for m in self.members}
        self.wakeups: dict[int, float | None] = {m: None for m in self.members}

    def send(self, node: int, *payloads: bytes) -> int:
        taken = self.cores[node].send(SHARD, list(payloads), self.now)
        self.flush(node)
        return taken

    def flush(self, node: int) -> None:
        ready = self.cores[node].ready()
        for out in ready.outgoing:
            for dst in out.to:
                self.links.setdefault((node, dst), deque()).append(out.push)
        for d in ready.deliveries:
            self.delivered[node].extend(d.messages)
            self.batches[node].append(len(d.messages))
        self.window_opened[node] += len(ready.window_open)
        self.wakeups[node] = ready.wakeup_at
        self.rejected.extend(ready.rejected)

    def deliver_one(self, src: int, dst: int) -> bool:
        q = self.links.get((src, dst))
        if not q:
            return False
        self.cores[dst].step(PushArrived(self.now, src, q.popleft()))
        self.flush(dst)
        return True

    def in_flight(self) -> list[tuple[int, int]]:
        return [link for link, q in sorted(self.links.items()) if q]

    def tick(self, dt: float = 0.0) -> None:
        self.now += dt
        for m in self.members:
            self.cores[m].step(Tick(self.now))
            self.flush(m)

    def settle(self, max_rounds: int = 10_000) -> None:
        """Deliver everything in flight and tick at each requested wakeup, until quiet."""
        for _ in range(max_rounds):
            moved = False
            for src, dst in self.in_flight():
                while self.deliver_one(src, dst):
                    moved = True
            if moved:
                continue
            due = [w for w in self.wakeups.values() if w is not None]
            if not due:
                return
            self.tick(max(0.0, min(due) - self.now))
        raise AssertionError("network did not settle")

    def payloads(self, node: int) -> list[bytes]:
        return [m[3] for m in self.delivered[node]]
