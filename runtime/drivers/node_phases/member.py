"""A node with a protocol core: joining, then a member of views, until it stops.

It feeds the core events (frames arrived, a timer fired, a peer's connection broke, the app
asked to send or to leave) and carries out what ``ready()`` returns: frames to peers, batched
per peer into one write per loop turn; deliveries and views to the application's callbacks;
the next timer. There is no protocol logic here: every decision is the core's.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

from runtime.core.effects import Ready
from runtime.core.events import LeaveRequested, MessageArrived, PeerLost, Persisted, Tick, TransferArrived
from runtime.core.layout import ShardId
from runtime.core.membership import JoinClaim
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, ShardPush, ViewAnnouncement
from runtime.core.node_core import NodeCore
from runtime.core.object_transfers import HOSTILE
from runtime.core.rdmc_events import BlockWritten, CreditGranted, SendBlock
from runtime.core.view import View
from runtime.drivers.client_door import not_serving
from runtime.drivers.node_phases.context import NodeContext
from runtime.drivers.node_phases.join_watch import JoinWatch
from runtime.drivers.node_phases.outsiders import OutsiderBudget
from runtime.drivers.node_phases.phase import RESTART_MESSAGES, PhaseStatus
from runtime.drivers.node_phases.trust import forgery, leader_frame_allowed
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.drivers.transport import RowPush
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage, BootstrapHello, GroupRunning, RestartDecision, RestartHello
from runtime.wire.transfers import BlockDropped, BlockLanded, CreditFrame, block_frame_head, credit_frame

log = logging.getLogger("derecho.node")

CORE_MESSAGES = (ShardPush, GroupPush, ViewAnnouncement, JoinRequest, JoinReply)


def join_claim(ctx: NodeContext) -> JoinClaim:
    """What this node brings to the group it joins: the logs its data folder holds (a shard
    waiting on its lost holders takes the longest one back from them; logs of transfers that
    had not landed vouch for nothing) and the operator's --accept-loss."""
    saved = ctx.saved
    logs: tuple[tuple[ShardId, int], ...] = ()
    if saved is not None:
        logs = tuple(sorted((sid, v) for sid, v in saved.logs.items() if sid not in saved.incomplete))
    return JoinClaim(logs, ctx.accept_loss)


