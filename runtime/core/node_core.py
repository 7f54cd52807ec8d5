"""The node's protocol core: membership plus every shard this node holds, behind one
step/ready API.

In the style of etcd-io/raft's ``RawNode``: the driver feeds events with :meth:`NodeCore.step`
and app sends with :meth:`NodeCore.send`, then calls :meth:`NodeCore.ready` and carries out
what it returns. The core keeps no clock and does no I/O; given the same calls in the same
order it returns the same results.

Life of a node: it founds a group (view 0 holds only itself) or joins one through a contact;
in each view it runs the membership protocol and one :class:`ShardMulticast` per shard the
layout gives it; a decided view change delivers every shard up to its agreed trim, re-queues
this node's trimmed messages, and installs the next view. A node that is removed, leaves, or
finds itself in a minority stops for good (``Ready.excluded``); it may join again as new.

A stall of this node (its process stopped, its loop blocked) is not its peers' silence: time
between two events beyond the heartbeat interval is credited to every peer's suspicion clock
(see ``_advance``), so members that all stall together resume in the same view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

from runtime.core.effects import ContactSend, Outgoing, Ready, Rejected
from runtime.core.events import Event, LeaveRequested, MessageArrived, PeerLost, Persisted, Tick, TransferArrived
from runtime.core.layout import LayoutPolicy
from runtime.core.membership import FrozenCounts, JoinClaim, Membership, MembershipConfig
from runtime.core.messages import (
    GroupPush,
    JoinReply,
    JoinRequest,
    Message,
    ShardKey,
    ShardPush,
    ViewAnnouncement,
)
from runtime.core.object_transfers import HOSTILE, NodeObjects, Sorted
from runtime.core.rdmc_descriptor import ObjectId, OwnPayload
from runtime.core.rdmc_events import BlockRefused, Refusal
from runtime.core.smc import MulticastConfig, ShardMulticast
from runtime.core.status import CoreStatus, MemberHealth, ShardMemberProgress, ShardProgress, Stalls
from runtime.core.versions import version_parts
from runtime.core.view import Proposal, View, ViewFormatError, initial_view

MAX_BUFFERED_FRAMES = 100_000
MAX_CLAIMED_LOGS = 4096  # shard logs a join request may list; a longer list is ignored


class UnknownShard(KeyError):
    """The app asked to send on a shard this node is not a member of (in this view)."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    multicast: MulticastConfig = field(default_factory=MulticastConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)


