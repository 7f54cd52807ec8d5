"""A whole group of NodeCores on one virtual clock and one simulated network.

Each node behaves like the real driver: events that arrive are stepped into its core at once,
and the core's ``ready()`` is drained after a small, seeded processing delay, so everything
that arrived meanwhile coalesces into one push per peer, as a busy node's loop would do.
After every core call the cluster samples the core's receive counts, delivery frontiers,
persistence frontiers and accepted proposals into the :class:`Trace` for the checker.

In persistent mode each node's app also keeps a log per shard (see ``disk.py``): a delivered
message is appended to the volatile log, a seeded fsync later moves it to the node's disk and
steps ``Persisted`` into the core. A node that gains a shard in a view that names a state
source for it holds its log's fsyncs back until the source's records up to that view have
arrived (a simulated state transfer), so a ``Persisted`` report always covers a gap-free log.
A total restart (``restart``) starts every reporting node's core directly in the restart view
that ``runtime.core.restart.RestartPlanner`` decided, with its persisted floor set, and the
members that are not the shard's source copy the missing tail from it the same way.

The cluster is the driver of each core, so it keeps the driver's duties of ``Ready``: the
accepted proposal id goes to the disk before the Ready's messages are sent, and a node whose
disk fails (``fail_disk``) asks to leave and stops at the first write it cannot make (an
acceptance it cannot record, a view it cannot save): it never reports a version persisted
that is not on its disk.

In *app mode* (``app_start`` given) the application is real code written against the node
interface (``runtime.node_api``), such as the actor layer hosting a user's replicated class:
each incarnation of a node gets a ``SimNodeHandle`` (``app_node.py``) through which the app
multicasts, sends direct messages over the simulated network and schedules its callbacks, and
the flush hands it deliveries, views, frontiers and its stop through its hooks, as the real
driver does; clients reach the app through ``client_net`` (their connections, served as the
driver serves them). The app keeps its own logs then (``persistent`` stays off here); a total restart
takes the nodes' restart reports from ``app_report`` and leaves the persistence floors to the
app, which reports what its logs hold as the real node does.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.core.events import LeaveRequested, MessageArrived, Persisted, Tick, TransferArrived
from runtime.core.layout import LayoutPolicy, ShardId, compute_layout
from runtime.core.membership import Membership
from runtime.core.messages import Message
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.object_transfers import TransferInput, as_received
from runtime.core.rdmc_descriptor import Digested
from runtime.core.restart import RestartPlan
from runtime.core.versions import format_version, make_version
from runtime.core.view import Proposal, View, ViewFormatError
from runtime.sim.client_net import SimClientNet
from runtime.sim.disk import Disk, LogRecord, common_prefix, held_shards
from runtime.sim.invariants import Inc, RestartRecord, Trace, ViewRecord
from runtime.sim.network import SimNetwork
from runtime.sim.objects import ObjectLoad
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
    # Persistent mode: the app's logs and state transfers (lost with the incarnation).
    last_pfront: dict[tuple[int, ShardId], int] = field(default_factory=dict)
    app_view: View | None = None  # the last view the app has been handed
    volatile: dict[ShardId, list[LogRecord]] = field(default_factory=dict)
    syncing: dict[ShardId, int] = field(default_factory=dict)  # shard -> last version the fsync in flight covers
    awaiting: dict[ShardId, int] = field(default_factory=dict)  # shard -> view whose state transfer is owed
    # shard -> v: the app's log (disk + volatile) holds every version of the shard below view v
    complete_through: dict[ShardId, int] = field(default_factory=dict)
    last_in: dict[ShardId, int] = field(default_factory=dict)  # shard -> last view that gave it to us
    # Stalled (a SIGSTOPped process): what would have run meanwhile waits here, in order, each
    # entry (is a timer, action, args), and runs when the node resumes.
    paused: bool = False
    held: list[tuple[bool, Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)

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
        persistent: bool = False,
        disk_rng: random.Random | None = None,
        fsync: tuple[float, float] = (200e-6, 1e-3),
        objects: ObjectLoad | None = None,
    ) -> None:
        """``objects``: which payloads the workload makes large (the cores' config says
        whether they go as objects)."""
        self.policy = policy
        self.objects = objects
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
        self.on_install: Callable[[int, int], None] | None = None  # fault hook: (node, vid) taken by the app
        self.on_transfer: Callable[[int, int], None] | None = None  # fault hook: (node, source) transfer asked
        self.nodes: dict[int, SimNode] = {}
        self.persistent = persistent
        self.trace.persistent = persistent
        self.disk_rng = disk_rng if disk_rng is not None else random.Random(0)
        self.fsync = fsync  # (base, jitter) of one fsync, in virtual seconds
        self.disks: dict[int, Disk] = {}
        self.transfers = 0  # state transfers completed
        self.truncations = 0  # logs cut back to the group's history by a transfer
        # App mode: (node id, life) -> start that incarnation's app (it registers its handle);
        # node id -> the app is gone with its incarnation (crash or stop); restart reports.
        self.app_start: Callable[[int, int], None] | None = None
        self.app_end: Callable[[int], None] | None = None
        self.app_report: Callable[[int], Any] | None = None  # node id -> RestartReport or None
        self.app_holds: Callable[[int, ShardId], bool] | None = None  # node's replica holds the shard's state
        self.apps: dict[int, Any] = {}  # node id -> SimNodeHandle of its live incarnation
        self.app_faults: list[str] = []  # what an app did that only a bug explains (a cut-off)
        self.client_net = SimClientNet(self)  # app mode: clients' connections to the nodes
        view = View(0, members, tuple(address_of(m) for m in members), compute_layout(policy, members))
        for m in members:
            core = NodeCore(m, address_of(m), policy, config, 0.0, view=view)
            self._add(SimNode(m, 0, core))

    def _add(self, node: SimNode) -> None:
        self.nodes[node.node_id] = node
        if node.node_id not in self.disks:
            disk = self.disks[node.node_id] = Disk(node.node_id)
            self.trace.disks[node.node_id] = disk.logs
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
        if self.held(node_id, self.app_send, (node_id, count, pick)):
            return
        shards = sorted(node.core.shards)
        sid = shards[int(pick * len(shards)) % len(shards)]
        queue = node.pending.setdefault(sid, [])
        load = self.objects
        for _ in range(count):
            tag = f"{node_id}.{node.life}.{node.made}".encode()
            queue.append(tag if load is None else load.payload(tag, node.made))
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

    # ------------------------------------------------------------- app mode
    @property
    def app_mode(self) -> bool:
        return self.app_start is not None

    def register_app(self, handle: Any) -> None:
        """The app of a node's current incarnation is ready for its hooks."""
        self.apps[handle.node_id] = handle

    def _hooks(self, node: SimNode) -> Any:
        app = self.apps.get(node.node_id)
        return app.hooks if app is not None and app.life == node.life else None

    def app_multicast(self, node_id: int, shard: ShardId, payloads: list[bytes]) -> None:
        node = self.nodes[node_id]
        node.pending.setdefault(shard, []).extend(payloads)
        self._offer(node)

    def app_direct(self, src: int, dst: int, data: bytes) -> None:
        """A direct application message, over the simulated network (FIFO per link)."""
        target = self.nodes.get(dst)
        if target is not None and target.alive:
            self.net.send(src, dst, self._app_frame, (dst, target.life, data))

    def _app_frame(self, src: int, item: tuple[int, int, bytes]) -> None:
        dst, life, data = item
        node = self.nodes.get(dst)
        if node is None or not node.alive or node.life != life or self.held(dst, self._app_frame, (src, item)):
            return
        hooks = self._hooks(node)
        if hooks is not None and hooks.on_app is not None:
            hooks.on_app(src, data)

    def after_app_step(self, node_id: int) -> None:
        """The app stepped the node's core: sample it and make sure a flush is coming."""
        self._after_step(self.nodes[node_id])

    def stop_node(self, node_id: int, reason: str) -> None:
        """The app stopped its node (a fail-stop, or closed): it ends at once, like a process
        that exits, and its app hears why."""
        node = self.nodes[node_id]
        if node.alive:
            self.say(f"node {node_id} stops: {reason}")
            hooks = self._hooks(node)
            self._end(node, f"stopped: {reason}")
            if hooks is not None and hooks.on_stop is not None:
                hooks.on_stop(reason)

    def start_apps(self) -> None:
        """App mode: start the app of every node the cluster was made with."""
        for node in list(self.nodes.values()):
            if node.alive:
                self._start_app(node)

    def _start_app(self, node: SimNode) -> None:
        if self.app_start is not None:
            self.app_start(node.node_id, node.life)

    def _app_ready(self, node: SimNode, ready: Any) -> bool:
        """Hand a Ready's application part to the node's app; False if the node stopped."""
        hooks = self._hooks(node)
        if hooks is None:
            return True
        deliveries = ready.deliveries
        for v in ready.views:  # each view's deliveries reach the app before the next view does
            if hooks.on_deliver is not None:
                for d in deliveries:
                    if d.vid < v.vid:
                        hooks.on_deliver(d)
            deliveries = [d for d in deliveries if d.vid >= v.vid]
            if hooks.on_view is not None:
                hooks.on_view(v)
            if self.on_install is not None:
                self.on_install(node.node_id, v.vid)
            if not node.alive:
                return False
        if hooks.on_deliver is not None:
            for d in deliveries:
                hooks.on_deliver(d)
        if not node.alive:
            return False
        if hooks.on_persisted is not None:
            for sid, version in ready.persisted:
                hooks.on_persisted(sid, version)
        if hooks.on_stable is not None:
            for sid, vid, index in ready.delivered_everywhere:
                hooks.on_stable(sid, vid, index)
        if hooks.on_window_open is not None:
            for sid in ready.window_open:
                hooks.on_window_open(sid)
        return node.alive

    def pending_app_messages(self) -> int:
        return sum(len(q) for n in self.nodes.values() if n.alive for q in n.pending.values())

    # ------------------------------------------------------------- core side
    def _frame(self, src: int, item: tuple[int, int, Message]) -> None:
        dst, life, msg = item
        node = self.nodes.get(dst)
        if (
            node is None
            or not node.alive
            or node.life != life
            or (node.paused and self.held(dst, self._frame, (src, item)))
        ):
            return
        node.core.step(MessageArrived(self.sched.now, src, msg))
        self._after_step(node)

    def _transfer(self, src: int, item: tuple[int, int, TransferInput]) -> None:
        dst, life, event = item
        node = self.nodes.get(dst)
        if node is None or not node.alive or node.life != life or self.held(dst, self._transfer, (src, item)):
            return
        node.core.step(TransferArrived(self.sched.now, event))
        self._after_step(node)

    def _tick(self, node_id: int, life: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life or self.held(node_id, self._tick, (node_id, life), True):
            return
        node.tick_at = None
        node.core.step(Tick(self.sched.now))
        self._after_step(node)

    def _after_step(self, node: SimNode) -> None:
        """Sample the core's state for the checker, then make sure a flush is coming."""
        self._sample(node)
        if node.flush_at is None and node.alive:
            lo, hi = self.proc_delay
            node.flush_at = self.sched.now + lo + self.rng.random() * (hi - lo)
            self.sched.at(node.flush_at, self._flush, node.node_id, node.life)

    def _sample(self, node: SimNode) -> None:
        """Sample the core's state for the checker: after every core call, and after each
        flush (the core evaluates a shard's pushes and sends only when the state is next
        read, at the latest in ``ready()``: what that moved shows there).

        The common case (nothing sampled moved) is kept to a few comparisons: a shard's
        receive counts are compared whole before position by position, and a ballot is
        decoded only when it changed."""
        step = self.sched.steps
        core = node.core
        membership = core.membership
        if node.membership is not None and node.membership is not membership:
            self._sample_ballot(node, node.membership, step)
            node.last_ballot = 0
            node.saw_wedge = False
            started = node.membership.wedge_started_at
            if started is not None and core.excluded is None:
                self.longest_change = max(self.longest_change, self.sched.now - started)
        node.membership = membership
        if membership is not None:
            if membership.mine["ballot"] != node.last_ballot:
                self._sample_ballot(node, membership, step)
            if not node.saw_wedge and membership.wedged and node.alive:
                node.saw_wedge = True
                if self.on_wedge is not None:
                    self.on_wedge()
        if core.shards:
            view = core.view
            vid = view.vid if view is not None else -1  # no view: no shards either
            trace = self.trace
            last_recv = node.last_recv
            for sid, smc in core.shards.items():
                key = (vid, sid)
                recv = smc.sst.mine["received_num"]
                last = last_recv.get(key)
                if last is None:
                    last = last_recv[key] = [0] * len(recv)  # type: ignore[arg-type]
                if recv != last:
                    for pos, count in enumerate(recv):  # type: ignore[arg-type]
                        if count != last[pos]:
                            last[pos] = count
                            sender = smc.members[smc.sender_ranks[pos]]
                            trace.received.setdefault((node.inc, vid, tuple(sid), sender), []).append((count, step))
                delivered = smc.delivered
                if delivered != node.last_frontier.get(key, 0):
                    node.last_frontier[key] = delivered
                    trace.frontier.setdefault((node.inc, vid, tuple(sid)), []).append((delivered, step))
                pf = smc.persisted_frontier
                if pf and pf != node.last_pfront.get(key, 0):
                    node.last_pfront[key] = pf
                    trace.persisted.setdefault((node.inc, vid, tuple(sid)), []).append((pf - 1, step))

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
        if (
            node is None
            or not node.alive
            or node.life != life
            or (node.paused and self.held(node_id, self._flush, (node_id, life)))
        ):
            return
        node.flush_at = None
        ready = node.core.ready()
        self._sample(node)
        if ready.accepted is not None and self.persistent:
            # The driver's first duty: the acceptance is on disk before the ack can leave.
            disk = self.disks[node_id]
            if disk.failing:
                self._disk_stop(node, f"cannot record its acceptance of view {ready.accepted}")
                return
            disk.accepted_vid = max(disk.accepted_vid, ready.accepted)
        if ready.accepted is not None and self.app_mode:
            hooks = self._hooks(node)
            if hooks is not None and hooks.on_accepted is not None:
                try:  # durable before the acceptance leaves, as the real driver does
                    hooks.on_accepted(ready.accepted)
                except OSError as exc:
                    self.stop_node(
                        node_id, f"storage failure: recording the accepted view {ready.accepted} failed: {exc}"
                    )
                    return
        send, nodes, frame = self.net.send, self.nodes, self._frame
        for out in ready.outgoing:
            for dst in out.to:
                target = nodes.get(dst)
                if target is not None:
                    send(node_id, dst, frame, (dst, target.life, out.message))
        for t in ready.transfers:  # blocks and credits: simulated messages like any other
            target = self.nodes.get(t.to)
            if target is not None:
                self.net.send(node_id, t.to, self._transfer, (t.to, target.life, as_received(t, node_id)))
        for cs in ready.contact_sends:
            dst = int(cs.address.split(":", 1)[1])
            target = self.nodes.get(dst)
            if target is not None:
                self.net.send(node_id, dst, self._frame, (dst, target.life, cs.message))
        log = self.trace.delivered[node.inc]
        persistent = self.persistent
        for d in ready.deliveries:
            sid = tuple(d.shard)
            # (objects arrive as bytearrays: the trace keeps bytes, which it can hash)
            log.extend((d.vid, sid, g, s, k, bytes(p), d.final) for g, s, k, p in d.messages)
            if persistent:  # the app logs every delivery; fsyncs start once the views are in
                base = make_version(d.vid, 0)
                node.volatile.setdefault(d.shard, []).extend((base + g, bytes(p)) for g, _, _, p in d.messages)
            if self.log is not None:  # (say's text is costly to format for every delivery)
                self.say(
                    f"node {node_id} delivers {len(d.messages)} in view {d.vid} shard {sid} "
                    f"through index {d.frontier - 1}{' (final)' if d.final else ''}"
                )
        for v in ready.views:
            rec = ViewRecord(v.vid, v.members, tuple((tuple(s), m) for s, m in v.layout.shards.items()))
            self.trace.views[node.inc].append(rec)
            self.say(
                f"node {node_id} installs view {v.vid} {list(v.members)}{'' if v.layout.adequate else ' (inadequate)'}"
            )
            if persistent:
                self._installed(node, v)
                if not node.alive:
                    return
        if persistent:
            disk = self.disks[node_id]
            for sid, version in ready.persisted:
                if self.log is not None:
                    self.say(f"node {node_id} shard {tuple(sid)} persisted through {format_version(version)}")
                if not disk.failing:  # recorded lazily: a lower bound of the frontier
                    disk.frontiers[sid] = max(disk.frontiers.get(sid, -1), version)
            for sid in list(node.volatile):
                self._start_fsync(node, sid)
        if self.app_mode and not self._app_ready(node, ready):
            return
        for sid, payloads in ready.orphaned:  # (own objects come back with their digests: the
            # workload's queue keeps the bytes it made, so the trace knows them)
            node.pending.setdefault(sid, [])[:0] = [bytes(p.data) if isinstance(p, Digested) else p for p in payloads]
        for r in ready.rejected:  # every input in the simulator is honest: a core bug
            self.rejections.append((node.inc, r.sender, r.reason))
        if ready.excluded is not None:
            self.say(f"node {node_id} stops: {ready.excluded}")
            hooks = self._hooks(node) if self.app_mode else None
            self._end(node, f"excluded: {ready.excluded}")
            if hooks is not None and hooks.on_stop is not None:
                hooks.on_stop(ready.excluded)
            return
        if ready.window_open or ready.views:
            self._offer(node)
        if ready.wakeup_at is not None and (node.tick_at is None or ready.wakeup_at < node.tick_at):
            node.tick_at = ready.wakeup_at
            self.sched.at(ready.wakeup_at, self._tick, node_id, node.life)

    # ------------------------------------------------------- persistence (app)
    def disk(self, node_id: int) -> Disk:
        return self.disks[node_id]

    def _durable_changed(self, node_id: int, sid: ShardId) -> None:
        log = self.disks[node_id].logs.get(sid)
        last = log[-1][0] if log else -1
        self.trace.durable.setdefault((node_id, tuple(sid)), []).append((last, self.sched.steps))

    def _installed(self, node: SimNode, view: View) -> None:
        """The app takes a new view: note what its logs now cover, and ask for the state of
        every shard it gained from the source the view names."""
        me = node.node_id
        if self.disks[me].failing:
            self._disk_stop(node, f"cannot save view {view.vid}")
            return
        prev = node.app_view
        before = held_shards(prev, me) if prev is not None else ()
        for sid in before:  # every delivery of the previous view is in the log now
            if sid not in node.awaiting:
                node.complete_through[sid] = view.vid
        if prev is None:  # a restart view: its sources' logs are the shards' history, held or not
            for sid, src in view.sources:
                if src == me:
                    node.complete_through[sid] = view.vid
        for sid in held_shards(view, me):
            node.last_in[sid] = view.vid
            if sid in before:
                continue
            source = view.source_of(sid)
            if source is not None and source != me:
                self._await(node, sid, view.vid, source)
                continue
            if source is None and view.vid > 0 and prev is not None:
                self.say(f"node {me} takes shard {tuple(sid)} in view {view.vid} with no state source")
            node.complete_through[sid] = view.vid
        node.app_view = view
        self.disks[me].last_view = view
        if self.on_install is not None:
            self.on_install(me, view.vid)

    def _await(self, node: SimNode, sid: ShardId, bound: int, src: int) -> None:
        node.awaiting[sid] = bound
        self.disks[node.node_id].incomplete.add(sid)
        self.say(
            f"node {node.node_id} awaits shard {tuple(sid)} state before view {bound} from node {src} "
            f"(has {format_version(self.disks[node.node_id].last_version(sid))})"
        )
        self.sched.at(self.sched.now + self._transfer_latency(), self._serve, node.node_id, node.life, sid, bound, src)
        if self.on_transfer is not None:
            self.on_transfer(node.node_id, src)

    def _transfer_latency(self) -> float:
        return 50e-6 + self.disk_rng.random() * 450e-6

    def _serve(self, node_id: int, life: int, sid: ShardId, bound: int, src: int) -> None:
        """The request for ``sid``'s state reaches ``src``: it answers once its own log holds
        every version before view ``bound``. A dead source is replaced by a live member of the
        shard that holds it all."""
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life or node.awaiting.get(sid) != bound:
            return
        args = (node_id, life, sid, bound, src)
        if self.held(node_id, self._serve, args) or self.held(src, self._serve, args):
            return
        holder = self.nodes.get(src)
        now = self.sched.now
        if holder is not None and holder.alive and holder.complete_through.get(sid, -1) >= bound:
            cut = make_version(bound, 0)
            durable = self.disks[src].logs.get(sid, [])
            records = durable[: bisect_left(durable, (cut,))]
            last = records[-1][0] if records else -1
            records += [r for r in holder.volatile.get(sid, ()) if last < r[0] < cut]
            delay = self._transfer_latency() + 200e-6 + self.disk_rng.random() * 2e-3 + len(records) * 1e-7
            self.sched.at(now + delay, self._land, node_id, life, sid, bound, records, src)
            return
        if holder is None or not holder.alive:
            view = node.app_view
            alt = [
                m
                for m in (view.members if view is not None else ())
                if m != node_id
                and m in self.nodes
                and self.nodes[m].alive
                and self.nodes[m].complete_through.get(sid, -1) >= bound
            ]
            if alt:
                src = alt[0]
                self.say(f"node {node_id} asks node {src} for shard {tuple(sid)} state instead")
        self.sched.at(now + 1e-3, self._serve, node_id, life, sid, bound, src)

    def _land(self, node_id: int, life: int, sid: ShardId, bound: int, records: list[LogRecord], src: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life or node.awaiting.get(sid) != bound:
            return
        if self.held(node_id, self._land, (node_id, life, sid, bound, records, src)):
            return
        disk = self.disks[node_id]
        if disk.failing:
            self._disk_error(node, f"cannot write shard {tuple(sid)} state")
            return
        log = disk.logs.setdefault(sid, [])
        keep = common_prefix(log, records)
        if keep < len(log):
            self.truncations += 1
            self.say(
                f"node {node_id} drops {len(log) - keep} records of shard {tuple(sid)} after "
                f"{format_version(log[keep - 1][0]) if keep else 'none'}: not in the history of node {src}"
            )
        log[keep:] = records[keep:]
        last = log[-1][0] if log else -1
        vol = node.volatile.get(sid)
        if vol:
            vol[:] = [r for r in vol if r[0] > last]
        del node.awaiting[sid]
        disk.incomplete.discard(sid)
        view = node.app_view
        if view is not None and sid in held_shards(view, node_id):
            node.complete_through[sid] = view.vid
        else:
            node.complete_through[sid] = max(bound, node.last_in.get(sid, bound) + 1)
        self.transfers += 1
        self.say(
            f"node {node_id} receives shard {tuple(sid)} state from node {src}: "
            f"{len(records) - keep} records, log through {format_version(last)}"
        )
        self._durable_changed(node_id, sid)
        if log:
            node.core.step(Persisted(self.sched.now, sid, last))
            self._after_step(node)
        self._start_fsync(node, sid)

    def _start_fsync(self, node: SimNode, sid: ShardId) -> None:
        """Group commit: one fsync at a time per shard log covers everything appended so far.
        Nothing reaches the disk while the shard's state transfer is owed."""
        if sid in node.syncing or sid in node.awaiting or not node.alive:
            return
        vol = node.volatile.get(sid)
        if not vol:
            return
        node.syncing[sid] = vol[-1][0]
        base, jitter = self.fsync
        delay = base + self.disk_rng.random() * jitter
        if self.disk_rng.random() < 0.02:
            delay *= 10  # an occasional slow disk
        self.sched.at(self.sched.now + delay, self._fsync_done, node.node_id, node.life, sid)

    def _fsync_done(self, node_id: int, life: int, sid: ShardId) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive or node.life != life:
            return  # crashed meanwhile: the volatile tail is gone
        if self.held(node_id, self._fsync_done, (node_id, life, sid)):
            return
        upto = node.syncing.pop(sid)
        if self.disks[node_id].failing:  # the write errs: nothing moves, nothing is reported
            self._disk_error(node, f"fsync of shard {tuple(sid)} failed")
            return
        vol = node.volatile.get(sid, [])
        n = 0
        while n < len(vol) and vol[n][0] <= upto:
            n += 1
        log = self.disks[node_id].logs.setdefault(sid, [])
        last = log[-1][0] if log else -1
        moved = [r for r in vol[:n] if r[0] > last]
        del vol[:n]
        if moved:
            log.extend(moved)
            self._durable_changed(node_id, sid)
            node.core.step(Persisted(self.sched.now, sid, log[-1][0]))
            self._after_step(node)
        self._start_fsync(node, sid)

    def _end(self, node: SimNode, why: str) -> None:
        node.alive = False
        self.trace.ended[node.inc] = why
        self.client_net.node_ended(node.node_id)
        if self.app_end is not None and self.apps.get(node.node_id) is not None:
            self.app_end(node.node_id)

    # ------------------------------------------------------------- disk errors
    def fail_disk(self, node_id: int) -> None:
        """From now on every write to the node's disk errs (disk full, I/O error)."""
        node = self.nodes[node_id]
        if not node.alive or self.disks[node_id].failing:
            return
        self.say(f"fault: disk of node {node_id} starts failing writes")
        self.disks[node_id].failing = True
        self.trace.disk_failed[node.inc] = self.sched.steps
        self._disk_error(node, "disk writes fail")

    def _disk_error(self, node: SimNode, what: str) -> None:
        """Fail-stop, gracefully where it can: ask to leave (again in every view, as a leave
        requested during a view change is forgotten by the next view)."""
        if not node.alive:
            return
        if node.core.membership is not None and not node.core.membership.mine["leaving"]:
            self.say(f"node {node.node_id} fail-stops ({what}): asks to leave")
            node.core.step(LeaveRequested(self.sched.now))
            self._after_step(node)

    def _disk_stop(self, node: SimNode, what: str) -> None:
        """A write the protocol needs before going on failed: the node stops on the spot."""
        self.say(f"node {node.node_id} stops: disk error ({what})")
        self._end(node, f"disk error: {what}")

    def repair_disk(self, node_id: int) -> None:
        """The operator fixed the disk before starting the node again."""
        self.disks[node_id].failing = False

    # ------------------------------------------------------------------ stalls
    def held(self, node_id: int, action: Callable[..., None], args: tuple[Any, ...], timer: bool = False) -> bool:
        """If ``node_id`` is stalled, keep ``action(*args)`` for when it resumes and return
        True: a stopped process reads no socket and runs no timer, but loses nothing."""
        node = self.nodes.get(node_id)
        if node is None or not node.paused:
            return False
        node.held.append((timer, action, args))
        return True

    def pause(self, node_id: int) -> None:
        """Stall the node (SIGSTOP, a VM pause): its time goes on, it does nothing."""
        node = self.nodes[node_id]
        if node.alive and not node.paused:
            self.say(f"STALL node {node_id}")
            node.paused = True

    def resume(self, node_id: int, life: int, timers_first: bool) -> None:
        """The stalled node runs again (SIGCONT): what it missed runs now, in order, with its
        overdue timers before or after the queued frames (``timers_first``: the order of a
        loop's turn is not something the core may rely on)."""
        node = self.nodes.get(node_id)
        if node is None or node.life != life or not node.paused:
            return
        node.paused = False
        held, node.held = node.held, []
        self.say(f"RESUME node {node_id} ({len(held)} actions waited, timers {'first' if timers_first else 'last'})")
        if not node.alive:
            return
        timers = [(a, args) for t, a, args in held if t]
        others = [(a, args) for t, a, args in held if not t]
        for action, args in timers + others if timers_first else others + timers:
            self.sched.at(self.sched.now, action, *args)

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
        if node_id in self.disks:
            self.repair_disk(node_id)
        addrs = [address_of(c) for c in contacts]
        core = NodeCore(node_id, address_of(node_id), self.policy, self.config, self.sched.now, contact=addrs)
        self.say(f"node {node_id} starts to join via node {contacts[0]}")
        node = SimNode(node_id, life, core)
        self._add(node)
        self._start_app(node)
        self.sched.at(self.sched.now, self._tick, node_id, life)

    def crash_all(self) -> None:
        """Every node stops at once (power loss): volatile logs are lost, disks remain."""
        self.say("CRASH ALL nodes")
        for node in list(self.nodes.values()):
            if node.alive:
                self._end(node, "crashed (all)")

    def restart(self, plan: RestartPlan) -> None:
        """Start every member of ``plan.view`` in it, with its durable logs; the members that
        are not a shard's source copy the missing tail from it once the view is installed."""
        view = plan.view
        now = self.sched.now
        self.trace.restarts.append(
            RestartRecord(
                view.vid,
                view.members,
                plan.latest_vid,
                tuple(sorted((tuple(s), v) for s, v in plan.longest.items())),
                self.sched.steps,
                tuple(sorted((tuple(s), lo, hi) for s, (lo, hi) in plan.lost.items())),
            )
        )
        sources = ", ".join(f"{tuple(s)}<-{n}" for s, n in view.sources) or "none"
        self.say(
            f"RESTART in view {view.vid} {list(view.members)} after view {plan.latest_vid}; sources {sources}; "
            f"longest logs "
            + ", ".join(f"{tuple(s)}:{format_version(v)}" for s, v in sorted(plan.longest.items()))
            + "".join(
                f"; LOST {tuple(s)} {format_version(lo)}..{format_version(hi)}"
                for s, (lo, hi) in sorted(plan.lost.items())
            )
        )
        started = []
        for m in view.members:
            old = self.nodes.get(m)
            life = old.life + 1 if old is not None else 0
            core = NodeCore(m, address_of(m), self.policy, self.config, now, view=view)
            if m not in self.disks:
                self.disks[m] = Disk(m)
                self.trace.disks[m] = self.disks[m].logs
            disk = self.disks[m]
            disk.failing = False  # a node restarts with a working disk
            # Like accepting a proposal: on disk before the node acts in the view, so that a
            # later partial restart knows this one happened even if no app installed it yet.
            disk.accepted_vid = max(disk.accepted_vid, view.vid)
            for sid in view.my_shards(m) if not self.app_mode else ():  # an app reports its own logs
                log = disk.logs.get(sid, [])
                src = view.source_of(sid)
                keep = len(log) if src in (None, m) else common_prefix(log, self.disks[src].logs.get(sid, []))
                if keep:  # what is on disk here and in the shard's history
                    core.set_persisted_floor(sid, log[keep - 1][0])
            node = SimNode(m, life, core)
            self.nodes[m] = node
            started.append(node)
        for node in started:
            self._add(node)
            self._start_app(node)
            hooks = self._hooks(node)
            if plan.lost and hooks is not None and hooks.on_lost is not None:
                hooks.on_lost(dict(plan.lost))
            self.sched.at(now, self._tick, node.node_id, node.life)

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
            unreported = n.core.unreported()
            # That read settles pushes the node's last step left unevaluated (NodeCore.step):
            # sample what it moved, or a frontier it advanced would go unchecked if this is
            # the run's last look.
            self._sample(n)
            if unreported:
                return False
            m = n.core.membership
            if m is None or m.wedged or m.pending_joins:
                return False
            for sid, q in n.pending.items():
                if q and sid in n.core.shards:
                    return False
            if n.awaiting or n.syncing or any(n.volatile.values()):
                return False
            for smc in n.core.shards.values():
                if smc.resend or any(smc._buf) or smc.wedged:
                    return False
                if any(row["received_num"] != smc.sst.mine["received_num"] for row in smc.sst.rows):
                    return False
        return True

    def nulls_sent(self) -> int:
        return sum(smc.nulls_sent for n in self.nodes.values() for smc in n.core.shards.values())

    def describe_state(self) -> dict[int, Any]:
        return {
            n.node_id: (
                n.alive,
                n.core.vid,
                n.core.excluded,
                n.core.membership.wedged if n.core.membership else None,
            )
            + ((f"awaiting {sorted(tuple(s) for s in n.awaiting)}",) if n.awaiting and n.alive else ())
            for n in self.nodes.values()
        }
