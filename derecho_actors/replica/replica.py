"""One replica of a replicated object on this node.

The node's loop hands the replica whole delivered batches (one message per batch, not per
call); it runs the ordered calls one at a time in delivery order and P2P calls between them.
:class:`Replica` is the logic, driven by typed messages (``replica.messages``); a runner
(``node.runners``) runs it on a thread of its own (never the node's loop), or inline in the
simulator. Replies go back through ``send_replies`` in one hand-off per batch.

A replica of a persistent type also owns the shard's log here: each ordered call becomes a
record, and a batch's records go to the log's writer thread in one piece. A replica that is
new to its shard starts *awaiting state*: it holds every message until the shard's state has
arrived by transfer, then applies what it held in order.

This module keeps the ordered path and the replica's lifecycle; the rest has a module of its
own: running one call (``calls``), P2P calls and reads (``p2p``), the state from a log or a
transfer (``state``), signed-log checks (``marks``).
"""

from __future__ import annotations

import logging
from typing import Any

from derecho_actors.model.context import handler_context
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.replica.calls import CallRunner, session_refusal
from derecho_actors.replica.env import ReplicaEnv, SendReplies
from derecho_actors.replica.events import EventLog, EventSink, WatchBoard, WatchExpire, WatchPoll
from derecho_actors.replica.marks import PeerMarks
from derecho_actors.replica.messages import (
    DeliveredCall,
    FrontierMoved,
    OrderedBatch,
    P2PRequest,
    PeerMark,
    ReplicaMessage,
    StableMark,
    StatePart,
    ViewBoundary,
)
from derecho_actors.replica.p2p import P2PServer
from derecho_actors.replica.reads import StableGate
from derecho_actors.replica.sessions import DUPLICATE, NEW, SessionTable, table_for
from derecho_actors.replica.state import (
    IncomingState,
    have,
    open_store,
    rebuild_after_transfer,
    restore_object_state,
    write_snapshot,
)
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire.digest import state_digest
from derecho_actors.wire.messages import Reply, ReplyBatch, ReplyEntry, ReplyTo
from runtime.core.versions import INDEX_BITS, make_version
from runtime.errors import StateTransferError, WatchHistoryLost

__all__ = [  # the node and the simulator import the messages and the env from here too
    "DeliveredCall",
    "FrontierMoved",
    "OrderedBatch",
    "P2PRequest",
    "PeerMark",
    "Replica",
    "ReplicaEnv",
    "ReplicaMessage",
    "SendReplies",
    "StableMark",
    "StatePart",
    "ViewBoundary",
]

log = logging.getLogger("derecho.replica")
INDEX_LIMIT = 1 << INDEX_BITS
REPLY_CHUNK = 256  # calls of a delivered batch answered together (see _ordered_batch)