class MemberPhase:
    restarting = False

    def __init__(
        self,
        ctx: NodeContext,
        core: NodeCore,
        restart_vid: int | None = None,
        restart_lost: dict[ShardId, tuple[int, int]] | None = None,
        join_watch: JoinWatch | None = None,
    ) -> None:
        """``restart_vid``: the restart view this node installs (``core``'s view), with the
        versions that restart gave up (``restart_lost``): a restarting node that missed the
        decision is told it again. ``join_watch``: a joiner's wait for its contacts."""
        self.ctx = ctx
        self.core = core
        self.restart_vid = restart_vid
        self.restart_lost = restart_lost or {}
        self.join_watch = join_watch
        self._cut: set[int] = set()  # members that forged frames: dropped until they leave the view
        # Where the transport places large objects for co-located members (shm_objects), if it does.
        memory = getattr(ctx.io.transport, "object_memory", None)
        if memory is not None and core.objects is not None:
            engine = core.objects.engine
            engine.config = replace(engine.config, memory=memory)
            memory.limit(engine.config.max_object_size, engine.config.max_bytes, engine.config.max_objects)
        # A peer can send frames we ignore as fast as it can write (a node certificate is enough):
        # a line for each filled the disk at 10 MB/s and held the loop; a few per peer per interval.
        self._warnings = RateLimitedLog(log)
        self._outsiders = OutsiderBudget()

    # ------------------------------------------------------------ ways in
    @classmethod
    def found(cls, ctx: NodeContext) -> MemberPhase:
        """Found a new group, whose view 0 holds only this node."""
        cfg = ctx.config
        log.info("node %s listening on %s, founding cluster %r", ctx.node_id, cfg.address, cfg.node.cluster)
        return cls(ctx, NodeCore.found(ctx.node_id, cfg.address, cfg.layout, cfg.core_config(), ctx.io.now()))

    @classmethod
    def join(cls, ctx: NodeContext, contacts: list[str]) -> MemberPhase:
        """Join the group through ``contacts`` (tried in turn)."""
        cfg = ctx.config
        now = ctx.io.now()
        log.info("node %s listening on %s, joining via %s", ctx.node_id, cfg.address, ", ".join(contacts))
        core = NodeCore(
            ctx.node_id, cfg.address, cfg.layout, cfg.core_config(), now, contact=contacts, claim=join_claim(ctx)
        )
        return cls(ctx, core, join_watch=JoinWatch(ctx, core, contacts))

    @classmethod
    def install(cls, ctx: NodeContext, view: View, lost: dict[ShardId, tuple[int, int]]) -> MemberPhase:
        """Install the restart view a total restart decided (giving up the versions ``lost``)."""
        cfg = ctx.config
        now = ctx.io.now()
        log.info("node %s installs restart view %d", ctx.node_id, view.vid)
        core = NodeCore(ctx.node_id, cfg.address, cfg.layout, cfg.core_config(), now, view=view)
        return cls(ctx, core, restart_vid=view.vid, restart_lost=lost)

    def begin(self, replay: bool = True) -> None:
        """Once this is the node's phase: start a joiner's wait for its contacts and, with
        ``replay``, give the core what peers sent before it existed, in order."""
        if self.join_watch is not None:
            self.join_watch.start()
        if replay:
            early = list(self.ctx.early)
            self.ctx.early.clear()
            for sender, msg in early:
                self.on_frames(sender, [msg])
        self.ctx.io.schedule_flush()

    # ------------------------------------------------------------ net inputs
    def on_frames(self, sender: int, frames: list[Any]) -> None:
        if sender in self._cut:
            return
        ctx = self.ctx
        core = self.core
        now = ctx.io.loop.time()
        step = core.step
        # Whether the core took an input: only then can it have output, so only then is a
        # flush due. Frames that never reach it (a member's answers to this node's clients,
        # app messages) cost no flush of their own: a contact's ``core.ready()`` found
        # nothing in about one flush of four per serial call. What their handlers send
        # through the core schedules its own flush (``send``, ``offer``, ``persisted``).
        stepped = False
        for msg in frames:
            t = type(msg)
            if t is ShardPush:  # the data plane: nearly every frame
                step(MessageArrived(now, sender, msg))
                stepped = True
                continue
            if t is BlockLanded:  # a block's bytes are in its object's buffer already
                step(TransferArrived(now, BlockWritten(msg.oid, sender, msg.block)))
                stepped = True
                continue
            if t is CreditFrame:
                step(TransferArrived(now, CreditGranted(msg.oid, sender, msg.upto)))
                stepped = True
                continue
            if t is BlockDropped:
                if msg.reason in HOSTILE:
                    self.cut_off(sender, f"block {msg.block} of object {msg.oid} refused: {msg.reason.value}")
                    break
                log.info("block %s of object %s from node %s dropped: %s", msg.block, msg.oid, sender, msg.reason.value)
                continue
            if type(msg) is not GroupPush:
                why = forgery(sender, msg)
                if why is not None:
                    self.cut_off(sender, why)
                    break  # the rest of what it sent is not to be trusted either
            if isinstance(msg, RESTART_MESSAGES):
                self._answer_restart_message(sender, msg)
                continue
            if isinstance(msg, CORE_MESSAGES):
                if isinstance(msg, (ViewAnnouncement, JoinReply)) and core.joining:
                    if not leader_frame_allowed(ctx.leader_word, ctx.io.transport, sender, msg):
                        continue
                    if isinstance(msg, JoinReply) and isinstance(msg.redirect_to, str) and msg.redirect_to:
                        ctx.leader_word.ask([msg.redirect_to])  # the leader, as the node asked says
                if isinstance(msg, JoinRequest) and isinstance(msg.address, str) and not self.is_member(sender):
                    # A member's address is the one its view says; only a node outside the
                    # view can tell where it listens (and must then prove its id there).
                    ctx.io.transport.learn(sender, msg.address)
                step(MessageArrived(now, sender, msg))
                stepped = True
            elif type(msg) is AppMessage:
                if self._outside_view(sender) and not self._outsiders.take(sender, now):
                    # Its connections close: reading them on, however slowly, would let a node
                    # certificate hold this loop with as many connections as it opens.
                    ctx.io.transport.disconnect(
                        sender,
                        f"outside the view, it sent app messages faster than {int(self._outsiders.rate)} a second",
                    )
                    break
                if ctx.hooks.on_app is not None:
                    ctx.hooks.on_app(sender, msg.data)
            else:
                kind = type(msg).__name__
                if self._outside_view(sender):
                    # No node sends these to members: one outside the view that does is closed
                    # out (as above); a member's are dropped, a few lines a peer logged.
                    ctx.io.transport.disconnect(sender, f"outside the view, it sent a {kind} on a member connection")
                    break
                self._warnings.warning(
                    (kind, str(sender)), "node %s sent a %s on a member connection; ignored", sender, kind
                )
        if stepped:
            ctx.io.schedule_flush()

    def _answer_restart_message(self, sender: int, msg: Any) -> None:
        """A restarting or bootstrapping node's hello: the group runs (join it), or, while the
        restart view that names the sender is still installed, the decision it missed."""
        ctx = self.ctx
        if isinstance(msg, (BootstrapHello, RestartHello)) and not self.is_member(sender):
            ctx.io.transport.learn(sender, msg.address)
        view = self.core.view
        if view is None or not isinstance(msg, (BootstrapHello, RestartHello)):
            return
        reply: Any = GroupRunning(ctx.config.address, view.vid)
        if isinstance(msg, RestartHello) and view.vid == self.restart_vid and view.rank_of(msg.node) is not None:
            lost = tuple((sid, lo, hi) for sid, (lo, hi) in sorted(self.restart_lost.items()))
            reply = RestartDecision(ctx.node_id, view.to_wire(), lost)
        ctx.io.send_to_address(msg.address, reply)

    def on_peer_lost(self, node: int) -> None:
        view = self.core.view
        if view is not None and view.rank_of(node) is not None:
            log.info("connection to node %s lost", node)
            self.core.step(PeerLost(self.ctx.io.now(), node))
            self.ctx.io.schedule_flush()

    def on_client(self, handle: Any, msg: Any) -> None:
        ctx = self.ctx
        refusal = None if self.core.view is not None else not_serving(ctx.node_id, ctx.rejoin_reason, False)
        ctx.clients.on_frame(handle, msg, refusal)

    def cut_off(self, node: int, reason: str) -> None:
        """``node`` sent frames its identity does not allow: an honest node never does. If
        it is a member, suspect it at once (its rows freeze, the next view leaves it out) and
        close its connections a little later, once our suspicion has gone out: closing first
        would make it suspect us, and its word could then reach the others before ours.
        Everything it sends meanwhile is dropped."""
        if node in self._cut:
            return
        io = self.ctx.io
        if not self.is_member(node):
            io.transport.disconnect(node, reason)
            return
        self._cut.add(node)
        log.warning("node %s is cut off: %s", node, reason)
        self.core.step(PeerLost(io.now(), node))
        io.schedule_flush()
        delay = self.ctx.config.timeouts.heartbeat_ms / 1000 * 2
        io.loop.call_later(delay, io.transport.disconnect, node, reason)

    def is_member(self, node: int) -> bool:
        view = self.core.view
        return view is not None and view.rank_of(node) is not None

    def _outside_view(self, node: int) -> bool:
        """``node`` is not in the view this node has installed (False before it has one:
        while joining, nobody is known to be outside)."""
        view = self.core.view
        return view is not None and view.rank_of(node) is None

    # ------------------------------------------------------------ app inputs
    def send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        if self.ctx.queue.send(shard, payloads, self.core, self.ctx.io.now()):
            self.ctx.io.schedule_flush()

    def offer(self, shard: ShardId) -> None:
        if self.ctx.queue.offer(shard, self.core, self.ctx.io.now()):
            self.ctx.io.schedule_flush()

    def persisted(self, shard: ShardId, version: int) -> None:
        self.core.step(Persisted(self.ctx.io.now(), shard, version))
        self.ctx.io.schedule_flush()

    def leave(self) -> None:
        self.core.step(LeaveRequested(self.ctx.io.now()))
        self.ctx.io.schedule_flush()

    # ------------------------------------------------------------ timer and effects
    def tick(self) -> None:
        self.core.step(Tick(self.ctx.io.now()))
        self.ctx.io.flush_now()

    def flush(self) -> None:
        self._act(self.core.ready())

    def _act(self, ready: Ready) -> None:
        ctx = self.ctx
        hooks = ctx.hooks
        transport = ctx.io.transport
        # Each view's deliveries reach the app before the next view does.
        deliveries = ready.deliveries
        counts = ctx.counters.delivered_total
        for d in deliveries:  # one add per batch (len is known without laying the batch out)
            counts[d.shard] = counts.get(d.shard, 0) + len(d.messages)
        for v in ready.views:
            if hooks.on_deliver is not None:
                for d in [d for d in deliveries if d.vid < v.vid]:
                    hooks.on_deliver(d)
            deliveries = [d for d in deliveries if d.vid >= v.vid]
            self._on_view(v)
        if ready.accepted is not None and hooks.on_accepted is not None:
            # Like raft's HardState: the acceptance must be on disk before the ack leaves, so
            # a total restart never reuses the id of a view a majority may have installed.
            try:
                hooks.on_accepted(ready.accepted)
            except OSError as exc:
                ctx.stop(f"storage failure: recording the accepted view {ready.accepted} failed: {exc}")
                return
        out: dict[int, list[bytes]] = {}
        for tr in ready.transfers:
            if isinstance(tr, SendBlock):
                transport.send_block(tr.to, block_frame_head(tr.oid, tr.block, len(tr.data)), tr.data)
            else:
                out.setdefault(tr.to, []).append(credit_frame(tr.oid, tr.upto))
        pushes: dict[int, list[RowPush]] = {}  # SST pushes: one-sided row writes where the transport can
        for o in ready.outgoing:
            msg = o.message
            if type(msg) is ShardPush or type(msg) is GroupPush:
                push = RowPush(msg)
                for dst in o.to:
                    pushes.setdefault(dst, []).append(push)
                continue
            data = frame(msg)
            for dst in o.to:
                out.setdefault(dst, []).append(data)
        for dst, chunks in out.items():
            if dst not in pushes:
                transport.send(dst, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        for dst, rows in pushes.items():
            waiting = out.get(dst)
            transport.write_rows(dst, b"" if waiting is None else b"".join(waiting), rows)
        for cs in ready.contact_sends:
            transport.send_to_address(cs.address, frame(cs.message))
        if hooks.on_deliver is not None:
            for d in deliveries:
                hooks.on_deliver(d)
        if hooks.on_persisted is not None:
            for sid, version in ready.persisted:
                hooks.on_persisted(sid, version)
        if hooks.on_stable is not None:
            for sid, vid, index in ready.delivered_everywhere:
                hooks.on_stable(sid, vid, index)
        for r in ready.rejected:
            if r.forged:
                self.cut_off(r.sender, r.reason)
            else:
                log.warning("rejected input from node %s: %s", r.sender, r.reason)
        for sid, payloads in ready.orphaned:
            log.info("%d trimmed messages of shard %s return to the app queue", len(payloads), sid)
            ctx.queue.put_back(sid, payloads)
        if ready.stalled is not None:
            log.warning(
                "node %s did not run for %.2f s (process stopped or loop blocked): its peers' silence in that time "
                "is not held against them",
                ctx.node_id,
                ready.stalled,
            )
        if ready.excluded is not None:
            log.warning("node %s stops: %s", ctx.node_id, ready.excluded)
            ctx.notify_stop(ready.excluded)
            ctx.stop(ready.excluded)
            return
        for sid in ready.window_open:
            self.offer(sid)
            if hooks.on_window_open is not None:
                hooks.on_window_open(sid)
        if ready.views:
            for sid in ctx.queue.shards():
                self.offer(sid)
        ctx.io.wake_at(ready.wakeup_at)
        if self.core.unreported():
            ctx.io.schedule_flush()

    def _on_view(self, view: View) -> None:
        ctx = self.ctx
        ctx.counters.views_installed += 1
        transport = ctx.io.transport
        for node in view.departed:
            transport.doom(node)
        for node in view.joined:
            transport.welcome(node)
        for node, address in zip(view.members, view.addresses):
            if node != ctx.node_id:
                transport.learn(node, address)
        transport.view_members = set(view.members)
        self._cut &= transport.view_members  # an id that left may come back as a new, honest process
        # Departed nodes may still be reading the frames that tell them so (a leaver learns it
        # left from them): close their connections only after a grace period.
        grace = ctx.config.timeouts.suspicion_ms / 1000 * 2
        for node in view.departed:
            ctx.io.loop.call_later(grace, self._forget_if_gone, node)
        shards = ", ".join(str(s) for s in view.my_shards(ctx.node_id)) or "none"
        duration = self.core.last_change_duration
        log.info(
            "view %d installed: members %s (joined %s, departed %s), leader %s, my shards %s%s%s",
            view.vid,
            list(view.members),
            list(view.joined),
            list(view.departed),
            view.members[0],
            shards,
            "" if view.layout.adequate else f", inadequate: {view.layout.describe_shortfall()}",
            f", view change took {duration * 1000:.1f} ms" if duration is not None else "",
        )
        if ctx.hooks.on_view is not None:
            ctx.hooks.on_view(view)

    def _forget_if_gone(self, node: int) -> None:
        view = self.core.view
        if view is None or view.rank_of(node) is None:
            self.ctx.io.transport.forget(node)

    def status(self) -> PhaseStatus:
        return PhaseStatus(self.core.status())
