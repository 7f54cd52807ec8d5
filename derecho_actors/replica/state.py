"""Where a replica's state comes from besides ordered calls: its own log at start (replay), a
state transfer from a member (the chunks a new replica assembles), and the snapshot a member
writes for the view's new members.

A transfer moves the object's own (non-persistent) state, the exactly-once session table and
the event log (:func:`object_state`), plus, for a persistent type, the log records themselves,
which are appended to the new replica's log as they come. Switching the replica over to the
received state is the replica's own business (``Replica._install_state``: it also runs what it
held meanwhile). Runs on the replica's actor thread (or inline in the simulator).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path
from typing import IO, Any, Protocol

import msgpack

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.fields import STORE_ATTR, persistent_fields
from derecho_actors.replica.checkpoint import CHECKPOINT_EVERY
from derecho_actors.replica.env import ReplicaEnv
from derecho_actors.replica.events import EventLog
from derecho_actors.replica.messages import StatePart
from derecho_actors.replica.prebuild import Prebuild, Rebuilt
from derecho_actors.replica.sessions import SessionTable, table_for
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.digest import object_attrs
from derecho_actors.wire.messages import ChunkKind
from runtime.core.versions import format_version
from runtime.errors import StateTransferError

log = logging.getLogger("derecho.replica")

SIM_CHECKPOINT_EVERY = 16  # records between checkpoints in the simulator (inline writes)


class Transferable(Protocol):
    """The parts of a replica a state transfer reads and replaces."""

    spec: TypeSpec
    env: ReplicaEnv
    obj: Any
    sessions: SessionTable
    applied: int
    store: PersistentStore | None
    events: EventLog
    applied_version: int
    awaiting: bool


def open_store(r: Transferable) -> None:
    """Open the shard's log for a persistent type (or take it as the node opened it at a
    restart) and rebuild the object from it."""
    from runtime.drivers.log_store import VersionedLog

    env = r.env
    assert env.log_path is not None
    log_ = env.take_log()  # read and checked by the node at start already
    if isinstance(log_, Prebuild):  # and its object rebuilt meanwhile
        rebuilt = log_.take()
        if rebuilt is not None:
            _adopt(r, rebuilt)
            return
        log_ = log_.log  # that rebuild failed: this one says why
    if log_ is None:
        log_ = VersionedLog.open(env.log_path, signing_key=env.signing_key, fsync=env.fsync)
        if log_.recovery is not None:
            log.warning("log %s was repaired on open: %s", env.log_path, log_.recovery)
    attach_store(r, log_)


def attach_store(r: Transferable, log_: Any) -> None:
    """Build the object's persistent state from the log on a fresh object: from the log's
    checkpoint if it has a valid one, then replaying the records after it (all of them
    without one)."""
    spec, env = r.spec, r.env
    r.obj = spec.cls()
    store = PersistentStore(
        r.obj,
        persistent_fields(spec.cls),
        spec.serializer,
        log_,
        env.report_durable,
        env.report_signed,
        on_failure=env.storage_failed,
        stall_timeout=env.stall_timeout,
        inline=env.inline_writes,
        replayed=table_for(spec),
        # The simulator's logs are short: it checkpoints often, so its crashes and total
        # restarts run through checkpoints as much as through full replays.
        checkpoint_every=SIM_CHECKPOINT_EVERY if env.inline_writes else CHECKPOINT_EVERY,
    )
    started = time.perf_counter()
    restored = store.restore_checkpoint()
    if restored is not None:
        r.sessions.load_state(restored.sessions)
        r.applied = restored.count
    replayed = 0
    for calls in store.replay():
        r.sessions.replayed_batch(calls)
        replayed += len(calls)
    r.applied += replayed
    if r.applied:
        log.info(
            "%s rebuilt from its log: %d versions in %.2f s%s",
            spec.name,
            r.applied,
            time.perf_counter() - started,
            f" (a checkpoint at version {format_version(restored.version)}, then {replayed} replayed)"
            if restored is not None
            else "",
        )
    _attached(r, store)


def _adopt(r: Transferable, rebuilt: Rebuilt) -> None:
    """Take an object rebuilt from the log before this replica existed (``prebuild``):
    wire its store to this replica's group as :func:`attach_store` builds one, and load
    the exactly-once table its replay built (what replaying into ``r.sessions`` gives)."""
    env, store, restored = r.env, rebuilt.store, rebuilt.restored
    store.on_durable = env.report_durable
    store.on_signed = env.report_signed if getattr(store.log, "signed", False) else None
    store.on_failure = env.storage_failed
    store.stall_timeout = env.stall_timeout
    store.inline = env.inline_writes
    store.checkpoint_every = SIM_CHECKPOINT_EVERY if env.inline_writes else CHECKPOINT_EVERY
    r.obj = rebuilt.obj
    assert store.replayed is not None
    r.sessions.load_state(store.replayed.to_state())
    r.applied = (restored.count if restored is not None else 0) + rebuilt.replayed
    if r.applied:
        log.info(
            "%s rebuilt from its log while the node restarted: %d versions in %.2f s%s",
            r.spec.name,
            r.applied,
            rebuilt.seconds,
            f" (a checkpoint at version {format_version(restored.version)}, then {rebuilt.replayed} replayed)"
            if restored is not None
            else "",
        )
    _attached(r, store)


def _attached(r: Transferable, store: PersistentStore) -> None:
    """The store holds the log replayed into ``r.obj``: the replica takes it."""
    setattr(r.obj, STORE_ATTR, store)
    store.lost = r.env.lost
    r.store = store
    _replayed_up_to(r, store)
    if store.last_version >= 0 and not r.awaiting:
        r.env.report_durable(store.last_version)


def _replayed_up_to(r: Transferable, store: PersistentStore) -> None:
    if store.last_version >= 0:
        r.events.restarted_at(store.last_version)  # events are not logged: none before here
        r.applied_version = store.last_version


def rebuild_after_transfer(r: Transferable, replaced_log: bool) -> None:
    """A transfer landed; before its object part is restored, bring the rest up to it: a log
    that was a prefix of the sender's replays only the tail received (:func:`catch_up`), one
    the sender replaced is replayed whole on a fresh object, and a type without a log starts
    from a fresh object."""
    store = r.store
    if store is None:
        r.obj = r.spec.cls()
    elif not replaced_log:
        catch_up(r)
    else:
        with store.log_held() as log_:
            log_.flush()
        r.store = None
        r.sessions, r.applied = table_for(r.spec), 0
        attach_store(r, log_)


def catch_up(r: Transferable) -> None:
    """A state transfer appended records to the log this replica had replayed at start (and
    did not replace it): replay only those. The object then equals what a fresh replay of
    the whole log gives, since the replica ran nothing while it awaited its state; a
    transfer of nothing new costs no replay at all."""
    store = r.store
    assert store is not None
    with store.log_held() as log_:
        log_.flush()
    for calls in store.replay():
        r.sessions.replayed_batch(calls)
        r.applied += len(calls)
    _replayed_up_to(r, store)


def object_state(r: Transferable) -> dict[str, Any]:
    """What a new replica needs besides the log: the object's own (non-persistent) state, as
    the class's ``__getstate__`` gives it if it defines one, and the session table. Plain data
    for msgpack types (see ``_codec.encode_state``)."""
    store = r.store
    return {
        "attrs": object_attrs(r.obj, r.spec.fields),
        "sessions": r.sessions.to_state(),
        "applied": r.applied,
        "version": store.last_version if store is not None else -1,
        "lost": list(store.lost) if store is not None and store.lost is not None else None,
        "events": r.events.to_state(),
        "watch_head": r.applied_version,
    }


def restore_object_state(r: Transferable, state: dict[str, Any]) -> None:
    """Take over what :func:`object_state` gave, on a fresh object."""
    obj = r.obj
    if hasattr(type(obj), "__setstate__"):
        obj.__setstate__(state["attrs"])
    else:
        obj.__dict__.update(state["attrs"])
    r.sessions = table_for(r.spec)
    r.sessions.load_state(state["sessions"])
    r.applied = state["applied"]
    r.events.load_state(state.get("events"))
    r.applied_version = max(r.applied_version, int(state.get("watch_head", -1)))
    lost = state.get("lost")
    if lost and r.store is not None:
        lo, hi = int(lost[0]), int(lost[1])
        r.store.lost = (lo, hi)
        r.env.report_lost(lo, hi)


def write_snapshot(r: Transferable, vid: int) -> None:
    """Write the state at this view boundary to a file, for new members to fetch. The object's
    state is encoded with the type's serializer (plain data unless the type chose pickle); the
    log part is streamed from the log itself."""
    name = r.spec.name
    path = r.env.scratch_dir / f"snapshot-{name}-{os.getpid()}-{vid}-{id(r)}.state"
    path.parent.mkdir(parents=True, exist_ok=True)
    boundary = -1
    try:
        data = _codec.encode_state(object_state(r), r.spec.serializer, f"the state of {name}")
        with open(path, "wb") as f:
            f.write(data)
        del data
        if r.store is not None:
            boundary = r.store.last_version
            if boundary >= 0 and not r.store.wait_durable(boundary):
                raise OSError(f"log did not reach version {boundary} on disk")
    except Exception as exc:
        log.error("snapshot of %s for view %d failed; new members cannot receive its state: %s", name, vid, exc)
        path.unlink(missing_ok=True)
        r.env.snapshot_failed(vid, f"the state source could not write the state of {name}: {exc}")
        return
    r.env.snapshot_ready(vid, path, boundary, r.store)


def have(store: PersistentStore | None) -> tuple[int, int]:
    """The last version in the local log and a digest of its record (for a transfer to send
    only what is missing, after checking that our log agrees with the sender's)."""
    if store is None or store.last_version < 0:
        return -1, 0
    return store.last_version, zlib.crc32(store.log.read(store.last_version))


class IncomingState:
    """A transfer as it arrives: the object part goes to a scratch file (it may be large), the
    log records straight into the replica's log."""

    def __init__(self, scratch_dir: Path, type_name: str, serializer: str) -> None:
        self.path = scratch_dir / f"incoming-{type_name}-{os.getpid()}-{id(self)}.state"
        self.type_name = type_name
        self.serializer = serializer
        self._file: IO[bytes] | None = None
        self.replaced_log = False  # the sender's first chunk dropped our log (it disagreed)
        self._piece: bytearray | None = None  # a record sent in pieces, so far

    def take(self, chunk: StatePart, store: PersistentStore | None) -> bool:
        """Keep one chunk; True once it was the last. Raises on a sender's error or a log
        that cannot take the records."""
        if chunk.reset and store is not None and store.last_version >= 0:
            log.warning("local log of %s disagrees with the group's; replacing it", self.type_name)
            with store.log_held() as log_:
                log_.truncate_after(-1)
            store.last_version = -1
            self.replaced_log = True
        part, data = chunk.part, chunk.data
        if part is ChunkKind.ERROR:
            raise StateTransferError(data.decode("utf-8", "replace"))
        if part is ChunkKind.OBJECT:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "wb")
            self._file.write(data)
        elif part is ChunkKind.LOG:
            assert store is not None, "log records sent to a replica without a log"
            records = [self._whole(r) for r in msgpack.unpackb(data, raw=False)]
            whole = [r for r in records if r is not None]
            if whole:
                with store.log_held() as log_:
                    log_.append(whole)
        if chunk.final and self._piece is not None:
            raise StateTransferError("the state ended in the middle of a log record sent in pieces")
        return chunk.final

    def _whole(self, record: list[Any]) -> tuple[int, int, bytes] | None:
        """A received record: whole (``[version, ts, body]``), or None while the pieces of one
        too large for a chunk (``[version, ts, piece, offset, total]``) are still coming."""
        if len(record) == 3:
            if self._piece is not None:
                raise StateTransferError("a log record came in the middle of another sent in pieces")
            return record[0], record[1], record[2]
        if len(record) != 5:
            raise StateTransferError(f"a log record of {len(record)} fields (3, or 5 for a piece)")
        version, ts, piece, offset, total = record
        buf = self._piece if self._piece is not None else bytearray()
        if offset != len(buf) or offset + len(piece) > total:
            raise StateTransferError(f"a piece of log record {version} at {offset} of {total} after {len(buf)} bytes")
        buf += piece
        if len(buf) < total:
            self._piece = buf
            return None
        self._piece = None
        return version, ts, bytes(buf)

    @property
    def has_object(self) -> bool:
        """The sender sent an object part (a type without one sends only its log)."""
        return self._file is not None

    def object_state(self) -> dict[str, Any]:
        """The object part received, decoded; ``StateTransferError`` if it decodes to anything
        but a state (garbled, or forged: never installed as an empty object)."""
        assert self._file is not None, "no object part was received"
        self._file.close()
        self._file = None
        try:
            state = _codec.decode_state(self.path.read_bytes(), self.serializer)
        finally:
            self.path.unlink(missing_ok=True)
        if type(state) is not dict:
            raise StateTransferError(f"the object part of the state is a {type(state).__name__}, not a state")
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
