"""One replica of a replicated object on this node, and the pykka actor that runs it.

The node's loop hands the replica whole delivered batches (one message per batch, not per
call); it runs the ordered calls one at a time in delivery order and P2P calls between them.
:class:`Replica` is the logic, driven by typed messages; :class:`ReplicaActor` runs it on a
thread of its own (never the node's loop), and the simulator runs it inline, in virtual time
(``node.hosting``). Replies go back through ``send_replies`` in one hand-off per batch.

A replica of a persistent type also owns the shard's log here: each ordered call becomes a
record, and a batch's records go to the log's writer thread in one piece. A replica that is
new to its shard starts *awaiting state*: it holds every message until the shard's state has
arrived by transfer, then applies what it held in order.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack
import pykka

from derecho_actors.model.context import handler_context
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.fields import STORE_ATTR, persistent_fields
from derecho_actors.model.kinds import ORDERED, P2P
from derecho_actors.model.reads import LINEARIZABLE, STABLE, ReadOptions
from derecho_actors.replica.events import EventLog, EventSink, WatchBoard, WatchExpire, WatchPoll
from derecho_actors.replica.reads import PastView, StableGate
from derecho_actors.replica.sessions import DUPLICATE, EVICTED, EXPIRED, FORGOTTEN, NEW, SessionTable
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.digest import object_attrs, state_digest
from derecho_actors.wire.messages import ChunkKind, Reply, ReplyTo
from runtime.core.versions import INDEX_BITS, make_version
from runtime.errors import (
    CallTimeout,
    NotPersistent,
    P2PMutationError,
    SerializationError,
    SessionExpired,
    SessionLimit,
    StateTransferError,
    WatchHistoryLost,
)

log = logging.getLogger("derecho.replica")
INDEX_LIMIT = 1 << INDEX_BITS
SendReplies = Callable[[list[tuple[int, Reply]]], None]
DeliveredCall = tuple[int, int, str, bytes, int, int, int, int, int]
"""``(caller, call_id, method, args, origin, session_ns, floor, owner, timestamp_ns)``
(``wire.codec.OrderedCall``)"""


# ------------------------------------------------------------------ what a replica is told
@dataclass(frozen=True, slots=True)
class OrderedBatch:
    """Calls delivered in view ``vid``, in order; ``replicas`` will each answer them.
    ``frontier``: the shard's delivered count in the view after this batch
    (``Delivery.frontier``), which stable reads compare with what every member delivered;
    -1 if the host does not say."""

    vid: int
    replicas: tuple[int, ...]
    calls: list[DeliveredCall]
    frontier: int = -1


@dataclass(frozen=True, slots=True)
class ViewBoundary:
    """Between the last delivery of view ``vid - 1`` and the first of ``vid``, at every replica:
    run ``on_view``; ``snapshot``: write the state for the view's new members."""

    vid: int
    members: tuple[int, ...]
    snapshot: bool


@dataclass(frozen=True, slots=True)
class P2PRequest:
    """A P2P call to run here. With ``read`` options (``replica.reads``): a stable read carries
    the node's latest ``mark`` (what every member delivered), its number ``seq`` and the
    shard's ``StableReads`` to tell when it stops waiting."""

    vid: int
    caller: int
    call_id: int
    method: str
    args: bytes
    origin: int
    read: ReadOptions | None = None
    mark: tuple[int, int] = (-1, 0)
    seq: int = 0
    stable: Any = None


@dataclass(frozen=True, slots=True)
class StableMark:
    """Every member of the shard has delivered view ``vid``'s messages below ``index``;
    stable reads numbered up to ``expire_upto`` that still wait have waited too long."""

    vid: int
    index: int
    expire_upto: int = 0


@dataclass(frozen=True, slots=True)
class StatePart:
    """One chunk of a state transfer to this replica, from node ``source`` for view ``vid``."""

    seq: int
    part: ChunkKind
    data: bytes
    final: bool
    reset: bool
    source: int
    vid: int


@dataclass(frozen=True, slots=True)
class FrontierMoved:
    version: int


@dataclass(frozen=True, slots=True)
class PeerMark:
    node: int
    version: int
    signature: bytes
    public_key: bytes


ReplicaMessage = (
    OrderedBatch
    | ViewBoundary
    | P2PRequest
    | StatePart
    | FrontierMoved
    | PeerMark
    | StableMark
    | WatchPoll
    | WatchExpire
)