class Replica:
    """The replica's logic; not thread-safe: one runner feeds it one message at a time."""

    def __init__(
        self, spec: TypeSpec, env: ReplicaEnv, awaiting_state: bool = False, fresh_at: int | None = None
    ) -> None:
        """``fresh_at``: the view in which this replica starts the shard's state from nothing
        (no member had it to send), for watches to tell that history apart."""
        self.spec = spec
        self.env = env
        self.node_id = env.node_id
        self.send_replies = env.send_replies
        self.obj = spec.cls()
        self.store: PersistentStore | None = None
        self.applied = 0  # ordered calls applied, for tests and status
        # Exactly once for callers that retry (clients, relayed calls): derived from the
        # ordered stream alone, so every replica holds the same table (see ``replica.sessions``).
        self.sessions: SessionTable = table_for(spec)
        self.awaiting = awaiting_state
        self._held: list[Any] = []  # messages that arrived while awaiting state
        self._incoming = IncomingState(env.scratch_dir, spec.name, spec.serializer)
        self.failed: str | None = None
        # Versions number ordered calls within a view: every replica delivers the same calls
        # of a view in the same order, so (view, k-th call) is the same version everywhere.
        self._view_of_count = -1
        self._count = 0
        self._marks = PeerMarks(spec.name, env.report_verified)
        self._gate = StableGate()  # stable reads waiting, and how far this replica's state goes
        self._digest_every = spec.digest_every
        self._no_digest_warned = False
        # Change events (da.emit) for watches, and the version of the last ordered call run.
        self.events = EventLog(spec.watch_history)
        self._sink = EventSink(self.events, spec.serializer)
        self.watchers = WatchBoard(self.events)
        self.applied_version = -1
        self._fresh_at = fresh_at
        self._runner = CallRunner(spec, self._sink)
        self._p2p = P2PServer(self, spec, env.node_id, env.send_replies, self._runner, self._gate)

    @property
    def behind(self) -> bool:
        """Messages told to this replica that it has not applied yet: it awaits its state, or
        holds ordered calls behind a stable read."""
        return bool(self.awaiting or self._held or self._gate.held)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        try:
            if self.spec.persistent:
                open_store(self)
            if self._fresh_at is not None and (self.store is None or self.store.last_version < 0):
                self.events.began_at(self._fresh_at)
            if self.awaiting:
                self.env.request_state(*have(self.store))
        except Exception as exc:  # the node must not stay a member with no replica here
            self.env.internal_error(f"the replica of {self.spec.name} could not start: {type(exc).__name__}: {exc}")
            raise

    def failed_with(self, exc: BaseException) -> None:
        # Never from a user method (those errors go back to the caller): a bug or a broken
        # log. A replica that stopped would silently never answer again: fail-stop instead.
        self.env.internal_error(f"the replica of {self.spec.name} failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        if self.store is not None:
            self.store.close()
        self._incoming.close()

    # ------------------------------------------------------------------ messages
    def receive(self, message: ReplicaMessage) -> None:
        t = type(message)
        if t is StatePart:
            self._take_state(message)  # type: ignore[arg-type]
            return
        if t is FrontierMoved:
            if self.store is not None:
                self.store.frontier = max(self.store.frontier, message.version)  # type: ignore[union-attr]
                if self.watchers.parked and not self.awaiting:
                    self._answer_watches(self.watchers.release(self._watch_bound()))
            self._check_marks()
            return
        if t is PeerMark:
            self._marks.note(message)  # type: ignore[arg-type]
            self._check_marks()
            return
        if t is StableMark:
            self._p2p.stable_mark(message)  # type: ignore[arg-type]
            self._release_held()
            return
        if self.awaiting or self.failed:
            self._held.append(message)
            return
        self._handle(message)

    def _handle(self, message: ReplicaMessage) -> None:
        t = type(message)
        gate = self._gate
        if gate.waiting and (t is OrderedBatch or t is ViewBoundary):
            gate.held.append(message)  # a stable read waits for the others to catch up with us
            return
        if t is OrderedBatch:
            b: OrderedBatch = message  # type: ignore[assignment]
            self._ordered_batch(b.vid, b.replicas, b.calls)
            gate.applied = (b.vid, b.frontier)
        elif t is ViewBoundary:
            # Between the last delivery of one view and the first of the next, as at every
            # replica: a deterministic point for view-dependent state (leases, for example),
            # and the point at which a state snapshot for new members is taken.
            v: ViewBoundary = message  # type: ignore[assignment]
            hook = getattr(self.obj, "on_view", None)
            if callable(hook):
                try:
                    hook(v.vid, list(v.members))
                except Exception:
                    log.exception("on_view of %s raised", self.spec.name)
            if v.snapshot:
                write_snapshot(self, v.vid)
        elif t is P2PRequest:
            self._p2p.serve(message)  # type: ignore[arg-type]
            self._release_held()
        elif t is WatchPoll:
            w: WatchPoll = message  # type: ignore[assignment]
            try:
                answers = self.watchers.poll(w, self._watch_bound())
            except WatchHistoryLost as exc:
                self.send_replies(
                    [(w.caller, ReplyTo(w.caller, w.call_id, w.vid, w.origin).refused(self.node_id, exc))]
                )
                return
            self._answer_watches(answers)
        elif t is WatchExpire:
            self._answer_watches(self.watchers.expire(message, self._watch_bound()))  # type: ignore[arg-type]

    def _release_held(self) -> None:
        """Run the ordered messages held behind stable reads, once none waits any more."""
        gate = self._gate
        held = gate.held
        while held and not gate.waiting:
            self._handle(held.popleft())

    def _check_marks(self) -> None:
        if self.store is not None and not self.awaiting:
            self._marks.check(self.store)

    # ------------------------------------------------------------------ watches
    def _watch_bound(self) -> int:
        """The last version whose events watchers may have: applied here, and for a
        persistent type also persisted at every replica (no total restart can undo it)."""
        store = self.store
        if store is None:
            return self.applied_version
        return min(self.applied_version, store.frontier)

    def _answer_watches(self, answers: list[tuple[WatchPoll, bytes]]) -> None:
        if answers:
            me = self.node_id
            self.send_replies(
                [(w.caller, Reply(w.call_id, me, w.vid, (me,), True, payload, w.origin)) for w, payload in answers]
            )

    # ------------------------------------------------------------------ the ordered path
    # A long delivered batch answers in chunks of REPLY_CHUNK calls: the answers of the first
    # travel (and the callers' next calls come) while this replica runs the rest, rather than
    # every stage of a pipelined caller's calls waiting for the stage before to finish whole.
    # Answers are made in their wire shape, a ReplyBatch per caller (as the node sends them),
    # not a Reply per call regrouped on the node's loop (measured: ~1 us a call more).
    def _ordered_batch(self, vid: int, replicas: tuple[int, ...], calls: list[DeliveredCall]) -> None:
        """Run a delivered batch. A call whose ``session`` is ``READ_IN_ORDER`` (-1) is a
        linearizable read: only the replica its ``floor`` names runs it, as a P2P call; it is
        no version, changes nothing and is not counted. Every other call is the version
        (view, k-th call of the view), the same at every replica: of the log record for a
        persistent type, of the state digest, and of the events the call emits. A call with
        an ``origin`` runs only if its session has not run it (``replica.sessions``)."""
        # Everything the loop reads, looked up once per batch: no call can change them.
        store, sessions, obj, spec = self.store, self.sessions, self.obj, self.spec
        ordered = self._runner.ordered
        ctx = handler_context.__dict__  # this thread's: what the calls run in (``CallRunner.ordered``)
        live, kept, tick = sessions.live, sessions.kept, sessions.tick
        every = self._digest_every
        me = self.node_id
        sink = self._sink
        emitted = sink.added
        # The chunk's answers in order: (caller, its entries in ``groups``), (caller, a read's Reply).
        out: list[tuple[int, Any]] = []
        groups: dict[int, list[ReplyEntry]] = {}
        records, reads, answered = [], 0, 0  # answered: in this chunk
        ticked = None  # the timestamp the session table was last ticked to in this batch
        if vid != self._view_of_count:
            self._view_of_count, self._count = vid, 0
        first = make_version(vid, 0)  # the view's versions: first + k, for k below 2**INDEX_BITS
        version = -1
        pending_caller = -1  # the caller of the previous answer, and its entries
        entries: list[ReplyEntry] = []
        for caller, call_id, method, args, origin, session, floor, owner, ts in calls:
            if session < 0:
                reads += 1
                if floor == me:  # the node merges same-key answers in order: new groups after it
                    out.append(self._p2p.run(caller, call_id, method, args, vid, origin))
                    groups, pending_caller = {}, -1
                    answered += 1  # a chunk ends after an ordered call only, as it always did
                continue
            count = self._count
            if count >= INDEX_LIMIT:
                make_version(vid, count)  # raises: the view has no versions left
            version = first + count
            self._count = count = count + 1
            sink.version = version
            if store is not None:
                store.last_version = version  # what current_version() shows during the call
            if not origin:
                ok, value = ordered(obj, method, args, ctx)
            else:
                if ts != ticked:  # the table's clock moves only with a new timestamp
                    tick(ts)
                    ticked = ts
                s = live(origin, call_id, owner)
                if s is not None:  # a live session's next call: the common case
                    ok, value = answer = ordered(obj, method, args, ctx)
                    kept(s, call_id, answer, floor)
                else:
                    verdict = sessions.check(origin, call_id, session, owner)
                    kind = verdict.kind
                    if kind == NEW:
                        ok, value = answer = ordered(obj, method, args, ctx)
                        sessions.applied(origin, call_id, answer, floor, owner, session)
                    elif kind == DUPLICATE:
                        ok, value = verdict.reply  # type: ignore[misc]
                    else:
                        ok, value = False, session_refusal(kind, spec, call_id)
            if caller != pending_caller:
                group = groups.get(caller)
                if group is None:
                    group = groups[caller] = []
                    out.append((caller, group))
                pending_caller, entries = caller, group
            if store is None:
                entries.append((call_id, ok, value, origin, -1))
            else:
                entries.append((call_id, ok, value, origin, version))
                records.append(store.record(version, ts, origin, call_id))
            if every and count % every == 0:
                self._digest(version)
            answered += 1
            if answered >= REPLY_CHUNK:  # answers go as they are made, a chunk at a time
                self._send_chunk(out, records, vid, replicas)
                out, groups, records, answered, pending_caller = [], {}, [], 0, -1
        if version >= 0:
            self.applied_version = version
        if store is not None:
            store.submit(records)
        self.applied += len(calls) - reads
        if out:
            self._send_chunk(out, [], vid, replicas)
        if sink.added != emitted and self.watchers.parked:
            self._answer_watches(self.watchers.release(self._watch_bound()))

    def _send_chunk(self, out: list[tuple[int, Any]], records: list[Any], vid: int, replicas: tuple[int, ...]) -> None:
        """Hand a chunk's answers to the node, one ``ReplyBatch`` per caller; a persistent
        type's log records of the chunk are queued first (never an answer before its record)."""
        if records:
            self.store.submit(records)  # type: ignore[union-attr]
        me = self.node_id
        batch = ReplyBatch
        self.send_replies([(c, batch(me, vid, replicas, tuple(x)) if type(x) is list else x) for c, x in out])

    def _digest(self, version: int) -> None:
        """``digest_every``: this replica's state digest after the call at ``version``, for the
        shard's other replicas to compare with theirs."""
        report = self.env.report_digest
        if report is None:
            if not self._no_digest_warned:
                self._no_digest_warned = True
                log.warning(
                    "%s has digest_every=%d but this node passes no digests on (ReplicaEnv.report_digest "
                    "is not set): replicas' states are not compared",
                    self.spec.name,
                    self._digest_every,
                )
            return
        report(version, state_digest(self, self.spec))

    # ------------------------------------------------------------ state transfer
    def _take_state(self, chunk: StatePart) -> None:
        """One chunk of a transfer for this (awaiting) replica."""
        if not self.awaiting:
            return
        try:
            if self._incoming.take(chunk, self.store):
                self._install_state()
        except Exception as exc:
            self._fail(f"state transfer of {self.spec.name} failed: {exc}")
            return
        self.env.chunk_done(chunk.source, chunk.vid, chunk.seq)

    def _install_state(self) -> None:
        """The transfer is complete: rebuild the object from the log and the object part,
        then apply what arrived meanwhile."""
        rebuild_after_transfer(self, self._incoming.replaced_log)
        if self._incoming.has_object:
            state = self._incoming.object_state()
            restore_object_state(self, state)
            if self.store is not None and state["version"] != self.store.last_version:
                raise StateTransferError(
                    f"object state is at version {state['version']} but the log ends at {self.store.last_version}"
                )
        self.awaiting = False
        version = self.store.last_version if self.store is not None else -1
        if version >= 0:
            self.env.report_durable(version)
        self.env.state_installed(version)
        held, self._held = self._held, []
        for message in held:
            self._handle(message)

    def _fail(self, why: str) -> None:
        log.error("%s", why)
        self.failed = why
        self._held.clear()
        self.env.transfer_failed(why)
