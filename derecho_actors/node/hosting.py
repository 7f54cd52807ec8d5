"""Hosting: which replicas this node runs in each view, and what runs them.

A view says which shards this node holds; the host starts a replica for each new one (waiting
for its state if the view names another node as the shard's source), stops those it no
longer holds (keeping one that must still serve its state to new members), and hands every
replica its view boundary in view order. A *runner* (``runners``) decides how a replica
executes: on its own thread (real nodes) or inline (the simulator).

A shard whose every holder is gone (all its replicas failed, or left, before a new member got
its state) has no source. The view says what follows, so every member of the shard acts alike
(``View.lost``, ``View.restarted``, computed by the core):

- A persistent type's shard *waits*: its members run no replica, and every call is answered
  with ``ShardAwaitingLog`` naming the nodes that held it last, until one of them comes back
  with its data folder (the view then names it the source, and it serves its log even if the
  layout gives it other shards) or a node joins with ``--accept-loss``.
- Any other shard (and an accepted loss) *starts anew*: from ``__init__``, a persistent type
  from whatever log the node has. Never in silence: each member logs an ERROR naming the
  shard, its last holders and the versions lost, counts it in its status
  (``shards_restarted_empty``), and tells callers: until the shard applies a write again,
  every read is answered with ``ShardStateLost`` instead of the empty state, and the first
  delivered message with writes is refused with it too (not applied: calling again writes to
  the new, empty state). Every member refuses the same message: the view names the loss.
  (``shard_loss`` words it.)

A layout that gives a shard a single replica is warned about by that replica's node, once each
time it happens: one failure of that node loses the shard's state.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from derecho_actors.exceptions import ShardAwaitingLog
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.node.refused_batches import UndecodableBatches, refusals
from derecho_actors.node.runners import ReplicaRef, Runner, Wait
from derecho_actors.node.shard_loss import LossStatus, ShardLoss, awaiting_log, nodes
from derecho_actors.replica.replica import (
    OrderedBatch,
    P2PRequest,
    Replica,
    ReplicaEnv,
    ReplicaMessage,
    SendReplies,
    ViewBoundary,
)
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.codec import IdentifiedCall, UndecodableBatch
from derecho_actors.wire.messages import Reply, ReplyTo
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId, single_replica_shards
from runtime.core.status import AwaitingLog
from runtime.core.view import ShardOrphan, View

log = logging.getLogger("derecho.hosting")

MakeEnv = Callable[[ShardId, TypeSpec, int, "int | None"], ReplicaEnv]

WAIT_CALLS = 32  # a delivered batch of at most this many calls: the loop waits for its answers
WAIT_S = 0.001  # at most this long (user methods are expected to be quick)
NO_WAIT_S = 0.5  # after waits ran out in a slow method, this long without waiting for that shard
SLOW_WAITS = 2  # waits in a row that ran out: then no waits for NO_WAIT_S (see ``_tell``)
RECENT_WAITS = 8  # ... or half of the last this many waits ran out, even if never two in a row
_RECENT_MASK = (1 << RECENT_WAITS) - 1
_IN_A_ROW = (1 << SLOW_WAITS) - 1


class HeldAnswers(Protocol):
    """Where the answers of a batch the loop waits for are kept until it takes them."""

    def hold(self) -> None: ...

    def take_held(self) -> None: ...


class ReplicaHost:
    def __init__(self, node_id: int, specs: dict[str, TypeSpec], runner: Runner, make_env: MakeEnv) -> None:
        self.node_id = node_id
        self.specs = specs
        self.runner = runner
        self.make_env = make_env
        self.replicas: dict[ShardId, ReplicaRef] = {}
        self.retired: dict[ShardId, ReplicaRef] = {}  # no longer held, still a state source
        # Shards of this node's layout waiting on their lost holders (``View.lost``): no
        # replica runs; calls are answered with ShardAwaitingLog through ``_waiting_send``.
        self.waiting: dict[ShardId, ShardOrphan] = {}
        self._waiting_send: dict[ShardId, SendReplies] = {}
        self.losses: list[ShardLoss] = []  # every shard this node restarted empty (a counter)
        self._notices: dict[ShardId, ShardLoss] = {}  # losses callers are still being told of
        self._send: dict[ShardId, SendReplies] = {}  # each replica's way to answer callers
        self._single: set[ShardId] = set()  # shards warned about as having one replica (here)
        self._undecodable = UndecodableBatches(node_id)
        self.held_answers: HeldAnswers | None = None  # set by the group: small batches are waited for
        self.decode = _codec.decode_ordered  # a payload's calls (the group's: ``SentBatches.decode``)
        self._no_wait_until: dict[ShardId, float] = {}
        self._ran_out: dict[ShardId, int] = {}  # per shard, its last waits: bit 0 the latest, 1: ran out

    def holds(self, shard: ShardId) -> bool:
        return shard in self.replicas

    def update(self, view: View, dropped: Callable[[ShardId], None]) -> list[tuple[ShardId, int]]:
        """Follow ``view``; returns the shards whose replica starts waiting for state, with
        the node to get it from. ``dropped(shard)`` is told of each shard no longer held."""
        # In a view too small for the layout, replicas idle but keep their state (the view's
        # ``holders``), so the shard resumes from it once enough nodes are back.
        mine = set(view.my_shards(self.node_id)) if view.layout.adequate else set(self.replicas)
        # This node sends state to the shard's new members if the view names it as source;
        # the snapshot is taken by the replica when it reaches this view's boundary.
        sourcing = {sid for sid, src in view.sources if src == self.node_id}
        boundary = (view.vid, tuple(view.members))
        self._follow_waiting(view, mine)
        mine -= set(self.waiting)
        for sid in list(self.replicas):
            if sid not in mine:
                ref = self.replicas.pop(sid)
                self._notices.pop(sid, None)
                self._send.pop(sid, None)
                dropped(sid)
                if sid in sourcing:  # moved to another shard but still the best source
                    ref.tell(ViewBoundary(*boundary, True))
                    self.retired[sid] = ref
                else:
                    ref.stop()
        awaiting: list[tuple[ShardId, int]] = []
        for sid in sorted(mine - set(self.replicas)):
            spec = self.specs.get(sid.type_name)
            if spec is None:
                continue
            src = view.source_of(sid)
            waits = src is not None and src != self.node_id
            if waits:
                awaiting.append((sid, src))  # type: ignore[arg-type]
            env = self.make_env(sid, spec, view.vid, src)
            fresh_at = view.vid if src is None else None
            orphan = view.restarted_shard(sid) if src is None else None
            if orphan is not None:
                self._lost(ShardLoss.of(orphan, view.vid, spec.persistent))
            self._send[sid] = env.send_replies
            self.replicas[sid] = self.runner.start(Replica(spec, env, waits, fresh_at), sid)
        for sid in sorted(sourcing - mine - set(self.replicas) - set(self.retired)):
            self._serve_log(sid, view)
        for sid, ref in self.replicas.items():
            ref.tell(ViewBoundary(*boundary, sid in sourcing))
        self._warn_single(view)
        return awaiting

    def _follow_waiting(self, view: View, mine: set[ShardId]) -> None:
        """Keep ``waiting`` to the shards of this node's layout that ``view`` says wait on
        their lost holders; say so at ERROR when one starts waiting here."""
        now: dict[ShardId, ShardOrphan] = {}
        for sid in sorted(mine):
            orphan = view.lost_shard(sid)
            spec = self.specs.get(sid.type_name)
            if orphan is None or spec is None:
                continue
            now[sid] = orphan
            if self.waiting.get(sid) != orphan:
                env = self.make_env(sid, spec, view.vid, None)
                self._waiting_send[sid] = env.send_replies
                log.error(
                    "shard %s lost every replica (%s held it last, in view %d): it waits, its calls refused, until "
                    "one of them is started again with its data folder (its log holds every version reported "
                    "persisted). To give those versions up instead, start any node with --accept-loss",
                    sid,
                    nodes(orphan.last_holders),
                    orphan.last_vid,
                )
        for sid in set(self.waiting) - set(now):
            self._waiting_send.pop(sid, None)
            log.info("shard %s no longer waits on its lost holders here (view %d)", sid, view.vid)
        self.waiting = now

    def _serve_log(self, sid: ShardId, view: View) -> None:
        """The view names this node the source of ``sid`` without giving it the shard: it held
        the shard last and came back with its log. Run a replica from that log only to send
        its state to the shard's members (retired once they have it)."""
        spec = self.specs.get(sid.type_name)
        if spec is None:
            return
        log.info(
            "node %s serves shard %s from its own log to the shard's members (view %d)", self.node_id, sid, view.vid
        )
        env = self.make_env(sid, spec, view.vid, self.node_id)
        ref = self.runner.start(Replica(spec, env, False, None), sid)
        ref.tell(ViewBoundary(view.vid, tuple(view.members), True))
        self.retired[sid] = ref

    def awaiting_log(self, sid: ShardId) -> ShardAwaitingLog | None:
        """What callers of ``sid`` get while it waits on its lost holders (None: it does not)."""
        orphan = self.waiting.get(sid)
        return None if orphan is None else awaiting_log(sid, orphan)

    def _lost(self, loss: ShardLoss) -> None:
        """``loss.shard`` had holders and none is left: it starts anew here. Say so loudly,
        count it, and tell callers (see the module docstring)."""
        sid, holders, last_vid = loss.shard, loss.last_holders, loss.last_vid
        self.losses.append(loss)
        self._notices[sid] = loss
        if loss.persistent:
            log.error(
                "shard %s lost every replica (%s held it last, in view %d) and the loss was accepted "
                "(--accept-loss): node %s starts it in view %d from its own log of it, if any; versions after that "
                "log's end and before %d.0 are gone",
                sid,
                nodes(holders),
                last_vid,
                self.node_id,
                loss.vid,
                loss.vid,
            )
        else:
            log.error(
                "shard %s lost every replica (%s held it last, in view %d): node %s starts it anew from "
                "%s.__init__ in view %d; every update before version %d.0 is lost. Callers are told with "
                "ShardStateLost until its first write; a layout with min_nodes of 2 or more and more nodes "
                "makes this less likely",
                sid,
                nodes(holders),
                last_vid,
                self.node_id,
                sid.type_name,
                loss.vid,
                loss.vid,
            )

    def _warn_single(self, view: View) -> None:
        """Warn once, each time a layout leaves a shard held here on this one replica."""
        single = {sid for sid, node in single_replica_shards(view.layout) if node == self.node_id}
        for sid in sorted(single - self._single):
            log.warning(
                "shard %s has one replica (node %s) in view %d: one failure loses this shard's state; give %s a "
                "layout with min_nodes=2 or more (layout.%s.min_nodes) and the nodes it needs",
                sid,
                self.node_id,
                view.vid,
                sid.type_name,
                sid.type_name,
            )
        if view.layout.adequate:
            self._single = single

    def _refuse(self, sid: ShardId, replies: list[tuple[int, Reply]]) -> None:
        send = self._send.get(sid)
        if send is not None and replies:
            send(replies)

    def loss_status(self) -> LossStatus:
        """For ``status`` and metrics: how many shards this node restarted empty, and which;
        which wait for a node that held them last."""
        return LossStatus(
            len(self.losses),
            tuple(loss.as_status() for loss in self.losses[-16:]),
            tuple(AwaitingLog(str(o.shard), o.last_holders, o.last_vid) for o in self.waiting.values()),
        )

    def deliver(self, d: Delivery, view: View) -> None:
        """One delivered batch of ordered calls to the shard's replica here (one message)."""
        ref = self.replicas.get(d.shard)
        if ref is None:
            if d.shard in self.waiting:
                self._refuse_waiting(d, view)
            return
        calls: list[_codec.OrderedCall] = []
        decode = self.decode
        replicas = tuple(view.layout.members_of(d.shard))
        notices = self._notices
        for _, sender, _, payload in d.messages:
            batch = decode(payload)
            if isinstance(batch, UndecodableBatch):
                self._refuse(d.shard, self._undecodable.refusals(d.shard, d.vid, replicas, sender, batch))
                continue
            if d.shard in notices:
                # Per message, never per delivered batch: how messages are grouped into
                # deliveries differs between replicas, the messages do not.
                batch = self._notify_ordered(notices[d.shard], d.vid, replicas, batch)
            calls.extend(batch)
        if calls:
            self._tell(d.shard, ref, OrderedBatch(d.vid, replicas, calls, d.frontier))

    def _tell(self, sid: ShardId, ref: ReplicaRef, batch: OrderedBatch) -> None:
        """Tell the replica ``batch``; a small one, to a replica idle on its own thread, is
        waited for (``WAIT_S`` at most) so its answers leave in this loop turn."""
        held, wait = self.held_answers, getattr(ref, "tell_and_wait", None)
        if held is None or wait is None or len(batch.calls) > WAIT_CALLS:
            ref.tell(batch)
            return
        now = time.monotonic()
        if self._no_wait_until.get(sid, 0.0) > now:
            ref.tell(batch)
            return
        held.hold()
        try:
            # Waits stop (for ``NO_WAIT_S``) after ``SLOW_WAITS`` run-outs in a row (a slow
            # method, or a machine too busy to run the thread in time, turn after turn), or half
            # of the last ``RECENT_WAITS`` (alternating with handled ones, they would stall every
            # other batch for good); not after one: a thread preempted once is no reason.
            # A replica still in a message is not waited for anyway (``Wait.QUEUED``).
            ended = wait(batch, WAIT_S)
            if ended is not Wait.QUEUED:
                last = ((self._ran_out.get(sid, 0) << 1) | (ended is not Wait.HANDLED)) & _RECENT_MASK
                in_a_row = last & _IN_A_ROW == _IN_A_ROW
                if in_a_row or last.bit_count() * 2 >= RECENT_WAITS:
                    self._no_wait_until[sid] = now + NO_WAIT_S
                    last = 0
                self._ran_out[sid] = last
        finally:
            held.take_held()

    def _notify_ordered(
        self, loss: ShardLoss, vid: int, replicas: tuple[int, ...], calls: list[_codec.OrderedCall]
    ) -> list[_codec.OrderedCall]:
        """The calls of one delivered message of a shard that restarted empty, before its first
        write: answer them with ``ShardStateLost`` instead of running them (linearizable reads,
        and the first message with writes when every replica refuses it alike); return the
        calls still to run."""
        writes = any(call[5] >= 0 for call in calls)  # session < 0: a linearizable read
        if writes:
            if not (loss.refuse_writes and vid == loss.vid):
                del self._notices[loss.shard]  # writes applied: the shard has a new history from here
                return calls
            loss.refuse_writes = False  # this message is refused; the next one is applied
        why = loss.error()
        self._refuse(loss.shard, refusals(self.node_id, vid, replicas, map(IdentifiedCall.of, calls), why))
        return []

    def _refuse_waiting(self, d: Delivery, view: View) -> None:
        """Ordered calls to a shard waiting on its lost holders: each member answers the writes
        and the one named answers a read, with ShardAwaitingLog (nothing runs)."""
        send = self._waiting_send.get(d.shard)
        exc = self.awaiting_log(d.shard)
        if send is None or exc is None:
            return
        replicas = tuple(view.layout.members_of(d.shard))
        out: list[tuple[int, Reply]] = []
        for _, sender, _, payload in d.messages:
            batch = _codec.decode_ordered(payload)
            if isinstance(batch, UndecodableBatch):
                out += self._undecodable.refusals(d.shard, d.vid, replicas, sender, batch)
            else:
                out += refusals(self.node_id, d.vid, replicas, map(IdentifiedCall.of, batch), exc)
        if out:
            send(out)

    def status(self, view: View | None, why_waiting: Callable[[ShardId], str | None]) -> dict[str, str]:
        """Per shard held here: whether its replica serves, and if not, why."""
        shards: dict[str, str] = {}
        for sid, orphan in self.waiting.items():
            shards[str(sid)] = (
                f"waiting for a node that held it last ({nodes(orphan.last_holders)}, view {orphan.last_vid}) to "
                "come back with its log; start one of them, or any node with --accept-loss"
            )
        for sid in self.replicas:
            waiting = why_waiting(sid)
            if waiting is not None:
                shards[str(sid)] = f"waiting for its state ({waiting})"
            elif view is not None and not view.layout.adequate:
                shards[str(sid)] = "holding its state; the view is too small for the layout"
            else:
                shards[str(sid)] = "serving"
        return shards

    def tell(self, shard: ShardId, message: ReplicaMessage) -> bool:
        ref = self.replicas.get(shard)
        if ref is None:
            return False  # the caller answers with ``refusal``
        loss = self._notices.get(shard)
        if loss is not None and type(message) is P2PRequest:
            p = message
            to = ReplyTo(p.caller, p.call_id, p.vid, p.origin)
            self._refuse(shard, [(p.caller, to.refused(self.node_id, loss.error()))])
            return True
        ref.tell(message)
        return True

    def refusal(self, shard: ShardId) -> ShardAwaitingLog | None:
        """Why this node answers no call of ``shard`` beyond "no replica here" (None: no reason)."""
        return self.awaiting_log(shard)

    def retire(self, shard: ShardId) -> None:
        """The retired replica of ``shard`` is no longer needed as a state source."""
        ref = self.retired.pop(shard, None)
        if ref is not None:
            ref.stop()

    def stop_all(self, timeout: float) -> None:
        """Stop every replica and wait (up to ``timeout`` in all) until each closed its log."""
        refs = [*self.replicas.values(), *self.retired.values()]
        self.replicas.clear()
        self.retired.clear()
        waits = [ref.stop() for ref in refs]
        deadline = time.monotonic() + timeout
        for wait in waits:
            if not wait(max(0.0, deadline - time.monotonic())):
                log.warning("a replica did not stop within %.0f s (busy in a method?)", timeout)

    def __len__(self) -> int:
        return len(self.replicas)
