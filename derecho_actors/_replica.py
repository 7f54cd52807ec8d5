"""The pykka actor that hosts one replica of a replicated object on this node.

The protocol thread hands it whole delivered batches (one message per batch, not per call);
the actor runs the ordered calls one at a time in delivery order and P2P calls between them,
on its own thread, never on the protocol thread. Replies go back through ``send_replies``
in one hand-off per batch.

A replica of a persistent type also owns the shard's log here: each ordered call becomes a
record, and a batch's records go to the log's writer thread in one piece. A replica that is
new to its shard starts *awaiting state*: it holds every message until the shard's state has
arrived by transfer, then applies what it held in order.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import msgpack
import pykka

from derecho_actors import _codec
from derecho_actors._decorators import ORDERED, P2P, TypeSpec
from derecho_actors._persistent import STORE_ATTR, PersistentStore, persistent_fields
from runtime.errors import SerializationError, StateTransferError
from runtime.core.versions import make_version
from runtime.wire.control import Reply

log = logging.getLogger("derecho.replica")
_in_handler = threading.local()

REPLY_WINDOW = 10_000  # replies kept per client for retries


def in_handler() -> bool:
    """True on a replica's thread while it runs a user method (nested calls are refused)."""
    return getattr(_in_handler, "active", False)


SendReplies = Callable[[list[tuple[int, Reply]]], None]
DeliveredCall = tuple[int, int, str, bytes, int, int]
"""``(caller, call_id, method, args, origin, timestamp_ns)``"""


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
    state_installed: Callable[[int], None] = lambda version: None
    chunk_done: Callable[[int, int, int], None] = lambda source, vid, seq: None
    report_signed: Callable[[int, bytes], None] = lambda version, signature: None  # signed logs
    report_verified: Callable[[int, int], None] = lambda node, version: None  # a peer's log matches ours


