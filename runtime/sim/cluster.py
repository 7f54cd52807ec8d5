"""A whole shard of NodeCores on one virtual clock and one simulated network.

Each node behaves like the real driver: events that arrive are stepped into its core at once,
and the core's ``ready()`` is drained after a small, seeded processing delay, so everything
that arrived meanwhile coalesces into one push per peer, as a busy node's loop would do.
After every core call the cluster samples the core's received counts and delivery frontier
into the :class:`Trace` for the checker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from runtime.core.events import PushArrived, Tick
from runtime.core.messages import ShardPush
from runtime.core.node_core import NodeCore
from runtime.core.smc import MulticastConfig
from runtime.sim.invariants import Trace
from runtime.sim.network import SimNetwork
from runtime.sim.scheduler import Scheduler

SHARD = ("sim", 0, 0)


@dataclass(slots=True)
class _SimNode:
    node_id: int
    core: NodeCore
    pending: list[bytes] = field(default_factory=list)
    app_count: int = 0
    flush_at: float | None = None
    tick_at: float | None = None
    last_recv: list[int] = field(default_factory=list)
    last_frontier: int = 0


class SimCluster:
    """One shard whose members all send, driven by a scheduler and a network."""

    def __init__(
        self,
        members: tuple[int, ...],
        config: MulticastConfig,
        scheduler: Scheduler,
        network: SimNetwork,
        rng: random.Random,
        proc_delay: tuple[float, float] = (5e-6, 100e-6),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.members = members
        self.sched = scheduler
        self.net = network
        self.rng = rng
        self.proc_delay = proc_delay
        self.log = log
        self.trace = Trace(members=members, senders=members)
        self.rejections: list[tuple[int, int, str]] = []
        self.nodes = {
            m: _SimNode(m, NodeCore(m, {SHARD: members}, config), last_recv=[0] * len(members))
            for m in members
        }

    # --------------------------------------------------------------- app side
    def app_send(self, node_id: int, count: int) -> None:
        node = self.nodes[node_id]
        for _ in range(count):
            node.pending.append(f"{node_id}.{node.app_count}".encode())
            node.app_count += 1
        self._offer(node)

    def _offer(self, node: _SimNode) -> None:
        if not node.pending:
            return
        taken = node.core.send(SHARD, node.pending, self.sched.now)
        if taken:
            self.trace.sent[node.node_id].extend(node.pending[:taken])
            del node.pending[:taken]
        self._after_step(node)

    def pending_app_messages(self) -> int:
        return sum(len(n.pending) for n in self.nodes.values())

    # ------------------------------------------------------------- core side
    def _arrive(self, dst: int, src: int, push: ShardPush) -> None:
        node = self.nodes[dst]
        node.core.step(PushArrived(self.sched.now, src, push))
        self._after_step(node)

    def _tick(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.tick_at = None
        node.core.step(Tick(self.sched.now))
        self._after_step(node)

    def _after_step(self, node: _SimNode) -> None:
        """Sample the core's state for the checker, then make sure a flush is coming."""
        step = self.sched.steps
        smc = node.core.shards[SHARD]
        recv = smc.sst.mine["received_num"]
        rec = self.trace.received[node.node_id]
        for pos, count in enumerate(recv):  # type: ignore[arg-type]
            if count != node.last_recv[pos]:
                node.last_recv[pos] = count
                rec[self.members[pos]].append((count, step))
        if smc.delivered != node.last_frontier:
            node.last_frontier = smc.delivered
            self.trace.frontier[node.node_id].append((smc.delivered, step))
        if node.flush_at is None:
            lo, hi = self.proc_delay
            node.flush_at = self.sched.now + lo + self.rng.random() * (hi - lo)
            self.sched.at(node.flush_at, self._flush, node.node_id)

    def _flush(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.flush_at = None
        ready = node.core.ready()
        for out in ready.outgoing:
            for dst in out.to:
                self.net.send(node_id, dst, self._deliver_frame, (dst, out.push))
        log = self.trace.delivered[node_id]
        for d in ready.deliveries:
            log.extend(d.messages)
            if self.log:
                self.log(
                    f"{self.sched.now:.6f} node {node_id} delivers {len(d.messages)} "
                    f"through index {d.frontier - 1}"
                )
        for r in ready.rejected:  # every input in the simulator is honest: a core bug
            self.rejections.append((node_id, r.sender, r.reason))
        if ready.window_open:
            self._offer(node)
        if ready.wakeup_at is not None and (node.tick_at is None or ready.wakeup_at < node.tick_at):
            node.tick_at = ready.wakeup_at
            self.sched.at(ready.wakeup_at, self._tick, node_id)

    def _deliver_frame(self, src: int, item: tuple[int, ShardPush]) -> None:
        dst, push = item
        self._arrive(dst, src, push)

    def nulls_sent(self) -> int:
        return sum(n.core.shards[SHARD].nulls_sent for n in self.nodes.values())
