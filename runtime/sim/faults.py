"""Seeded fault schedules: crashes (one, several at once, the leader, during a view change),
partitions with a majority and a minority side and their healing, slow links, joins, rejoins
of stopped nodes, graceful leaves, and (persistent mode) crash-and-restart: one node crashes
and comes back with its disk as a new incarnation, or every node crashes at once and a total
restart follows.

Faults never take away the majority of the newest view on purpose: a run in which no
majority survives has nothing left to check for liveness. In persistent mode they also never
take away the last member of a shard that holds the shard's whole log (a node whose state
transfer has landed), which would lose persisted data by fault rather than by bug; a total
restart, which keeps every disk, is the exception. Within those bounds they are as hostile as
the seed makes them. Every decision draws from the run's seeded RNG at the moment the fault
fires, so the schedule replays exactly.

Stalls (``stall``, also in ``all``): every node stops together (a VM pause, an overloaded host:
SIGSTOP, then SIGCONT a little apart), or one node stops while the others go on, or a majority
stops while a minority runs on (and rightly suspects it, then stops itself). A stalled node
does nothing and loses nothing: frames, timers and app work wait for it and run when it
resumes, timers before or after the frames as the seed says. The group must come back whole
from a stall of all; a node stalled alone is removed by the others, must never install a view
or deliver on its own, stops once it learns it is out, and rejoins as a new member (the
``node.on_partition = "rejoin"`` of a real node); a majority that stalled while a minority ran
on goes on without the minority (its suspicions, waiting in the sockets, must not make the
majority suspect itself), and the minority rejoins.

A disk error (``disk-error``, in the restart modes) makes one member's disk fail every write
from a seeded moment: the node must fail-stop (it asks to leave and stops at the first write
the protocol needs), and comes back later with the disk repaired.

A total restart crashes every node, waits, then delivers the nodes' restart reports (last
view, log ends, accepted view id, recorded frontiers, unfinished transfers: see ``disk.py``)
at seeded moments to the planner that ships, ``runtime.core.restart.RestartPlanner``, ticked
on virtual time exactly as ``runtime/drivers/restart.py`` ticks it, with a seeded quorum wait
(sometimes none, so that restarts with part of the nodes happen). Nodes whose reports come
after the decision come back later as joiners. A refused or impossible restart is recorded for
the checker. ``--plain-restart-quorum`` makes the reports plain (as before accepted ids,
frontiers and transfer markers existed), to show what the planner allows without them: a
restart view reusing the id of a view only absent nodes installed (split-brain), and a
newcomer whose state transfer had not landed taken for a complete log (persisted versions
lost). ``--faults restart-race`` aims total restarts at exactly those moments (right after the
first node installs a new view, that node reporting last; and while a new shard member's state
transfer is in flight, its source reporting last).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from runtime.core.layout import ShardId
from runtime.core.restart import RestartPlan, RestartPlanner, RestartRefused, RestartWaiting
from runtime.sim.client_net import CLIENT_HOST
from runtime.sim.cluster import SimCluster, address_of
from runtime.sim.disk import held_by
from runtime.sim.network import LinkProfile

FAULT_MODES = ("none", "crash", "partition", "join", "restart", "stall", "all", "restart-race")

KINDS = {
    "crash": ("crash", "crash-leader", "crash-many", "crash-in-change", "slow-link"),
    "partition": ("partition", "partition", "slow-link"),
    "join": ("join", "join", "rejoin", "leave"),
    "stall": ("stall-all", "stall-one", "stall-majority"),
    "restart": (
        "restart-one",
        "restart-one",
        "restart-leader",
        "restart-all",
        "restart-all-in-change",
        "restart-all-at-install",
        "restart-all-in-transfer",
        "disk-error",
    ),
    # Only total restarts aimed at what plain reports cannot tell (see the module docstring),
    # each set going by a node restart; with --plain-restart-quorum many fail.
    "restart-race": ("restart-all-at-install", "restart-all-in-transfer"),
}
ALL_MODES = ("crash", "partition", "join", "restart", "stall")
PERSISTENT_MODES = ("restart", "all", "restart-race")  # modes whose nodes keep logs on simulated disks

POST_RESTART_MESSAGES = (100, 400)  # the workload sends this many more after a total restart


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
    armed_restart: int = 0  # total restarts armed for the next view change
    restarting: bool = False  # between a total crash and the restart
    pending: int = 0  # scheduled comebacks: the run is not over while any is due
    busy_until: float = 0.0  # the workload that follows a restart sends until then
    node_restarts: int = 0
    total_restarts: int = 0
    restart_sizes: list[tuple[int, int]] = field(default_factory=list)  # (restarted, with a disk)
    armed_at_install: int = 0  # restart-race: strike when a node installs a view first
    armed_in_transfer: int = 0  # restart-race: strike when a state transfer starts
    report_last: set[int] = field(default_factory=set)  # nodes whose reports come in last
    installed_vids: set[int] = field(default_factory=set)
    # ``--plain-restart-quorum``: reports without accepted ids, frontiers and transfer markers.
    plain_reports: bool = False
    accept_loss: bool = False  # the operator's --accept-loss for every total restart
    before_restart: Callable[[SimCluster], None] | None = None  # tests: damage disks after the crash
    given_up: bool = False  # a total restart was refused or could not happen: nothing more to run
    disk_errors: int = 0

    @staticmethod
    def plan(rng: random.Random, mode: str, start: float, end: float) -> list[FaultEvent]:
        if mode == "none":
            return []
        if mode == "restart-race":  # arm one race, then restart a node to set a change going
            at = start + rng.random() * (end - start) / 2
            kind = rng.choice(KINDS[mode])
            return [FaultEvent(at, kind), FaultEvent(at + rng.random() * (end - start) / 2, "restart-one")]
        kinds = [k for m in ALL_MODES for k in KINDS[m]] if mode == "all" else list(KINDS[mode])
        count = rng.randint(1, 4)
        events = sorted(
            (FaultEvent(start + rng.random() * (end - start), rng.choice(kinds)) for _ in range(count)),
            key=lambda e: e.at,
        )
        if mode == "all":  # at most one total restart in a mixed run: each costs a restart delay or two
            total = [e for e in events if e.kind.startswith("restart-all")]
            events = [e for e in events if not e.kind.startswith("restart-all") or e is (total[0] if total else None)]
        return events

    def idle(self, now: float) -> bool:
        """No fault still owes an action (a comeback, a restart, the workload after one)."""
        return self.given_up or (not self.pending and not self.restarting and now > self.busy_until)

    # ------------------------------------------------------------------ helpers
    def _view_members_alive(self) -> tuple[list[int], int]:
        view = self.cluster.current_view()
        if view is None:
            return [], 0
        # A node that asked to leave counts as gone: the next view will not have it. So does a
        # member that crashed and is back only as a joiner (a new incarnation outside the view).
        nodes = self.cluster.nodes
        alive = [
            m
            for m in view.members
            if m in nodes
            and nodes[m].alive
            and not nodes[m].paused
            and not nodes[m].core.joining
            and m not in self.leavers
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

    def _holders(self, sid: ShardId, members: tuple[int, ...]) -> set[int]:
        """Live, reachable nodes holding all of ``sid``'s log: its members whose state transfer
        has landed, and any node that can still serve a pending transfer."""
        cluster = self.cluster
        cut = {a for a, _ in cluster.net.cut}
        out: set[int] = set()
        if cluster.app_holds is not None:  # app mode: the app knows which of its replicas hold the state
            return {
                m
                for m in members
                if m in cluster.nodes
                and cluster.nodes[m].alive
                and not cluster.nodes[m].paused
                and not cluster.nodes[m].core.joining
                and m not in cut
                and m not in self.leavers
                and cluster.app_holds(m, sid)
            }
        bounds = [
            cluster.nodes[m].awaiting[sid]
            for m in members
            if m in cluster.nodes and cluster.nodes[m].alive and sid in cluster.nodes[m].awaiting
        ]  # (a joining incarnation awaits nothing yet)
        need = min(bounds, default=None)
        for node in cluster.nodes.values():
            if (
                not node.alive
                or node.paused
                or node.core.joining
                or node.node_id in cut
                or node.node_id in self.leavers
            ):
                continue  # a joining incarnation holds nothing yet, whatever its id held before
            if node.node_id in members and sid not in node.awaiting:
                out.add(node.node_id)
            elif need is not None and node.complete_through.get(sid, -1) >= need:
                out.add(node.node_id)
        return out

    def _keeps_logs(self, gone: set[int]) -> bool:
        """False if losing ``gone`` would leave some shard with no holder of its whole log."""
        if not (self.cluster.persistent or self.cluster.app_holds is not None):
            return True
        view = self.cluster.current_view()
        if view is None:
            return True
        for sid, members in held_by(view).items():
            holders = self._holders(sid, members)
            if holders and not holders - gone:
                return False
        return True

    def _victims(self, alive: list[int]) -> list[int]:
        return [m for m in alive if self._keeps_logs({m})]

    # ------------------------------------------------------------------ faults
    def fire(self, kind: str) -> None:
        getattr(self, "_" + kind.replace("-", "_"))()

    def _crash(self) -> None:
        alive, _ = self._view_members_alive()
        alive = self._victims(alive)
        if alive and self._can_lose(1):
            self.cluster.crash(self.rng.choice(alive))

    def _crash_leader(self) -> None:
        alive, _ = self._view_members_alive()
        if alive and self._can_lose(1) and self._keeps_logs({alive[0]}):
            self.cluster.crash(alive[0])  # lowest rank alive: the leader, or about to be

    def _crash_many(self) -> None:
        alive, _ = self._view_members_alive()
        k = 2
        while k > 1 and not self._can_lose(k):
            k -= 1
        if alive and self._can_lose(k):
            for _ in range(4):
                victims = self.rng.sample(alive, min(k, len(alive)))
                if self._keeps_logs(set(victims)):
                    for node in victims:
                        self.cluster.crash(node)
                    return

    def _crash_in_change(self) -> None:
        """Arm: crash the leader (or a random member) the next time a view change is under way."""
        self.armed_in_change += 1

    def on_wedge(self) -> None:
        """Called when a node wedges: fires a crash armed for 'during a view change'."""
        if self.armed_restart and not self.restarting:
            # Strike somewhere in the change: before, during or just after the first install.
            self.armed_restart -= 1
            delay = self.rng.random() * self.suspicion_timeout * 0.3
            self.cluster.say(f"fault: total restart armed to strike {delay * 1e3:.3f}ms into a view change")
            self.pending += 1
            self.cluster.sched.at(self.cluster.sched.now + delay, self._armed_restart_fires)
        if not self.armed_in_change:
            return
        alive, _ = self._view_members_alive()
        if alive and self._can_lose(1):
            victim = alive[0] if self.rng.random() < 0.6 else self.rng.choice(alive)
            if not self._keeps_logs({victim}):
                return  # stays armed for a later change
            self.armed_in_change -= 1
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

        def heal() -> None:
            net.links.pop((a, b), None)

        self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout * 2, heal)

    def _partition(self) -> None:
        alive, n = self._view_members_alive()
        if n < 3 or self.cluster.net.cut:
            return
        max_minority = (n - 1) // 2 - (n - len(alive))
        if max_minority < 1:
            return
        for _ in range(4):
            minority = set(self.rng.sample(alive, self.rng.randint(1, max_minority)))
            if self._keeps_logs(minority):
                break
        else:
            return
        # The clients' host stays with the majority: a client of a minority node must fail over.
        rest = {m for m in self.cluster.nodes if m not in minority} | {CLIENT_HOST}
        self.cluster.net.partition(minority, rest)
        self.cluster.say(f"fault: partition {sorted(minority)} | {sorted(rest - {CLIENT_HOST})}")
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
            # Members stalled now are contacts too, tried last (as an operator lists every
            # member): they answer once they resume. Without them a joiner started while
            # all but a minority stall has only that minority, which stops for want of a
            # majority, and it could never join (seed 196 with all faults).
            stalled = self._view_members_stalled()
            self.cluster.start_joiner(node_id, [first] + [m for m in alive if m != first] + stalled)

    def _view_members_stalled(self) -> list[int]:
        """Members of the newest view that are paused (a stall fault), in view order."""
        view = self.cluster.current_view()
        if view is None:
            return []
        nodes = self.cluster.nodes
        return [
            m
            for m in view.members
            if m in nodes and nodes[m].alive and nodes[m].paused and not nodes[m].core.joining and m not in self.leavers
        ]

    def _leave(self) -> None:
        alive, n = self._view_members_alive()
        alive = self._victims(alive)
        if len(alive) >= 3 and self._can_lose(1):
            node = self.rng.choice(alive)
            self.leavers.add(node)
            self.cluster.leave(node)

    # ------------------------------------------------------------------ stalls
    def _stall_all(self) -> None:
        """Every live node stops together for 1.5 to 4 suspicion timeouts; they resume up to a
        fifth of a timeout apart (SIGCONTs sent one after another)."""
        cluster = self.cluster
        nodes = [n for n in cluster.alive() if not n.paused]
        if not nodes or self.restarting:
            return
        span = self.suspicion_timeout * (1.5 + 2.5 * self.rng.random())
        cluster.say(f"fault: every node stalls for {span * 1e3:.3f}ms")
        now = cluster.sched.now
        for node in nodes:
            cluster.pause(node.node_id)
        for node in nodes:
            self.pending += 1
            at = now + span + self.rng.random() * self.suspicion_timeout * 0.2
            cluster.sched.at(at, self._resume, node.node_id, node.life)

    def _stall_one(self) -> None:
        """One member stops for 1.5 to 4 suspicion timeouts while the others go on."""
        alive, _ = self._view_members_alive()
        victims = self._victims(alive)
        if not victims or not self._can_lose(1):
            return
        node = self.cluster.nodes[self.rng.choice(victims)]
        span = self.suspicion_timeout * (1.5 + 2.5 * self.rng.random())
        self.cluster.say(f"fault: node {node.node_id} stalls alone for {span * 1e3:.3f}ms")
        self.cluster.pause(node.node_id)
        self.pending += 1
        self.cluster.sched.at(self.cluster.sched.now + span, self._resume, node.node_id, node.life, True)

    def _stall_majority(self) -> None:
        """Every member but a minority stops for 1.5 to 4 suspicion timeouts. The minority runs
        on, suspects the stalled ones (their last rows wait in its peers' sockets), finds itself
        without a majority and stops; the resumed majority must not be talked into suspecting
        each other by those rows: it goes on without the minority, which rejoins."""
        alive, n = self._view_members_alive()
        if n < 3 or len(alive) < n or self.cluster.net.cut:
            return
        for _ in range(4):
            minority = self.rng.sample(alive, self.rng.randint(1, (n - 1) // 2))
            if self._keeps_logs(set(minority)):
                break
        else:
            return
        span = self.suspicion_timeout * (1.5 + 2.5 * self.rng.random())
        self.cluster.say(f"fault: all but {sorted(minority)} stall for {span * 1e3:.3f}ms")
        now = self.cluster.sched.now
        for m in alive:
            if m not in minority:
                node = self.cluster.nodes[m]
                self.cluster.pause(m)
                self.pending += 1
                at = now + span + self.rng.random() * self.suspicion_timeout * 0.2
                self.cluster.sched.at(at, self._resume, m, node.life)
        for m in minority:
            node = self.cluster.nodes[m]
            self.pending += 1
            self.cluster.sched.at(now + span, self._rejoin_if_out, m, node.life)

    def _resume(self, node_id: int, life: int, alone: bool = False) -> None:
        self.pending -= 1
        self.cluster.resume(node_id, life, timers_first=self.rng.random() < 0.5)
        if alone:
            self.pending += 1
            self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout, self._rejoin_if_out, node_id, life)

    def _rejoin_if_out(self, node_id: int, life: int) -> None:
        """A node back from a stall alone: if it found itself out of the group and stopped, it
        joins again as a new member; while it still runs in its old view, look again later."""
        node = self.cluster.nodes.get(node_id)
        if node is None or node.life != life:
            self.pending -= 1  # crashed and restarted meanwhile: that fault brings it back
            return
        if node.alive:
            if node.core.view is not None and node.core.view == self.cluster.current_view():
                self.pending -= 1  # never removed: it simply goes on
                return
            self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout, self._rejoin_if_out, node_id, life)
            return
        self.pending -= 1
        why = node.core.excluded or ""
        if why.startswith(("partitioned", "suspected", "removed")):
            self.cluster.say(f"node {node_id} rejoins after its stall ({why})")
            self._start_join(node_id)

    def _disk_error(self) -> None:
        """A member's disk starts failing writes: it must fail-stop like a leave (so it must be
        one the group can lose), and it comes back later with the disk repaired."""
        alive, _ = self._view_members_alive()
        alive = self._victims(alive)
        if len(alive) < 2 or not self._can_lose(1) or not self.cluster.persistent:
            return
        node = self.rng.choice(alive)
        self.leavers.add(node)
        self.disk_errors += 1
        self.cluster.fail_disk(node)
        self.pending += 1
        delay = self.suspicion_timeout * (2 + 2 * self.rng.random())
        self.cluster.sched.at(self.cluster.sched.now + delay, self._repaired, node)

    def _repaired(self, node_id: int) -> None:
        node = self.cluster.nodes.get(node_id)
        if node is not None and node.alive and self.cluster.disks[node_id].failing:
            # Still stopping (its leave waits for a view change): look again later.
            self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout, self._repaired, node_id)
            return
        self._come_back(node_id)

    # ------------------------------------------------------- crash and restart
    def _restart_one(self, leader: bool = False) -> None:
        """A node crashes and comes back with its disk, before or after the group noticed."""
        alive, _ = self._view_members_alive()
        if not alive or not self._can_lose(1):
            return
        if leader:
            node = alive[0]
            if not self._keeps_logs({node}):
                return
        else:
            victims = self._victims(alive)
            if not victims:
                return
            node = self.rng.choice(victims)
        self.cluster.crash(node)
        delay = self.suspicion_timeout * self.rng.choice((0.3, 1.5, 3.0)) * (0.5 + self.rng.random())
        self.cluster.say(f"fault: node {node} restarts in {delay * 1e3:.3f}ms")
        self.node_restarts += 1
        self.pending += 1
        self.cluster.sched.at(self.cluster.sched.now + delay, self._come_back, node)

    def _restart_leader(self) -> None:
        self._restart_one(leader=True)

    def _come_back(self, node_id: int) -> None:
        node = self.cluster.nodes.get(node_id)
        if node is not None and node.alive:
            self.pending -= 1  # a total restart brought it back meanwhile
            return
        alive, _ = self._view_members_alive()
        if not alive or self.restarting:  # nobody to join through yet: try again later
            self.cluster.sched.at(self.cluster.sched.now + self.suspicion_timeout, self._come_back, node_id)
            return
        self.pending -= 1
        self.cluster.say(f"node {node_id} restarts with its disk")
        self._start_join(node_id)

    def _restart_all(self) -> None:
        """Every node crashes at once; a total restart follows after a delay."""
        if self.restarting or not self.cluster.alive():
            return
        self.restarting = True
        # The network comes back whole with the nodes: a cut that outlived the restart would
        # drop frames inside the restart view, which only a broken connection may do.
        self.cluster.net.heal()
        self.cluster.crash_all()
        delay = self.suspicion_timeout * (1 + 2 * self.rng.random())
        self.cluster.sched.at(self.cluster.sched.now + delay, self._restart_from_disks)

    def _restart_all_in_change(self) -> None:
        """Arm: crash everything at some point of the next view change."""
        self.armed_restart += 1

    def _armed_restart_fires(self) -> None:
        self.pending -= 1
        self._restart_all()

    def _restart_all_at_install(self) -> None:
        self.armed_at_install += 1

    def _restart_all_in_transfer(self) -> None:
        self.armed_in_transfer += 1

    def on_install(self, node_id: int, vid: int) -> None:
        """A node's app took view ``vid``: fires a restart armed for 'at the first install'."""
        first = vid not in self.installed_vids
        self.installed_vids.add(vid)
        if not first or not self.armed_at_install or self.restarting or vid == 0:
            return
        if any(r.vid == vid for r in self.cluster.trace.restarts):
            return
        self.armed_at_install -= 1
        self.report_last = {node_id}
        self.cluster.say(f"fault: total crash right after node {node_id} installs view {vid}")
        self.pending += 1
        self.cluster.sched.at(self.cluster.sched.now, self._armed_restart_fires)

    def on_transfer(self, node_id: int, source: int) -> None:
        """A node started to wait for a shard's state: fires a restart armed for that."""
        if not self.armed_in_transfer or self.restarting:
            return
        self.armed_in_transfer -= 1
        self.report_last = {source}
        self.cluster.say(f"fault: total crash while node {node_id} waits for state from node {source}")
        self.pending += 1
        self.cluster.sched.at(self.cluster.sched.now, self._armed_restart_fires)

    def _restart_from_disks(self) -> None:
        """Deliver every disk's restart report to the shipped planner at seeded moments and
        carry out its decision: a restart, a refusal, or nothing possible at all."""
        cluster = self.cluster
        if self.before_restart is not None:
            self.before_restart(cluster)
        if cluster.app_report is not None:  # app mode: the reports come from the apps' data
            with_view = sorted(n for n in cluster.nodes if cluster.app_report(n) is not None)
        else:
            with_view = sorted(n for n, d in cluster.disks.items() if d.last_view is not None)
        order = list(with_view)
        self.rng.shuffle(order)
        span = self.suspicion_timeout * (0.2 + self.rng.random())
        # The leader's wait for stragglers once a quorum is back: none (restarts with the first
        # quorum), part of the reports' spread, or longer than it (everyone is in the restart).
        quorum_wait = self.rng.choice((0.0, 0.2, 0.6, 2.0)) * span
        if self.report_last:  # restart-race: these report last, and the planner does not wait
            order = [n for n in order if n not in self.report_last] + [n for n in order if n in self.report_last]
            quorum_wait = 0.0
            self.report_last = set()
        if not order:
            self._give_up(_Restart(RestartPlanner(cluster.policy, 0.0, 0.0), 0), "no disk holds a view")
            return
        now = cluster.sched.now
        times = sorted(now + self.rng.random() * span for _ in order)
        # Doubts (an accepted view nobody back installed, a log short of a frontier) hold the
        # decision longer than every report takes to come in: in the simulator every disk is
        # back in time, so a doubt always resolves from the reports, never by the timeout.
        planner = RestartPlanner(cluster.policy, quorum_wait, 2 * span + quorum_wait, self.accept_loss)
        state = _Restart(planner, len(order))
        cluster.say(f"restart: reports from {order} over {span * 1e3:.3f}ms; quorum wait {quorum_wait * 1e3:.3f}ms")
        for node, at in zip(order, times):
            cluster.sched.at(at, self._report_arrives, state, node)

    def _report_arrives(self, state: _Restart, node: int) -> None:
        if state.done:
            return
        if self.cluster.app_report is not None:
            state.planner.on_report(self.cluster.app_report(node))
        else:
            disk = self.cluster.disks[node]
            state.planner.on_report(disk.report(address_of(node), plain=self.plain_reports))
        state.arrived += 1
        self._decide(state)

    def _restart_tick(self, state: _Restart, at: float) -> None:
        if state.tick_at == at:
            state.tick_at = None
            self._decide(state)

    def _decide(self, state: _Restart) -> None:
        if state.done:
            return
        cluster = self.cluster
        decision = state.planner.on_tick(cluster.sched.now)
        if isinstance(decision, RestartWaiting):
            if decision.reason != state.last_reason:
                state.last_reason = decision.reason
                cluster.say(f"restart: waiting ({decision.reason})")
            if decision.until is not None:
                if state.tick_at is None or decision.until < state.tick_at:
                    state.tick_at = decision.until
                    cluster.sched.at(decision.until, self._restart_tick, state, decision.until)
            elif state.arrived == state.expected:
                self._give_up(state, f"no restart quorum from every disk: {decision.reason}")
            return
        if isinstance(decision, RestartRefused):
            self._give_up(state, decision.describe())
            return
        self._carry_out(state, decision)

    def _give_up(self, state: _Restart, why: str) -> None:
        state.done = True
        self.restarting = False
        self.given_up = True
        self.cluster.trace.restart_failures.append(why)
        self.cluster.say(f"fault: the group stays down: {why}")

    def _carry_out(self, state: _Restart, plan: RestartPlan) -> None:
        state.done = True
        cluster = self.cluster
        if plan.unresolved is not None:
            cluster.say(f"restart: going ahead although {plan.unresolved}")
        self.restarting = False
        self.total_restarts += 1
        self.restart_sizes.append((len(plan.view.members), state.expected))
        self.leavers.clear()
        cluster.restart(plan)
        # The rest (disks not used, nodes that never installed a view) rejoin later.
        later = sorted(n for n in cluster.nodes if n not in plan.view.members)
        for node in later:
            self.pending += 1
            when = cluster.sched.now + self.suspicion_timeout * (0.5 + 2 * self.rng.random())
            cluster.sched.at(when, self._come_back, node)
        if cluster.app_mode:
            return  # the app's own workload goes on
        # The workload goes on: new messages from the restarted nodes.
        members = list(plan.view.members)
        total = self.rng.randint(*POST_RESTART_MESSAGES)
        now = cluster.sched.now
        span = 0.05
        sent = 0
        while sent < total:
            size = min(total - sent, self.rng.randint(1, 20))
            at = now + self.suspicion_timeout * 0.2 + self.rng.random() * span
            cluster.sched.at(at, cluster.app_send, self.rng.choice(members), size, self.rng.random())
            self.busy_until = max(self.busy_until, at)
            sent += size


@dataclass(slots=True)
class _Restart:
    """One total restart in progress: the planner and the reports still to come."""

    planner: RestartPlanner
    expected: int  # reports that will arrive
    arrived: int = 0
    done: bool = False
    tick_at: float | None = None
    last_reason: str | None = None
