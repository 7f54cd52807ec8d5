"""The node's metrics and health endpoint (``node.metrics = "host:port"``).

``GET /metrics`` answers in Prometheus' text format; ``GET /health/live`` says whether the
node's loop answers (200) or not (503); ``GET /health/ready`` whether the node is in a view
whose layout is adequate and every replica it holds serves (200) or not (503, with why), for
readiness probes. Every scrape takes one snapshot of the node's ``status`` on its loop (the
same data as ``derecho-actors status``), so the figures are consistent with each other and
the endpoint costs nothing between scrapes.

What it exposes: the view (id, members, leader, suspicions), per-shard delivery and
persistence progress, traffic per peer, state transfers, digest mismatches and clients'
call counts and latencies per method. No keys, values or arguments, but enough to map the
group and watch its load, so it is not for everyone: bind it to loopback, or restrict it
(firewall, NetworkPolicy), or set ``security.metrics_tls`` (TLS 1.3, a client certificate of
the cluster's CA required, revoked certificates refused). A non-loopback address without TLS
is warned about at start.

What it may cost, whoever connects: the server runs one asyncio loop on its own thread (no
thread per connection) and a pool of two threads that take snapshots. At most
``limits.metrics_max_connections`` connections are open at once; beyond that a new one is
closed at once (a rate-limited WARNING says so). Each connection has
``limits.metrics_timeout_ms`` for everything, TLS handshake, request and answer (one request
per connection, ``Connection: close``); a request head may be 8 KiB. So half-sent requests
hold at most that many file descriptors for that long, and the member port, which shares the
process's descriptors, keeps accepting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from runtime.core.status import AppStatus, ClientCalls, CoreStatus, NodeStatus
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.drivers.tcp import split_address
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from runtime.config import NodeConfig
    from runtime.drivers.tcp import TransportSecurity

log = logging.getLogger("derecho.metrics")

Snapshot = Callable[[], dict[str, Any] | None]
"""The node's status taken on its loop, or None if the loop did not answer in time."""


def readiness(status: dict[str, Any] | NodeStatus | None) -> tuple[bool, str]:
    """Whether a node with this status is ready to serve, and why not."""
    if status is None:
        return False, "the node's loop does not answer"
    st = status if isinstance(status, NodeStatus) else NodeStatus.from_wire(status)
    core = st.core
    if core.joining or core.vid is None:
        return False, "not in a view yet"
    if core.excluded:
        return False, f"stopped: {core.excluded}"
    if not core.adequate:
        return False, f"the view is too small for the layout: {core.shortfall}"
    app = st.app or AppStatus()
    if app.stopped:
        return False, f"stopped: {app.stopped}"
    waiting = {s: r for s, r in app.replicas.items() if r != "serving"}
    if waiting:
        return False, "; ".join(f"{s}: {r}" for s, r in sorted(waiting.items()))
    return True, "ready"


