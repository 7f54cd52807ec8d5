"""A tiny hand-driven network of NodeCores for core tests: the test decides every step.

All members hold one shard (``SHARD``) of a fixed view; failure detection is switched off
(infinite timeouts) so that only the data plane moves.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from runtime.core.effects import DeliveredMessage
from runtime.core.events import MessageArrived, Persisted, Tick, TransferArrived
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.membership import MembershipConfig
from runtime.core.messages import Message
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.object_transfers import TransferInput, as_received
from runtime.core.smc import MulticastConfig
from runtime.core.view import View

SHARD = ShardId("T", 0, 0)
QUIET = MembershipConfig(heartbeat_interval=math.inf, suspicion_timeout=math.inf, join_retry=1.0)


def one_shard_policy(n: int) -> LayoutPolicy:
    return LayoutPolicy.of({"T": ShardPolicy(min_nodes=n, max_nodes=n)})


def fixed_core(node: int, members: tuple[int, ...], mc: MulticastConfig | None = None) -> NodeCore:
    """A core in view 0 of ``members``, all in ``SHARD``, with failure detection off."""
    policy = one_shard_policy(len(members))
    view = View(0, members, tuple(f"n{m}" for m in members), compute_layout(policy, members))
    return NodeCore(node, f"n{node}", policy, CoreConfig(mc or MulticastConfig(), QUIET), view=view)


@dataclass
class ShardNet:
    """Cores of one shard plus one FIFO queue per directed link."""

    members: tuple[int, ...]
    config: MulticastConfig = field(default_factory=MulticastConfig)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.cores = {m: fixed_core(m, self.members, self.config) for m in self.members}
        self.links: dict[tuple[int, int], deque[Message]] = {}
        # Blocks and credits of large objects: links of their own, so a test can hold them.
        self.transfer_links: dict[tuple[int, int], deque[TransferInput]] = {}
        self.delivered: dict[int, list[DeliveredMessage]] = {m: [] for m in self.members}
        self.window_opened: dict[int, int] = {m: 0 for m in self.members}
        self.rejected: list[object] = []
        self.batches: dict[int, list[int]] = {m: [] for m in self.members}
        self.wakeups: dict[int, float | None] = {m: None for m in self.members}
        self.persisted: dict[int, list[int]] = {m: [] for m in self.members}
        self.everywhere: dict[int, list[int]] = {m: [] for m in self.members}
        for m in self.members:
            self.flush(m)
            self.window_opened[m] = 0

    def send(self, node: int, *payloads: bytes) -> int:
        taken = self.cores[node].send(SHARD, list(payloads), self.now)
        self.flush(node)
        return taken

    def flush(self, node: int) -> None:
        ready = self.cores[node].ready()
        for out in ready.outgoing:
            for dst in out.to:
                self.links.setdefault((node, dst), deque()).append(out.message)
        for d in ready.deliveries:
            self.delivered[node].extend(d.messages)
            self.batches[node].append(len(d.messages))
        self.window_opened[node] += len(ready.window_open)
        self.persisted[node].extend(v for _, v in ready.persisted)
        self.everywhere[node].extend(n for _, _, n in ready.delivered_everywhere)
        self.rejected.extend(ready.rejected)
        for t in ready.transfers:
            self.transfer_links.setdefault((node, t.to), deque()).append(as_received(t, node))
        self.wakeups[node] = ready.wakeup_at

    def deliver_one(self, src: int, dst: int) -> bool:
        q = self.links.get((src, dst))
        if not q:
            return False
        self.cores[dst].step(MessageArrived(self.now, src, q.popleft()))
        self.flush(dst)
        return True

    def in_flight(self) -> list[tuple[int, int]]:
        return [link for link, q in sorted(self.links.items()) if q]

    def deliver_transfer(self, src: int, dst: int) -> bool:
        q = self.transfer_links.get((src, dst))
        if not q:
            return False
        self.cores[dst].step(TransferArrived(self.now, q.popleft()))
        self.flush(dst)
        return True

    def transfers_in_flight(self) -> list[tuple[int, int]]:
        return [link for link, q in sorted(self.transfer_links.items()) if q]

    def settle_messages(self, max_rounds: int = 10_000) -> None:
        """Deliver shard pushes only (blocks and credits stay on their links), until quiet."""
        for _ in range(max_rounds):
            links = self.in_flight()
            if not links:
                return
            for src, dst in links:
                while self.deliver_one(src, dst):
                    pass
        raise AssertionError("messages did not settle")

    def persist(self, node: int, version: int) -> None:
        self.cores[node].step(Persisted(self.now, SHARD, version))
        self.flush(node)

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
            for src, dst in self.transfers_in_flight():
                while self.deliver_transfer(src, dst):
                    moved = True
            if moved:
                continue
            due = [w for w in self.wakeups.values() if w is not None]
            if not due:
                return
            self.tick(max(0.0, min(due) - self.now))
        raise AssertionError("network did not settle")

    def payloads(self, node: int) -> list[bytes]:
        return [bytes(m[3]) for m in self.delivered[node]]  # (objects arrive as bytearrays)
