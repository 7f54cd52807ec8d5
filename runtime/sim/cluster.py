"""A whole group of NodeCores on one virtual clock and one simulated network.

Each node behaves like the real driver: events that arrive are stepped into its core at once,
and the core's ``ready()`` is drained after a small, seeded processing delay, so everything
that arrived meanwhile coalesces into one push per peer, as a busy node's loop would do.
After every core call the cluster samples the core's receive counts, delivery frontiers and
accepted proposals into the :class:`Trace` for the checker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.core.events import LeaveRequested, MessageArrived, Tick
from runtime.core.layout import LayoutPolicy, ShardId, compute_layout
from runtime.core.membership import Membership
from runtime.core.messages import Message
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.view import Proposal, View, ViewFormatError
from runtime.sim.invariants import Inc, Trace, ViewRecord
from runtime.sim.network import SimNetwork
from runtime.sim.scheduler import Scheduler


def address_of(node_id: int) -> str:
    return f"sim:{node_id}"


@dataclass(slots=True)
class SimNode:
    node_id: int
    life: int
    core: NodeCore
    alive: bool = True
    pending: dict[ShardId, list[bytes]] = field(default_factory=dict)
    made: int = 0
    flush_at: float | None = None
    tick_at: float | None = None
    last_recv: dict[tuple[int, ShardId], list[int]] = field(default_factory=dict)
    last_frontier: dict[tuple[int, ShardId], int] = field(default_factory=dict)
    membership: Membership | None = None
    last_ballot: int = 0
    saw_wedge: bool = False

    @property
    def inc(self) -> Inc:
        return (self.node_id, self.life)


class SimCluster:
    """A group of simulated nodes, their app workloads, and the trace they leave."""

    def __init__(
        self,
        members: tuple[int, ...],
        policy: LayoutPolicy,
        config: CoreConfig,
        scheduler: Scheduler,
        network: SimNetwork,
        rng: random.Random,
        proc_delay: tuple[float, float] = (5e-6, 100e-6),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy
        self.config = config
        self.sched = scheduler
        self.net = network
        self.rng = rng
        self.proc_delay = proc_delay
        self.log = log
        self.trace = Trace()
        self.rejections: list[tuple[Inc, int, str]] = []
        self.accepted_payloads: set[bytes] = set()
        self.longest_change = 0.0  # virtual seconds from a node's wedge to its next install
        self.on_wedge: Callable[[], None] | None = None  # fault hook: a view change is under way
        self.nodes: dict[int, SimNode] = {}
        view = View(0, members, tuple(address_of(m) for m in members), compute_layout(policy, members))
        for m in members:
            core = NodeCore(m, address_of(m), policy, config, 0.0, view=view)
            self._add(SimNode(m, 0, core))

    def _add(self, node: SimNode) -> None:
        self.nodes[node.node_id] = node
        self.trace.views.setdefault(node.inc, [])
        self.trace.delivered.setdefault(node.inc, [])
        node.membership = node.core.membership
        self._after_step(node)

    def say(self, text: str) -> None:
        if self.log:
            self.log(f"{self.sched.now:.6f} {text}")

    # --------------------------------------------------------------- app side
    def app_send(self, node_id: int, count: int, pick: float) -> None:
        """The app at ``node_id`` multicasts ``count`` messages in one of its shards."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive or not node.core.shards:
            return
        shards = sorted(node.core.shards)
        sid = shards[int(pick * len(shards)) % len(shards)]
        queue = node.pending.setdefault(sid, [])
        for _ in range(count):
            queue.append(f"{node_id}.{node.life}.{node.made}".encode())
            node.made += 1
        self._offer(node)

    def _offer(self, node: SimNode) -> None:
        if not node.alive:
            return
        for sid, queue in node.pending.items():
            if not queue or sid not in node.core.shards:
                continue
            taken = node.core.send(sid, queue, self.sched.now)
            for p in queue[:taken]:
                if p not in self.accepted_payloads:
                    self.accepted_payloads.add(p)
                    self.trace.sent.setdefault(node.node_id, []).append(p)
                    self.trace.shard_of[p] = tuple(sid)
                    self.trace.origin[p] = node.inc
            del queue[:taken]
        self._after_step(node)

    def pending_app_messages(self) -> int:
        return sum(len(q) for n in self.nodes.values() if n.alive for q in n.pending.values())

    # ------------------------------------------------------------- core side
    def _frame(self, src: int, item: tuple[int, int, Message]) -> None:
        dst, life, msg = item
        node = self.nodes.get(dst)
        if node is None or not node.alive or node.life != life:
            return
        node.core.step(MessageArrived(self.sched.now, src, msg))
        self._after_step(node)

    def _tick(self, node_id: int, life: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life:
            return
        node.tick_at = None
        node.core.step(Tick(self.sched.now))
        self._after_step(node)

    def _after_step(self, node: SimNode) -> None:
        """Sample the core's state for the checker, then make sure a flush is coming."""
        step = self.sched.steps
        core = node.core
        if node.membership is not None and node.membership is not core.membership:
            self._sample_ballot(node, node.membership, step)
            node.last_ballot = 0
            node.saw_wedge = False
            started = node.membership.wedge_started_at
            if started is not None and core.excluded is None:
                self.longest_change = max(self.longest_change, self.sched.now - started)
        node.membership = core.membership
        if core.membership is not None:
            self._sample_ballot(node, core.membership, step)
            if core.membership.wedged and not node.saw_wedge and node.alive:
                node.saw_wedge = True
                if self.on_wedge is not None:
                    self.on_wedge()
        vid = core.vid
        trace = self.trace
        for sid, smc in core.shards.items():
            key = (vid, sid)
            recv = smc.sst.mine["received_num"]
            last = node.last_recv.get(key)
            if last is None:
                last = node.last_recv[key] = [0] * len(recv)  # type: ignore[arg-type]
            for pos, count in enumerate(recv):  # type: ignore[arg-type]
                if count != last[pos]:
                    last[pos] = count
                    sender = smc.members[smc.sender_ranks[pos]]
                    trace.received.setdefault((node.inc, vid, tuple(sid), sender), []).append((count, step))  # type: ignore[arg-type]
            if smc.delivered != node.last_frontier.get(key, 0):
                node.last_frontier[key] = smc.delivered
                trace.frontier.setdefault((node.inc, vid, tuple(sid)), []).append((smc.delivered, step))  # type: ignore[arg-type]
        if node.flush_at is None and node.alive:
            lo, hi = self.proc_delay
            node.flush_at = self.sched.now + lo + self.rng.random() * (hi - lo)
            self.sched.at(node.flush_at, self._flush, node.node_id, node.life)

    def _sample_ballot(self, node: SimNode, m: Membership, step: int) -> None:
        ballot = m.mine["ballot"]
        if ballot != node.last_ballot:
            node.last_ballot = ballot
            wire = m.mine["proposal"]
            try:
                p = Proposal.from_wire(wire)
            except ViewFormatError:
                return
            self.trace.accepted.setdefault(node.inc, []).append((m.view.vid, (p.vid, p.members)))

    def _flush(self, node_id: int, life: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life:
            return
        node.flush_at = None
        ready = node.core.ready()
        for out in ready.outgoing:
            for dst in out.to:
                target = self.nodes.get(dst)
                if target is not None:
                    self.net.send(node_id, dst, self._frame, (dst, target.life, out.message))
        for cs in ready.contact_sends:
            dst = int(cs.address.split(":", 1)[1])
            target = self.nodes.get(dst)
            if target is not None:
                self.net.send(node_id, dst, self._frame, (dst, target.life, cs.message))
        log = self.trace.delivered[node.inc]
        for d in ready.deliveries:
            sid = tuple(d.shard)  # type: ignore[arg-type]
            log.extend((d.vid, sid, g, s, k, p, d.final) for g, s, k, p in d.messages)
            self.say(
                f"node {node_id} delivers {len(d.messages)} in view {d.vid} shard {sid} "
                f"through index {d.frontier - 1}{' (final)' if d.final else ''}"
            )
        for v in ready.views:
            rec = ViewRecord(v.vid, v.members, tuple((tuple(s), m) for s, m in v.layout.shards.items()))
            self.trace.views[node.inc].append(rec)
            self.say(f"node {node_id} installs view {v.vid} {list(v.members)}{'' if v.layout.adequate else ' (inadequate)'}")
        for sid, payloads in ready.orphaned:
            node.pending.setdefault(sid, [])[:0] = payloads
        for r in ready.rejected:  # every input in the simulator is honest: a core bug
            self.rejections.append((node.inc, r.sender, r.reason))
        if ready.excluded is not None:
            self.say(f"node {node_id} stops: {ready.excluded}")
            self._end(node, f"excluded: {ready.excluded}")
            return
        if ready.window_open or ready.views:
            self._offer(node)
        if ready.wakeup_at is not None and (node.tick_at is None or ready.wakeup_at < node.tick_at):
            node.tick_at = ready.wakeup_at
            self.sched.at(ready.wakeup_at, self._tick, node_id, node.life)

    def _end(self, node: SimNode, why: str) -> None:
        node.alive = False
        self.trace.ended[node.inc] = why

    # ------------------------------------------------------------------ faults
    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive:
            self.say(f"CRASH node {node_id}")
            self._end(node, "crashed")

    def leave(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive and not node.core.joining:
            self.say(f"node {node_id} asks to leave")
            node.core.step(LeaveRequested(self.sched.now))
            self._after_step(node)

    def start_joiner(self, node_id: int, contacts: list[int]) -> None:
        """Start ``node_id`` (new, or a past member coming back) as a joiner; it tries the
        ``contacts`` in turn, as a real node tries the contact list in its config."""
        old = self.nodes.get(node_id)
        if old is not None and old.alive:
            return
        life = old.life + 1 if old is not None else 0
        addrs = [address_of(c) for c in contacts]
        core = NodeCore(node_id, address_of(node_id), self.policy, self.config, self.sched.now, contact=addrs)
        self.say(f"node {node_id} starts to join via node {contacts[0]}")
        node = SimNode(node_id, life, core)
        self._add(node)
        self.sched.at(self.sched.now, self._tick, node_id, life)

    # --------------------------------------------------------------- queries
    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def current_view(self) -> View | None:
        """The newest view any live node has installed."""
        views = [n.core.view for n in self.alive() if n.core.view is not None]
        return max(views, key=lambda v: v.vid) if views else None

    def quiescent(self) -> bool:
        """Every live node is a member of one view, idle, with nothing left to deliver."""
        live = self.alive()
        if not live or any(n.core.joining for n in live):
            return False
        vids = {n.core.vid for n in live}
        if len(vids) != 1:
            return False
        view = live[0].core.view
        assert view is not None
        if {n.node_id for n in live} != set(view.members):
            return False
        for n in live:
            if n.core.unreported():
                return False
            m = n.core.membership
            if m is None or m.wedged or m.pending_joins:
                return False
            for sid, q in n.pending.items():
                if q and sid in n.core.shards:
                    return False
            for smc in n.core.shards.values():
                if smc.resend or any(smc._buf) or smc.wedged:
                    return False
                if any(row["received_num"] != smc.sst.mine["received_num"] for row in smc.sst.rows):
                    return False
        return True

    def nulls_sent(self) -> int:
        return sum(smc.nulls_sent for n in self.nodes.values() for smc in n.core.shards.values())

    def describe_state(self) -> dict[str, Any]:
        return {
            n.node_id: (n.alive, n.core.vid, n.core.excluded, n.core.membership.wedged if n.core.membership else None)
            for n in self.nodes.values()
        }