class ReplicaActor(pykka.ThreadingActor):
    def __init__(self, spec: TypeSpec, env: ReplicaEnv, awaiting_state: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.env = env
        self.node_id = env.node_id
        self.send_replies = env.send_replies
        self.obj = spec.cls()
        self.store: PersistentStore | None = None
        self.applied = 0  # ordered calls applied, for tests and status
        # Exactly once for external clients: per client, the highest call number applied and the
        # replies of its last REPLY_WINDOW calls. Derived from the ordered stream alone, so
        # every replica holds the same table: a retried call that was applied gets its first
        # reply back and is not run again.
        self.last_by_client: dict[int, int] = {}
        self.replies_by_client: dict[int, dict[int, tuple[bool, bytes]]] = {}
        self.awaiting = awaiting_state
        self._held: list[Any] = []  # messages that arrived while awaiting state
        self._incoming: Any = None  # the object part of a state transfer, as it arrives
        self._incoming_path: Path | None = None
        self.failed: str | None = None
        # Versions number ordered calls within a view: every replica delivers the same calls
        # of a view in the same order, so (view, k-th call) is the same version everywhere.
        self._view_of_count = -1
        self._count = 0
        self._marks: dict[int, tuple[int, bytes]] = {}  # peers' latest signed marks, to verify

    # ------------------------------------------------------------------ lifecycle
    def on_start(self) -> None:
        if self.spec.persistent:
            self._open_store()
        if self.awaiting:
            have, digest = self._have()
            self.env.request_state(have, digest)

    def on_stop(self) -> None:
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
            self.obj, persistent_fields(self.spec.cls), self.spec.serializer, log_, self.env.report_durable,
            self.env.report_signed,
        )
        for call in store.replay():
            if call.origin:
                self.last_by_client[call.origin] = max(call.call_id, self.last_by_client.get(call.origin, 0))
            self.applied += 1
        setattr(self.obj, STORE_ATTR, store)
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
    def on_receive(self, message: Any) -> None:
        kind = message[0]
        if kind == "state":
            self._take_state(*message[1:])
            return
        if kind == "frontier":
            if self.store is not None:
                self.store.frontier = max(self.store.frontier, message[1])
            self._check_marks()
            return
        if kind == "mark":
            _, node, version, signature = message
            self._marks[node] = (version, signature)
            self._check_marks()
            return
        if self.awaiting or self.failed:
            self._held.append(message)
            return
        self._handle(message)

    def _handle(self, message: Any) -> None:
        kind = message[0]
        if kind == "ordered":
            _, vid, replicas, calls = message
            self._ordered_batch(vid, replicas, calls)
        elif kind == "view":
            # Between the last delivery of one view and the first of the next, as at every
            # replica: a deterministic point for view-dependent state (leases, for example),
            # and the point at which a state snapshot for new members is taken.
            _, vid, members, snapshot = message
            hook = getattr(self.obj, "on_view", None)
            if callable(hook):
                try:
                    hook(vid, list(members))
                except Exception:
                    log.exception("on_view of %s raised", self.spec.name)
            if snapshot:
                self._snapshot(vid)
        elif kind == "p2p":
            _, vid, caller, call_id, method, args, origin = message
            self.send_replies([self._run(caller, call_id, method, args, P2P, vid, (self.node_id,), origin)])

    def _ordered_batch(self, vid: int, replicas: tuple[int, ...], calls: list[DeliveredCall]) -> None:
        store = self.store
        out = []
        if store is None:
            for caller, call_id, method, args, origin, _ts in calls:
                out.append(self._ordered(caller, call_id, method, args, origin, vid, replicas, -1))
        else:
            records = []
            if vid != self._view_of_count:
                self._view_of_count, self._count = vid, 0
            for caller, call_id, method, args, origin, ts in calls:
                version = make_version(vid, self._count)
                self._count += 1
                store.last_version = version  # what current_version() shows during the call
                out.append(self._ordered(caller, call_id, method, args, origin, vid, replicas, version))
                records.append(store.record(version, ts, origin, call_id))
            store.submit(records)
        self.applied += len(calls)
        self.send_replies(out)

    def _ordered(
        self, caller: int, call_id: int, method: str, args: bytes, origin: int, vid: int, replicas: tuple[int, ...],
        version: int,
    ) -> tuple[int, Reply]:
        if origin:
            last = self.last_by_client.get(origin, 0)
            if call_id <= last:
                kept = self.replies_by_client.get(origin, {}).get(call_id)
                if kept is not None:
                    return caller, Reply(call_id, self.node_id, vid, replicas, kept[0], kept[1], origin, version)
                err = _codec.encode_error(
                    RuntimeError(f"call {call_id} of client {origin:x} was applied too long ago (or before a restart) "
                                 "to repeat its reply")
                )
                return caller, Reply(call_id, self.node_id, vid, replicas, False, err, origin, version)
        out = self._run(caller, call_id, method, args, ORDERED, vid, replicas, origin, version)
        if origin:
            self.last_by_client[origin] = call_id
            kept_replies = self.replies_by_client.setdefault(origin, {})
            kept_replies[call_id] = (out[1].ok, out[1].value)
            kept_replies.pop(call_id - REPLY_WINDOW, None)
        return out

    def _run(
        self, caller: int, call_id: int, method: str, args: bytes, want: str, vid: int, replicas: tuple[int, ...],
        origin: int = 0, version: int = -1,
    ) -> tuple[int, Reply]:
        spec = self.spec
        ok, value = True, b""
        try:
            if spec.methods.get(method) != want:
                raise AttributeError(f"{spec.name}.{method} is not a {want} method")
            a, kw = _codec.decode_args(args, spec.serializer)
            _in_handler.active = True
            try:
                result = getattr(self.obj, method)(*a, **kw)
            finally:
                _in_handler.active = False
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
        for node, (version, signature) in list(self._marks.items()):
            if version > durable:
                continue
            del self._marks[node]
            try:
                with store._lock:
                    mine = store.log.signature(version)
            except (KeyError, Exception):
                continue
            if mine == signature:
                self.env.report_verified(node, version)
            else:
                log.error(
                    "node %s's signed log of %s differs from ours at version %s (or uses another key); "
                    "its replica cannot be trusted: compare with `derecho-actors verify`", node, self.spec.name, version,
                )

    # ------------------------------------------------------------ state transfer
    def _object_state(self) -> dict[str, Any]:
        fields = set(self.spec.fields)
        attrs = {k: v for k, v in self.obj.__dict__.items() if k not in fields and k != STORE_ATTR}
        return {
            "attrs": attrs,
            "last_by_client": self.last_by_client,
            "replies_by_client": self.replies_by_client,
            "applied": self.applied,
            "version": self.store.last_version if self.store is not None else -1,
        }

    def _snapshot(self, vid: int) -> None:
        """Write the state at this view boundary to a file, for new members to fetch. The
        object is pickled straight to disk; the log part is streamed from the log itself."""
        path = self.env.scratch_dir / f"snapshot-{self.spec.name}-{os.getpid()}-{vid}-{id(self)}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        boundary = -1
        try:
            with open(path, "wb") as f:
                cloudpickle.dump(self._object_state(), f, protocol=5)
            if self.store is not None:
                boundary = self.store.last_version
                if boundary >= 0 and not self.store.wait_durable(boundary):
                    raise OSError(f"log did not reach version {boundary} on disk")
        except Exception:
            log.exception("snapshot of %s for view %d failed; new members cannot receive state", self.spec.name, vid)
            path.unlink(missing_ok=True)
            return
        self.env.snapshot_ready(vid, path, boundary, self.store)

    def _take_state(self, seq: int, part: str, data: Any, final: bool, meta: dict[str, Any]) -> None:
        """One chunk of a transfer for this (awaiting) replica."""
        if not self.awaiting:
            return
        try:
            if meta.get("reset") and self.store is not None and self.store.last_version >= 0:
                log.warning("local log of %s disagrees with the group's; replacing it", self.spec.name)
                with self.store._lock:
                    self.store.log.truncate_after(-1)
                self.store.last_version = -1
            if part == "obj":
                if self._incoming is None:
                    self._incoming_path = self.env.scratch_dir / f"incoming-{self.spec.name}-{os.getpid()}-{id(self)}.pkl"
                    self._incoming_path.parent.mkdir(parents=True, exist_ok=True)
                    self._incoming = open(self._incoming_path, "wb")
                self._incoming.write(data)
            elif part == "log":
                assert self.store is not None, "log records sent to a replica without a log"
                records = msgpack.unpackb(data, raw=False)
                with self.store._lock:
                    self.store.log.append([tuple(r) for r in records])
            if final:
                self._install_state()
        except Exception as exc:
            self._fail(f"state transfer of {self.spec.name} failed: {exc}")
            return
        self.env.chunk_done(meta["source"], meta["vid"], seq)

    def _install_state(self) -> None:
        if self.store is not None:
            log_ = self.store.log
            with self.store._lock:
                log_.flush()
            self.store = None
            self.last_by_client, self.replies_by_client, self.applied = {}, {}, 0
            self._attach_store(log_)
        else:
            self.obj = self.spec.cls()
        if self._incoming is not None:
            self._incoming.close()
            self._incoming = None
            assert self._incoming_path is not None
            with open(self._incoming_path, "rb") as f:
                state = cloudpickle.load(f)
            self._incoming_path.unlink(missing_ok=True)
            self.obj.__dict__.update(state["attrs"])
            self.last_by_client = state["last_by_client"]
            self.replies_by_client = state["replies_by_client"]
            self.applied = state["applied"]
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