@dataclass
class ReplicaEnv:
    """What a replica needs from its group: where replies, progress and state go."""

    node_id: int
    send_replies: SendReplies
    scratch_dir: Path  # snapshots for state transfer are written here
    log_path: Path | None = None  # persistent types: the shard's log
    signing_key: Any = None
    fsync: bool = True
    report_durable: Callable[[int], None] = lambda version: None
    request_state: Callable[[int, int], None] = lambda have, digest: None
    snapshot_ready: Callable[[int, Path, int, Any], None] = lambda vid, path, boundary, store: None
    snapshot_failed: Callable[[int, str], None] = lambda vid, why: None
    transfer_failed: Callable[[str], None] = lambda why: None
    storage_failed: Callable[[str], None] = lambda why: None  # the log cannot be written: fail-stop
    internal_error: Callable[[str], None] = lambda why: None  # the replica itself broke: fail-stop
    stall_timeout: float = 30.0  # a log write or fsync taking longer is a storage failure
    lost: tuple[int, int] | None = None  # versions a total restart gave up (they read as VersionLost)
    report_lost: Callable[[int, int], None] = lambda lo, hi: None  # learnt from a state transfer
    state_installed: Callable[[int], None] = lambda version: None
    chunk_done: Callable[[int, int, int], None] = lambda source, vid, seq: None
    report_signed: Callable[[int, bytes], None] = lambda version, signature: None  # signed logs
    report_verified: Callable[[int, int], None] = lambda node, version: None  # a peer's log matches ours
    # digest_every: our state's digest at a version, for the shard's other replicas to compare
    report_digest: Callable[[int, bytes], None] | None = None
    # How the log reaches the disk: None, a writer thread (real nodes); the simulator gives
    # a function that writes at once, so everything happens in its one thread.
    inline_writes: bool = False


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
        # ordered stream alone, so every replica holds the same table (see _sessions).
        self.sessions = self._new_sessions()
        self.awaiting = awaiting_state
        self._held: list[Any] = []  # messages that arrived while awaiting state
        self._incoming: Any = None  # the object part of a state transfer, as it arrives
        self._incoming_path: Path | None = None
        self.failed: str | None = None
        # Versions number ordered calls within a view: every replica delivers the same calls
        # of a view in the same order, so (view, k-th call) is the same version everywhere.
        self._view_of_count = -1
        self._count = 0
        self._marks: dict[int, tuple[int, bytes, bytes]] = {}  # peers' latest signed marks, to verify
        self._gate = StableGate()  # stable reads waiting, and how far this replica's state goes
        self._digest_every = spec.digest_every
        self._no_digest_warned = False
        # Change events (da.emit) for watches, and the version of the last ordered call run.
        self.events = EventLog(spec.watch_history)
        self._sink = EventSink(self.events, spec.serializer)
        self.watchers = WatchBoard(self.events)
        self.applied_version = -1
        self._fresh_at = fresh_at

    @property
    def behind(self) -> bool:
        """Messages told to this replica that it has not applied yet: it awaits its state, or
        holds ordered calls behind a stable read."""
        return bool(self.awaiting or self._held or self._gate.held)

    def _new_sessions(self) -> SessionTable:
        spec = self.spec
        return SessionTable(
            ttl_ns=int(spec.session_ttl * 1e9),
            max_sessions=spec.max_sessions,
            max_per_owner=spec.max_sessions_per_caller,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        try:
            if self.spec.persistent:
                self._open_store()
            if self._fresh_at is not None and (self.store is None or self.store.last_version < 0):
                self.events.began_at(self._fresh_at)
            if self.awaiting:
                have, digest = self._have()
                self.env.request_state(have, digest)
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
        if self._incoming is not None:
            self._incoming.close()

    def _open_store(self) -> None:
        from runtime.drivers.log_store import VersionedLog

        assert self.env.log_path is not None
        log_ = VersionedLog.open(self.env.log_path, signing_key=self.env.signing_key, fsync=self.env.fsync)
        if log_.recovery is not None:
            log.warning("log %s was repaired on open: %s", self.env.log_path, log_.recovery)
        self._attach_store(log_)

    def _attach_store(self, log_: Any) -> None:
        """Build the object's persistent state from the log (replay), on a fresh object."""
        self.obj = self.spec.cls()
        store = PersistentStore(
            self.obj,
            persistent_fields(self.spec.cls),
            self.spec.serializer,
            log_,
            self.env.report_durable,
            self.env.report_signed,
            on_failure=self.env.storage_failed,
            stall_timeout=self.env.stall_timeout,
            inline=self.env.inline_writes,
        )
        for call in store.replay():
            if call.origin:
                self.sessions.replayed(call.origin, call.call_id, call.timestamp_ns)
            self.applied += 1
        if store.last_version >= 0:
            self.events.restarted_at(store.last_version)  # events are not logged: none before here
            self.applied_version = store.last_version
        setattr(self.obj, STORE_ATTR, store)
        store.lost = self.env.lost
        self.store = store
        if store.last_version >= 0 and not self.awaiting:
            self.env.report_durable(store.last_version)

    def _have(self) -> tuple[int, int]:
        """The last version in the local log and a digest of its record (for a transfer to
        send only what is missing, after checking that our log agrees with the sender's)."""
        store = self.store
        if store is None or store.last_version < 0:
            return -1, 0
        return store.last_version, zlib.crc32(store.log.read(store.last_version))

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
            m: PeerMark = message  # type: ignore[assignment]
            self._marks[m.node] = (m.version, m.signature, m.public_key)
            self._check_marks()
            return
        if t is StableMark:
            self._stable_mark(message)  # type: ignore[arg-type]
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
                self._snapshot(v.vid)
        elif t is P2PRequest:
            p: P2PRequest = message  # type: ignore[assignment]
            if p.read is None:
                self.send_replies([self._p2p(p.caller, p.call_id, p.method, p.args, p.vid, p.origin)])
            else:
                self._read(p)
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

    def _ordered_batch(self, vid: int, replicas: tuple[int, ...], calls: list[DeliveredCall]) -> None:
        """Run a delivered batch. A call whose ``session`` is ``READ_IN_ORDER`` (-1) is a
        linearizable read: only the replica its ``floor`` names runs it, as a P2P call; it is
        no version, changes nothing and is not counted. Every other call is the version
        (view, k-th call of the view), the same at every replica: of the log record for a
        persistent type, of the state digest, and of the events the call emits."""
        store = self.store
        every = self._digest_every
        me = self.node_id
        sink = self._sink
        emitted = sink.added
        out = []
        records = []
        reads = 0
        if vid != self._view_of_count:
            self._view_of_count, self._count = vid, 0
        first = make_version(vid, 0)  # the view's versions: first + k, for k below 2**INDEX_BITS
        version = -1
        for caller, call_id, method, args, origin, session, floor, owner, ts in calls:
            if session < 0:
                reads += 1
                if floor == me:
                    out.append(self._p2p(caller, call_id, method, args, vid, origin))
                continue
            if self._count >= INDEX_LIMIT:
                make_version(vid, self._count)  # raises: the view has no versions left
            version = first + self._count
            self._count += 1
            sink.version = version
            if store is None:
                out.append(
                    self._ordered(caller, call_id, method, args, origin, session, floor, owner, ts, vid, replicas, -1)
                )
            else:
                store.last_version = version  # what current_version() shows during the call
                out.append(
                    self._ordered(
                        caller, call_id, method, args, origin, session, floor, owner, ts, vid, replicas, version
                    )
                )
                records.append(store.record(version, ts, origin, call_id))
            if every and self._count % every == 0:
                self._digest(version)
        if version >= 0:
            self.applied_version = version
        if store is not None:
            store.submit(records)
        self.applied += len(calls) - reads
        if out:
            self.send_replies(out)
        if sink.added != emitted and self.watchers.parked:
            self._answer_watches(self.watchers.release(self._watch_bound()))

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

    # ------------------------------------------------------------------ P2P calls and reads
    def _p2p(
        self,
        caller: int,
        call_id: int,
        method: str,
        args: bytes,
        vid: int,
        origin: int,
        past: ReadOptions | None = None,
    ) -> tuple[int, Reply]:
        """Run a P2P call here. With ``check_p2p`` the state is digested before and after: a
        method that changed it is reported to its caller and logged, since this replica now
        differs from the others."""
        spec = self.spec
        if not spec.check_p2p:
            return self._run(caller, call_id, method, args, P2P, vid, (self.node_id,), origin, past=past)
        before = state_digest(self, spec)
        out = self._run(caller, call_id, method, args, P2P, vid, (self.node_id,), origin, past=past)
        if state_digest(self, spec) == before:
            return out
        why = (
            f"{spec.name}.{method} changed the replica's state at node {self.node_id}: a @p2p method runs at one "
            f"replica, so node {self.node_id}'s replica now differs from the others (restart it: it gets the "
            f"state again by transfer); make {method} @ordered if it must change state"
        )
        log.error("%s", why)
        return caller, ReplyTo(caller, call_id, vid, origin).refused(self.node_id, P2PMutationError(why))

    def _read(self, p: P2PRequest) -> None:
        """A P2P call with read options: a read of the past runs against the persistent fields
        as of that version; a stable read waits until every member has delivered what this
        replica applied (holding further ordered calls meanwhile)."""
        read = p.read
        assert read is not None
        if read.level == STABLE:
            gate = self._gate
            gate.note(p.mark)
            if gate.applied[0] >= 0 and gate.applied[1] < 0:
                if p.stable is not None:
                    p.stable.finished(1)
                self._refuse_read(
                    p,
                    RuntimeError(
                        f"node {self.node_id} cannot serve stable reads: its replica host does not say how far each "
                        "delivered batch goes (OrderedBatch.frontier); read with consistency='local' or 'linearizable'"
                    ),
                )
                return
            gate.waiting.append(p)
            self._stable_due(0)
            return
        if read.level == LINEARIZABLE:  # the node sends these through the order, never here
            self._refuse_read(p, RuntimeError(f"node {self.node_id} got a linearizable read outside the order"))
            return
        if read.past and self.store is None:
            self._refuse_read(
                p,
                NotPersistent(
                    f"{self.spec.name} is not persistent here: at_version=/at_time= read "
                    "the past of persistent types only"
                ),
            )
            return
        self.send_replies(
            [self._p2p(p.caller, p.call_id, p.method, p.args, p.vid, p.origin, read if read.past else None)]
        )

    def _refuse_read(self, p: P2PRequest, exc: Exception) -> None:
        self.send_replies([(p.caller, ReplyTo(p.caller, p.call_id, p.vid, p.origin).failed(self.node_id, exc))])

    def _stable_mark(self, m: StableMark) -> None:
        self._gate.note((m.vid, m.index))
        self._stable_due(m.expire_upto)

    def _stable_due(self, expire_upto: int) -> None:
        """Answer the stable reads the mark now covers (or fail those that waited too long),
        then run the ordered messages held behind them."""
        gate = self._gate
        due, late = gate.take_due(expire_upto)
        if due or late:
            out = [self._p2p(p.caller, p.call_id, p.method, p.args, p.vid, p.origin) for p in due]
            for p in late:
                why = CallTimeout(
                    f"a stable read of {self.spec.name}.{p.method} at node {self.node_id} waited "
                    f"{p.stable.GIVE_UP_TICKS * p.stable.SYNC_AFTER:.0f} s for every replica of the shard to deliver what "
                    "this one applied, in vain (a member is stuck?); nothing was changed: retry, or read with "
                    "consistency='local' or 'linearizable'"
                )
                out.append((p.caller, ReplyTo(p.caller, p.call_id, p.vid, p.origin).refused(self.node_id, why)))
            for p in (*due, *late):
                if p.stable is not None:
                    p.stable.finished(1)
            self.send_replies(out)
        held = gate.held
        while held and not gate.waiting:
            self._handle(held.popleft())

    def _ordered(
        self,
        caller: int,
        call_id: int,
        method: str,
        args: bytes,
        origin: int,
        session: int,
        floor: int,
        owner: int,
        ts: int,
        vid: int,
        replicas: tuple[int, ...],
        version: int,
    ) -> tuple[int, Reply]:
        if not origin:
            return self._run(caller, call_id, method, args, ORDERED, vid, replicas, origin, version)
        sessions = self.sessions
        sessions.tick(ts)
        verdict = sessions.check(origin, call_id, session, owner)
        kind = verdict.kind
        if kind == DUPLICATE:
            ok, value = verdict.reply  # type: ignore[misc]
            return caller, Reply(call_id, self.node_id, vid, replicas, ok, value, origin, version)
        if kind != NEW:
            to = ReplyTo(caller, call_id, vid, origin)
            if kind == FORGOTTEN:
                forgotten = RuntimeError(
                    f"call {call_id} was applied already and its reply is no longer kept (the caller had "
                    "acknowledged it, or more than the reply window followed); it was not run again"
                )
                return caller, to.failed(self.node_id, forgotten, replicas, version)
            exc: SessionExpired | SessionLimit
            if kind == EXPIRED:
                exc = SessionExpired(
                    f"call {call_id} was not run: its caller's session expired (no call for "
                    f"{self.spec.session_ttl:g} s), so it may be the retry of a call applied before; read the state "
                    "to find out, then call anew"
                )
            elif kind == EVICTED:
                exc = SessionExpired(
                    f"call {call_id} was not run: its caller's identity opened more than "
                    f"{self.spec.max_sessions_per_caller} sessions of {self.spec.name} since this session started "
                    "(max_sessions_per_caller; each Client is one session), so it was ended and the call may be the "
                    "retry of one applied before; read the state to find out, then call anew from a new Client"
                )
            else:
                exc = SessionLimit(
                    f"call {call_id} was not run: {self.spec.name} replicas already keep {self.spec.max_sessions} "
                    "caller sessions (max_sessions); retry later"
                )
            return caller, to.refused(self.node_id, exc, replicas, version)
        out = self._run(caller, call_id, method, args, ORDERED, vid, replicas, origin, version)
        sessions.applied(origin, call_id, (out[1].ok, out[1].value), floor, owner, session)
        return out

    def _run(
        self,
        caller: int,
        call_id: int,
        method: str,
        args: bytes,
        want: str,
        vid: int,
        replicas: tuple[int, ...],
        origin: int = 0,
        version: int = -1,
        past: ReadOptions | None = None,
    ) -> tuple[int, Reply]:
        """Run one call; ``past``: against the persistent fields as of that version."""
        spec = self.spec
        ok, value = True, b""
        try:
            if spec.methods.get(method) != want:
                raise AttributeError(f"{spec.name}.{method} is not a {want} method")
            a, kw = _codec.decode_args(args, spec.serializer)
            target = self.obj if past is None else PastView(self.obj, past)
            handler_context.active = True
            if want == ORDERED:
                handler_context.sink = self._sink
            try:
                result = getattr(target, method)(*a, **kw)
            finally:
                handler_context.active = False
                handler_context.sink = None
            value = _codec.encode_result(result, spec.serializer)
        except SerializationError as exc:
            ok, value = False, _codec.encode_error(exc)
        except Exception as exc:  # the user's exception goes back to the caller; we carry on
            ok, value = False, _codec.encode_error(exc)
        return caller, Reply(call_id, self.node_id, vid, replicas, ok, value, origin, version)

    def _check_marks(self) -> None:
        """Compare peers' signatures with ours at the same version, once ours is on disk."""
        store = self.store
        if store is None or not self._marks or self.awaiting:
            return
        durable = store.durable_version
        for node, (version, signature, public_key) in list(self._marks.items()):
            if version > durable:
                continue
            del self._marks[node]
            with store.log_held() as log_:
                matches = log_.verify_peer(version, signature, public_key)
            if matches:
                self.env.report_verified(node, version)
            elif version > store.log.last_version or version < store.log.first_version:
                continue  # not ours to judge (our log was replaced or trimmed meanwhile)
            else:
                log.error(
                    "node %s's signed log of %s differs from ours at version %s (its signature does not match our "
                    "record chain); its replica cannot be trusted: compare with `derecho-actors verify`",
                    node,
                    self.spec.name,
                    version,
                )

    # ------------------------------------------------------------ state transfer
    def _object_state(self) -> dict[str, Any]:
        """What a new replica needs besides the log: the object's own (non-persistent)
        state, as the class's ``__getstate__`` gives it if it defines one, and the session
        table. Plain data for msgpack types (see ``_codec.encode_state``)."""
        return {
            "attrs": object_attrs(self.obj, self.spec.fields),
            "sessions": self.sessions.to_state(),
            "applied": self.applied,
            "version": self.store.last_version if self.store is not None else -1,
            "lost": list(self.store.lost) if self.store is not None and self.store.lost is not None else None,
            "events": self.events.to_state(),
            "watch_head": self.applied_version,
        }

    def _restore_object_state(self, state: dict[str, Any]) -> None:
        obj = self.obj
        if hasattr(type(obj), "__setstate__"):
            obj.__setstate__(state["attrs"])
        else:
            obj.__dict__.update(state["attrs"])
        self.sessions = self._new_sessions()
        self.sessions.load_state(state["sessions"])
        self.applied = state["applied"]
        self.events.load_state(state.get("events"))
        self.applied_version = max(self.applied_version, int(state.get("watch_head", -1)))
        lost = state.get("lost")
        if lost and self.store is not None:
            lo, hi = int(lost[0]), int(lost[1])
            self.store.lost = (lo, hi)
            self.env.report_lost(lo, hi)

    def _snapshot(self, vid: int) -> None:
        """Write the state at this view boundary to a file, for new members to fetch. The
        object's state is encoded with the type's serializer (plain data unless the type
        chose pickle); the log part is streamed from the log itself."""
        path = self.env.scratch_dir / f"snapshot-{self.spec.name}-{os.getpid()}-{vid}-{id(self)}.state"
        path.parent.mkdir(parents=True, exist_ok=True)
        boundary = -1
        try:
            data = _codec.encode_state(self._object_state(), self.spec.serializer, f"the state of {self.spec.name}")
            with open(path, "wb") as f:
                f.write(data)
            del data
            if self.store is not None:
                boundary = self.store.last_version
                if boundary >= 0 and not self.store.wait_durable(boundary):
                    raise OSError(f"log did not reach version {boundary} on disk")
        except Exception as exc:
            log.error(
                "snapshot of %s for view %d failed; new members cannot receive its state: %s", self.spec.name, vid, exc
            )
            path.unlink(missing_ok=True)
            self.env.snapshot_failed(vid, f"the state source could not write the state of {self.spec.name}: {exc}")
            return
        self.env.snapshot_ready(vid, path, boundary, self.store)

    def _take_state(self, chunk: StatePart) -> None:
        """One chunk of a transfer for this (awaiting) replica."""
        if not self.awaiting:
            return
        part, data, final = chunk.part, chunk.data, chunk.final
        try:
            if chunk.reset and self.store is not None and self.store.last_version >= 0:
                log.warning("local log of %s disagrees with the group's; replacing it", self.spec.name)
                with self.store.log_held() as log_:
                    log_.truncate_after(-1)
                self.store.last_version = -1
            if part is ChunkKind.ERROR:
                raise StateTransferError(data.decode("utf-8", "replace"))
            if part is ChunkKind.OBJECT:
                if self._incoming is None:
                    self._incoming_path = (
                        self.env.scratch_dir / f"incoming-{self.spec.name}-{os.getpid()}-{id(self)}.state"
                    )
                    self._incoming_path.parent.mkdir(parents=True, exist_ok=True)
                    self._incoming = open(self._incoming_path, "wb")
                self._incoming.write(data)
            elif part is ChunkKind.LOG:
                assert self.store is not None, "log records sent to a replica without a log"
                records = msgpack.unpackb(data, raw=False)
                with self.store.log_held() as log_:
                    log_.append([tuple(r) for r in records])
            if final:
                self._install_state()
        except Exception as exc:
            self._fail(f"state transfer of {self.spec.name} failed: {exc}")
            return
        self.env.chunk_done(chunk.source, chunk.vid, chunk.seq)

    def _install_state(self) -> None:
        if self.store is not None:
            with self.store.log_held() as log_:
                log_.flush()
            self.store = None
            self.sessions, self.applied = self._new_sessions(), 0
            self._attach_store(log_)
        else:
            self.obj = self.spec.cls()
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
            assert self._incoming_path is not None
            state = _codec.decode_state(self._incoming_path.read_bytes(), self.spec.serializer)
            self._incoming_path.unlink(missing_ok=True)
            self._restore_object_state(state)
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


class ReplicaActor(pykka.ThreadingActor):
    """Runs a :class:`Replica` on a thread of its own (one message at a time, in order)."""

    # A replica stuck in a user method must not keep the process alive after its node stopped.
    use_daemon_thread = True

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self.replica = replica

    def on_start(self) -> None:
        self.replica.start()

    def on_receive(self, message: Any) -> None:
        self.replica.receive(message)

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.replica.failed_with(exc)

    def on_stop(self) -> None:
        self.replica.stop()