class StatusCollector:
    """Prometheus metrics from one status snapshot (see the module's docstring)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        raw = self.snapshot()
        up = GaugeMetricFamily("derecho_up", "1 if the node's loop answered this scrape")
        up.add_metric([], 0 if raw is None else 1)
        yield up
        if raw is None:
            return
        st = NodeStatus.from_wire(raw)
        core = st.core
        ready, _ = readiness(st)
        yield _gauge("derecho_ready", "1 if in an adequate view with every replica serving", ready)
        if core.vid is not None:
            yield _gauge("derecho_view_id", "id of the installed view", core.vid)
            yield _gauge("derecho_members", "members of the installed view", len(core.members))
            yield _gauge("derecho_leader", "1 if this node leads the view", core.leader == st.node)
            yield _gauge("derecho_suspected_members", "members this node suspects", len(core.suspected))
        yield _counter("derecho_views_installed", "views this node installed since it started", st.views_installed)
        yield _counter("derecho_bad_frames", "frames dropped as malformed", st.bad_frames)
        yield _gauge("derecho_clients", "client connections", st.clients)
        yield from _shard_metrics(core)
        total = CounterMetricFamily(
            "derecho_shard_delivered_messages",
            "messages delivered since the node started (rate() of it: delivered/s)",
            labels=["shard"],
        )
        for sid, n in st.delivered_total:
            total.add_metric([sid], n)
        yield total
        sent = CounterMetricFamily("derecho_peer_sent_bytes", "bytes of frames sent to a peer node", labels=["peer"])
        received = CounterMetricFamily(
            "derecho_peer_received_bytes", "bytes received from a peer node", labels=["peer"]
        )
        for peer, out_bytes, in_bytes in st.traffic:
            sent.add_metric([str(peer)], out_bytes)
            received.add_metric([str(peer)], in_bytes)
        yield from (sent, received)
        yield from _app_metrics(st.app or AppStatus())


def _shard_metrics(core: CoreStatus) -> Iterator[Metric]:
    delivered = GaugeMetricFamily("derecho_shard_delivered", "messages delivered in this view", labels=["shard"])
    frontier = GaugeMetricFamily("derecho_shard_persisted_frontier", "persistence frontier", labels=["shard"])
    lag = GaugeMetricFamily(
        "derecho_member_persistence_lag",
        "versions a member is behind the most advanced",
        labels=["shard", "member"],
    )
    behind = GaugeMetricFamily(
        "derecho_member_delivery_lag",
        "messages a member delivered fewer than this node",
        labels=["shard", "member"],
    )
    window = GaugeMetricFamily(
        "derecho_shard_window_used", "messages of this node's send window in flight", labels=["shard"]
    )
    window_size = GaugeMetricFamily("derecho_shard_window_size", "send window size (messages)", labels=["shard"])
    for shard in core.shards:
        sid = shard.shard
        delivered.add_metric([sid], shard.delivered)
        if shard.window_free is not None:
            window.add_metric([sid], shard.window_size - shard.window_free)
            window_size.add_metric([sid], shard.window_size)
        frontier.add_metric([sid], shard.persisted_frontier)
        for m in shard.members:
            lag.add_metric([sid, str(m.node)], m.persistence_lag)
            behind.add_metric([sid, str(m.node)], max(0, shard.delivered - m.delivered))
    yield from (delivered, frontier, lag, behind, window, window_size)


def _app_metrics(app: AppStatus) -> Iterator[Metric]:
    serving = GaugeMetricFamily("derecho_replica_serving", "1 if the replica serves", labels=["shard"])
    for sid, state in app.replicas.items():
        serving.add_metric([sid], state == "serving")
    yield serving
    yield _counter("derecho_state_transfers_sent", "state transfers this node sent", app.transfers_sent)
    yield _counter(
        "derecho_shards_restarted_empty",
        "shards this node started anew because every replica holding their state was gone",
        app.shards_restarted_empty,
    )
    yield _gauge(
        "derecho_shards_awaiting_log",
        "shards of this node's layout waiting for a node that held them last to come back with its log",
        app.shards_awaiting_log,
    )
    yield _counter("derecho_state_transfer_sent_bytes", "bytes of finished state transfers", app.transfer_bytes_sent)
    active = GaugeMetricFamily(
        "derecho_state_transfer_progress_bytes", "bytes sent so far by a transfer under way", labels=["shard", "to"]
    )
    for sid, to, sent_bytes in app.transfers_active:
        active.add_metric([sid, str(to)], sent_bytes)
    yield active
    digests = CounterMetricFamily("derecho_digest_mismatches", "state digests that differed", labels=["shard"])
    for shard in app.digests:
        digests.add_metric([shard.shard], shard.mismatches)
    yield digests
    yield from _client_calls(app.client_calls)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, text)
    g.add_metric([], float(value))
    return g


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, text)
    c.add_metric([], float(value))
    return c


def _client_calls(calls: ClientCalls) -> Iterator[Metric]:
    counts = CounterMetricFamily(
        "derecho_client_calls", "clients' calls through this node", labels=["method", "outcome"]
    )
    for c in calls.calls:
        counts.add_metric([c.method, c.outcome], c.calls)
    yield counts
    hist = HistogramMetricFamily(
        "derecho_client_call_seconds",
        "time from a client's call to its first answer, at its contact",
        labels=["method"],
    )
    bounds = [*calls.bounds_ms, float("inf")]
    for m in calls.latency:
        running, buckets = 0, []
        for bound, n in zip(bounds, m.buckets):
            running += n
            buckets.append((str(bound / 1000) if bound != float("inf") else "+Inf", running))
        hist.add_metric([m.method], buckets, m.sum_ms / 1000)
    yield hist


HEAD_LIMIT = 8 << 10  # bytes of a request line and headers, at most
SNAPSHOT_THREADS = 2  # threads that wait for the node loop's status snapshots

NON_LOOPBACK_WARNING = (
    "metrics and health on %s without TLS: anyone who can reach this address reads the group's "
    "view, members, per-peer traffic and per-method call counts; bind it to 127.0.0.1, restrict "
    "it (firewall, NetworkPolicy), or set security.metrics_tls = true"
)


class MetricsServer:
    """HTTP(S) server for ``/metrics`` and ``/health/...`` on its own thread, with a
    connection cap and a deadline per connection (see the module's docstring).

    The socket is bound in the constructor, so a busy port fails at start-up as an OSError;
    ``start`` runs the loop thread, ``stop`` closes everything and waits for the thread."""

    def __init__(
        self,
        address: str,
        snapshot: Snapshot,
        *,
        max_connections: int = 32,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        refusal: Callable[[ssl.SSLObject | None], str | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(snapshot))
        self.snapshot = snapshot
        self.max_connections = max_connections
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.refusal = refusal  # why a TLS peer may not scrape (revoked), None: it may
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
        self._sock.setblocking(False)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.host = host
        self.address = f"{bound_host!s}:{bound_port}"
        self.scheme = "https" if ssl_context is not None else "http"
        # Counters for tests and logs: connections open now, refused at the cap, cut at the deadline.
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self.served = 0
        self._warnings = RateLimitedLog(log, interval=30.0, burst=1)
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(SNAPSHOT_THREADS, thread_name_prefix="derecho-metrics-snapshot")
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, name="derecho-metrics", daemon=True)
        self._ready = threading.Event()

    @classmethod
    def for_node(cls, config: NodeConfig, snapshot: Snapshot, security: TransportSecurity) -> MetricsServer:
        """The endpoint ``config`` asks for: its limits, and with ``security.metrics_tls`` the
        node's own server TLS context (a client certificate of the cluster CA required) and
        its revocation list. Raises ConfigError when TLS is asked for without certificates,
        OSError when the address cannot be bound."""
        context = None
        refusal = None
        if config.security.metrics_tls:
            if security.server_context is None:
                raise ConfigError(
                    "security.metrics_tls = true needs the node's certificates (security.certs_dir), "
                    "but it runs with security.insecure"
                )
            context = security.server_context
            refusal = security.revocation.refusal if security.revocation is not None else None
        return cls(
            config.node.metrics,
            snapshot,
            max_connections=config.limits.metrics_max_connections,
            timeout=config.limits.metrics_timeout_ms / 1000,
            ssl_context=context,
            refusal=refusal,
        )

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        log.info(
            "metrics and health on %s://%s (/metrics, /health/live, /health/ready; at most %d connections, "
            "%.1f s each)",
            self.scheme,
            self.address,
            self.max_connections,
            self.timeout,
        )
        if self.ssl_context is None and not _loopback(self.host):
            log.warning(NON_LOOPBACK_WARNING, self.address)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, sock=self._sock, limit=HEAD_LIMIT)
            )
        finally:
            self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if self.active >= self.max_connections:
            self.refused += 1
            writer.transport.abort()
            self._warnings.warning(
                ("cap", who.rpartition(":")[0]),
                "metrics endpoint: %d connections open (limits.metrics_max_connections), closing new ones "
                "at once; the latest from %s",
                self.active,
                who,
            )
            return
        self.active += 1
        try:
            async with asyncio.timeout(self.timeout):
                if self.ssl_context is not None:
                    await writer.start_tls(self.ssl_context)
                    why = self.refusal(writer.get_extra_info("ssl_object")) if self.refusal is not None else None
                    if why is not None:
                        self._warnings.warning(("revoked", who), "metrics endpoint: refusing %s: %s", who, why)
                        return
                head = await reader.readuntil(b"\r\n\r\n")
                try:
                    code, body, kind = await self._respond(head)
                except Exception:  # a bug in a collector must cost one answer, not the endpoint
                    log.exception("metrics endpoint: answering %s failed", who)
                    code, body, kind = 500, b"internal error; see the node's log\n", "text/plain"
                writer.write(_response(code, body, kind))
                await writer.drain()
                self.served += 1
        except TimeoutError:
            self.timed_out += 1
            self._warnings.warning(
                ("timeout", who.rpartition(":")[0]),
                "metrics endpoint: closing %s, no whole request and answer within %.1f s (limits.metrics_timeout_ms)",
                who,
                self.timeout,
            )
        except asyncio.LimitOverrunError:
            try:
                writer.write(_response(431, b"request head too large\n", "text/plain"))
            except (OSError, RuntimeError):
                pass
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ConnectionError, RuntimeError) as exc:
            log.debug("metrics endpoint: %s: %s", who, exc)
        finally:
            self.active -= 1
            writer.transport.abort()

    async def _respond(self, head: bytes) -> tuple[int, bytes, str]:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, b"bad request\n", "text/plain"
        method, target = parts[0], parts[1]
        if method != "GET":
            return 405, b"only GET\n", "text/plain"
        path = target.split("?", 1)[0]
        return await self._loop.run_in_executor(self._pool, self._answer, path)

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        """Runs on a snapshot thread: the snapshot waits for the node's loop."""
        if path == "/metrics":
            return 200, generate_latest(self.registry), "text/plain; version=0.0.4; charset=utf-8"
        if path in ("/health/live", "/health/ready"):
            st = self.snapshot()
            ok, why = (st is not None, "live" if st is not None else "the node's loop does not answer")
            if path == "/health/ready":
                ok, why = readiness(st)
            body = json.dumps({"ok": ok, "why": why, "node": (st or {}).get("node"), "vid": (st or {}).get("vid")})
            return 200 if ok else 503, body.encode(), "application/json"
        return 404, b"not found: try /metrics, /health/live or /health/ready\n", "text/plain"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Too Large",
    503: "Unavailable",
}


def _response(code: int, body: bytes, kind: str) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _loopback(host: str) -> bool:
    """Whether ``host`` (as configured) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
