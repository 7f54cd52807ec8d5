"""The node driver: one asyncio loop thread runs a node through the phases of its life.

A node restarts from its data folder, bootstraps, joins or founds, and then runs as a member
with a protocol core; each phase is one object (``runtime.drivers.node_phases``) holding what
exists in it. The driver owns what outlives the phases (the config, the app's hooks, the app's
queue, the thread, why the node stopped) and the loop and transport once they exist
(``NodeIO``), and hands every input to the current phase: frames and lost peers from the
transport, client frames, the core's flushes and timer, the app's sends. There is no protocol
logic here: every decision is the core's.

Application hooks run on the loop thread and must be quick (hand work to another thread or
actor); the actor layer posts deliveries to pykka actors, never running user code here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from runtime.config import NodeConfig
from runtime.core.layout import ShardId
from runtime.core.node_core import NodeCore
from runtime.core.rdmc_descriptor import ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.core.status import AppStatus, NodeStatus
from runtime.drivers.app_queue import AppQueue
from runtime.drivers.client_door import ClientDoor, client_key
from runtime.drivers.event_loop import run_loop
from runtime.drivers.leader_word import LeaderWord
from runtime.drivers.node_io import NodeIO
from runtime.drivers.node_phases import NodeContext, NodeCounters, NodePhase, NotStarted, WaitingPhase
from runtime.drivers.node_phases.first import enter_first_phase
from runtime.drivers.node_phases.join_watch import BUSY_CONTACT_WAIT
from runtime.drivers.node_security import node_security
from runtime.drivers.object_digests import ObjectDigests
from runtime.drivers.restart import SavedState
from runtime.drivers.status import StatusLimiter
from runtime.drivers.tcp import TransportSecurity
from runtime.drivers.transport import Transport
from runtime.drivers.transport_choice import node_transport, peer_transports
from runtime.errors import ConfigError, PayloadTooLarge
from runtime.exitcodes import START_FAILED
from runtime.node_api import AppHooks
from runtime.security.tls import LoadedCredentials
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage

# Imported from here by the actor layer, the CLI and the benchmarks.
__all__ = ["AppHooks", "NodeDriver", "node_security", "run_loop"]

log = logging.getLogger("derecho.node")


class NodeDriver:
    def __init__(
        self,
        config: NodeConfig,
        hooks: AppHooks | None = None,
        saved: SavedState | None = None,
        security: tuple[TransportSecurity, LoadedCredentials | None] | None = None,
        accept_loss: bool = False,
        rejoin_reason: str | None = None,
    ) -> None:
        """``saved``: the last view and logs found in the data directory; the node then
        restarts (see ``runtime.drivers.restart``) instead of founding or joining.
        ``security``: what :func:`node_security` returns for ``config``, if already loaded.
        ``accept_loss``: the operator's ``--accept-loss``: a total restart whose logs lack
        versions reported persisted goes ahead (logged at ERROR) instead of stopping."""
        self.config = config
        self.saved = saved
        self.accept_loss = accept_loss
        # Why the group removed this node, when it is joining again (``node.on_partition =
        # "rejoin"``): it then keeps trying unreachable contacts instead of giving up, and tells
        # clients that connect meanwhile why it cannot serve them.
        self.rejoin_reason = rejoin_reason
        self.hooks = hooks or AppHooks()
        self.node_id = config.node.id
        self.stop_reason: str | None = None
        self._io: NodeIO | None = None  # the loop and the transport, once run() has made them
        self._app_sends = 0  # app multicasts taken on the loop (a client frame that made one: flush_if_idle)
        self._phase: NodePhase = NotStarted()
        # Payloads the window has not taken yet; large ones are digested off the loop first.
        objects = config.rdmc.policy(config.multicast.max_message_size)
        self._largest_payload = objects.max_object_size if objects is not None else config.multicast.max_message_size
        digests = ObjectDigests(objects.threshold, self.call_soon, self._digested) if objects is not None else None
        self._queue = AppQueue(digests)
        self._counters = NodeCounters()
        self._incarnation = time.time_ns()  # this start of the node (its transport says it in hellos)
        self._stop_notified = False
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # TLS contexts and limits, and this node's certificate (None: insecure mode). Loaded
        # here, not in run(), so a bad certificate fails the constructor with its path.
        self.security, self.credentials = security if security is not None else node_security(config)
        self.busy_contact_wait = BUSY_CONTACT_WAIT  # the join timeout for contacts that answer but are busy
        # Status requests from clients: rate-limited per identity, one snapshot shared for a
        # short while (see runtime.drivers.status.StatusLimiter for why).
        self._status_limiter = StatusLimiter(config.limits.status_per_second)
        # Before it is a member, the leader's frames are taken only from nodes this node asked
        # or members of the last view it knows (see runtime.drivers.leader_word).
        self._leader_word = LeaderWord(self._contact_node, enforce=self.security.tls)
        self._leader_word.ask(config.contact_addresses())
        if saved is not None:
            self._leader_word.know_view(saved.view)

    # ------------------------------------------------------------ what the phases hold
    @property
    def core(self) -> NodeCore | None:
        """The protocol core: None until the node founds, joins or installs a restart view."""
        return self._phase.core

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._io.loop if self._io is not None else None

    @property
    def transport(self) -> Transport | None:
        return self._io.transport if self._io is not None else None

    @property
    def delivered_total(self) -> dict[ShardId, int]:
        """Per shard: messages delivered since this node started."""
        return self._counters.delivered_total

    @property
    def views_installed(self) -> int:
        """Views this node installed since it started (metrics)."""
        return self._counters.views_installed

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> str:
        """Run until the node stops (excluded, left, or asked to stop); returns the reason."""
        transport = node_transport(
            self.config,
            self.security,
            self._incarnation,
            self._on_frames,
            self._on_peer_lost,
            self._on_client,
            self._on_client_closed,
        )
        transport.block_sink = self._block_destination
        io = NodeIO(asyncio.get_running_loop(), transport, self._flush, self._tick)
        ctx = self._attach(io)
        await io.transport.start()
        metrics = None
        cfg = self.config
        if cfg.node.metrics:
            from runtime.drivers.metrics import MetricsServer

            try:
                metrics = MetricsServer.for_node(cfg, self._status_snapshot, self.security)
            except OSError as exc:
                await io.transport.close()
                raise ConfigError(f"node.metrics: cannot listen on {cfg.node.metrics}: {exc}") from None
            metrics.start()
        enter_first_phase(ctx)
        self._started.set()
        io.schedule_flush()
        await io.stopped.wait()
        if self._queue.digests is not None:
            self._queue.digests.close()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await io.transport.close()
        self._notify_stop(self.stop_reason or "stopped")
        return self.stop_reason or "stopped"

    def _attach(self, io: NodeIO) -> NodeContext:
        """Take the loop and transport ``run()`` made: the node waits for its core from now on."""
        self._io = io
        digests = self._queue.digests
        if digests is not None:  # a transport that prepares for objects (shared memory) is told of each
            digests.prepare = getattr(getattr(io.transport, "objects", None), "prepare", None)
        counters = self._counters
        clients = ClientDoor(
            io.transport,
            self.hooks,
            self._status_limiter,
            lambda: self.status(),
            lambda: counters.views_installed,
            self.config.limits.status_cache_ms / 1000,
            io.schedule_flush,
        )
        ctx = NodeContext(
            node_id=self.node_id,
            config=self.config,
            hooks=self.hooks,
            io=io,
            leader_word=self._leader_word,
            queue=self._queue,
            counters=counters,
            clients=clients,
            saved=self.saved,
            accept_loss=self.accept_loss,
            rejoin_reason=self.rejoin_reason,
            busy_contact_wait=self.busy_contact_wait,
            early=[],
            enter=self._enter,
            stop=self.stop,
            notify_stop=self._notify_stop,
            fatal=self._fatal,
        )
        self._enter(WaitingPhase(ctx))
        return ctx

    def _enter(self, phase: NodePhase) -> None:
        self._phase = phase

    def _notify_stop(self, reason: str) -> None:
        """Tell the app once why the node stops (excluded by the group, a refused restart, a
        storage failure, or asked to)."""
        if not self._stop_notified:
            self._stop_notified = True
            if self.hooks.on_stop is not None:
                self.hooks.on_stop(reason)

    def _fatal(self, exc: BaseException) -> None:
        """Stop because the node cannot start (a config or start-up problem): exit code 2 in
        every mode (``runtime.exitcodes.START_FAILED``)."""
        self._start_error = exc
        self.stop(f"{START_FAILED}: {exc}")

    def stop(self, reason: str = "stopped") -> None:
        """Stop the loop (thread-safe); the node leaves without a goodbye (use ``leave``)."""
        io = self._io
        if io is None:
            return

        def _stop() -> None:
            if self.stop_reason is None:
                self.stop_reason = reason
            io.stopped.set()

        if self._on_loop_thread():
            _stop()
        else:
            self.call_soon(_stop)

    def start(self, timeout: float = 10.0) -> None:
        """Run the node on a thread of its own (the API's way); returns once it listens."""

        def main() -> None:
            try:
                run_loop(self.run(), tls=self.security.tls)
            except BaseException as exc:  # reported to the starter, then re-raised there
                self._start_error = exc
                self._started.set()

        self._thread = threading.Thread(target=main, name=f"derecho-node-{self.node_id}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"node {self.node_id} did not start within {timeout} s")
        if self._start_error is not None:
            raise self._start_error

    def wait_stopped(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def error(self) -> BaseException | None:
        return self._start_error

    # ------------------------------------------------------- runtime.node_api.NodeHandle
    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        if self._io is not None:
            self._io.loop.call_later(delay, fn, *args)

    def run_blocking(self, fn: Callable[[], Any]) -> None:
        if self._io is not None:
            self._io.loop.run_in_executor(None, fn)

    def on_loop(self) -> bool:
        return self._on_loop_thread()

    def send_app(self, node: int, data: bytes) -> None:
        if self._io is not None:
            self._io.transport.send(node, frame(AppMessage(data)))

    def link_backlog(self, node: int) -> int:
        return self._io.transport.backlog(node) if self._io is not None else 0

    def reply_client(self, conn: Any, *messages: bytes) -> bool:
        if self._io is None:
            return False
        return self._io.transport.reply(conn, b"".join(frame(AppMessage(m)) for m in messages))

    def wall_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return self._io.loop.time() if self._io is not None else time.monotonic()

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def cut_off(self, node: int, reason: str) -> None:
        self._phase.cut_off(node, reason)

    def peer_public_key(self, node: int) -> bytes | None:
        """The public key of ``node``'s certificate, as its connection to us proved it (None
        without TLS or before it connected). Loop thread."""
        return self._io.transport.peer_public_key(node) if self._io is not None else None

    def _on_loop_thread(self) -> bool:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._io is not None and running is self._io.loop

    # ------------------------------------------------------------ app inputs
    def send_ordered(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """Multicast ``payloads`` in ``shard`` (thread-safe; kept in order until the window
        takes them). ``PayloadTooLarge`` for a payload larger than the group moves (the
        loop would refuse it where no caller hears, dropping its batch)."""
        assert self._io is not None, "the node is not running"
        largest = max(map(len, payloads), default=0)
        if largest > self._largest_payload:
            key = "rdmc.max_object_size" if self.config.rdmc.enabled else "multicast.max_message_size"
            raise PayloadTooLarge(
                f"a payload of {largest} bytes is over the largest this group multicasts, {self._largest_payload} "
                f"({key}): send it in parts, or raise {key}"
                + ("" if self.config.rdmc.enabled else " or turn on large objects ([rdmc] enabled = true)")
            )
        if self._on_loop_thread():
            self._app_send(shard, payloads)
        else:
            self.call_soon(self._app_send, shard, list(payloads))

    def report_persisted(self, shard: ShardId, version: int) -> None:
        """The app's log of ``shard`` holds every version up to ``version`` on disk
        (thread-safe)."""
        self.call_soon(self._persisted, shard, version)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread soon (thread-safe); False once the node has
        stopped (the call is dropped)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    def queued(self, shard: ShardId) -> int:
        """App messages of ``shard`` waiting for the window (loop thread)."""
        return self._queue.queued(shard)

    def leave(self) -> None:
        """Leave the group gracefully (thread-safe): a view change without suspicion."""
        self.call_soon(self._leave)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the loop thread (to read core state safely)."""
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        if not self.call_soon(run):
            fut.set_exception(RuntimeError(f"node {self.node_id} has stopped"))
        return fut

    # The calls the loop runs for the app: each goes to the phase current when it runs.
    def _app_send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        self._app_sends += 1
        self._phase.send(shard, payloads)

    def _digested(self, shard: ShardId) -> None:
        """A large payload of ``shard`` was digested off the loop: the queue may go on."""
        self._phase.offer(shard)

    def _persisted(self, shard: ShardId, version: int) -> None:
        self._phase.persisted(shard, version)

    def _leave(self) -> None:
        self._phase.leave()

    # ------------------------------------------------------------ loop and transport inputs
    def _on_frames(self, sender: int, frames: list[Any]) -> None:
        self._phase.on_frames(sender, frames)

    def _block_destination(self, sender: int, oid: ObjectId, block: int, length: int) -> memoryview | Refusal:
        """Where a member's block goes: straight into its object's buffer, if the core takes it."""
        core = self._phase.core
        if core is None:
            return Refusal.UNKNOWN_OBJECT
        return core.block_destination(oid, sender, block, length)

    def _on_peer_lost(self, node_id: int) -> None:
        self._phase.on_peer_lost(node_id)

    def _on_client(self, handle: Any, msg: Any) -> None:
        sends = self._app_sends
        self._phase.on_client(handle, msg)
        if self._app_sends != sends and self._io is not None:
            # The app multicast at once what the frame brought (a lone call, see
            # ``client_turns.LONE_CALLS``): out in this turn if the loop was idle.
            self._io.flush_if_idle()

    def _on_client_closed(self, handle: Any) -> None:
        self._status_limiter.closed(handle, client_key(handle))
        if self.hooks.on_client_closed is not None:
            self.hooks.on_client_closed(handle)

    def _flush(self) -> None:
        self._phase.flush()

    def _tick(self) -> None:
        self._phase.tick()

    def _contact_node(self, address: str) -> int | None:
        return self._io.transport.contact_node(address) if self._io is not None else None

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """A snapshot for ``derecho-actors status`` (call on the loop thread), in its wire form:
        see :meth:`typed_status`."""
        return self.typed_status().to_wire()

    def typed_status(self) -> NodeStatus:
        """The core's view of the group, this node's phase and transport figures, and what the
        app adds (loop thread)."""
        phase = self._phase.status()
        io = self._io
        return NodeStatus(
            node=self.node_id,
            cluster=self.config.node.cluster,
            core=phase.core,
            restarting=phase.restarting,
            bootstrapping=phase.bootstrapping,
            bad_frames=io.transport.bad_frames if io is not None else 0,
            clients=io.transport.client_count() if io is not None else 0,
            traffic=tuple((n, sent, got) for n, (sent, got) in sorted(io.transport.traffic().items()))
            if io is not None
            else (),
            transports=peer_transports(io.transport) if io is not None else (),
            views_installed=self.views_installed,
            status_rate_limited=self._status_limiter.refused,  # status requests refused over the rate
            delivered_total=tuple((str(sid), n) for sid, n in sorted(self.delivered_total.items(), key=str)),
            app=AppStatus.from_wire(self.hooks.status()) if self.hooks.status is not None else None,
        )

    def _status_snapshot(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """``status()`` taken on the loop, from another thread (the metrics server's); None
        if the loop does not answer within ``timeout``."""
        return self._io.answer(self.status, timeout) if self._io is not None else None
