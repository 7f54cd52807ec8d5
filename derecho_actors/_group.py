"""``Group``, ``Layout`` and handles: a node of a replicated group, seen from user code.

A ``Group`` runs this process's node (the protocol on its own thread, see
``runtime.drivers.node``) and one pykka actor per replica this node holds. Handles turn method
calls into ordered multicasts or P2P requests and return ``QueryResults`` at once.

Calls from a node outside the target shard are relayed: the call goes to a shard member,
which multicasts it; the replicas answer the caller directly.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pykka

import msgpack

from derecho_actors import _codec
from derecho_actors._decorators import ORDERED, P2P, TypeSpec, method_caller, spec_of
from derecho_actors._disk_state import FRONTIER_WRITE_INTERVAL, NodeDiskState
from derecho_actors._persistent import log_path
from derecho_actors._replica import ReplicaActor, ReplicaEnv, in_handler
from derecho_actors._results import PERSISTED_QUERY, QueryResults, ReplyEntry, take_entries
from derecho_actors._transfer import Snapshot, TransferOut
from runtime.errors import (
    ConfigError,
    GroupClosed,
    NestedCallError,
    NotRegistered,
    PayloadTooLarge,
    ReplicaLost,
    RestartError,
    ShardUnavailable,
    StateTransferError,
    UnknownMethod,
)
from runtime.config import NodeConfig, load_config
from runtime.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_RESTART_REFUSED, EXIT_STOPPED, EXIT_STORAGE
from runtime.core.effects import Delivery
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy
from runtime.core.view import View
from runtime.drivers.data_dir import check_data_dir
from runtime.drivers.log_store import public_key_bytes
from runtime.drivers.node import AppHooks, NodeDriver, node_security
from runtime.drivers.restart import SavedState
from runtime.wire.codec import frame, frames
from runtime.wire.control import Call, Reply, ReplyBatch, SignedMark, StateAck, StateChunk, StateRequest, StatusReply

__all__ = ["Group", "Handle", "Layout", "ShardPolicy"]

log = logging.getLogger("derecho.group")

MAX_PROXIED = 200_000  # client calls this node forwards replies for, at most


class Layout:
    """Which replicated types the group runs and how each is split into shards."""

    def __init__(self, policies: Mapping[type, ShardPolicy]) -> None:
        specs = {}
        for cls, policy in policies.items():
            spec = spec_of(cls)
            if spec is None:
                raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
            if not isinstance(policy, ShardPolicy):
                raise ConfigError(f"the layout of {spec.name} must be a ShardPolicy, got {policy!r}")
            specs[spec.name] = policy
        self.policy = LayoutPolicy.of(specs)
        self.types = [cls for cls in policies]


class Group:
    """Start (or join) a group and host this node's replicas. Use as a context manager."""

    def __init__(
        self,
        config: str | Path | NodeConfig | None = None,
        types: Sequence[type] = (),
        layout: Layout | None = None,
        overrides: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        accept_loss: bool = False,
    ) -> None:
        """``accept_loss``: the operator's ``--accept-loss`` for a total restart whose surviving
        logs lack versions reported persisted: go ahead (logged at ERROR; reads of those
        versions answer ``VersionLost``) instead of stopping with exit code 5."""
        if layout is None:
            layout = Layout({cls: ShardPolicy() for cls in types})
        self._specs: dict[str, TypeSpec] = {}
        for cls in list(types) + layout.types:
            spec = spec_of(cls)
            if spec is None:
                raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
            self._specs[spec.name] = spec
        missing = [n for n in self._specs if n not in dict(layout.policy.types)]
        if missing:
            raise ConfigError(f"no layout policy for replicated type(s) {', '.join(missing)}")
        cfg = config if isinstance(config, NodeConfig) else load_config(str(config) if config else None, dict(overrides or {}))
        self.config = dataclasses.replace(cfg, layout=layout.policy)
        self.node_id = self.config.node.id
        self._max_payload = self.config.multicast.max_message_size
        self.data_dir = check_data_dir(self.config.node.data_dir)
        self._persistent = any(s.persistent for s in self._specs.values())
        self._disk = NodeDiskState(self.data_dir, self.config.node.cluster, self.node_id, self.config.persistence.fsync)
        self._lost: dict[ShardId, tuple[int, int]] = self._disk.lost() if self._persistent else {}
        self._frontiers_due = False
        # TLS contexts and this node's certificate (checked before anything starts), whose
        # key also signs the logs of signed types.
        self._security = node_security(self.config)
        self._signing_key = self._load_signing_key(self._security[1])
        self._public_key = public_key_bytes(self._signing_key) if self._signing_key is not None else b""
        # Persistence: the frontier per shard (every version up to it is on disk at every
        # replica), callers waiting for it, and user callbacks.
        self._frontier: dict[ShardId, int] = {}
        self._persist_waiters: dict[ShardId, list[tuple[int, int, int, int]]] = {}
        self._persisted_callbacks: list[Callable[[ShardId, int], None]] = []
        self._verified: dict[ShardId, dict[int, int]] = {}  # signed logs: peer -> version checked equal
        # State transfer: snapshots this node serves, requests that came before their
        # snapshot, streams running, and shards whose state this node still waits for.
        self._snapshots: dict[tuple[ShardId, int], Snapshot] = {}
        self._early_requests: dict[tuple[ShardId, int], list[tuple[int, StateRequest]]] = {}
        self._snapshot_errors: dict[tuple[ShardId, int], str] = {}  # snapshots that could not be made
        self._transfers: dict[tuple[ShardId, int, int], TransferOut] = {}
        self._awaiting: dict[ShardId, tuple[int, int]] = {}
        self._retired: dict[ShardId, pykka.ActorRef[ReplicaActor]] = {}
        self.transfer_stats: list[dict[str, Any]] = []
        self._driver = NodeDriver(
            self.config,
            AppHooks(
                on_deliver=self._on_deliver, on_view=self._on_view, on_direct=self._on_direct,
                on_stop=self._on_stop, on_client=self._on_client, on_persisted=self._on_persisted,
                on_accepted=self._disk.record_accepted if self._persistent else None, on_lost=self._on_lost,
                status=self._status,
            ),
            saved=self._saved_state(),
            security=self._security,
            accept_loss=accept_loss,
        )
        self._replicas: dict[ShardId, pykka.ActorRef[ReplicaActor]] = {}
        self._views: dict[int, View] = {}
        self._view: View | None = None
        self._view_callbacks: list[Callable[[View], None]] = []
        self._calls: dict[int, tuple[QueryResults, int | None]] = {}  # call id -> (results, relay node)
        # (client id, call id) -> [client connection, replies still to forward]; oldest first.
        self._proxies: collections.OrderedDict[tuple[int, int], list[Any]] = collections.OrderedDict()
        self._clients: set[Any] = set()  # client connections this node serves
        # (client origin, call id) -> (member it was relayed to, the Call, client connection),
        # until the first answer: retried through another member if that one fails.
        self._client_relays: dict[tuple[int, int], tuple[int, Call, Any]] = {}
        self._client_out: dict[Any, list[bytes]] = {}
        self._outgoing: dict[ShardId, list[_codec.PendingCall]] = {}  # ordered calls to multicast, per loop turn  # frames for clients, flushed once per loop turn
        self._relayed: dict[int, tuple[ShardId, str, bytes]] = {}  # relayed calls, to retry
        self._oldest_relayed = 1
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Calls this node relays through another member carry this id and their number, so a
        # retry through a new relay after a failure is applied once (as for Clients).
        self._origin = random.getrandbits(62) | 1
        self._session_ns = time.time_ns()
        self._first_view = threading.Event()
        self._stopped: str | None = None
        self.exit_code = EXIT_OK  # what a node process running this group should exit with (runtime.exitcodes)
        self._driver.start_in_thread()
        if not self._first_view.wait(start_timeout):
            self.close()
            raise GroupClosed(f"node {self.node_id} joined no view within {start_timeout} s; check node.contacts")
        if self._stopped is not None:
            self.close()
            raise GroupClosed(f"node {self.node_id} stopped: {self._stopped}", self.exit_code)

    # ------------------------------------------------------------------ public
    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> Handle:
        spec = spec_of(cls)
        if spec is None or spec.name not in self._specs:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a replicated type of this group")
        return Handle(self, spec, ShardId(spec.name, subgroup, shard))

    @property
    def members(self) -> list[int]:
        view = self._view
        return list(view.members) if view is not None else []

    @property
    def view(self) -> View | None:
        return self._view

    def my_shards(self) -> list[ShardId]:
        view = self._view
        return list(view.my_shards(self.node_id)) if view is not None else []

    def on_view(self, fn: Callable[[View], None]) -> None:
        """Call ``fn(view)`` on every view installed from now on (on the protocol thread:
        keep it short)."""
        self._view_callbacks.append(fn)

    def on_persisted(self, fn: Callable[[ShardId, int], None]) -> None:
        """Call ``fn(shard, version)`` whenever the persistence frontier of a shard this node
        holds moves: every version up to ``version`` is on disk at every replica (protocol
        thread: keep it short)."""
        self._persisted_callbacks.append(fn)

    def persisted_frontier(self, cls: type, shard: int = 0, subgroup: int = 0) -> int:
        """The persistence frontier of a shard this node holds (-1: nothing yet)."""
        spec = spec_of(cls)
        name = spec.name if spec is not None else getattr(cls, "__name__", str(cls))
        return self._frontier.get(ShardId(name, subgroup, shard), -1)

    def leave(self, timeout: float = 10.0) -> None:
        """Leave the group gracefully (a view change without suspicion), then close."""
        if self._stopped is None:
            self._driver.leave()
            self._driver.join_thread(timeout)
        self.close()

    @property
    def stopped(self) -> str | None:
        """Why this node stopped (None while it runs); ``exit_code`` says what kind of end."""
        return self._stopped

    def close(self, timeout: float = 10.0) -> None:
        """Stop this node at once (others see it fail) and its replicas, and wait until they
        have stopped and closed their logs (so the data directory can be used again at once,
        by this process too)."""
        self._driver.stop("closed")
        self._driver.join_thread(timeout)
        refs = [*self._replicas.values(), *self._retired.values()]
        self._replicas.clear()
        self._retired.clear()
        stops = [ref.stop(block=False) for ref in refs]  # each replies once its on_stop closed the log
        deadline = time.monotonic() + timeout
        for ref, stopping in zip(refs, stops):
            try:
                stopping.get(timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            except pykka.Timeout:
                log.warning("a replica of %s did not stop within %.0f s (busy in a method?)", ref.actor_class, timeout)
            except pykka.ActorDeadError:
                pass
        self._fail_pending(GroupClosed(f"node {self.node_id} closed its group"))

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------- calling
    def _call(self, spec: TypeSpec, shard: ShardId, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], node: int | None) -> QueryResults:
        if in_handler():
            raise NestedCallError(
                f"{spec.name}.{method} was called from inside a replicated method; the replica runs one "
                "call at a time, so this could deadlock it"
            )
        if self._stopped is not None:
            raise GroupClosed(f"node {self.node_id} stopped: {self._stopped}")
        kind = spec.methods.get(method)
        if kind is None:
            raise UnknownMethod(
                f"{spec.name} has no @ordered or @p2p method {method!r} (known: {', '.join(sorted(spec.methods))})"
            )
        data = _codec.encode_args(args, kwargs, spec.serializer)
        self._check_size(f"{spec.name}.{method}", method, data)
        serializer = spec.serializer
        results = self._issue(shard, method, kind, data, node, f"{spec.name}.{method}", lambda b: _codec.decode_result(b, serializer))
        if spec.persistent and kind == ORDERED:
            results._persist_query = lambda version, replica: self._issue(
                shard, PERSISTED_QUERY, P2P, msgpack.packb(version), replica, f"persistence of {spec.name}.{method}",
                msgpack.unpackb,
            )
        return results

    def _issue(
        self, shard: ShardId, method: str, kind: str, data: bytes, node: int | None, what: str,
        decode: Callable[[bytes], Any],
    ) -> QueryResults:
        call_id = next(self._ids)
        results = QueryResults(f"{what} (call {call_id})", decode)
        results.ordered = kind == ORDERED
        results._why_waiting = lambda: self._why_waiting(shard)
        with self._lock:
            self._calls[call_id] = (results, None)
        if not self._driver.in_loop(self._dispatch, call_id, shard, method, kind, data, node):
            results._fail_all(GroupClosed(f"node {self.node_id} has stopped"))
        return results

    def _dispatch(self, call_id: int, shard: ShardId, method: str, kind: str, data: bytes, node: int | None) -> None:
        """On the protocol thread: send the call on its way."""
        view = self._view
        entry = self._calls.get(call_id)
        if entry is None or view is None:
            return
        results = entry[0]
        members = view.layout.members_of(shard)
        if not members:
            with self._lock:
                self._calls.pop(call_id, None)
            results._fail_all(ShardUnavailable(f"{results.description} was not sent: {self._unavailable(view, shard)}"))
            return
        if kind == ORDERED:
            if self.node_id in members:
                self._submit(shard, (self.node_id, call_id, method, data, 0, 0, 0))
            else:
                relay = self._relay_for(members)
                with self._lock:
                    self._calls[call_id] = (results, relay)
                    self._relayed[call_id] = (shard, method, data)
                self._driver.send_direct(relay, frame(self._relayed_call(call_id, shard, method, data)))
            return
        target = node if node is not None else (self.node_id if self.node_id in members else members[call_id % len(members)])
        if target not in members:
            results._fail_all(ReplicaLost(
                f"node {target} holds no replica of {shard} in view {view.vid} (its replicas: {list(members)}); "
                "the call was not sent", applied=False))
            return
        results._expect((target,))
        if target == self.node_id:
            self._p2p_here(shard, view.vid, self.node_id, call_id, method, data, 0)
        else:
            self._driver.send_direct(target, frame(Call(call_id, self.node_id, shard, method, False, data)))

    def _check_size(self, what: str, method: str, args: bytes) -> None:
        size = _codec.call_size(method, args)
        if size > self._max_payload:
            raise PayloadTooLarge(
                f"{what}: the call takes {size} bytes (arguments {len(args)}); the group's limit is "
                f"{self._max_payload} (multicast.max_message_size): send less per call"
            )

    @staticmethod
    def _unavailable(view: View, shard: ShardId) -> str:
        """Why ``shard`` has no replicas in ``view``, for people."""
        if not view.layout.adequate:
            return (f"view {view.vid} has {view.n} members {list(view.members)}, too few for the layout "
                    f"({view.layout.describe_shortfall()}); no shard runs until nodes join")
        known = sorted(str(s) for s in view.layout.shards if s.type_name == shard.type_name)
        return f"the layout of view {view.vid} has no shard {shard} (shards of {shard.type_name}: {', '.join(known) or 'none'})"

    def _status(self) -> dict[str, Any]:
        """The actor layer's part of ``status`` (protocol thread): per shard this node holds,
        whether its replica serves or waits, and why."""
        view = self._view
        shards: dict[str, str] = {}
        for sid in self._replicas:
            awaiting = self._awaiting.get(sid)
            if awaiting is not None:
                shards[str(sid)] = f"waiting for its state from node {awaiting[0]}"
            elif view is not None and not view.layout.adequate:
                shards[str(sid)] = "holding its state; the view is too small for the layout"
            else:
                shards[str(sid)] = "serving"
        out: dict[str, Any] = {"replicas": shards, "frontiers": {str(s): v for s, v in self._frontier.items()}}
        if self._stopped is not None:
            out["stopped"] = self._stopped
        if self._lost:
            out["lost"] = {str(s): list(r) for s, r in self._lost.items()}
        return out

    def _why_waiting(self, shard: ShardId) -> str | None:
        """What is known to hold up calls to ``shard`` right now (for timeout messages)."""
        if self._stopped is not None:
            return f"node {self.node_id} stopped: {self._stopped}"
        view = self._view
        if view is None:
            return f"node {self.node_id} is not in a view"
        if not view.layout.members_of(shard):
            return self._unavailable(view, shard)
        awaiting = self._awaiting.get(shard)
        if awaiting is not None:
            return f"node {self.node_id} is still receiving the state of {shard} from node {awaiting[0]}"
        return None

    # ----------------------------------------------------- protocol-thread hooks
    def _on_view(self, view: View) -> None:
        previous = self._view
        self._view = view
        self._views[view.vid] = view
        self._views.pop(view.vid - 3, None)
        self._save_view(view)
        # In a view too small for the layout, replicas idle but keep their state (the view's
        # ``holders``), so the shard resumes from it once enough nodes are back.
        mine = set(view.my_shards(self.node_id)) if view.layout.adequate else set(self._replicas)
        # This node sends state to the shard's new members if the view names it as source;
        # the snapshot is taken by the replica when it reaches this view's boundary.
        sourcing = {sid for sid, src in view.sources if src == self.node_id}
        for sid in list(self._replicas):
            if sid not in mine:
                ref = self._replicas.pop(sid)
                self._fail_persist_waiters(sid, f"node {self.node_id} no longer holds {sid}")
                if sid in sourcing:  # moved to another shard but still the best source
                    ref.tell(("view", view.vid, tuple(view.members), True))
                    self._retired[sid] = ref
                else:
                    ref.stop(block=False)
        for sid in mine:
            if sid not in self._replicas:
                spec = self._specs.get(sid.type_name)
                if spec is not None:
                    src = view.source_of(sid)
                    awaiting = src is not None and src != self.node_id
                    if awaiting:
                        self._awaiting[sid] = (src, view.vid)  # type: ignore[assignment]
                    self._replicas[sid] = ReplicaActor.start(spec, self._env(sid, spec, view.vid, src), awaiting)
        for sid, ref in self._replicas.items():
            ref.tell(("view", view.vid, tuple(view.members), sid in sourcing))
        self._check_transfers(view)
        if previous is not None:
            gone = set(previous.members) - set(view.members)
            if (gone or not view.layout.adequate or not previous.layout.adequate) and self._clients:
                # Clients cannot see views: tell them who left, so their calls stop waiting,
                # and whether shards cannot run, so a call that waits says why.
                note = frame(StatusReply({
                    "vid": view.vid, "members": list(view.members), "departed": sorted(gone),
                    "unavailable": "" if view.layout.adequate else self._unavailable(view, ShardId("", 0, 0)),
                }))
                for handle in list(self._clients):
                    if getattr(handle, "closed", False):
                        self._clients.discard(handle)
                    elif self._driver.transport is not None:
                        self._driver.transport.reply(handle, note)
            if gone:
                with self._lock:
                    entries = list(self._calls.items())
                retry = []
                for call_id, (results, relay) in entries:
                    results._lost(gone, f"left the group in view {view.vid}")
                    if relay in gone and not results.done():
                        retry.append(call_id)
                self._retry_relayed(sorted(retry), view)
                self._retry_client_relays(gone, view)
        self._first_view.set()
        for fn in self._view_callbacks:
            fn(view)

    # ------------------------------------------------------------- persistence
    def _load_signing_key(self, credentials: Any) -> Any:
        """The key that signs this node's logs of signed types: its certificate's key under
        TLS (peers check it against the certificate), else ``persistence.signing_key``."""
        signed = [s.name for s in self._specs.values() if s.signed]
        if not signed:
            return None
        if credentials is not None:
            return credentials.signing_key()
        path = self.config.persistence.signing_key
        if not path:
            raise ConfigError(
                f"{', '.join(signed)} sign their logs (signed=True): without TLS, set persistence.signing_key to "
                "this node's own key (make one with `derecho-actors keygen PATH`)"
            )
        from runtime.drivers.log_store import load_signing_key

        return load_signing_key(path)

    def _env(self, sid: ShardId, spec: TypeSpec, vid: int, source: int | None) -> ReplicaEnv:
        driver = self._driver

        def in_loop(fn: Callable[..., None]) -> Callable[..., None]:
            return lambda *args: driver.in_loop(fn, *args)

        return ReplicaEnv(
            node_id=self.node_id,
            send_replies=self._send_replies,
            scratch_dir=self.data_dir / "transfer",
            log_path=log_path(self.data_dir, sid.type_name, sid.subgroup, sid.shard) if spec.persistent else None,
            signing_key=self._signing_key if spec.signed else None,
            fsync=self.config.persistence.fsync,
            report_durable=lambda version: driver.report_persisted(sid, version),
            request_state=in_loop(lambda have, digest: self._request_state(sid, vid, source, have, digest)),
            snapshot_ready=in_loop(lambda svid, path, boundary, store: self._snapshot_ready(sid, svid, path, boundary, store)),
            snapshot_failed=in_loop(lambda svid, why: self._snapshot_failed(sid, svid, why)),
            transfer_failed=in_loop(lambda why: self._transfer_failed(sid, why)),
            state_installed=in_loop(lambda version: self._state_installed(sid, version)),
            chunk_done=in_loop(lambda source, svid, seq: self._chunk_done(sid, source, svid, seq)),
            report_signed=in_loop(lambda version, sig: self._signed(sid, version, sig)),
            report_verified=in_loop(lambda node, version: self._verified_by(sid, node, version)),
            storage_failed=in_loop(lambda why: self._fail_stop(why, EXIT_STORAGE)),
            internal_error=in_loop(lambda why: self._fail_stop(why, EXIT_FAILED)),
            stall_timeout=self.config.persistence.stall_timeout_ms / 1000,
            lost=self._lost.get(sid),
            report_lost=in_loop(lambda lo, hi: self._on_lost({sid: (lo, hi)})),
        )

    def _saved_state(self) -> SavedState | None:
        """The last view and log ends left in the data directory by an earlier run of this
        node: if there are any, the node restarts from them instead of starting afresh."""
        if not self._persistent or not (self.data_dir / "view.msgpack").exists():
            return None
        from runtime.drivers.log_store import VersionedLog

        logs: dict[ShardId, int] = {}
        for spec in self._specs.values():
            if not spec.persistent:
                continue
            for file in sorted(self.data_dir.glob(f"{spec.name}.*.*.log")):
                parts = file.name[len(spec.name) + 1 : -len(".log")].split(".")
                if len(parts) != 2 or not all(p.isdigit() for p in parts):
                    continue
                key = self._signing_key if spec.signed else None
                with VersionedLog.open(file, signing_key=key, fsync=self.config.persistence.fsync, check_signatures=False) as lg:
                    if lg.recovery is not None:
                        log.warning("log %s was repaired on open: %s", file, lg.recovery)
                    logs[ShardId(spec.name, int(parts[0]), int(parts[1]))] = lg.last_version
        saved = self._disk.load(logs)
        if saved is not None:
            log.info("node %s restarts from %s: last view %d (accepted %d), logs %s, recorded frontiers %s%s",
                     self.node_id, self.data_dir, saved.view.vid, saved.accepted_vid, {str(k): v for k, v in logs.items()},
                     {str(k): v for k, v in saved.frontiers.items()},
                     f", unfinished transfers {sorted(map(str, saved.incomplete))}" if saved.incomplete else "")
        return saved

    def _save_view(self, view: View) -> None:
        """Keep the last installed view on disk: a total restart starts from it. Shards this
        node starts to receive by state transfer are marked unfinished first."""
        if not self._persistent:
            return
        awaiting = [sid for sid, src in view.sources if src != self.node_id and self.node_id in view.layout.members_of(sid)]
        try:
            self._disk.mark_incomplete(s for s in awaiting if self._specs.get(s.type_name) and self._specs[s.type_name].persistent)
            self._disk.save_view(view)
        except OSError as exc:
            self._fail_stop(f"storage failure: saving view {view.vid} in {self.data_dir} failed: {exc}", EXIT_STORAGE)

    def _on_lost(self, lost: dict[ShardId, tuple[int, int]]) -> None:
        """The total restart gave these versions up (--accept-loss): remember it for good."""
        self._disk.record_lost(lost)
        for sid, rng in lost.items():
            old = self._lost.get(sid)
            self._lost[sid] = (min(rng[0], old[0]), max(rng[1], old[1])) if old else rng

    def _write_frontiers(self) -> None:
        """Record the persistence frontiers (lazily: a lower bound is all a restart needs)."""
        self._frontiers_due = False
        loop = self._driver.loop
        if loop is None or self._stopped is not None:
            return

        def write() -> None:
            try:
                self._disk.write_frontiers()
            except OSError as exc:
                self._driver.in_loop(self._fail_stop, f"storage failure: recording frontiers in {self.data_dir}: {exc}",
                                     EXIT_STORAGE)

        loop.run_in_executor(None, write)

    def _on_persisted(self, sid: ShardId, version: int) -> None:
        if version <= self._frontier.get(sid, -1):
            return
        self._frontier[sid] = version
        if self._persistent and self._disk.note_frontier(sid, version) and not self._frontiers_due:
            self._frontiers_due = True
            if self._driver.loop is not None:
                self._driver.loop.call_later(FRONTIER_WRITE_INTERVAL, self._write_frontiers)
        ref = self._replicas.get(sid)
        if ref is not None:
            ref.tell(("frontier", version))
        waiters = self._persist_waiters.get(sid)
        if waiters:
            due = [w for w in waiters if w[0] <= version]
            if due:
                self._persist_waiters[sid] = [w for w in waiters if w[0] > version]
                vid = self._view.vid if self._view is not None else 0
                value = msgpack.packb(version)
                self._route_replies([
                    (caller, Reply(call_id, self.node_id, vid, (self.node_id,), True, value, origin))
                    for _, caller, call_id, origin in due
                ])
        for fn in self._persisted_callbacks:
            try:
                fn(sid, version)
            except Exception:
                log.exception("on_persisted callback raised")

    def _signed(self, sid: ShardId, version: int, signature: bytes) -> None:
        """Our signed log is on disk up to ``version``: tell the shard's other replicas."""
        view = self._view
        if view is None:
            return
        data = frame(SignedMark(sid, version, signature, self._public_key))
        for node in view.layout.members_of(sid):
            if node != self.node_id:
                self._driver.send_direct(node, data)

    def _on_signed_mark(self, sender: int, mark: SignedMark) -> None:
        proven = self._driver.peer_public_key(sender)
        if proven is not None and proven != mark.public_key:
            log.warning("node %s sent a log signature under a key that is not its certificate's; ignored", sender)
            return
        ref = self._replicas.get(mark.shard)
        if ref is not None:
            ref.tell(("mark", sender, mark.version, mark.signature, mark.public_key))

    def _verified_by(self, sid: ShardId, node: int, version: int) -> None:
        seen = self._verified.setdefault(sid, {})
        if version > seen.get(node, -1):
            seen[node] = version

    def verified_frontier(self, cls: type, shard: int = 0, subgroup: int = 0) -> int:
        """Signed logs: the highest version up to which every other replica of the shard has
        shown this node a signature equal to its own (so every log is identical up to there);
        -1 until each has. Needs one signing key for the group."""
        spec = spec_of(cls)
        name = spec.name if spec is not None else getattr(cls, "__name__", str(cls))
        sid = ShardId(name, subgroup, shard)
        view = self._view
        if view is None:
            return -1
        seen = self._verified.get(sid, {})
        others = [n for n in view.layout.members_of(sid) if n != self.node_id]
        return min((seen.get(n, -1) for n in others), default=self._frontier.get(sid, -1))

    def _fail_persist_waiters(self, sid: ShardId, why: str) -> None:
        waiters = self._persist_waiters.pop(sid, [])
        if waiters:
            vid = self._view.vid if self._view is not None else 0
            err = _codec.encode_refusal(ReplicaLost(why))
            self._route_replies([
                (caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))
                for _, caller, call_id, origin in waiters
            ])

    def _p2p_here(self, shard: ShardId, vid: int, caller: int, call_id: int, method: str, args: bytes, origin: int) -> None:
        """Run a P2P call on this node's replica; persistence queries are answered here."""
        if method == PERSISTED_QUERY:
            try:
                version = msgpack.unpackb(args)
                if type(version) is not int:
                    raise TypeError(f"bad version {version!r:.40}")
            except Exception as exc:
                err = _codec.encode_error(ValueError(f"malformed persistence query: {exc}"))
                self._route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])
                return
            if version <= self._frontier.get(shard, -1):
                value = msgpack.packb(self._frontier[shard])
                self._route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), True, value, origin))])
            elif shard in self._replicas:
                self._persist_waiters.setdefault(shard, []).append((version, caller, call_id, origin))
            else:
                err = _codec.encode_refusal(ReplicaLost(f"node {self.node_id} holds no replica of {shard}"))
                self._route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])
            return
        ref = self._replicas.get(shard)
        if ref is None:
            err = _codec.encode_refusal(ReplicaLost(f"node {self.node_id} holds no replica of {shard}"))
            self._route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])
            return
        ref.tell(("p2p", vid, caller, call_id, method, args, origin))

    # ---------------------------------------------------------- state transfer
    def _request_state(self, sid: ShardId, vid: int, source: int | None, have: int, digest: int) -> None:
        if source is None or sid not in self._awaiting:
            return
        log.info("node %s asks node %s for the state of %s (view %d, has up to version %d)", self.node_id, source, sid, vid, have)
        self._driver.send_direct(source, frame(StateRequest(sid, vid, have, digest)))

    def _snapshot_ready(self, sid: ShardId, vid: int, path: Path, boundary: int, store: Any) -> None:
        snap = Snapshot(sid, vid, path, boundary, store)
        view = self._views.get(vid)
        prev = self._views.get(vid - 1)
        if view is not None:
            before = set(prev.layout.members_of(sid)) if prev is not None else set()
            snap.receivers = {m for m in view.layout.members_of(sid) if m not in before and m != self.node_id}
        self._snapshots[(sid, vid)] = snap
        for sender, req in self._early_requests.pop((sid, vid), []):
            self._start_transfer(sender, req)
        self._retire_unused()

    def _snapshot_failed(self, sid: ShardId, vid: int, why: str) -> None:
        """The replica could not write its state for new members: tell each who asks (they
        stop with this reason rather than wait for ever)."""
        self._snapshot_errors[(sid, vid)] = why
        if len(self._snapshot_errors) > 64:
            self._snapshot_errors.pop(next(iter(self._snapshot_errors)))
        for sender, req in self._early_requests.pop((sid, vid), []):
            self._refuse_state(sender, req, why)

    def _refuse_state(self, receiver: int, req: StateRequest, why: str) -> None:
        chunk = StateChunk(req.shard, req.vid, 0, "err", why.encode(), True, False)
        self._driver.send_direct(receiver, frame(chunk))

    def _transfer_failed(self, sid: ShardId, why: str) -> None:
        """This node could not receive the state of a shard it now holds: it cannot serve it,
        so it leaves (and may join again) rather than hold a replica that never answers."""
        self._awaiting.pop(sid, None)
        self._fail_stop(why, EXIT_FAILED)

    def _fail_stop(self, why: str, code: int) -> None:
        """This node can no longer do its part (its disk failed, a replica broke): leave the
        group with the reason, so the others carry on at once without suspecting anyone and
        nobody waits for it; callers here get the reason. Protocol thread."""
        if self._stopped is not None:
            return
        log.error("node %s leaves the group: %s", self.node_id, why)
        self._stopped = why
        self.exit_code = code
        self._fail_pending(GroupClosed(f"node {self.node_id} stopped: {why}"))
        self._driver.leave()
        # If the leave cannot complete (no majority left to agree to it), stop anyway.
        grace = self.config.timeouts.suspicion_ms / 1000 * 4
        if self._driver.loop is not None:
            self._driver.loop.call_later(grace, self._driver.stop, why)

    def _on_state_request(self, sender: int, req: StateRequest) -> None:
        why = self._snapshot_errors.get((req.shard, req.vid))
        if why is not None:
            self._refuse_state(sender, req, why)
            return
        if (req.shard, req.vid) in self._snapshots:
            self._start_transfer(sender, req)
        else:
            self._early_requests.setdefault((req.shard, req.vid), []).append((sender, req))

    def _start_transfer(self, receiver: int, req: StateRequest) -> None:
        snap = self._snapshots[(req.shard, req.vid)]
        key = (req.shard, req.vid, receiver)
        if key in self._transfers:
            return
        cfg = self.config.persistence

        def send(node: int, chunk: StateChunk) -> None:
            self._driver.send_direct(node, frame(chunk))

        t = TransferOut(snap, receiver, req, send, cfg.transfer_chunk_bytes, cfg.transfer_window)
        t.started_at = time.monotonic()  # type: ignore[attr-defined]
        snap.active += 1
        snap.requests_seen.add(receiver)
        self._transfers[key] = t
        log.info("node %s sends the state of %s (view %d, up to version %d) to node %s%s", self.node_id, req.shard,
                 req.vid, snap.boundary, receiver, " replacing its log" if t.reset else "")
        try:
            t.pump()
        except Exception as exc:
            log.exception("state transfer of %s to node %s failed", req.shard, receiver)
            self._end_transfer(key, str(exc))

    def _on_state_ack(self, sender: int, ack: StateAck) -> None:
        key = (ack.shard, ack.vid, sender)
        t = self._transfers.get(key)
        if t is None:
            return
        try:
            finished = t.ack(ack.seq)
        except Exception as exc:
            log.exception("state transfer of %s to node %s failed", ack.shard, sender)
            self._end_transfer(key, str(exc))
            return
        if finished:
            self._end_transfer(key, None)

    def _end_transfer(self, key: tuple[ShardId, int, int], error: str | None) -> None:
        t = self._transfers.pop(key, None)
        if t is None:
            return
        seconds = time.monotonic() - t.started_at  # type: ignore[attr-defined]
        stat = {"shard": str(key[0]), "vid": key[1], "to": key[2], "bytes": t.sent_bytes, "seconds": seconds, "error": error}
        self.transfer_stats.append(stat)
        if error is None:
            log.info("state of %s sent to node %s: %.1f MB in %.2f s", key[0], key[2], t.sent_bytes / 1e6, seconds)
        t.snap.active -= 1
        self._retire_unused()

    def _retire_unused(self) -> None:
        """Drop snapshots of finished views nobody is fetching, and retired replicas."""
        view = self._view
        for k, snap in list(self._snapshots.items()):
            if snap.active == 0 and view is not None and (view.vid > snap.vid + 1 or not self._needs_snapshot(snap)):
                snap.path.unlink(missing_ok=True)
                del self._snapshots[k]
                ref = self._retired.pop(snap.shard, None)
                if ref is not None:
                    ref.stop(block=False)

    def _needs_snapshot(self, snap: Snapshot) -> bool:
        """Whether a member may still ask for the snapshot: until every member that was new
        to the shard in its view has fetched it, or the view after next."""
        view = self._view
        if view is None:
            return False
        return view.vid <= snap.vid + 1 and not snap.requests_seen.issuperset(snap.receivers)

    def _on_state_chunk(self, sender: int, chunk: StateChunk) -> None:
        expected = self._awaiting.get(chunk.shard)
        ref = self._replicas.get(chunk.shard)
        if expected is None or expected[0] != sender or ref is None:
            return
        meta = {"reset": chunk.reset, "source": sender, "vid": chunk.vid}
        ref.tell(("state", chunk.seq, chunk.part, chunk.data, chunk.final, meta))

    def _chunk_done(self, sid: ShardId, source: int, vid: int, seq: int) -> None:
        """The replica wrote chunk ``seq``: acknowledge it to the chunk's sender."""
        self._driver.send_direct(source, frame(StateAck(sid, vid, seq)))

    def _state_installed(self, sid: ShardId, version: int) -> None:
        if self._persistent:
            try:
                self._disk.clear_incomplete(sid)
            except OSError as exc:
                self._fail_stop(f"storage failure: {self.data_dir}: {exc}", EXIT_STORAGE)
        entry = self._awaiting.pop(sid, None)
        if entry is not None:
            log.info("node %s installed the state of %s (up to version %d) from node %s", self.node_id, sid, version, entry[0])

    def _check_transfers(self, view: View) -> None:
        """A new view: streams to members that left stop; a member waiting for state whose
        source left cannot get it any more and stops (it may join again)."""
        members = set(view.members)
        for key in [k for k in self._transfers if k[2] not in members]:
            self._end_transfer(key, f"node {key[2]} left")
        for sid, (source, vid) in list(self._awaiting.items()):
            if source not in members:
                why = (f"state transfer of {sid} failed: its source node {source} left in view {view.vid} before "
                       "sending it; restart this node to join again")
                log.error("%s", why)
                self._stopped = why
                self._driver.stop(why)
                return
        self._retire_unused()

    def _relayed_call(self, call_id: int, shard: ShardId, method: str, data: bytes) -> Call:
        """An ordered call of this node's own, to multicast through a member of ``shard``:
        numbered in this node's session, so a retry through another relay applies once."""
        return Call(call_id, self.node_id, shard, method, True, data, self._origin, self._session_ns, self._floor())

    def _floor(self) -> int:
        """The oldest relayed call still waiting for answers (replicas may drop kept replies
        below it). Call numbers only grow: the hint moves up, each number passed once."""
        with self._lock:
            relayed = self._relayed
            if not relayed:
                return 0
            oldest = self._oldest_relayed
            while oldest not in relayed:
                oldest += 1
            self._oldest_relayed = oldest
            return oldest

    def _relay_for(self, members: tuple[int, ...]) -> int:
        """One relay per caller and shard, so calls from one caller keep their order."""
        return members[self.node_id % len(members)]

    def _retry_relayed(self, call_ids: list[int], view: View) -> None:
        """Send relayed calls whose relay left to a new relay, in their order. Replicas know
        this node's origin id and the call numbers: one that was applied is not applied again,
        its first reply comes back instead."""
        for call_id in call_ids:
            with self._lock:
                entry, spec = self._calls.get(call_id), self._relayed.get(call_id)
            if entry is None or spec is None:
                continue
            results = entry[0]
            shard, method, data = spec
            members = view.layout.members_of(shard)
            if not members:
                results._fail_all(ReplicaLost(f"shard {shard} has no members in view {view.vid}"))
                continue
            if self.node_id in members:
                results._restart()
                self._submit(shard, (self.node_id, call_id, method, data, self._origin, self._session_ns, self._floor()))
                continue
            relay = self._relay_for(members)
            results._restart()
            with self._lock:
                self._calls[call_id] = (results, relay)
            self._driver.send_direct(relay, frame(self._relayed_call(call_id, shard, method, data)))

    def _on_deliver(self, d: Delivery) -> None:
        ref = self._replicas.get(d.shard)  # type: ignore[arg-type]
        view = self._views.get(d.vid)
        if ref is None or view is None:
            return
        replicas = view.layout.members_of(d.shard)  # type: ignore[arg-type]
        calls: list[_codec.OrderedCall] = []
        decode = _codec.decode_ordered
        for _, _, _, payload in d.messages:
            batch = decode(payload)
            if batch is not None:
                calls.extend(batch)
        if calls:
            ref.tell(("ordered", d.vid, tuple(replicas), calls))

    def _on_direct(self, sender: int, msg: Any) -> None:
        if isinstance(msg, ReplyBatch):
            self._take_batch(msg)
            return
        if isinstance(msg, SignedMark):
            self._on_signed_mark(sender, msg)
            return
        if isinstance(msg, Reply):
            self._take_reply(msg)
            return
        if isinstance(msg, StateRequest):
            self._on_state_request(sender, msg)
            return
        if isinstance(msg, StateChunk):
            self._on_state_chunk(sender, msg)
            return
        if isinstance(msg, StateAck):
            self._on_state_ack(sender, msg)
            return
        view = self._view
        ref = self._replicas.get(msg.shard)
        if view is None or ref is None:
            err = _codec.encode_refusal(ReplicaLost(f"node {self.node_id} holds no replica of {msg.shard}"))
            vid = view.vid if view is not None else 0
            reply = Reply(msg.call_id, self.node_id, vid, (self.node_id,), False, err, msg.origin)
            self._driver.send_direct(msg.caller, frame(reply))
            return
        size = _codec.call_size(msg.method, msg.args)
        if size > self._max_payload:  # a member whose limit differs from ours: refuse, never drop
            err = _codec.encode_refusal(PayloadTooLarge(
                f"call {msg.call_id} takes {size} bytes; node {self.node_id}'s limit is {self._max_payload} "
                "(multicast.max_message_size): members should share one limit"))
            self._driver.send_direct(msg.caller, frame(Reply(msg.call_id, self.node_id, view.vid, (self.node_id,), False,
                                                             err, msg.origin)))
            return
        if msg.ordered:
            self._submit(msg.shard, (msg.caller, msg.call_id, msg.method, msg.args, msg.origin, msg.session_ns, msg.floor))
        else:
            self._p2p_here(msg.shard, view.vid, msg.caller, msg.call_id, msg.method, msg.args, msg.origin)

    def _on_client(self, handle: Any, msg: Any) -> None:
        """A call from an external client on its connection to this node: run or relay it as
        our own, in the client's session, and forward the replicas' answers. The session's
        origin is the one the transport derived from the client's authenticated identity
        (whatever the frame says), so no client can act in another's session."""
        origin = handle.origin
        session_ns = handle.incarnation or 0
        view = self._view
        if not isinstance(msg, Call) or not origin or view is None:
            return
        self._clients.add(handle)
        members = view.layout.members_of(msg.shard)
        refusal: Exception | None = None
        size = _codec.call_size(msg.method, msg.args)
        if size > self._max_payload:
            refusal = PayloadTooLarge(
                f"call {msg.call_id} takes {size} bytes; the group's limit is {self._max_payload} "
                "(multicast.max_message_size); it was not run")
        elif not members:
            refusal = ShardUnavailable(f"call {msg.call_id} was not run: {self._unavailable(view, msg.shard)}")
        elif not msg.ordered and msg.caller and msg.caller not in members:
            refusal = ReplicaLost(
                f"node {msg.caller} holds no replica of {msg.shard} in view {view.vid} (its replicas: {list(members)}); "
                "the call was not run", applied=False)
        if refusal is not None:
            reply = Reply(msg.call_id, self.node_id, view.vid, (self.node_id,), False, _codec.encode_refusal(refusal), origin)
            self._to_client(handle, frame(reply))
            return
        self._proxies[(origin, msg.call_id)] = [handle, -1]
        if len(self._proxies) > MAX_PROXIED:  # calls whose replies never all came (replicas lost)
            self._proxies.popitem(last=False)
        if not msg.ordered and msg.caller:
            target = msg.caller  # the client asked for this replica (P2P node=)
        elif self.node_id in members:
            target = self.node_id
        else:
            target = members[origin % len(members)]
        if target == self.node_id:
            if msg.ordered:
                self._submit(msg.shard, (self.node_id, msg.call_id, msg.method, msg.args, origin, session_ns, msg.floor))
            else:
                self._p2p_here(msg.shard, view.vid, self.node_id, msg.call_id, msg.method, msg.args, origin)
        else:
            call = Call(msg.call_id, self.node_id, msg.shard, msg.method, msg.ordered, msg.args, origin, session_ns, msg.floor)
            # Until an answer comes, remember where it went: if that member fails first, the
            # call goes again through another (ordered: applied once, by the session table)
            # or, for P2P, the client is told at once.
            self._client_relays[(origin, msg.call_id)] = (target, call, handle)
            if len(self._client_relays) > MAX_PROXIED:
                self._client_relays.pop(next(iter(self._client_relays)))
            self._driver.send_direct(target, frame(call))

    def _retry_client_relays(self, gone: set[int], view: View) -> None:
        """Clients' calls this node relayed to members that left before answering."""
        for key, (target, call, handle) in list(self._client_relays.items()):
            if target not in gone:
                continue
            origin = key[0]
            members = view.layout.members_of(call.shard)
            refusal: Exception | None = None
            if not call.ordered:
                refusal = ReplicaLost(f"node {target} left the group before answering; a P2P call changes nothing, so "
                                      "it is safe to call again", applied=False)
            elif not members:
                refusal = ShardUnavailable(f"call {call.call_id} may or may not have been applied (node {target} left "
                                           f"while relaying it) and cannot be retried now: {self._unavailable(view, call.shard)}")
            if refusal is not None:
                del self._client_relays[key]
                self._proxies.pop(key, None)
                reply = Reply(call.call_id, self.node_id, view.vid, (self.node_id,), False, _codec.encode_refusal(refusal), origin)
                self._to_client(handle, frame(reply))
                continue
            if self.node_id in members:
                del self._client_relays[key]
                self._submit(call.shard, (self.node_id, call.call_id, call.method, call.args, origin, call.session_ns,
                                          call.floor))
                continue
            relay = members[origin % len(members)]
            self._client_relays[key] = (relay, call, handle)
            self._driver.send_direct(relay, frame(call))

    def _submit(self, shard: ShardId, call: _codec.PendingCall) -> None:
        """Queue an ordered call for multicast (protocol thread); everything queued in one loop
        turn goes out in as few multicast messages as the size limit allows."""
        queued = self._outgoing.get(shard)
        if queued is not None:
            queued.append(call)
            return
        self._outgoing[shard] = [call]
        if len(self._outgoing) == 1 and self._driver.loop is not None:
            self._driver.loop.call_soon(self._flush_outgoing)

    def _flush_outgoing(self) -> None:
        out, self._outgoing = self._outgoing, {}
        for shard, calls in out.items():
            self._driver.submit(shard, _codec.encode_ordered(calls, self._max_payload))

    def _to_client(self, handle: Any, data: bytes) -> None:
        """Queue a frame for a client connection; all queued in one loop turn go in one write."""
        queued = self._client_out.get(handle)
        if queued is not None:
            queued.append(data)
            return
        self._client_out[handle] = [data]
        if len(self._client_out) == 1 and self._driver.loop is not None:
            self._driver.loop.call_soon(self._flush_clients)

    def _flush_clients(self) -> None:
        out, self._client_out = self._client_out, {}
        transport = self._driver.transport
        if transport is None:
            return
        for handle, chunks in out.items():
            transport.reply(handle, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _send_replies(self, replies: list[tuple[int, Reply]]) -> None:
        """From a replica's thread: one hand-off per batch to the protocol thread."""
        self._driver.in_loop(self._route_replies, replies)

    def _route_replies(self, replies: list[tuple[int, Reply]]) -> None:
        """A replica's answers (one delivered batch): one ReplyBatch per caller and view."""
        groups: dict[tuple[int, int, int, tuple[int, ...]], list[tuple[int, bool, bytes, int, int]]] = {}
        for caller, r in replies:
            key = (caller, r.node, r.vid, r.replicas)
            entry = (r.call_id, r.ok, r.value, r.origin, r.version)
            group = groups.get(key)
            if group is None:
                groups[key] = [entry]
            else:
                group.append(entry)
        for (caller, node, vid, replicas), entries in groups.items():
            batch = ReplyBatch(node, vid, replicas, tuple(entries))
            if caller == self.node_id:
                self._take_batch(batch)
            else:
                self._driver.send_direct(caller, frame(batch))

    def _take_reply(self, reply: Reply) -> None:
        self._take_batch(ReplyBatch(reply.node, reply.vid, reply.replicas,
                                    ((reply.call_id, reply.ok, reply.value, reply.origin, reply.version),)))

    def _take_batch(self, batch: ReplyBatch) -> None:
        """Answers for this node's calls go to their results; answers for clients this node
        serves go on to them, one ReplyBatch per client."""
        node, replicas = batch.node, batch.replicas
        mine = self._origin
        for_clients: dict[Any, list[ReplyEntry]] = {}
        own: list[ReplyEntry] = []
        for entry in batch.entries:
            call_id, _ok, _value, origin, _version = entry
            if not origin or origin == mine:
                own.append(entry)
                continue
            key = (origin, call_id)
            proxy = self._proxies.get(key)
            if proxy is not None:
                self._client_relays.pop(key, None)  # answered: delivered, no resend needed
                for_clients.setdefault(proxy[0], []).append(entry)
                left = proxy[1] = (len(replicas) if proxy[1] < 0 else proxy[1]) - 1
                if left <= 0:
                    del self._proxies[key]
        finished = take_entries(self._calls, node, replicas, own) if own else []
        if finished:
            with self._lock:
                for call_id in finished:
                    self._calls.pop(call_id, None)
                    self._relayed.pop(call_id, None)
        for handle, entries in for_clients.items():
            self._to_client(handle, frame(ReplyBatch(node, batch.vid, replicas, tuple(entries))))

    def _on_stop(self, reason: str) -> None:
        if self._stopped is None:  # a fail-stop keeps its own reason (and exit code)
            self._stopped = reason
            if reason.startswith("restart refused"):
                self.exit_code = EXIT_RESTART_REFUSED
            elif reason.startswith("storage failure"):
                self.exit_code = EXIT_STORAGE
            elif not reason.startswith(("left the group", "closed")):
                self.exit_code = EXIT_STOPPED
        self._first_view.set()
        self._fail_pending(GroupClosed(f"node {self.node_id} stopped: {reason}"))

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            entries, self._calls = list(self._calls.values()), {}
        for results, _ in entries:
            results._fail_all(exc)


class Handle:
    """Calls the methods of one shard's replicas: ``handle.put(k, v)`` returns QueryResults.
    P2P methods take an optional ``node=`` keyword choosing the replica."""

    def __init__(self, group: Group, spec: TypeSpec, shard: ShardId) -> None:
        self._group = group
        self._spec = spec
        self.shard = shard

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        spec, group = self._spec, self._group
        return method_caller(spec, method, lambda m, kind, a, kw, node: group._call(spec, self.shard, m, a, kw, node))

    def __repr__(self) -> str:
        return f"<Handle {self.shard}>"
