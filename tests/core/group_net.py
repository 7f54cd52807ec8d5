"""A hand-driven network of NodeCores across view changes, for membership tests.

Like ``shard_net.py`` but with failure detection and joins on. The test decides every fault;
the harness is deterministic (no real time, no randomness):

* one FIFO queue per directed link; a frame is delivered with zero latency when the harness
  picks it, links are served round-robin in sorted order;
* ``crash(node)`` drops the node's queues (both ways) and never steps it again;
* ``cut(a, b)`` drops frames between ``a`` and ``b`` (queued ones too) until ``heal()``;
* ``hold(src, dst)`` keeps frames queued on one link (a slow link) until ``release()``;
* time only moves in ``advance(dt)`` and ``run_until(...)``, which tick every live core and
  honour ``Ready.wakeup_at``;
* joiners are cores built with ``contact=[addresses]``: ``ContactSend`` is routed through an
  address -> node map, ``Outgoing`` to node ids.

Per node it records what the app would see: installed views, deliveries (with ``vid`` and
``final``), the exclusion reason, ``window_open`` notices, orphaned payloads, rejections, and
the frames it sent (for tests that look at JoinReply or ViewAnnouncement).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Sequence

from runtime.core.effects import Delivery, Rejected
from runtime.core.events import LeaveRequested, MessageArrived, Tick, TransferArrived
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.membership import JoinClaim, Membership, MembershipConfig
from runtime.core.messages import Message, ShardKey
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.object_transfers import TransferInput, as_received
from runtime.core.rdmc_events import BlockArrived, BlockWritten, CreditGranted
from runtime.core.smc import MulticastConfig
from runtime.core.view import View

SHARD = ShardId("T", 0, 0)
POLICY = LayoutPolicy.of({"T": ShardPolicy(min_nodes=1)})
FAST = MembershipConfig(heartbeat_interval=0.01, suspicion_timeout=0.05, join_retry=0.05)
STEP = 0.005  # largest virtual time step of run_until (well under the suspicion timeout)


def address_of(node: int) -> str:
    return f"n{node}"


class GroupNet:
    """Cores of one group plus one FIFO queue per directed link, on a virtual clock."""

    def __init__(
        self,
        members: Sequence[int],
        policy: LayoutPolicy = POLICY,
        membership: MembershipConfig = FAST,
        multicast: MulticastConfig | None = None,
        step: float = STEP,
    ) -> None:
        self.policy = policy
        self.config = CoreConfig(multicast or MulticastConfig(), membership)
        self.step_size = step
        self.now = 0.0
        self.cores: dict[int, NodeCore] = {}
        self.address_map: dict[str, int] = {}
        # Frames, and blocks and credits of large objects, on one FIFO link per pair.
        self.links: dict[tuple[int, int], deque[Message | TransferInput]] = {}
        self.crashed: set[int] = set()
        self.cuts: set[frozenset[int]] = set()
        self.held: set[tuple[int, int]] = set()
        # Records, per node.
        self.views: dict[int, list[View]] = {}
        self.deliveries: dict[int, list[Delivery]] = {}
        self.excluded: dict[int, str | None] = {}
        self.window_open: dict[int, list[ShardKey]] = {}
        self.orphaned: dict[int, list[tuple[ShardKey, list[bytes]]]] = {}
        self.rejected: dict[int, list[Rejected]] = {}
        self.wakeups: dict[int, float | None] = {}
        self.memberships: dict[int, list[Membership]] = {}  # every view's Membership, in order
        self.accepted: dict[int, list[bytes]] = {}  # payloads the core took from the app
        self.outbox: dict[int, dict[ShardKey, list[bytes]]] = {}  # payloads the app still holds
        self.frames: list[tuple[float, int, int, Message | TransferInput]] = []  # every frame queued
        self.dropped: list[tuple[int, int | str, Message | TransferInput]] = []  # lost to cuts, crashes
        self._fresh_tick: dict[int, bool] = {}  # ticked, and nothing arrived since
        self._to_tick: deque[int] = deque()
        self._cursor: tuple[int, int] = (-1, -1)
        self.steps = 0
        members = tuple(members)
        if members:
            view = View(0, members, tuple(address_of(m) for m in members), compute_layout(policy, members))
            for m in members:
                self._add(m, NodeCore(m, address_of(m), policy, self.config, self.now, view=view))

    # ------------------------------------------------------------------ nodes
    def _add(self, node: int, core: NodeCore) -> NodeCore:
        if node in self.cores:
            raise ValueError(f"node {node} already exists in this net")
        self.cores[node] = core
        self.address_map[core.address] = node
        for rec in (
            self.views,
            self.deliveries,
            self.window_open,
            self.orphaned,
            self.rejected,
            self.memberships,
            self.accepted,
        ):
            rec[node] = []  # type: ignore[index]
        self.excluded[node] = None
        self.outbox[node] = {}
        self.wakeups[node] = None
        self._fresh_tick[node] = False
        self.flush(node)
        return core

    def add_joiner(self, node: int, contacts: Iterable[int | str], claim: JoinClaim | None = None) -> NodeCore:
        """Start a node that joins through ``contacts`` (node ids or addresses), tried in turn;
        a crashed node's id may come back this way (a new process, with what ``claim`` says
        its data folder holds)."""
        if node in self.crashed:
            self.crashed.discard(node)
            del self.cores[node]
        addrs = [c if isinstance(c, str) else address_of(c) for c in contacts]
        core = NodeCore(node, address_of(node), self.policy, self.config, self.now, contact=addrs, claim=claim)
        return self._add(node, core)

    def core(self, node: int) -> NodeCore:
        return self.cores[node]

    def alive(self, node: int) -> bool:
        return node not in self.crashed and self.cores[node].excluded is None

    def live(self) -> list[int]:
        return sorted(n for n in self.cores if self.alive(n))

    # ------------------------------------------------------------------ faults
    def crash(self, node: int) -> None:
        """The node stops: its queued frames (both ways) are lost and it is never stepped again."""
        self.crashed.add(node)
        for (src, dst), q in self.links.items():
            if node in (src, dst):
                self.dropped.extend((src, dst, m) for m in q)
                q.clear()
        self._to_tick = deque(n for n in self._to_tick if n != node)

    def cut(self, a: int, b: int) -> None:
        """Frames between ``a`` and ``b`` are lost (both ways) until :meth:`heal`."""
        self.cuts.add(frozenset((a, b)))
        for link in ((a, b), (b, a)):
            q = self.links.get(link)
            if q:
                self.dropped.extend((link[0], link[1], m) for m in q)
                q.clear()

    def partition(self, *sides: Iterable[int]) -> None:
        """Cut every link between different sides."""
        groups = [list(s) for s in sides]
        for i, side in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in side:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        self.cuts.clear()

    def hold(self, src: int, dst: int) -> None:
        """Frames from ``src`` to ``dst`` wait in their queue (not lost) until :meth:`release`."""
        self.held.add((src, dst))

    def release(self) -> None:
        self.held.clear()

    def is_cut(self, a: int, b: int) -> bool:
        return frozenset((a, b)) in self.cuts

    # ------------------------------------------------------------------ app side
    def send(self, node: int, *payloads: bytes, shard: ShardKey = SHARD) -> int:
        """The app at ``node`` multicasts ``payloads``; what the window does not take now stays
        in the app's outbox and is offered again on ``window_open``. Returns how many the core
        took right away."""
        self.outbox[node].setdefault(shard, []).extend(payloads)
        taken = self._offer(node)
        self.flush(node)
        return taken

    def leave(self, node: int) -> None:
        self.cores[node].step(LeaveRequested(self.now))
        self._after_step(node, ticked=False)

    def _offer(self, node: int) -> int:
        if not self.alive(node):
            return 0
        core = self.cores[node]
        total = 0
        for sid, queue in self.outbox[node].items():
            if not queue or sid not in core.shards:
                continue
            taken = core.send(sid, queue, self.now)
            self.accepted[node].extend(queue[:taken])
            del queue[:taken]
            total += taken
        return total

    # ------------------------------------------------------------------ core side
    def inject(self, dst: int, sender: int, msg: Message) -> list[Rejected]:
        """Step a frame into ``dst`` as if the transport vouched for ``sender``; returns the
        rejections this step produced."""
        before = len(self.rejected[dst])
        self.cores[dst].step(MessageArrived(self.now, sender, msg))
        self._after_step(dst, ticked=False)
        return self.rejected[dst][before:]

    def _enqueue(self, src: int, dst: int, msg: Message | TransferInput) -> None:
        if dst in self.crashed or src in self.crashed or self.is_cut(src, dst) or dst not in self.cores:
            self.dropped.append((src, dst, msg))
            return
        self.frames.append((self.now, src, dst, msg))
        self.links.setdefault((src, dst), deque()).append(msg)

    def flush(self, node: int) -> None:
        """Carry out the node's Ready: queue its frames and record what the app sees."""
        if node in self.crashed:
            return
        core = self.cores[node]
        while True:
            ready = core.ready()
            for out in ready.outgoing:
                for dst in out.to:
                    self._enqueue(node, dst, out.message)
            for cs in ready.contact_sends:
                dst = self.address_map.get(cs.address)
                if dst is None:
                    self.dropped.append((node, cs.address, cs.message))
                else:
                    self._enqueue(node, dst, cs.message)
            for t in ready.transfers:
                self._enqueue(node, t.to, as_received(t, node))
            self.deliveries[node].extend(ready.deliveries)
            self.views[node].extend(ready.views)
            self.window_open[node].extend(ready.window_open)
            self.orphaned[node].extend(ready.orphaned)
            self.rejected[node].extend(ready.rejected)
            if ready.excluded is not None and self.excluded[node] is None:
                self.excluded[node] = ready.excluded
            self.wakeups[node] = ready.wakeup_at
            m = core.membership
            if m is not None and (not self.memberships[node] or self.memberships[node][-1] is not m):
                self.memberships[node].append(m)
            if not (ready.window_open and self._offer(node)):
                return

    def _after_step(self, node: int, ticked: bool) -> None:
        self.flush(node)
        self._fresh_tick[node] = ticked

    def deliver_one(self, src: int, dst: int) -> bool:
        """Deliver the oldest frame queued from ``src`` to ``dst``; False if none."""
        q = self.links.get((src, dst))
        if not q:
            return False
        msg = q.popleft()
        self.steps += 1
        if isinstance(msg, (BlockArrived, BlockWritten, CreditGranted)):
            self.cores[dst].step(TransferArrived(self.now, msg))
        else:
            self.cores[dst].step(MessageArrived(self.now, src, msg))
        self._after_step(dst, ticked=False)
        return True

    def in_flight(self) -> list[tuple[int, int]]:
        return [link for link, q in sorted(self.links.items()) if q]

    def pending(self, src: int, dst: int) -> int:
        return len(self.links.get((src, dst), ()))

    def _deliver_next(self) -> bool:
        links = [link for link in self.in_flight() if link not in self.held]
        if not links:
            return False
        later = [link for link in links if link > self._cursor]
        link = later[0] if later else links[0]
        self._cursor = link
        return self.deliver_one(*link)

    def deliver_all(self, max_frames: int = 100_000) -> None:
        """Deliver frames (round-robin over links not held) until none is left to deliver."""
        for _ in range(max_frames):
            if not self._deliver_next():
                return
        raise AssertionError("frames kept flowing: the network did not go quiet")

    def _tick(self, node: int) -> None:
        self.steps += 1
        self.cores[node].step(Tick(self.now))
        self._after_step(node, ticked=True)

    def advance(self, dt: float) -> None:
        """Move the clock by ``dt`` and tick every live core (frames stay queued)."""
        if dt < 0:
            raise ValueError("time does not run backwards")
        self.now += dt
        self._to_tick = deque()
        for node in self.live():
            self._tick(node)

    # ------------------------------------------------------------------ driving
    def _one_step(self) -> bool:
        """Do the next atomic thing: a pending tick, else a frame, else a due wakeup.
        False when nothing is due at the current time."""
        while self._to_tick:
            node = self._to_tick.popleft()
            if self.alive(node):
                self._tick(node)
                return True
        if self._deliver_next():
            return True
        # A wakeup that fell due at this very time after the node's last tick.
        for node in self.live():
            w = self.wakeups[node]
            if w is not None and w <= self.now and not self._fresh_tick[node]:
                self._tick(node)
                return True
        return False

    def _next_time(self) -> float:
        nxt = self.now + self.step_size
        for node in self.live():
            w = self.wakeups[node]
            if w is not None and self.now < w < nxt:
                nxt = w
        return nxt

    def run_until(self, predicate: Callable[[], bool], max_time: float = 1.0, max_steps: int = 500_000) -> bool:
        """Deliver frames and move virtual time in small steps (never past a requested wakeup),
        checking ``predicate`` after every single frame or tick. True once it holds; False if
        ``max_time`` of virtual time passes first."""
        deadline = self.now + max_time
        for _ in range(max_steps):
            if predicate():
                return True
            if self._one_step():
                continue
            nxt = self._next_time()
            if nxt > deadline + 1e-12:
                return predicate()
            self.now = nxt
            self._to_tick = deque(self.live())
        raise AssertionError(f"run_until used {max_steps} steps without reaching the deadline")

    def run_for(self, duration: float) -> None:
        """Let ``duration`` of virtual time pass with everything flowing."""
        self.run_until(lambda: False, max_time=duration)

    # ------------------------------------------------------------------ reading
    def vid(self, node: int) -> int | None:
        return self.cores[node].vid

    def last_view(self, node: int) -> View | None:
        return self.views[node][-1] if self.views[node] else None

    def membership_in(self, node: int, vid: int) -> Membership | None:
        for m in self.memberships[node]:
            if m.view.vid == vid:
                return m
        return None

    def row(self, node: int, vid: int) -> dict:
        """The node's own group row in view ``vid`` (it keeps the last one it had)."""
        m = self.membership_in(node, vid)
        assert m is not None, f"node {node} never was in view {vid}"
        return m.mine

    def views_by_vid(self) -> dict[int, dict[int, View]]:
        """vid -> {node: the view it installed with that vid}."""
        out: dict[int, dict[int, View]] = {}
        for node, views in self.views.items():
            for v in views:
                out.setdefault(v.vid, {})[node] = v
        return out

    def conflicting_views(self) -> dict[int, list[View]]:
        """Every vid for which two nodes installed different views (must stay empty)."""
        bad: dict[int, list[View]] = {}
        for vid, by_node in self.views_by_vid().items():
            distinct: list[View] = []
            for v in by_node.values():
                if v not in distinct:
                    distinct.append(v)
            if len(distinct) > 1:
                bad[vid] = distinct
        return bad

    def delivered(self, node: int, vid: int | None = None) -> list[tuple[int, int, int, int, bytes, bool]]:
        """(vid, global index, sender, sender index, payload, final) of every message delivered."""
        return [
            (d.vid, g, s, k, p, d.final)
            for d in self.deliveries[node]
            if vid is None or d.vid == vid
            for g, s, k, p in d.messages
        ]

    def payloads(self, node: int, vid: int | None = None) -> list[bytes]:
        return [bytes(item[4]) for item in self.delivered(node, vid)]  # (objects arrive as bytearrays)