class NodeCore:
    """Protocol state of one node across views."""

    def __init__(
        self,
        node_id: int,
        address: str,
        policy: LayoutPolicy,
        config: CoreConfig = CoreConfig(),
        now: float = 0.0,
        view: View | None = None,
        contact: str | Sequence[str] | None = None,
        claim: JoinClaim | None = None,
    ) -> None:
        """Start as a member of ``view``, or (``view=None``) as a joiner via ``contact``
        (one address, or several tried in turn); ``claim``: what a joiner brings from an
        earlier run (its logs, the operator's --accept-loss), said in its join requests."""
        self.node_id = node_id
        self.address = address
        self.policy = policy
        self._layout_text = policy.describe()
        self.config = config
        self.now = now
        self.view: View | None = None
        self.membership: Membership | None = None
        self.shards: dict[ShardKey, ShardMulticast] = {}
        # Large objects (config.multicast.objects): the node's transfer engine, and its shards
        # by stream (the shard's index among the view's shards, which names its objects).
        policy_objects = config.multicast.objects
        self.objects = NodeObjects(node_id, policy_objects) if policy_objects is not None else None
        self._streams: dict[int, ShardMulticast] = {}
        self.excluded: str | None = None
        self._ready = Ready()
        # Data-plane input applied but not yet evaluated (see ``step``): the predicates run
        # once before anything reads the result (``_settle``).
        self._unsettled = False
        self._future: list[tuple[int, int, Message]] = []  # (vid, sender, message) held for later views
        self.last_change_duration: float | None = None  # wedge to install, for the logs
        self._contacts: list[str] = [contact] if isinstance(contact, str) else list(contact or ())
        self._attempts = 0
        self._claim = claim or JoinClaim()
        # Highest version on disk here, per shard, carried into each view's SST row.
        self._persisted: dict[ShardKey, int] = {}
        self._accepted = -1  # highest proposal vid handed to the driver in Ready.accepted
        self._next_join_at = now
        self._leaving = False
        # Stalls: gaps between events long enough to bring peers near suspicion (see _advance).
        self.stalls = 0
        self.longest_stall = 0.0
        if view is not None:
            self._install(view, resend={}, carried=())
        elif not self._contacts:
            raise ValueError("a joining node needs a contact address")

    @classmethod
    def found(
        cls, node_id: int, address: str, policy: LayoutPolicy, config: CoreConfig = CoreConfig(), now: float = 0.0
    ) -> NodeCore:
        """Start a new group whose view 0 holds only this node."""
        return cls(node_id, address, policy, config, now, view=initial_view(node_id, address, policy))

    # ------------------------------------------------------------------- state
    @property
    def joining(self) -> bool:
        return self.view is None and self.excluded is None

    @property
    def vid(self) -> int | None:
        return self.view.vid if self.view is not None else None

    # ------------------------------------------------------------------ inputs
    def step(self, event: Event) -> None:
        """Apply one event; effects accumulate until :meth:`ready`.

        A shard's push (nearly every event under load) is applied at once but evaluated
        later: the predicates run once for all the pushes and sends of a loop turn, before
        the next other event, ``send``, ``ready`` or a read of the state (``_settle``). They
        are level-triggered (stability is a minimum of counts that only grow), so one
        evaluation of several pushes delivers what evaluating each would have, in one batch:
        at moderate load the per-push evaluation (stability, nulls, persistence, the group's
        predicates, object work) was most of a push's cost in the core.
        """
        if type(event) is MessageArrived and type(event.message) is ShardPush:
            if event.now > self.now:
                self._advance(event.now)
            if self.excluded is None:
                push = event.message
                view = self.view
                # A push of the current view (nearly all) goes straight to its shard; any
                # other (an earlier or later view's, or a malformed vid) takes the full path.
                if view is not None and push.vid == view.vid:
                    self._on_shard_push(event.sender, push)
                else:
                    self._on_message(event.sender, push)
                self._unsettled = True
            return
        self._settle()
        self._advance(event.now)
        if self.excluded is not None:
            return
        if isinstance(event, MessageArrived):
            self._on_message(event.sender, event.message)
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, LeaveRequested):
            # Remembered: a leave asked while the next view was already being agreed on (that
            # view still names this node) is asked again in it, until the node is out.
            self._leaving = True
            if self.membership is not None:
                self.membership.request_leave()
        elif isinstance(event, PeerLost):
            if self.membership is not None:
                self.membership.suspect_node(event.node)
        elif isinstance(event, Persisted):
            self._on_persisted(event.shard, event.version)
        elif isinstance(event, TransferArrived):
            self._on_transfer(event)
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"unknown event {event!r}")
        self._evaluate()
        self._pump_objects()

    def _settle(self) -> None:
        """Evaluate what data-plane input left unevaluated (see :meth:`step`)."""
        if self._unsettled:
            self._unsettled = False
            self._evaluate()
            self._pump_objects()

    def send(self, shard: ShardKey, payloads: Sequence[OwnPayload], now: float) -> int:
        """Multicast payloads in ``shard``; returns how many the window took.

        During a view change (wedged) or in an inadequate view nothing is taken; the caller
        keeps the rest and retries on ``Ready.window_open``.
        """
        known = shard in self.shards
        self._settle()
        self._advance(now)
        smc = self.shards.get(shard)
        if smc is None:
            if known:  # settling the turn's pushes installed a view without it: the view's
                return 0  # effects (``ready``) tell the caller, as for any view change
            raise UnknownShard(f"node {self.node_id} is not a member of shard {shard!r} in view {self.vid}")
        if self.excluded is not None:
            return 0
        taken = smc.send(payloads, self.now)
        if taken:
            self._unsettled = True  # evaluated with the turn's pushes (see ``step``)
        return taken

    # ------------------------------------------------------------ large objects
    def block_destination(self, oid: ObjectId, sender: int, block: int, length: int) -> memoryview | Refusal:
        """Where the driver may read a block of ``length`` bytes from ``sender`` straight into
        the object's buffer (then it steps a ``BlockWritten``); a :class:`Refusal` if the block
        may not be taken (the driver then discards its bytes and logs the refusal)."""
        self._settle()  # a descriptor in a push not evaluated yet is known only after this
        if self.objects is None:
            return Refusal.UNKNOWN_OBJECT
        return self.objects.destination(oid, sender, block, length)

    def _on_transfer(self, event: TransferArrived) -> None:
        if self.objects is None:
            self._reject(event.transfer.sender, "a block transfer frame, but large objects are off here")
            return
        out = Sorted()
        self.objects.arrived(event.transfer, out)
        self._apply_transfers(out)

    def _pump_objects(self) -> None:
        """Hand the shards' new objects and descriptors to the engine."""
        objects = self.objects
        if objects is None or self.excluded is not None:
            return
        out = Sorted()
        for smc in self.shards.values():
            for item in smc.take_object_work():
                objects.admit(item, out)
        self._apply_transfers(out)

    def _apply_transfers(self, out: Sorted) -> None:
        objects = self.objects
        assert objects is not None
        freed = out.freed
        while out.freed and objects.waiting:  # room again: open what waited for it
            out.freed = False
            objects.retry(out)
        self._ready.transfers.extend(out.sends)
        for done in out.complete:
            oid = done.descriptor.oid
            smc = self._streams.get(oid.stream)
            if smc is not None and smc.vid == oid.vid:
                pos = smc.sender_pos_of(oid.sender)
                if pos is not None:
                    smc.object_complete(pos, oid.seq, done.data)
        for r in out.refused:
            what = f"block {r.block}" if isinstance(r, BlockRefused) else f"credit up to {r.upto}"
            self._reject(r.sender, f"{what} of object {r.oid} refused: {r.reason.value}", forged=r.reason in HOSTILE)
        for failed in out.corrupt:
            # The bytes do not match the digest the sender put in the order: whoever broke
            # them, the object cannot be delivered from this transfer. Its sender is removed
            # (the object is trimmed and its call fails over like any of a lost member), so the
            # shard does not wait on it forever.
            sender = failed.oid.sender
            self._reject(sender, f"object {failed.oid} does not match its digest: suspecting its sender")
            if self.membership is not None and self.view is not None and sender != self.node_id:
                self.membership.suspect_node(sender)
        if freed:  # senders held back by the engine's limits may retry
            for smc in self.shards.values():
                smc.reopen()

    def _advance(self, now: float) -> None:
        """Move this node's clock to ``now``, first crediting any time it did not run.

        Stall detection. The driver feeds an event at least every heartbeat interval while the
        node is in a view (``ready().wakeup_at`` is never later than the next heartbeat), so a
        longer gap between two events means this node itself did not run: its process was
        stopped (SIGSTOP, a VM pause) or its loop was blocked. Peers' frames of that time sit
        unread in the sockets, so the gap beyond one heartbeat interval is credited to every
        peer's suspicion clock before anything else of this event happens. Whatever event
        comes first after the stall (a late timer or queued data), no peer is suspected for
        silence this node could not have heard; members that all stall together resume in the
        same view. Only lateness is credited, so a loop that runs late all the time still
        suspects a silent peer, just later.
        """
        gap = now - self.now
        if gap <= 0:
            return
        self.now = now
        m = self.membership
        if m is None or self.excluded is not None:
            return
        interval = self.config.membership.heartbeat_interval
        if gap > 2 * interval:
            long = gap > self.config.membership.suspicion_timeout / 2
            m.credit_stall(gap - interval, now, long)
            if long:
                self.stalls += 1
                self.longest_stall = max(self.longest_stall, gap)
                self._ready.stalled = max(self._ready.stalled or 0.0, gap)

    def set_persisted_floor(self, shard: ShardKey, version: int) -> None:
        """Versions up to ``version`` were on disk here before this node started (restart or
        state transfer); used for the ``persisted`` column of the shard's next rows."""
        self._on_persisted(shard, version)

    def _on_persisted(self, shard: ShardKey, version: int) -> None:
        # The SST column holds version + 1 ("every version below is on disk"), so that version
        # 0 is expressible and the column's default 0 means nothing.
        bound = version + 1
        if type(version) is not int or bound <= self._persisted.get(shard, 0):
            return
        self._persisted[shard] = bound
        smc = self.shards.get(shard)
        if smc is not None:
            smc.set_persisted(bound)

    def _on_message(self, sender: int, msg: Message) -> None:
        if isinstance(msg, (ShardPush, GroupPush)):
            vid = msg.vid
            if self.view is None or vid > self.view.vid:
                if len(self._future) < MAX_BUFFERED_FRAMES and isinstance(vid, int):
                    self._future.append((vid, sender, msg))
                return
            if vid < self.view.vid:
                return  # from a finished view: nothing in it can matter any more
            if isinstance(msg, GroupPush):
                self._on_group_push(sender, msg)
            else:
                self._on_shard_push(sender, msg)
        elif isinstance(msg, JoinRequest):
            self._on_join_request(sender, msg)
        elif isinstance(msg, ViewAnnouncement):
            self._on_announcement(sender, msg)
        elif isinstance(msg, JoinReply):
            self._on_join_reply(msg)
        else:
            self._reject(sender, f"unknown message type {type(msg).__name__}")

    def _on_group_push(self, sender: int, msg: GroupPush) -> None:
        assert self.view is not None and self.membership is not None
        if self.view.rank_of(sender) != msg.rank or msg.row.rank != msg.rank:
            self._reject(
                sender,
                f"node {sender} sent a group row as rank {msg.rank!r} of view {self.view.vid}",
                forged=self.view.rank_of(sender) is not None,
            )
            return
        problem = self.membership.on_push(msg.row, self.now)
        if problem:
            self._reject(sender, problem)

    def _on_shard_push(self, sender: int, push: ShardPush) -> None:
        smc = self.shards.get(push.shard)
        if smc is None:
            self._reject(sender, f"push for shard {push.shard!r}, which this node is not in")
            return
        rank = push.rank
        if not isinstance(rank, int) or not 0 <= rank < len(smc.members) or smc.members[rank] != sender:
            self._reject(
                sender, f"node {sender} sent a push as rank {rank!r} of {push.shard!r}", forged=sender in smc.members
            )
            return
        if self.membership is not None and self.membership.suspects(self.view.rank_of(sender)):  # type: ignore[union-attr,arg-type]
            return
        problem = smc.on_push(push)
        if problem is not None:
            self._ready.rejected.append(problem)

    def _on_tick(self) -> None:
        if self.view is None:
            if self._contacts and self.now >= self._next_join_at:
                contact = self._contacts[self._attempts % len(self._contacts)]
                self._attempts += 1
                self._ready.contact_sends.append(ContactSend(contact, self._join_request()))
                self._next_join_at = self.now + self.config.membership.join_retry
            return
        assert self.membership is not None
        self.membership.on_tick(self.now)
        for smc in self.shards.values():
            smc.on_tick(self.now)

    # ------------------------------------------------------------------- joins
    def _join_request(self) -> JoinRequest:
        c = self._claim
        return JoinRequest(self.node_id, self.address, self._layout_text, c.logs, c.accept_loss)

    def _on_join_request(self, sender: int, req: JoinRequest) -> None:
        if self.view is None or self.membership is None:
            self._ready.outgoing.append(
                Outgoing((sender,), JoinReply(None, "this node is itself joining; try another contact"))
            )
            return
        if type(req.node_id) is not int or req.node_id != sender or not isinstance(req.address, str):
            self._reject(sender, f"join request of node {sender} for node {req.node_id!r:.20}", forged=True)
            return
        if req.layout and req.layout != self._layout_text:
            self._ready.outgoing.append(
                Outgoing(
                    (sender,),
                    JoinReply(
                        None,
                        f"node {req.node_id}'s layout differs from the group's: the group runs {self._layout_text}; "
                        f"node {req.node_id} has {req.layout:.400}. Give every node the same [layout.<Type>] tables",
                        final=True,
                    ),
                )
            )
            return
        if self.view.rank_of(req.node_id) is not None:
            self._ready.outgoing.append(
                Outgoing(
                    (sender,),
                    JoinReply(
                        None,
                        f"node id {req.node_id} is a member of view {self.view.vid}; "
                        "wait until it has been removed or use another id",
                    ),
                )
            )
            return
        lead = self.membership.leader()
        if lead != self.membership.me:
            addr = self.view.addresses[lead] if lead is not None else None
            self._ready.outgoing.append(Outgoing((sender,), JoinReply(addr, "not the leader")))
            return
        logs = req.logs if len(req.logs) <= MAX_CLAIMED_LOGS else ()
        self.membership.add_join(req.node_id, req.address, JoinClaim(logs, req.accept_loss is True))

    def _on_join_reply(self, reply: JoinReply) -> None:
        if self.view is not None:
            return
        if reply.final is True:
            self._exclude(f"join refused: {reply.reason}")
            return
        if isinstance(reply.redirect_to, str) and reply.redirect_to:
            # Ask the leader now; retries go to the configured contact again, which knows the
            # current leader even if this one dies before admitting us.
            self._ready.contact_sends.append(ContactSend(reply.redirect_to, self._join_request()))
            self._next_join_at = self.now + self.config.membership.join_retry

    def _on_announcement(self, sender: int, msg: ViewAnnouncement) -> None:
        try:
            view = View.from_wire(msg.view)
        except ViewFormatError as exc:
            self._reject(sender, str(exc))
            return
        if self.view is not None or view.rank_of(self.node_id) is None:
            return  # a member already (or not admitted by it): nothing to do
        self._install(view, resend={}, carried=())

    # ------------------------------------------------------------ view change
    def _freeze(self) -> FrozenCounts:
        """Wedge every shard; the final receive counts go into the group row."""
        out: FrozenCounts = []
        for sid, smc in self.shards.items():
            counts = smc.wedge()
            out.append([sid.type_name, sid.subgroup, sid.shard, list(counts)])
        return out

    def _evaluate(self) -> None:
        # A view change replays frames that arrived early for the new view; they may carry
        # enough to decide the next change too, so evaluate until nothing moves.
        for _ in range(8):
            m = self.membership
            if m is None or self.excluded is not None:
                return
            for smc in self.shards.values():
                smc.evaluate(self.now)
            m.evaluate(self.now)
            if m.excluded is not None:
                self._exclude(m.excluded)
                return
            if m.decided is None:
                return
            self._change_view(m.decided)

    def _change_view(self, proposal: Proposal) -> None:
        old_view, m = self.view, self.membership
        assert old_view is not None and m is not None
        started = m.wedge_started_at
        self.last_change_duration = self.now - started if started is not None else None
        self._drain_group()  # the echo of the decision goes out in the old view first
        resend: dict[ShardKey, list[OwnPayload]] = {}
        for sid, smc in self.shards.items():
            trim = proposal.trim_of(sid)
            if trim is None:
                continue
            delivery, beyond = smc.deliver_to_trim(trim)
            self._drain_shard(smc)
            if delivery is not None:
                self._ready.deliveries.append(delivery)
            if beyond:
                resend[sid] = beyond
        self._end_objects(old_view.vid)
        if self.node_id not in proposal.members:
            why = "left the group" if m.mine["leaving"] else f"removed from the group in view {proposal.vid}"
            for sid, payloads in resend.items():
                self._ready.orphaned.append((sid, payloads))
            self._exclude(why)
            return
        view = proposal.next_view(self.policy, old_view)
        carried = tuple(old_view.members[r] for r in range(old_view.n) if m.suspects(r))
        joins = dict(m.pending_joins)
        claims = dict(m.join_claims)
        self._install(view, resend, carried)
        if proposal.joined:
            self._ready.outgoing.append(Outgoing(proposal.joined, ViewAnnouncement(view.to_wire())))
        new_m = self.membership
        assert new_m is not None
        if new_m.leader() == new_m.me:
            for node, addr in joins.items():
                if view.rank_of(node) is None:
                    new_m.add_join(node, addr, claims.get(node))

    def _end_objects(self, vid: int) -> None:
        """Views up to ``vid`` are over: their block transfers end (what was delivered was
        whole everywhere; the rest is trimmed, and a survivor's own objects are resent)."""
        objects = self.objects
        if objects is None:
            return
        for smc in self.shards.values():
            smc.take_object_work()  # of the old view: never to start
        self._ready.transfers = [t for t in self._ready.transfers if t.oid.vid > vid]
        out = Sorted()
        objects.end_epoch(vid, out)
        out.sends = [t for t in out.sends if t.oid.vid > vid]
        out.complete = []
        self._apply_transfers(out)

    def _install(self, view: View, resend: dict[ShardKey, list[OwnPayload]], carried: tuple[int, ...]) -> None:
        cfg = self.config
        self.view = view
        self.shards = {}
        self._streams = {}
        self.membership = Membership(view, self.node_id, cfg.membership, self.now, self._freeze, carried)
        streams = {sid: i for i, sid in enumerate(view.layout.shards)}
        mine = view.my_shards(self.node_id)
        order: dict[int, bool] = {}
        if self.objects is not None:
            order = self.objects.open_view(view.vid, {streams[s]: len(view.layout.members_of(s)) for s in mine})
        for sid in mine:
            smc = ShardMulticast(
                sid,
                view.layout.members_of(sid),
                self.node_id,
                cfg.multicast,
                now=self.now,
                vid=view.vid,
                persisted=self._persisted.get(sid, 0),
                stream=streams[sid],
                object_room=partial(self.objects.room, (view.vid, streams[sid])) if self.objects is not None else None,
                object_order=order.get(streams[sid], False),
            )
            smc.resend = resend.pop(sid, [])
            self.shards[sid] = smc
            self._streams[streams[sid]] = smc
            if smc.my_pos is not None:
                self._ready.window_open.append(sid)
        for sid, payloads in resend.items():  # no longer a member of these shards
            self._ready.orphaned.append((sid, payloads))
        self._ready.views.append(view)
        if self._leaving:
            self.membership.request_leave()
        # Frames that arrived early for this view replay now, in arrival order.
        held, self._future = self._future, []
        for vid, sender, msg in held:
            if vid == view.vid:
                self._on_message(sender, msg)
            elif vid > view.vid:
                self._future.append((vid, sender, msg))

    def _exclude(self, reason: str) -> None:
        if self.excluded is None:
            self.excluded = reason
            self._ready.excluded = reason
            self._drain_group()

    def _reject(self, sender: int, reason: str, forged: bool = False) -> None:
        self._ready.rejected.append(Rejected(sender, reason, forged))

    # ----------------------------------------------------------------- outputs
    def _drain_group(self) -> None:
        m, view = self.membership, self.view
        if m is None or view is None:
            return
        # The row may carry this node's acceptance of a proposal: the driver must have it on
        # disk before the push goes out (see Ready.accepted), so it rides in the same Ready.
        accepted = m.accepted_vid
        if accepted is not None and accepted > self._accepted:
            self._accepted = accepted
            self._ready.accepted = accepted
        row = m.sst.drain_push()
        if row is not None and view.n > 1:
            to = tuple(node for r, node in enumerate(view.members) if r != m.me and not m.suspects(r))
            if to:
                self._ready.outgoing.append(Outgoing(to, GroupPush(view.vid, m.me, row)))

    def _drain_shard(self, smc: ShardMulticast) -> None:
        pushes, deliveries, opened = smc.drain()
        peers = smc.peers()
        if peers:
            self._ready.outgoing.extend(Outgoing(peers, p) for p in pushes)
        self._ready.deliveries.extend(deliveries)
        frontier = smc.take_persisted()
        if frontier is not None:
            self._ready.persisted.append((smc.shard, frontier - 1))
        everywhere = smc.take_delivered_everywhere()
        if everywhere is not None:
            self._ready.delivered_everywhere.append((smc.shard, smc.vid, everywhere))
        if opened:
            self._ready.window_open.append(smc.shard)

    def ready(self) -> Ready:
        """Hand over accumulated effects and start collecting afresh."""
        self._settle()
        if self.excluded is None:
            self._drain_group()
            for smc in self.shards.values():
                self._drain_shard(smc)
        else:
            self._ready.transfers = []  # a stopped node moves no more blocks
        out = self._ready
        self._ready = Ready()
        out.wakeup_at = self._wakeup()
        return out

    def _wakeup(self) -> float | None:
        if self.excluded is not None:
            return None
        if self.view is None:
            return self._next_join_at if self._contacts else None
        assert self.membership is not None
        # Run on every flush: one pass, no list.
        at = self.membership.wakeup_at()
        for smc in self.shards.values():
            t = smc.wakeup_at()
            if t is not None and (at is None or t < at):
                at = t
        return at

    def status(self) -> CoreStatus:
        """What this node knows of the group, for operators (``derecho-actors status``): the
        view, the leader, each member's health as this node sees it, and per shard it holds,
        each member's delivery and persistence progress. Evaluates the pushes a loop turn
        left unevaluated first (see :meth:`step`), as any read of the state does."""
        self._settle()
        stalls = Stalls(self.stalls, round(self.longest_stall * 1000, 1)) if self.stalls else None
        view, m = self.view, self.membership
        if view is None or m is None:
            return CoreStatus(joining=self.joining, excluded=self.excluded, stalls=stalls)
        leader = m.leader()
        rows = m.sst.rows
        health = []
        for r, node in enumerate(view.members):
            if m.suspects(r):
                state = "suspected"
            elif rows[r]["leaving"]:
                state = "leaving"
            elif r == leader:
                state = "leader"
            else:
                state = "ok"
            heard = 0.0 if r == m.me else max(0.0, self.now - m.last_heard[r])
            health.append(MemberHealth(node, state, round(heard * 1000, 1)))
        shards = []
        for sid, smc in self.shards.items():
            srows = smc.sst.rows
            progress = []
            for r, node in enumerate(smc.members):
                progress.append(
                    (
                        node,
                        int(srows[r]["delivered_num"]),  # type: ignore[arg-type]
                        tuple(srows[r]["received_num"]),  # type: ignore[arg-type]
                        int(srows[r]["persisted"]) - 1,  # type: ignore[arg-type]  # the column holds version + 1
                    )
                )
            top = max((p[3] for p in progress), default=-1)
            shards.append(
                ShardProgress(
                    shard=str(sid),
                    delivered=smc.delivered,
                    persisted_frontier=smc.persisted_frontier - 1,
                    window_size=smc.config.window_size,
                    window_free=smc.send_capacity() if smc.my_pos is not None else None,
                    state="wedged" if m.wedged else "running",
                    # persistence_lag: versions behind the most advanced replica, within one view
                    members=tuple(
                        ShardMemberProgress(n, d, rc, p, _versions_between(p, top)) for n, d, rc, p in progress
                    ),
                )
            )
        return CoreStatus(
            joining=self.joining,
            excluded=self.excluded,
            stalls=stalls,
            vid=view.vid,
            members=tuple(zip(view.members, view.addresses)),
            leader=view.members[leader] if leader is not None else None,
            adequate=view.layout.adequate,
            shortfall=view.layout.describe_shortfall(),
            wedged=bool(m.wedged),
            suspected=tuple(view.members[r] for r in range(view.n) if m.suspects(r)),
            health=tuple(health),
            layout=tuple((str(s), tuple(mem)) for s, mem in view.layout.shards.items()),
            shards=tuple(shards),
        )

    def unreported(self) -> int:
        """Deliveries and views decided but not yet handed out by :meth:`ready`."""
        self._settle()
        r = self._ready
        return len(r.deliveries) + len(r.views) + sum(smc.pending_deliveries() for smc in self.shards.values())


def _versions_between(low: int, high: int) -> int:
    """How many versions ``low`` is behind ``high`` (-1 when they are of different views, so
    the count is unknown here); 0 when nothing is persisted."""
    if high < 0 or low >= high:
        return 0
    if low < 0:
        return version_parts(high)[1] + 1
    (lv, li), (hv, hi) = version_parts(low), version_parts(high)
    return hi - li if lv == hv else -1
