"""``Group``: a node of a replicated group, seen from user code.

A ``Group`` is a thin composition over one node (``runtime.node_api.NodeHandle``: the real TCP
driver, or the simulator's): the call paths (``call_paths``), replica hosting (``hosting``),
state transfer (``transfer``), persistence tracking (``frontiers``) and what the node keeps on
disk for a restart (``disk_state``); messages reach them through ``dispatch``. It wires
them to the node's hooks and offers the user's API: handles that turn method calls into
ordered multicasts or P2P requests returning ``QueryResults`` at once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from derecho_actors.caller.aio import AsyncLifecycle
from derecho_actors.caller.handles import Handle, registered_specs, shard_id_of
from derecho_actors.caller.watch import Watch
from derecho_actors.model.decorators import spec_of
from derecho_actors.model.layout import Layout
from derecho_actors.node.app_host import hosted_layout
from derecho_actors.node.call_limits import CallLimits
from derecho_actors.node.call_paths import CallPaths
from derecho_actors.node.disk_state import NodeDiskState, group_signing_key, saved_state
from derecho_actors.node.dispatch import MessageDispatch
from derecho_actors.node.frontiers import PersistenceTracker
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.replica_env import ReplicaEnvFactory
from derecho_actors.node.result_limits import ResultLimits
from derecho_actors.node.runners import Runner, ThreadRunner
from derecho_actors.node.stopping import NodeStop
from derecho_actors.node.transfer import TransferService
from derecho_actors.wire.events import WatchEvent
from runtime.config import NodeConfig, load_config
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId, ShardPolicy
from runtime.core.view import View
from runtime.drivers.data_dir import check_data_dir
from runtime.drivers.log_store import public_key_bytes
from runtime.errors import GroupClosed, NotRegistered
from runtime.exitcodes import EXIT_CONFIG
from runtime.node_api import AppHooks, NodeHandle

__all__ = ["Group", "Handle", "Layout", "ShardPolicy"]

log = logging.getLogger("derecho.group")


NodeFactory = Callable[[NodeConfig, AppHooks, Any, bool], NodeHandle]
"""``(config, hooks, saved state, accept_loss) -> node``: how a Group gets its node."""


class Group(AsyncLifecycle):
    """Start (or join) a group and host this node's replicas. Use as a context manager."""

    def __init__(
        self,
        config: str | Path | NodeConfig | None = None,
        types: Sequence[type] = (),
        layout: Layout | None = None,
        overrides: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        accept_loss: bool = False,
        *,
        rejoin_reason: str | None = None,
        cancel: threading.Event | None = None,
        _node: NodeFactory | None = None,
        _runner: Runner | None = None,
    ) -> None:
        """``accept_loss``: the operator's ``--accept-loss`` for a total restart whose surviving
        logs lack versions reported persisted: go ahead (logged at ERROR; reads of those
        versions answer ``VersionLost``) instead of stopping with exit code 5.
        ``rejoin_reason``: why the group removed this node, when this group joins it again
        (``node.on_partition = "rejoin"``): the node keeps trying unreachable contacts and tells
        clients why it cannot serve them; ``cancel`` ends the wait for the first view (raising
        ``GroupClosed``). (``_node`` and ``_runner`` let the simulator host the same group on its
        own node and inline.)"""
        layout = layout or Layout({cls: ShardPolicy() for cls in types})
        registered_specs(types, layout)  # every type replicated and in the layout
        cfg = (
            config
            if isinstance(config, NodeConfig)
            else load_config(str(config) if config else None, dict(overrides or {}))
        )
        # The configuration's [layout.<Type>] tables win over the code's policies.
        layout = hosted_layout(list(dict.fromkeys([*types, *layout.types])), cfg.layout, layout)
        self._specs = registered_specs(types, layout)
        self.config = dataclasses.replace(cfg, layout=layout.policy)
        self.node_id = self.config.node.id
        self.data_dir = check_data_dir(self.config.node.data_dir)
        self._persistent_types = {n for n, s in self._specs.items() if s.persistent}
        persistent = bool(self._persistent_types)
        self._disk = NodeDiskState(self.data_dir, self.config.node.cluster, self.node_id, self.config.persistence.fsync)
        security = None
        if _node is None:  # the real node: its certificate is checked here, before anything starts
            from runtime.drivers.node import node_security

            security = node_security(self.config)
        self._signing_key = group_signing_key(
            self._specs.values(), self.config.persistence.signing_key, security[1] if security else None
        )
        self._first_view = threading.Event()
        grace = self.config.timeouts.suspicion_ms / 1000 * 4
        self._stop = NodeStop(self.node_id, lambda exc: self._calls.member.fail_pending(exc), grace, self._first_view)
        self._views: dict[int, View] = {}
        self._view: View | None = None
        self._view_callbacks: list[Callable[[View], None]] = []
        hooks = AppHooks(
            on_deliver=self._on_deliver,
            on_view=self._on_view,
            on_app=lambda s, d: self._dispatch.from_member(s, d),
            on_client_app=lambda c, d: self._dispatch.from_client(c, d),
            on_client_closed=lambda c: self._calls.clients.on_closed(c),
            on_stop=self._stop.on_stop,
            on_persisted=lambda sid, v: self._tracker.on_persisted(sid, v),
            on_accepted=self._disk.record_accepted if persistent else None,
            on_lost=lambda lost: self._tracker.record_lost(lost),
            status=self._status,
            on_stable=lambda sid, vid, index: self._calls.stable.on_stable(sid, vid, index),
        )
        saved = saved_state(
            self._disk, self._specs.values(), self._signing_key, self.config.persistence.fsync, keep=_node is None
        )
        self._node: NodeHandle
        if _node is None:
            from runtime.drivers.node import NodeDriver

            self._node = NodeDriver(
                self.config, hooks, saved=saved, security=security, accept_loss=accept_loss, rejoin_reason=rejoin_reason
            )
        else:
            self._node = _node(self.config, hooks, saved, accept_loss)
        node = self._stop.node = self._node
        runner = _runner or ThreadRunner()
        self._host = ReplicaHost(self.node_id, self._specs, runner, lambda *a: self._make_env(*a))
        public_key = public_key_bytes(self._signing_key) if self._signing_key is not None else b""
        self._tracker = PersistenceTracker(
            node,
            self._host,
            self._disk if persistent else None,
            public_key,
            lambda replies: self._calls.replies.route(replies),
            lambda: self._view,
            self._stop.fail_stop,
        )
        self._transfer = TransferService(
            node,
            self._host,
            self.config.persistence.transfer_chunk_bytes,
            self.config.persistence.transfer_window,
            self._views.get,
            lambda: self._view,
            self._stop.fail_stop,
            lambda sid: self._disk.clear_incomplete_or(sid, self._persistent_types, self._stop.fail_stop),
        )
        self._calls = CallPaths.build(
            node,
            CallLimits.of(self.config),
            lambda: self._view,
            lambda: self._stop.reason,
            self._host,
            self._tracker,
            self._transfer.why_waiting,
            self._specs,
            self.config.limits,
            result_limits=ResultLimits.of(self.config),
        )
        self._dispatch = MessageDispatch(node, self._calls, self._tracker, self._transfer)
        self._host.held_answers = self._calls.replies
        p = self.config.persistence
        self._make_env = ReplicaEnvFactory(
            self.node_id,
            node,
            self.data_dir,
            self._calls.replies.send,
            self._transfer,
            self._tracker,
            self._stop.fail_stop,
            self._signing_key,
            p,
            getattr(runner, "inline", False),
            self._disk.take_log,
        )
        node.start()
        if _node is not None:
            return  # a simulated node: the simulator drives time, nothing to wait for here
        if not self._wait_first_view(start_timeout, cancel):
            self.close()
            if cancel is not None and cancel.is_set():
                raise GroupClosed(f"node {self.node_id}: stopped while joining")
            # A start-up problem (exit 2 in every mode: the node command and local cluster nodes
            # alike), not a removal by the group (3) nor an internal failure (6).
            raise GroupClosed(
                f"node {self.node_id} joined no view within {start_timeout} s; check node.contacts", EXIT_CONFIG
            )
        if self._stop.reason is not None:
            self.close()
            raise GroupClosed(f"node {self.node_id} stopped: {self._stop.reason}", self.exit_code)

    def _wait_first_view(self, timeout: float, cancel: threading.Event | None) -> bool:
        """Wait for the first view (or a stop) up to ``timeout`` s (may be ``math.inf``), or
        until ``cancel`` is set; True if the wait ended with a view or a stop."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                return self._first_view.is_set()
            if self._first_view.wait(min(left, 0.2)):
                return True

    # ------------------------------------------------------------------ public
    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> Handle:
        spec = spec_of(cls)
        if spec is None or spec.name not in self._specs:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a replicated type of this group")
        return Handle(self._calls.member, spec, ShardId(spec.name, subgroup, shard))

    def watch(
        self,
        cls: type,
        shard: int = 0,
        subgroup: int = 0,
        *,
        since: int | tuple[int, int] | WatchEvent | None = None,
        node: int | None = None,
        hold: float = 5.0,
    ) -> Watch:
        """The change events (``da.emit``) of a shard after ``since`` (a version, a position or
        an event; None: from now on), in order; iterate it, or ``async for``. ``node``: poll
        this replica (default: ours if we hold one, else any); a failed poll goes again."""
        spec = spec_of(cls)
        if spec is None or spec.name not in self._specs:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a replicated type of this group")
        return Watch.over(self._calls.member, spec, ShardId(spec.name, subgroup, shard), since, node=node, hold=hold)

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
        """Call ``fn(view)`` on every view installed from now on (on the node's loop: keep it
        short)."""
        self._view_callbacks.append(fn)

    def on_persisted(self, fn: Callable[[ShardId, int], None]) -> None:
        """Call ``fn(shard, version)`` whenever the persistence frontier of a shard this node
        holds moves: every version up to ``version`` is on disk at every replica (node's loop:
        keep it short)."""
        self._tracker.callbacks.append(fn)

    def persisted_frontier(self, cls: type, shard: int = 0, subgroup: int = 0) -> int:
        """The persistence frontier of a shard this node holds (-1: nothing yet)."""
        return self._tracker.frontier.get(shard_id_of(cls, shard, subgroup), -1)

    def verified_frontier(self, cls: type, shard: int = 0, subgroup: int = 0) -> int:
        """Signed logs: the highest version up to which every other replica of the shard has
        shown this node a valid signature over its own record chain (so every log is
        identical up to there); -1 until each has."""
        return self._tracker.verified_frontier(shard_id_of(cls, shard, subgroup))

    @property
    def transfer_stats(self) -> list[dict[str, Any]]:
        """State transfers this node sent (shard, view, receiver, bytes, seconds, error)."""
        return self._transfer.stats

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """What ``derecho-actors status`` shows of this node (plain data): the view, each
        shard's frontiers, the replicas here under ``"app"`` (with state digest comparisons)."""
        done: list[dict[str, Any]] = []
        ready = threading.Event()

        def take() -> None:
            done.append(self._node.status())
            ready.set()

        self._node.call_soon(take)
        if not ready.wait(timeout):
            raise GroupClosed(f"node {self.node_id} did not answer a status request within {timeout} s (stopped?)")
        return done[0]

    @property
    def stopped(self) -> str | None:
        """Why this node stopped (None while it runs); ``exit_code`` says what kind of end."""
        return self._stop.reason

    @property
    def exit_code(self) -> int:
        """What a node process running this group should exit with (``runtime.exitcodes``)."""
        return self._stop.exit_code

    def leave(self, timeout: float = 10.0) -> None:
        """Leave the group gracefully (a view change without suspicion), then close."""
        if self._stop.reason is None:
            self._node.leave()
            self._node.wait_stopped(timeout)
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop this node at once (others see it fail) and its replicas, and wait until they
        have stopped and closed their logs (so the data directory can be used again at once,
        by this process too)."""
        self._node.stop("closed")
        self._node.wait_stopped(timeout)
        self._host.stop_all(timeout)
        self._disk.close_kept()
        self._calls.member.fail_pending(GroupClosed(f"node {self.node_id} closed its group"))

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ node's hooks (loop)
    def _on_view(self, view: View) -> None:
        previous = self._view
        self._view = view
        self._views[view.vid] = view
        self._views.pop(view.vid - 3, None)
        self._disk.save_installed_or(view, self._persistent_types, self._stop.fail_stop)
        awaiting = self._host.update(
            view, lambda sid: self._tracker.fail_waiters(sid, f"node {self.node_id} no longer holds {sid}")
        )
        for sid, source in awaiting:
            self._transfer.await_state(sid, source, view.vid)
        self._disk.release_unheld(view)
        self._transfer.on_view(view)
        self._calls.on_view(previous, view)
        self._first_view.set()
        for fn in self._view_callbacks:
            fn(view)

    def _on_deliver(self, d: Delivery) -> None:
        view = self._views.get(d.vid)
        if view is not None:
            self._host.deliver(d, view)

    def _status(self) -> dict[str, Any]:
        """The actor layer's part of ``status``, in its wire form (the engine reads it back as
        ``AppStatus``): each replica here (serving or why not), clients' calls, transfers sent,
        lost shards, persistence frontiers and state digests."""
        host, clients, transfer = self._host, self._calls.clients, self._transfer
        out = {
            "replicas": host.status(self._view, transfer.why_waiting),
            "client_calls": clients.stats.status().to_wire(),
            "client_table": clients.table.status().to_wire(),
            "client_streams": clients.streams.status(),
        }
        out.update(transfer.status(), **host.loss_status().to_wire(), **self._tracker.status().to_wire())
        return out | ({"stopped": self._stop.reason} if self._stop.reason else {})
