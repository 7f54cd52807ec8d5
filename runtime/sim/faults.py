"""Seeded fault schedules: crashes (one, several at once, the leader, during a view change),
partitions with a majority and a minority side and their healing, slow links, joins, rejoins
of stopped nodes, and graceful leaves.

Faults never take away the majority of the newest view on purpose: a run in which no
majority survives has nothing left to check for liveness. Within that bound they are as
hostile as the seed makes them. Every decision draws from the run's seeded RNG at the moment
the fault fires, so the schedule replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from runtime.sim.cluster import SimCluster
from runtime.sim.network import LinkProfile

FAULT_MODES = ("none", "crash", "partition", "join", "all")

KINDS = {
    "crash": ("crash", "crash-leader", "crash-many", "crash-in-change", "slow-link"),
    "partition": ("partition", "partition", "slow-link"),
    "join": ("join", "join", "rejoin", "leave"),
}


@dataclass(frozen=True, slots=True)
class FaultEvent:
    at: float
    kind: str


@dataclass(slots=True)
class FaultInjector:
    cluster: SimCluster
    rng: random.Random
    suspicion_timeout: float
    next_new_id: int = 200
    log: list[str] = field(default_factory=list)
    armed_in_change: int = 0
    leavers: set[int] = field(default_factory=set)

    @staticmethod
    def plan(rng: random.Random, mode: str, start: float, end: float) -> list[FaultEvent]:
        if mode == "none":
            return []
        kinds = [k for m in ("crash", "partition", "join") for k in KINDS[m]] if mode == "all" else list(KINDS[mode])
        count = rng.randint(1, 4)
        return sorted(
            (FaultEvent(start + rng.random() * (end - start), rng.choice(kinds)) for _ in range(count)),
            key=lambda e: e.at,
        )

    # ------------------------------------------------------------------ helpers
    def _view_members_alive(self) -> tuple[list[int], int]:
        view = self.cluster.current_view()
        if view is None:
            return [], 0
        # A node that asked to leave counts as gone: the next view will not have it.
        alive = [
            m for m in view.members
            if m in self.cluster.nodes and self.cluster.nodes[m].alive and m not in self.leavers
        ]
        return alive, view.n

    def _can_lose(self, k: int) -> bool:
        """True if k more of the newest view's live members can fail and a majority remain.

        Nodes cut off by a partition count as lost while it lasts.
        """
        alive, n = self._view_members_alive()
        cut = {a for a, _ in self.cluster.net.cut}
        reachable = [m for m in alive if m not in cut]
        return n > 0 and 2 * (len(reachable) - k) > n

    # ------------------------------------------------------------------ faults
    def fire(self, kind: str) -> None:
        getattr(self, "_" + kind.replace("-", "_"))()

    def _crash(self) -> None:
        alive, _ = self._view_members_alive()
        if alive and self._can_lose(1):
            self.cluster.crash(self.rng.choice(alive))

    def _crash_leader(self) -> None:
        alive, _ = self._view_members_alive()
        if alive and self._can_lose(1):
            self.cluster.crash(alive[0])  # lowest rank alive: the leader, or about to be

    def _crash_many(self) -> None:
        alive, _ = self._view_members_alive()
        k = 2
        while k > 1 and not self._can_lose(k):
            k -= 1
        if alive and self._can_lose(k):
            for node in self.rng.sample(alive, k):
                self.cluster.crash(node)

    def _crash_in_change(self) -> None:
        """Arm: crash the leader (or a random member) the next time a view change is under way."""
        self.armed_in_change += 1

    def on_wedge(self) -> None:
        """Called when a node wedges: fires a crash armed for 'during a view change'."""
        if not self.armed_in_change:
            return
        alive, _ = self._view_members_alive()
        if alive and self._can_lose(1):
            self.armed_in_change -= 1
            victim = alive[0] if self.rng.random() < 0.6 else self.rng.choice(alive)
            self.cluster.say("fault: crash during a view change")
            self.cluster.crash(victim)

    def _slow_link(self) -> None:
        alive, _ = self._view_members_alive()
        if len(alive) < 2:
            return
        a, b = self.rng.sample(alive, 2)
        net = self.cluster.net
        base = net.default
        net.links[(a, b)] = LinkProfile(base.base * 10, base.jitter * 10 + 2e-3)
        self.cluster.say(f"fault: link {a}->{b} slowed")
        self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout * 2, net.links.pop, (a, b), None)

    def _partition(self) -> None:
        alive, n = self._view_members_alive()
        if n < 3 or self.cluster.net.cut:
            return
        max_minority = (n - 1) // 2 - (n - len(alive))
        if max_minority < 1:
            return
        minority = set(self.rng.sample(alive, self.rng.randint(1, max_minority)))
        rest = {m for m in self.cluster.nodes if m not in minority}
        self.cluster.net.partition(minority, rest)
        self.cluster.say(f"fault: partition {sorted(minority)} | {sorted(rest)}")
        duration = self.suspicion_timeout * (1.5 + 2.5 * self.rng.random())
        self.cluster.sched.at(self.cluster.sched.now + duration, self._heal)

    def _heal(self) -> None:
        self.cluster.net.heal()
        self.cluster.say("fault: partition healed")
        # Nodes that stopped themselves on the minority side come back as new members.
        for node in list(self.cluster.nodes.values()):
            if not node.alive and node.core.excluded and node.core.excluded.startswith(("partitioned", "suspected")):
                self._start_join(node.node_id)

    def _join(self) -> None:
        node_id = self.next_new_id
        self.next_new_id += 1
        self._start_join(node_id)

    def _rejoin(self) -> None:
        stopped = sorted(n.node_id for n in self.cluster.nodes.values() if not n.alive)
        if stopped:
            self._start_join(self.rng.choice(stopped))

    def _start_join(self, node_id: int) -> None:
        alive, _ = self._view_members_alive()
        if alive:
            self.leavers.discard(node_id)
            first = self.rng.choice(alive)
            self.cluster.start_joiner(node_id, [first] + [m for m in alive if m != first])

    def _leave(self) -> None:
        alive, n = self._view_members_alive()
        if len(alive) >= 3 and self._can_lose(1):
            node = self.rng.choice(alive)
            self.leavers.add(node)
            self.cluster.leave(node)
