"""The simulator's implementation of the node interface (``runtime.node_api.NodeHandle``).

An application written against the node interface (the actor layer: call routing, replicas,
state transfer, persistence tracking) runs unchanged on a simulated node: its ordered sends
go into the simulated core's queue, its direct messages travel the simulated network (so
partitions and delays apply to them as to the protocol's frames), its timers and loop
callbacks are scheduler actions in virtual time, and the core's deliveries, views and
frontiers come back through its ``AppHooks`` from ``SimCluster``'s flush. Everything runs in
the simulator's one thread, in an order fixed by the seed.

A handle belongs to one incarnation of a node: once that incarnation has crashed or stopped,
every call on it does nothing (a dead process sends nothing and runs no timers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from runtime.config import NodeConfig
from runtime.core.events import LeaveRequested, Persisted
from runtime.core.layout import ShardId
from runtime.core.status import AppStatus, NodeStatus
from runtime.node_api import AppHooks

if TYPE_CHECKING:
    from runtime.sim.cluster import SimCluster

WALL_CLOCK_START_NS = 1_800_000_000 * 10**9
"""The wall clock of virtual time 0 (a fixed instant: runs must not depend on the real clock)."""


class SimNodeHandle:
    """One incarnation of a simulated node, as the application drives it."""

    def __init__(self, cluster: SimCluster, node_id: int, life: int, config: NodeConfig, hooks: AppHooks) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.life = life
        self.config = config
        self.hooks = hooks
        self.incarnation = WALL_CLOCK_START_NS + life  # differs for every start of this node

    # ------------------------------------------------------------------ life
    @property
    def alive(self) -> bool:
        node = self.cluster.nodes.get(self.node_id)
        return node is not None and node.alive and node.life == self.life

    def wall_ns(self) -> int:
        return WALL_CLOCK_START_NS + int(self.cluster.sched.now * 1e9)

    def monotonic(self) -> float:
        return float(self.cluster.sched.now)

    def start(self, timeout: float = 10.0) -> None:
        """The cluster started this incarnation's core already; nothing to wait for."""

    def stop(self, reason: str = "stopped") -> None:
        if self.alive:
            self.cluster.stop_node(self.node_id, reason)

    def leave(self) -> None:
        if self.alive:
            self.call_soon(self._leave)

    def _leave(self) -> None:
        node = self.cluster.nodes[self.node_id]
        if node.core.membership is not None and not node.core.membership.mine["leaving"]:
            node.core.step(LeaveRequested(self.cluster.sched.now))
            self.cluster.after_app_step(self.node_id)

    def wait_stopped(self, timeout: float | None = None) -> None:
        """Nothing to wait for: a simulated node stops at once."""

    # ------------------------------------------------------------------ the loop
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        if not self.alive:
            return False
        self.cluster.sched.at(self.cluster.sched.now, self._run, fn, args)
        return True

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        if self.alive:
            self.cluster.sched.at(self.cluster.sched.now + max(0.0, delay), self._run, fn, args)

    def run_blocking(self, fn: Callable[[], Any]) -> None:
        """A disk write: in the simulator it happens on the loop, in its turn."""
        self.call_soon(fn)

    def on_loop(self) -> bool:
        return True

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self.alive and not self.cluster.held(self.node_id, self._run, (fn, args)):
            fn(*args)

    # ------------------------------------------------------------------ sending
    def send_ordered(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        if self.alive:
            self.cluster.app_multicast(self.node_id, shard, list(payloads))

    def send_app(self, node: int, data: bytes) -> None:
        if self.alive:
            self.cluster.app_direct(self.node_id, node, data)

    def link_backlog(self, node: int) -> int:
        """The simulated network delays frames but queues none at the sender."""
        return 0

    def reply_client(self, conn: Any, *messages: bytes) -> bool:
        """To a simulated client's connection (``client_net``), over the simulated network."""
        return self.alive and self.cluster.client_net.reply(conn, messages)

    def report_persisted(self, shard: ShardId, version: int) -> None:
        if self.alive:
            self.call_soon(self._persisted, shard, version)

    def _persisted(self, shard: ShardId, version: int) -> None:
        node = self.cluster.nodes[self.node_id]
        node.core.step(Persisted(self.cluster.sched.now, shard, version))
        self.cluster.after_app_step(self.node_id)

    def cut_off(self, node: int, reason: str) -> None:
        """Every input in the simulator is honest: a cut-off is a bug, recorded for the checker."""
        self.cluster.app_faults.append(f"node {self.node_id} cut off node {node}: {reason}")

    def peer_public_key(self, node: int) -> bytes | None:
        return None

    def status(self) -> dict[str, Any]:
        """The wire form of :meth:`typed_status`, as a real node answers ``status``."""
        return self.typed_status().to_wire()

    def typed_status(self) -> NodeStatus:
        """The core's view of the group and what the app adds, as ``NodeDriver.typed_status``
        has them (a simulated node has no transport figures)."""
        core = self.cluster.nodes[self.node_id].core
        app = AppStatus.from_wire(self.hooks.status()) if self.hooks.status is not None else None
        return NodeStatus(node=self.node_id, cluster=self.config.node.cluster, core=core.status(), app=app)
