"""The node driver: one asyncio loop thread owns the protocol core and does its I/O.

It feeds the core events (frames arrived, a timer fired, a peer's connection broke, the app
asked to send or to leave) and carries out what ``ready()`` returns: frames to peers, batched
per peer into one write per loop turn; deliveries and views to the application's callbacks;
the next timer. There is no protocol logic here: every decision is the core's.

Application hooks run on the loop thread and must be quick (hand work to another thread or
actor); the actor layer posts deliveries to pykka actors, never running user code here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence, TypeVar

from runtime.config import NodeConfig
from runtime.core.effects import Ready
from runtime.core.events import LeaveRequested, MessageArrived, PeerLost, Persisted, Tick
from runtime.core.layout import ShardId
from runtime.core.membership import JoinClaim
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, ShardPush, ViewAnnouncement
from runtime.core.node_core import NodeCore
from runtime.core.view import View, ViewFormatError
from runtime.drivers.bootstrap import BootstrapCoordinator
from runtime.drivers.leader_word import LeaderWord
from runtime.drivers.restart import RestartCoordinator, SavedState
from runtime.drivers.status import StatusLimiter, StatusVerdict
from runtime.drivers.tcp import TcpTransport, TransportSecurity
from runtime.drivers.transport import Transport
from runtime.errors import ConfigError
from runtime.exitcodes import START_FAILED
from runtime.node_api import AppHooks
from runtime.security.revocation import RevocationList, revocation_path
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials
from runtime.wire.claims import claimed_sender
from runtime.wire.codec import frame
from runtime.wire.control import (
    AppMessage,
    BootstrapHello,
    Goodbye,
    GroupRunning,
    RateLimited,
    RestartDecision,
    RestartHello,
    StatusReply,
    StatusRequest,
    Welcome,
)

log = logging.getLogger("derecho.node")

CORE_MESSAGES = (ShardPush, GroupPush, ViewAnnouncement, JoinRequest, JoinReply)
BUSY_CONTACT_WAIT = 30.0  # seconds a joiner keeps trying contacts that are up but let no handshake finish
MAX_CONTACT_BACKOFF = 5.0  # seconds between its checks (and reports) then, at most
BUSY_REPORT_EVERY = 10.0  # seconds between reports of busy contacts while restarting or bootstrapping
MAX_EARLY_FRAMES = 10_000  # frames kept for a core not created yet (a restarting node)
RESTART_MESSAGES = (RestartHello, RestartDecision, GroupRunning, BootstrapHello)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _StatusCache:
    """A StatusReply frame as built at ``built_at`` (monotonic), after ``views_installed`` views."""

    data: bytes
    built_at: float
    views_installed: int


def client_key(handle: Any) -> str:
    """Whom a client connection's limits count against: the identity its certificate proved
    (every connection of one certificate shares them), or without TLS its host."""
    identity = getattr(handle, "identity", None)
    if identity is not None:
        return str(identity.describe())
    address = str(getattr(handle, "address", "?"))
    return f"host {address.rpartition(':')[0] or address}"


INSECURE_WARNING = (
    "INSECURE MODE: security.insecure = true, so connections are neither authenticated nor "
    "encrypted: anyone who can reach %s can join this group, read its traffic, forge members' "
    "frames and run calls. Use it only on a network you fully control; make certificates with "
    "`derecho-actors certs` and set security.certs_dir instead."
)


def node_security(config: NodeConfig) -> tuple[TransportSecurity, LoadedCredentials | None]:
    """The transport's TLS contexts and limits for this node's config, and its loaded
    credentials (None in insecure mode). Raises ConfigError when no certificates are
    configured and insecure mode was not asked for explicitly, or when they are unusable."""
    sec = config.security
    limits = dict(
        allowed_members=frozenset(sec.allowed_members),
        handshake_timeout=sec.handshake_timeout_ms / 1000,
        max_unauthenticated=sec.max_unauthenticated,
        receive_budget=sec.receive_budget_bytes,
        client_idle_timeout=sec.client_idle_timeout_ms / 1000,
        client_max_frame=config.multicast.max_message_size + (64 << 10),
        max_unauthenticated_per_address=sec.max_unauthenticated_per_address,
        frames_per_turn=config.limits.frames_per_turn,
        client_max_backlog=config.limits.client_max_backlog_bytes,
    )
    if sec.insecure:
        log.warning(INSECURE_WARNING, config.node.listen)
        return TransportSecurity(**limits), None  # type: ignore[arg-type]
    if not sec.tls_configured:
        raise ConfigError(
            "security: no certificates configured. Make them with `derecho-actors certs create-ca` and "
            "`derecho-actors certs create-node ID` and set security.certs_dir, or run without authentication "
            "with security.insecure = true (--insecure): anyone who can reach the port can then join"
        )
    ca, cert, key = sec.tls_paths(config.node.id)
    loaded = load_credentials(TlsCredentials(Path(ca), Path(cert), Path(key)), "node", node_id=config.node.id)
    revoked = revocation_path(sec.certs_dir, sec.revocation_file)
    return TransportSecurity(
        server_context=loaded.server_context(),
        client_context=loaded.client_context(),
        revocation=RevocationList(revoked) if revoked is not None else None,
        **limits,  # type: ignore[arg-type]
    ), loaded


def loop_factory(tls: bool = False) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop if ``DERECHO_UVLOOP=1`` and it is installed; ``None``: asyncio's.

    Opt-in: measured on loopback (``python -m bench.multicast``), uvloop neither raised
    throughput nor lowered CPU per message (the loop's own overhead is small next to a
    batch's), and its millisecond timers make sub-millisecond pacing spin. Not with TLS: the
    transport upgrades accepted connections with ``start_tls`` after counting them (the limit
    on unauthenticated connections), which uvloop's ``start_tls`` does not support on a
    paused transport; asyncio is used then, with a warning.
    """
    if os.environ.get("DERECHO_UVLOOP", "") not in ("1", "true", "yes"):
        return None
    if tls:
        log.warning("DERECHO_UVLOOP=1 is ignored with TLS on: running on asyncio's loop")
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T], tls: bool = False) -> T:
    """``asyncio.run(main)``, on uvloop when asked for (see :func:`loop_factory`)."""
    factory = loop_factory(tls)
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


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
        self._restart: RestartCoordinator | None = None
        self._bootstrap: BootstrapCoordinator | None = None  # node.bootstrap_expect, empty data dir
        self.delivered_total: dict[Any, int] = {}  # per shard: messages delivered since this node started
        self._restart_vid: int | None = None  # the restart view this node installed, if any
        self._restart_lost: dict[ShardId, tuple[int, int]] = {}  # versions that restart gave up
        self.hooks = hooks or AppHooks()
        self.node_id = config.node.id
        self.core: NodeCore | None = None
        self.transport: Transport | None = None
        self.views_installed = 0  # views this node installed since it started (metrics)
        self._early: list[tuple[int, Any]] = []  # frames that came before the core (a restart)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_reason: str | None = None
        self._flush_scheduled = False
        self._incarnation = time.time_ns()  # this start of the node (its transport says it in hellos)
        self._stop_notified = False
        self._cut: set[int] = set()  # members that forged frames: dropped until they leave the view
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._app_queue: dict[ShardId, list[bytes]] = {}  # payloads the window has not taken yet
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        # TLS contexts and limits, and this node's certificate (None: insecure mode). Loaded
        # here, not in run(), so a bad certificate fails the constructor with its path.
        self.security, self.credentials = security if security is not None else node_security(config)
        # Status requests from clients: rate-limited per identity, one snapshot shared for a
        # short while (see runtime.drivers.status.StatusLimiter for why).
        self.busy_contact_wait = BUSY_CONTACT_WAIT  # the join timeout for contacts that answer but are busy
        self._busy_report_at = 0.0  # loop time of the next report of busy contacts (restart, bootstrap)
        self._status_limiter = StatusLimiter(config.limits.status_per_second)
        self._status_cache: _StatusCache | None = None
        # Before it is a member, the leader's frames are taken only from nodes this node asked
        # or members of the last view it knows (see runtime.drivers.leader_word).
        self._leader_word = LeaderWord(self._contact_node, enforce=self.security.tls)
        self._leader_word.ask(config.contact_addresses())
        if saved is not None:
            self._leader_word.know_view(saved.view)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> str:
        """Run until the node stops (excluded, left, or asked to stop); returns the reason."""
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        cfg = self.config
        self.transport = TcpTransport(
            self.node_id,
            cfg.node.listen,
            cfg.node.cluster,
            self._on_frames,
            self._on_peer_lost,
            self._on_client,
            max_frame=cfg.multicast.max_frame_bytes,
            security=self.security,
            incarnation=self._incarnation,
            on_client_closed=self._on_client_closed,
            client_welcome=frame(
                Welcome(
                    cfg.multicast.max_message_size,
                    self.security.client_max_frame,
                    cfg.security.client_idle_timeout_ms,
                )
            ),
        )
        await self.transport.start()
        metrics = None
        if cfg.node.metrics:
            from runtime.drivers.metrics import MetricsServer

            try:
                metrics = MetricsServer.for_node(cfg, self._status_snapshot, self.security)
            except OSError as exc:
                await self.transport.close()
                raise ConfigError(f"node.metrics: cannot listen on {cfg.node.metrics}: {exc}") from None
            metrics.start()
        now = self.loop.time()
        address = cfg.address
        contacts = [c for c in cfg.contact_addresses() if c != address]
        if self.saved is not None:
            log.info(
                "node %s listening on %s, restarting from its data (last view %d)",
                self.node_id,
                address,
                self.saved.view.vid,
            )
            self._restart = RestartCoordinator(
                self.node_id,
                address,
                self.saved,
                contacts,
                cfg.layout,
                cfg.persistence.restart_quorum_wait_ms / 1000,
                self._send_to_address,
                now,
                accept_loss=self.accept_loss,
                on_accept=self.hooks.on_accepted,
            )
            self.loop.call_soon(self._restart_tick)
        elif cfg.node.bootstrap_expect > 1:
            log.info(
                "node %s listening on %s with an empty data dir: looking for its group, or for %d nodes as new "
                "as itself, via %s",
                self.node_id,
                address,
                cfg.node.bootstrap_expect,
                ", ".join(contacts),
            )
            self._bootstrap = BootstrapCoordinator(
                self.node_id, address, contacts, cfg.node.bootstrap_expect, self._send_to_address, now
            )
            self.loop.call_soon(self._bootstrap_tick)
        elif contacts:
            self._start_core(contacts=contacts)
        else:
            self._found()
        self._started.set()
        self._schedule_flush()
        await self._stop_event.wait()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await self.transport.close()
        self._notify_stop(self.stop_reason or "stopped")
        return self.stop_reason or "stopped"

    def _notify_stop(self, reason: str) -> None:
        """Tell the app once why the node stops (excluded by the group, a refused restart, a
        storage failure, or asked to)."""
        if not self._stop_notified:
            self._stop_notified = True
            if self.hooks.on_stop is not None:
                self.hooks.on_stop(reason)

    def _join_claim(self) -> JoinClaim:
        """What this node brings to the group it joins: the logs its data folder holds (a shard
        waiting on its lost holders takes the longest one back from them; logs of transfers that
        had not landed vouch for nothing) and the operator's --accept-loss."""
        saved = self.saved
        logs: tuple[tuple[ShardId, int], ...] = ()
        if saved is not None:
            logs = tuple(sorted((sid, v) for sid, v in saved.logs.items() if sid not in saved.incomplete))
        return JoinClaim(logs, self.accept_loss)

    def _start_core(self, contacts: list[str] | None = None, view: View | None = None) -> None:
        cfg = self.config
        now = self.loop.time()  # type: ignore[union-attr]
        address = cfg.address
        if view is not None:
            log.info("node %s installs restart view %d", self.node_id, view.vid)
            self._restart_vid = view.vid
            self.core = NodeCore(self.node_id, address, cfg.layout, cfg.core_config(), now, view=view)
        else:
            assert contacts
            log.info("node %s listening on %s, joining via %s", self.node_id, address, ", ".join(contacts))
            self.core = NodeCore(
                self.node_id, address, cfg.layout, cfg.core_config(), now, contact=contacts, claim=self._join_claim()
            )
            self.loop.call_later(cfg.timeouts.connect_timeout_ms / 1000, self._check_contact_reached, contacts)  # type: ignore[union-attr]
        early, self._early = self._early, []
        for sender, msg in early:  # what peers sent before the core existed, in order
            self._on_frames(sender, [msg])
        self._schedule_flush()

    def _send_to_address(self, address: str, msg: Any) -> None:
        self.transport.send_to_address(address, frame(msg))  # type: ignore[union-attr]

    def _restart_tick(self) -> None:
        r = self._restart
        if r is None or self.core is not None or self._stop_event.is_set():
            return
        try:
            nxt = r.on_tick(self.loop.time())  # type: ignore[union-attr]
        except OSError as exc:  # recording the accepted restart view failed
            self._restart = None
            self.stop(f"storage failure: recording the restart view failed: {exc}")
            return
        outcome = r.outcome
        if outcome is not None:
            self._restart = None
            if outcome.refused is not None:
                self.stop(f"restart refused: {outcome.refused}")
                return
            self._restart_lost = dict(outcome.lost)
            if outcome.lost and self.hooks.on_lost is not None:
                self.hooks.on_lost(outcome.lost)
            self._start_core(contacts=outcome.contacts, view=outcome.view)
            return
        self._report_busy_contacts("restarting", r.targets)
        self.loop.call_at(nxt, self._restart_tick)  # type: ignore[union-attr]

    def _bootstrap_tick(self) -> None:
        b = self._bootstrap
        if b is None or self.core is not None or self._stop_event.is_set():
            return
        nxt = b.on_tick(self.loop.time())  # type: ignore[union-attr]
        outcome = b.outcome
        if outcome is None:
            self._report_busy_contacts("bootstrapping", b.contacts)
            self.loop.call_at(nxt, self._bootstrap_tick)  # type: ignore[union-attr]
            return
        self._bootstrap = None
        if outcome.found:
            self._found()
            self._schedule_flush()
        else:
            self._start_core(contacts=list(outcome.contacts))

    def _report_busy_contacts(self, phase: str, addresses: Sequence[str]) -> None:
        """While restarting or bootstrapping (which retry their contacts until they hear
        enough), say every ``BUSY_REPORT_EVERY`` s which contacts are up but let no handshake
        finish: the reason this node may be waiting longer than it should."""
        transport, loop = self.transport, self.loop
        if transport is None or loop is None or loop.time() < self._busy_report_at:
            return
        busy = [(a, p) for a in addresses if (p := transport.contact_problems.get(a)) is not None and p.answered]
        if busy:
            self._busy_report_at = loop.time() + BUSY_REPORT_EVERY
            log.warning(
                "node %s, %s: %s %s up but let no handshake finish (%s); busy (its limit of connections in their "
                "handshake reached?) or overloaded: still trying",
                self.node_id,
                phase,
                ", ".join(a for a, _ in busy),
                "is" if len(busy) == 1 else "are",
                "; ".join(f"{a}: {p.reason}" for a, p in busy),
            )

    def _found(self) -> None:
        cfg = self.config
        log.info("node %s listening on %s, founding cluster %r", self.node_id, cfg.address, cfg.node.cluster)
        self.core = NodeCore.found(self.node_id, cfg.address, cfg.layout, cfg.core_config(), self.loop.time())  # type: ignore[union-attr]

    def _contact_node(self, address: str) -> int | None:
        return self.transport.contact_node(address) if self.transport is not None else None

    def _leader_frame_allowed(self, sender: int, msg: Any) -> bool:
        """Whether ``msg``, one of the frames only the leader (or the node asked) may send a
        node that is not a member yet, may be taken from ``sender``; if not, a rate-limited
        WARNING names the sender and the frame is dropped."""
        word = self._leader_word
        if word.allows(sender):
            return True
        if isinstance(msg, ViewAnnouncement) and isinstance(msg.view, dict):
            named = msg.view.get("members", ())
            if isinstance(named, list) and sender in named and word.asked_nodes() & set(named):
                # Every member of the view that admits a joiner announces it; the joiner takes
                # the word of the one it asked. Another member's copy (it names itself and the
                # node asked) is no news: dropped without a warning.
                log.debug("a copy of view %s from node %s; taken from the nodes asked", msg.view.get("vid"), sender)
                return False
        self.transport.warn(  # type: ignore[union-attr]
            "leader-word",
            str(sender),
            "refused a %s from node %s: a node that is not a member yet takes it %s",
            type(msg).__name__,
            sender,
            word.describe(),
        )
        return False

    def _on_restart_message(self, sender: int, msg: Any) -> None:
        if isinstance(msg, (BootstrapHello, RestartHello)) and not self._is_member(sender):
            self.transport.learn(sender, msg.address)  # type: ignore[union-attr]
        if isinstance(msg, (GroupRunning, RestartDecision)) and (
            self._restart is not None or self._bootstrap is not None
        ):
            if not self._leader_frame_allowed(sender, msg):
                return
            if isinstance(msg, GroupRunning):
                self._leader_word.ask([msg.address])  # where a trusted member says the group runs
        if (
            isinstance(msg, RestartHello)
            and self._restart is not None
            and isinstance(msg.view, dict)
            and isinstance(msg.view.get("vid"), int)
            and msg.view["vid"] > self._leader_word.last_vid
            and self._leader_word.allows(sender)
        ):
            # A member of the last view we know reports a later one: its members may lead the restart.
            try:
                self._leader_word.know_view(View.from_wire(msg.view))
            except ViewFormatError:
                pass  # the coordinator logs a bad report
        if isinstance(msg, BootstrapHello):
            if self._bootstrap is not None:
                self._bootstrap.on_hello(msg)
                self._bootstrap_tick()
            elif self._restart is not None:  # we hold data of a group: it must not found another
                self.transport.send_to_address(msg.address, frame(self._restart.hello()))  # type: ignore[union-attr]
            elif self.core is not None and self.core.view is not None:
                running = GroupRunning(self.config.address, self.core.view.vid)
                self.transport.send_to_address(msg.address, frame(running))  # type: ignore[union-attr]
            return
        if isinstance(msg, RestartHello) and self._bootstrap is not None:
            self._bootstrap.on_has_data(msg.node)
            return
        if isinstance(msg, GroupRunning) and self._bootstrap is not None:
            self._bootstrap.on_running(msg)
            self._bootstrap_tick()
            return
        if isinstance(msg, RestartHello):
            if self._restart is not None:
                self._restart.on_hello(msg)
                self._restart_tick()
            elif self.core is not None and self.core.view is not None:
                view = self.core.view
                if view.vid == self._restart_vid and view.rank_of(msg.node) is not None:
                    # Still the restart view, which names the sender: it missed the decision.
                    lost = tuple((sid, lo, hi) for sid, (lo, hi) in sorted(self._restart_lost.items()))
                    reply: Any = RestartDecision(self.node_id, view.to_wire(), lost)
                else:  # the group is running: the restarting node should simply join
                    reply = GroupRunning(self.config.address, view.vid)
                self.transport.send_to_address(msg.address, frame(reply))  # type: ignore[union-attr]
        elif self._restart is not None:
            if isinstance(msg, RestartDecision):
                try:
                    self._restart.on_decision(msg)
                except OSError as exc:
                    self._restart = None
                    self.stop(f"storage failure: recording the restart view failed: {exc}")
                    return
            elif isinstance(msg, GroupRunning):
                self._restart.on_running(msg)
            self._restart_tick()

    def _check_contact_reached(self, contacts: list[str], started: float | None = None, wait: float = 0.0) -> None:
        """``connect_timeout_ms`` after a join began, and again with backoff: if no contact
        was reached, give up at once when nothing listens at any of them (a wrong address:
        exit 2); while some contact answers but lets no handshake finish (busy: its pool of
        unauthenticated connections full, or overloaded), keep trying, saying why, until
        ``busy_contact_wait`` (``BUSY_CONTACT_WAIT``, at least the connect timeout)."""
        transport = self.transport
        if self.core is None or not self.core.joining or transport is None or transport.contact_reached:
            return
        loop = self.loop
        assert loop is not None
        now = loop.time()
        connect_timeout = self.config.timeouts.connect_timeout_ms / 1000
        if started is None:
            started = now - connect_timeout
        problems = {a: transport.contact_problems[a] for a in contacts if a in transport.contact_problems}
        busy = {a: p for a, p in problems.items() if p.answered}
        limit = max(connect_timeout, self.busy_contact_wait)
        if busy and not transport.refusals and now - started < limit:
            wait = min(MAX_CONTACT_BACKOFF, max(connect_timeout, wait * 2), limit - (now - started) + 0.01)
            log.warning(
                "node %s: no contact reached yet after %.1f s: %s answer%s but let no handshake finish (%s); "
                "busy (its limit of connections in their handshake reached?) or overloaded: trying again, "
                "giving up after %.0f s",
                self.node_id,
                now - started,
                ", ".join(busy),
                "s" if len(busy) == 1 else "",
                "; ".join(f"{a}: {p.reason}" for a, p in busy.items()),
                limit,
            )
            loop.call_later(wait, self._check_contact_reached, contacts, started, wait)
            return
        if self.rejoin_reason is not None and not transport.refusals:
            # Cut off from the majority: never give up (it may come back at any time), never found.
            wait = min(MAX_CONTACT_BACKOFF, max(connect_timeout, wait * 2))
            log.warning(
                "node %s is out of the group (%s) and reaches none of its members after %.0f s (%s); it keeps "
                "trying, and tells clients to call another member meanwhile",
                self.node_id,
                self.rejoin_reason,
                now - started,
                "; ".join(f"{a}: {p.reason}" for a, p in problems.items()) or ", ".join(contacts),
            )
            loop.call_later(wait, self._check_contact_reached, contacts, started, wait)
            return
        refused = f" ({transport.refusals[-1]})" if transport.refusals else ""
        why = "; ".join(f"{a}: {p.reason}" for a, p in problems.items())
        self._fatal(
            ConfigError(
                f"node.contacts: no contact reachable ({', '.join(contacts)}) within {(now - started) * 1000:.0f} ms"
                f"{refused}{f' ({why})' if why and not refused else ''}"
            )
        )

    def _fatal(self, exc: BaseException) -> None:
        """Stop because the node cannot start (a config or start-up problem): exit code 2 in
        every mode (``runtime.exitcodes.START_FAILED``)."""
        self._start_error = exc
        self.stop(f"{START_FAILED}: {exc}")

    def stop(self, reason: str = "stopped") -> None:
        """Stop the loop (thread-safe); the node leaves without a goodbye (use ``leave``)."""
        if self.loop is None:
            return

        def _stop() -> None:
            if self.stop_reason is None:
                self.stop_reason = reason
            self._stop_event.set()

        if self._on_loop_thread():
            _stop()
        else:
            self.in_loop(_stop)

    def start_in_thread(self, timeout: float = 10.0) -> None:
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

    def join_thread(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def error(self) -> BaseException | None:
        return self._start_error

    # ------------------------------------------------------- runtime.node_api.NodeHandle
    def start(self, timeout: float = 10.0) -> None:
        self.start_in_thread(timeout)

    def wait_stopped(self, timeout: float | None = None) -> None:
        self.join_thread(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        return self.in_loop(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        if self.loop is not None:
            self.loop.call_later(delay, fn, *args)

    def run_blocking(self, fn: Callable[[], Any]) -> None:
        if self.loop is not None:
            self.loop.run_in_executor(None, fn)

    def on_loop(self) -> bool:
        return self._on_loop_thread()

    def send_ordered(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        self.submit(shard, payloads)

    def send_app(self, node: int, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send(node, frame(AppMessage(data)))

    def reply_client(self, conn: Any, *messages: bytes) -> None:
        if self.transport is not None:
            self.transport.reply(conn, b"".join(frame(AppMessage(m)) for m in messages))

    def wall_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        loop = self.loop
        return loop.time() if loop is not None else time.monotonic()

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def cut_off(self, node: int, reason: str) -> None:
        self._cut_off(node, reason)

    def peer_public_key(self, node: int) -> bytes | None:
        """The public key of ``node``'s certificate, as its connection to us proved it (None
        without TLS or before it connected). Loop thread."""
        transport = self.transport
        return transport.peer_public_key(node) if transport is not None else None

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # ------------------------------------------------------------ app inputs
    def submit(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """Multicast ``payloads`` in ``shard`` (thread-safe; kept in order until the window
        takes them)."""
        assert self.loop is not None
        if self._on_loop_thread():
            self._app_send(shard, payloads)
        else:
            self.in_loop(self._app_send, shard, list(payloads))

    def report_persisted(self, shard: ShardId, version: int) -> None:
        """The app's log of ``shard`` holds every version up to ``version`` on disk
        (thread-safe)."""
        self.in_loop(self._persisted, shard, version)

    def _persisted(self, shard: ShardId, version: int) -> None:
        if self.core is not None:
            self.core.step(Persisted(self.loop.time(), shard, version))  # type: ignore[union-attr]
            self._schedule_flush()

    def send_direct(self, node: int, data: bytes) -> None:
        """Send encoded frames straight to ``node`` (loop thread)."""
        if self.transport is not None:
            self.transport.send(node, data)

    def in_loop(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread soon (thread-safe); False once the node has
        stopped (the call is dropped)."""
        if self.loop is None or self.loop.is_closed():
            return False
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    def queued(self, shard: ShardId) -> int:
        """App messages of ``shard`` waiting for the window (loop thread)."""
        q = self._app_queue.get(shard)
        return len(q) if q else 0

    def leave(self) -> None:
        """Leave the group gracefully (thread-safe): a view change without suspicion."""
        self.in_loop(self._leave)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the loop thread (to read core state safely)."""
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        if not self.in_loop(run):
            fut.set_exception(RuntimeError(f"node {self.node_id} has stopped"))
        return fut

    def _leave(self) -> None:
        if self.core is not None:
            self.core.step(LeaveRequested(self.loop.time()))  # type: ignore[union-attr]
            self._schedule_flush()

    def _app_send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        q = self._app_queue.get(shard)
        if q is None:
            q = self._app_queue[shard] = []
        core = self.core
        if not q and core is not None and shard in core.shards:
            # Nothing queued ahead of these: offer them as they are, queue what is left.
            taken = core.send(shard, payloads, self.loop.time())  # type: ignore[union-attr]
            if taken:
                self._schedule_flush()
            if taken < len(payloads):
                q.extend(payloads[taken:] if taken else payloads)
            return
        q.extend(payloads)
        self._offer(shard)

    def _offer(self, shard: ShardId) -> None:
        q = self._app_queue.get(shard)
        core = self.core
        if not q or core is None or shard not in core.shards:
            return
        taken = core.send(shard, q, self.loop.time())  # type: ignore[union-attr]
        if taken:
            del q[:taken]  # the core copied what it took
            self._schedule_flush()

    # ------------------------------------------------------------- net inputs
    def _forged(self, sender: int, msg: Any) -> bool:
        """Whether ``msg`` names another node than ``sender`` (the connection's proven
        speaker) as its sender; if so, ``sender``'s connections are closed."""
        claimed = claimed_sender(msg)
        if claimed is None or claimed == sender:
            return False
        self._cut_off(sender, f"it sent a {type(msg).__name__} in the name of node {claimed}")
        return True

    def _cut_off(self, sender: int, reason: str) -> None:
        """``sender`` sent frames its identity does not allow: an honest node never does. If
        it is a member, suspect it at once (its rows freeze, the next view leaves it out) and
        close its connections a little later, once our suspicion has gone out: closing first
        would make it suspect us, and its word could then reach the others before ours.
        Everything it sends meanwhile is dropped."""
        if sender in self._cut:
            return
        if not self._is_member(sender):
            self.transport.disconnect(sender, reason)  # type: ignore[union-attr]
            return
        self._cut.add(sender)
        log.warning("node %s is cut off: %s", sender, reason)
        self.core.step(PeerLost(self.loop.time(), sender))  # type: ignore[union-attr]
        self._schedule_flush()
        delay = self.config.timeouts.heartbeat_ms / 1000 * 2
        self.loop.call_later(delay, self.transport.disconnect, sender, reason)  # type: ignore[union-attr]

    def _is_member(self, node: int) -> bool:
        view = self.core.view if self.core is not None else None
        return view is not None and view.rank_of(node) is not None

    def _on_frames(self, sender: int, frames: list[Any]) -> None:
        if sender in self._cut:
            return
        core = self.core
        if core is None:
            for msg in frames:
                if isinstance(msg, RESTART_MESSAGES):
                    if self._forged(sender, msg):
                        return
                    self._on_restart_message(sender, msg)
                elif len(self._early) < MAX_EARLY_FRAMES:
                    # A restarting node's peers may install the restart view, and push their rows
                    # (which they send only when they change), before this node has its core: kept
                    # for the core, or an idle shard would never hear of them.
                    self._early.append((sender, msg))
            return
        now = self.loop.time()  # type: ignore[union-attr]
        step = core.step
        for msg in frames:
            if type(msg) is ShardPush:  # the data plane: nearly every frame
                step(MessageArrived(now, sender, msg))
                continue
            if type(msg) is not GroupPush and self._forged(sender, msg):
                break  # the rest of what it sent is not to be trusted either
            if isinstance(msg, RESTART_MESSAGES):
                self._on_restart_message(sender, msg)
                continue
            if isinstance(msg, CORE_MESSAGES):
                if isinstance(msg, (ViewAnnouncement, JoinReply)) and core.joining:
                    if not self._leader_frame_allowed(sender, msg):
                        continue
                    if isinstance(msg, JoinReply) and isinstance(msg.redirect_to, str) and msg.redirect_to:
                        self._leader_word.ask([msg.redirect_to])  # the leader, as the node asked says
                if isinstance(msg, JoinRequest) and isinstance(msg.address, str) and not self._is_member(sender):
                    # A member's address is the one its view says; only a node outside the
                    # view can tell where it listens (and must then prove its id there).
                    self.transport.learn(sender, msg.address)  # type: ignore[union-attr]
                step(MessageArrived(now, sender, msg))
            elif type(msg) is AppMessage:
                if self.hooks.on_app is not None:
                    self.hooks.on_app(sender, msg.data)
            else:
                log.warning("node %s sent a %s on a member connection; ignored", sender, type(msg).__name__)
        self._schedule_flush()

    def _not_serving(self) -> str:
        """Why a node outside any view answers no call (a client's Goodbye)."""
        me = self.node_id
        if self.rejoin_reason is not None:
            return f"node {me} is out of the group ({self.rejoin_reason}) and joining it again; call another member"
        if self._restart is not None:
            return f"node {me} is restarting from its data folder and not in the group yet; call another member"
        return f"node {me} is joining the group and not in a view yet; call another member"

    def _on_peer_lost(self, node_id: int) -> None:
        if self.core is not None and self.core.view is not None and self.core.view.rank_of(node_id) is not None:
            log.info("connection to node %s lost", node_id)
            self.core.step(PeerLost(self.loop.time(), node_id))  # type: ignore[union-attr]
            self._schedule_flush()

    def _on_client(self, handle: Any, msg: Any) -> None:
        if type(msg) is AppMessage:
            if self.core is None or self.core.view is None:
                # Not a member of any view (restarting, joining, or joining again after the
                # group removed it): no call can run here. Say why and close; the client fails
                # over to another contact with its calls, in the same session.
                self.transport.reply(handle, frame(Goodbye(self._not_serving())))  # type: ignore[union-attr]
                handle.close()
                return
            if self.hooks.on_client_app is None:
                self.transport.reply(  # type: ignore[union-attr]
                    handle,
                    frame(Goodbye("this node hosts no replicated types; it answers status requests only")),
                )
                handle.close()
                return
            self.hooks.on_client_app(handle, msg.data)
            self._schedule_flush()
        elif isinstance(msg, StatusRequest):
            self._on_status_request(handle)
        else:
            # A client may ask for status and send application messages; anything else (a
            # push, a join) is a member's frame, which no client connection may carry.
            self.transport.warn(  # type: ignore[union-attr]
                "client-frame",
                handle.address,
                "closing %s: it sent a %s, which clients may not send",
                handle._where(),
                type(msg).__name__,
            )
            handle.close()

    def _on_client_closed(self, handle: Any) -> None:
        self._status_limiter.closed(handle, client_key(handle))
        if self.hooks.on_client_closed is not None:
            self.hooks.on_client_closed(handle)

    def _on_status_request(self, handle: Any) -> None:
        """Answer a client's StatusRequest within its identity's rate, from a snapshot
        shared for ``limits.status_cache_ms`` (a new view makes a new one at once)."""
        transport = self.transport
        assert transport is not None
        decision = self._status_limiter.check(handle, client_key(handle))
        verdict = decision.verdict
        if verdict is StatusVerdict.SERVE:
            transport.reply(handle, self._status_frame())
        elif verdict is StatusVerdict.REFUSE:
            retry_ms = max(1, int(decision.retry_after * 1000 + 0.999))
            transport.reply(handle, frame(RateLimited(retry_ms, decision.reason)))
        elif verdict is StatusVerdict.CUT:
            transport.warn(
                "status-rate",
                handle.address,
                "closing %s: %s",
                handle._where(),
                decision.reason,
            )
            transport.reply(handle, frame(Goodbye(f"status requests over the limit: {decision.reason}")))
            handle.close()

    def _status_frame(self) -> bytes:
        """The encoded StatusReply, rebuilt when older than ``limits.status_cache_ms`` or
        when a view was installed since."""
        now = time.monotonic()
        cache = self._status_cache
        max_age = self.config.limits.status_cache_ms / 1000
        if cache is None or now - cache.built_at >= max_age or cache.views_installed != self.views_installed:
            cache = self._status_cache = _StatusCache(frame(StatusReply(self.status())), now, self.views_installed)
        return cache.data

    # ---------------------------------------------------------------- effects
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        core, transport = self.core, self.transport
        if core is None or transport is None:
            return
        ready = core.ready()
        self._act(ready)

    def _act(self, ready: Ready) -> None:
        core, transport = self.core, self.transport
        assert core is not None and transport is not None
        # Each view's deliveries reach the app before the next view does.
        deliveries = ready.deliveries
        counts = self.delivered_total
        for d in deliveries:  # one add per batch (len is known without laying the batch out)
            counts[d.shard] = counts.get(d.shard, 0) + len(d.messages)
        for v in ready.views:
            if self.hooks.on_deliver is not None:
                for d in [d for d in deliveries if d.vid < v.vid]:
                    self.hooks.on_deliver(d)
            deliveries = [d for d in deliveries if d.vid >= v.vid]
            self._on_view(v)
        if ready.accepted is not None and self.hooks.on_accepted is not None:
            # Like raft's HardState: the acceptance must be on disk before the ack leaves, so
            # a total restart never reuses the id of a view a majority may have installed.
            try:
                self.hooks.on_accepted(ready.accepted)
            except OSError as exc:
                self.stop(f"storage failure: recording the accepted view {ready.accepted} failed: {exc}")
                return
        out: dict[int, list[bytes]] = {}
        for o in ready.outgoing:
            data = frame(o.message)
            for dst in o.to:
                out.setdefault(dst, []).append(data)
        for dst, chunks in out.items():
            transport.send(dst, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        for cs in ready.contact_sends:
            transport.send_to_address(cs.address, frame(cs.message))
        if self.hooks.on_deliver is not None:
            for d in deliveries:
                self.hooks.on_deliver(d)
        if self.hooks.on_persisted is not None:
            for sid, version in ready.persisted:
                self.hooks.on_persisted(sid, version)
        if self.hooks.on_stable is not None:
            for sid, vid, index in ready.delivered_everywhere:
                self.hooks.on_stable(sid, vid, index)
        for r in ready.rejected:
            if r.forged:
                self._cut_off(r.sender, r.reason)
            else:
                log.warning("rejected input from node %s: %s", r.sender, r.reason)
        for sid, payloads in ready.orphaned:
            log.info("%d trimmed messages of shard %s return to the app queue", len(payloads), sid)
            q = self._app_queue.setdefault(sid, [])
            q[0:0] = payloads
        if ready.stalled is not None:
            log.warning(
                "node %s did not run for %.2f s (process stopped or loop blocked): its peers' silence in that time "
                "is not held against them",
                self.node_id,
                ready.stalled,
            )
        if ready.excluded is not None:
            log.warning("node %s stops: %s", self.node_id, ready.excluded)
            self._notify_stop(ready.excluded)
            self.stop(ready.excluded)
            return
        for sid in ready.window_open:
            self._offer(sid)
            if self.hooks.on_window_open is not None:
                self.hooks.on_window_open(sid)
        if ready.views:
            for sid in list(self._app_queue):
                self._offer(sid)
        self._set_timer(ready.wakeup_at)
        if core.unreported():
            self._schedule_flush()

    def _status_snapshot(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """``status()`` taken on the loop, from another thread (the metrics server's); None
        if the loop does not answer within ``timeout``."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return None
        box: list[dict[str, Any]] = []
        done = threading.Event()

        def take() -> None:
            try:
                box.append(self.status())
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop closed meanwhile
            return None
        return box[0] if done.wait(timeout) and box else None

    def _on_view(self, view: View) -> None:
        self.views_installed += 1
        transport = self.transport
        assert transport is not None and self.core is not None
        for node in view.departed:
            transport.doom(node)
        for node in view.joined:
            transport.welcome(node)
        for node, address in zip(view.members, view.addresses):
            if node != self.node_id:
                transport.learn(node, address)
        transport.view_members = set(view.members)
        self._cut &= transport.view_members  # an id that left may come back as a new, honest process
        # Departed nodes may still be reading the frames that tell them so (a leaver learns it
        # left from them): close their connections only after a grace period.
        grace = self.config.timeouts.suspicion_ms / 1000 * 2
        for node in view.departed:
            self.loop.call_later(grace, self._forget_if_gone, node)  # type: ignore[union-attr]
        shards = ", ".join(str(s) for s in view.my_shards(self.node_id)) or "none"
        log.info(
            "view %d installed: members %s (joined %s, departed %s), leader %s, my shards %s%s%s",
            view.vid,
            list(view.members),
            list(view.joined),
            list(view.departed),
            view.members[0],
            shards,
            "" if view.layout.adequate else f", inadequate: {view.layout.describe_shortfall()}",
            f", view change took {self.core.last_change_duration * 1000:.1f} ms"
            if self.core.last_change_duration is not None
            else "",
        )
        if self.hooks.on_view is not None:
            self.hooks.on_view(view)

    def _forget_if_gone(self, node: int) -> None:
        view = self.core.view if self.core is not None else None
        if self.transport is not None and (view is None or view.rank_of(node) is None):
            self.transport.forget(node)

    def _set_timer(self, at: float | None) -> None:
        if at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._tick)  # type: ignore[union-attr]

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is not None:
            self.core.step(Tick(self.loop.time()))  # type: ignore[union-attr]
            self._flush()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """A snapshot for ``derecho-actors status`` (call on the loop thread): the core's view
        of the group, this node's transport figures, and what the app adds."""
        core = self.core
        out: dict[str, Any] = {"node": self.node_id, "cluster": self.config.node.cluster}
        if core is None:
            out.update(joining=True, restarting=self._restart is not None)
            if self._bootstrap is not None:
                out["bootstrapping"] = self._bootstrap.why_waiting()
        else:
            out.update(core.status())
        if self.transport is not None:
            out["bad_frames"] = self.transport.bad_frames
            out["clients"] = self.transport.client_count()
            out["traffic"] = [[n, sent, received] for n, (sent, received) in sorted(self.transport.traffic().items())]
        out["views_installed"] = self.views_installed
        out["status_rate_limited"] = self._status_limiter.refused  # status requests refused over the rate
        out["delivered_total"] = [[str(sid), n] for sid, n in sorted(self.delivered_total.items(), key=str)]
        if self.hooks.status is not None:
            out["app"] = self.hooks.status()
        return out
