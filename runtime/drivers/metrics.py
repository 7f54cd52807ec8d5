"""The node's metrics and health endpoint (``node.metrics = "host:port"``).

``GET /metrics`` answers in Prometheus' text format; ``GET /health/live`` says whether the
node's loop answers (200) or not (503); ``GET /health/ready`` whether the node is in a view
whose layout is adequate and every replica it holds serves (200) or not (503, with why), for
readiness probes. Every scrape takes one snapshot of the node's ``status`` on its loop (the
same data as ``derecho-actors status``), so the figures are consistent with each other and
the endpoint costs nothing between scrapes. The server runs on its own thread.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from runtime.drivers.tcp import split_address

log = logging.getLogger("derecho.metrics")

Snapshot = Callable[[], dict[str, Any] | None]
"""The node's status taken on its loop, or None if the loop did not answer in time."""


def readiness(status: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether a node with this status is ready to serve, and why not."""
    if status is None:
        return False, "the node's loop does not answer"
    if status.get("joining") or "vid" not in status:
        return False, "not in a view yet"
    if status.get("excluded"):
        return False, f"stopped: {status['excluded']}"
    if not status.get("adequate", False):
        return False, f"the view is too small for the layout: {status.get('shortfall', '')}"
    app = status.get("app", {})
    if app.get("stopped"):
        return False, f"stopped: {app['stopped']}"
    waiting = {s: r for s, r in app.get("replicas", {}).items() if r != "serving"}
    if waiting:
        return False, "; ".join(f"{s}: {r}" for s, r in sorted(waiting.items()))
    return True, "ready"


class StatusCollector:
    """Prometheus metrics from one status snapshot (see the module's docstring)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        st = self.snapshot()
        up = GaugeMetricFamily("derecho_up", "1 if the node's loop answered this scrape")
        up.add_metric([], 0 if st is None else 1)
        yield up
        if st is None:
            return
        ready, _ = readiness(st)
        yield _gauge("derecho_ready", "1 if in an adequate view with every replica serving", ready)
        if "vid" in st:
            yield _gauge("derecho_view_id", "id of the installed view", st["vid"])
            yield _gauge("derecho_members", "members of the installed view", len(st.get("members", [])))
            yield _gauge("derecho_leader", "1 if this node leads the view", st.get("leader") == st.get("node"))
            yield _gauge("derecho_suspected_members", "members this node suspects", len(st.get("suspected", [])))
        yield _counter(
            "derecho_views_installed", "views this node installed since it started", st.get("views_installed", 0)
        )
        yield _counter("derecho_bad_frames", "frames dropped as malformed", st.get("bad_frames", 0))
        yield _gauge("derecho_clients", "client connections", st.get("clients", 0))
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
        for shard in st.get("shards", []):
            sid = shard["shard"]
            delivered.add_metric([sid], shard.get("delivered", 0))
            if shard.get("window_free") is not None:
                window.add_metric([sid], shard["window_size"] - shard["window_free"])
                window_size.add_metric([sid], shard["window_size"])
            frontier.add_metric([sid], shard.get("persisted_frontier", -1))
            for m in shard.get("members", []):
                lag.add_metric([sid, str(m["node"])], m.get("persistence_lag", 0))
                behind.add_metric([sid, str(m["node"])], max(0, shard.get("delivered", 0) - m.get("delivered", 0)))
        yield from (delivered, frontier, lag, behind, window, window_size)
        total = CounterMetricFamily(
            "derecho_shard_delivered_messages",
            "messages delivered since the node started (rate() of it: delivered/s)",
            labels=["shard"],
        )
        for sid, n in st.get("delivered_total", []):
            total.add_metric([sid], n)
        yield total
        sent = CounterMetricFamily("derecho_peer_sent_bytes", "bytes of frames sent to a peer node", labels=["peer"])
        received = CounterMetricFamily(
            "derecho_peer_received_bytes", "bytes received from a peer node", labels=["peer"]
        )
        for peer, out_bytes, in_bytes in st.get("traffic", []):
            sent.add_metric([str(peer)], out_bytes)
            received.add_metric([str(peer)], in_bytes)
        yield from (sent, received)
        app = st.get("app", {})
        serving = GaugeMetricFamily("derecho_replica_serving", "1 if the replica serves", labels=["shard"])
        for sid, state in app.get("replicas", {}).items():
            serving.add_metric([sid], state == "serving")
        yield serving
        yield _counter("derecho_state_transfers_sent", "state transfers this node sent", app.get("transfers_sent", 0))
        yield _counter(
            "derecho_state_transfer_sent_bytes", "bytes of finished state transfers", app.get("transfer_bytes_sent", 0)
        )
        active = GaugeMetricFamily(
            "derecho_state_transfer_progress_bytes", "bytes sent so far by a transfer under way", labels=["shard", "to"]
        )
        for sid, to, sent_bytes in app.get("transfers_active", []):
            active.add_metric([sid, str(to)], sent_bytes)
        yield active
        digests = CounterMetricFamily("derecho_digest_mismatches", "state digests that differed", labels=["shard"])
        for sid, entry in app.get("digests", {}).items():
            digests.add_metric([sid], entry.get("mismatches", 0))
        yield digests
        yield from _client_calls(app.get("client_calls", {}))


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, text)
    g.add_metric([], float(value))
    return g


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, text)
    c.add_metric([], float(value))
    return c


def _client_calls(calls: dict[str, Any]) -> Iterator[Metric]:
    counts = CounterMetricFamily(
        "derecho_client_calls", "clients' calls through this node", labels=["method", "outcome"]
    )
    for method, outcome, n in calls.get("calls", []):
        counts.add_metric([method, outcome], n)
    yield counts
    hist = HistogramMetricFamily(
        "derecho_client_call_seconds",
        "time from a client's call to its first answer, at its contact",
        labels=["method"],
    )
    bounds = calls.get("bounds_ms", [])
    for method, entry in calls.get("latency_ms", {}).items():
        running, buckets = 0, []
        for bound, n in zip([*bounds, float("inf")], entry["buckets"]):
            running += n
            buckets.append((str(bound / 1000) if bound != float("inf") else "+Inf", running))
        hist.add_metric([method], buckets, entry["sum"] / 1000)
    yield hist


class MetricsServer:
    """HTTP server for ``/metrics`` and ``/health/...`` on its own thread."""

    def __init__(self, address: str, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(snapshot))
        self.snapshot = snapshot
        host, port = split_address(address)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                server._answer(self)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics %s: " + fmt, self.address_string(), *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="derecho-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics and health on http://%s (/metrics, /health/live, /health/ready)", self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(req, 200, generate_latest(self.registry), "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/health/live", "/health/ready"):
            st = self.snapshot()
            ok, why = (st is not None, "live" if st is not None else "the node's loop does not answer")
            if path == "/health/ready":
                ok, why = readiness(st)
            body = json.dumps({"ok": ok, "why": why, "node": (st or {}).get("node"), "vid": (st or {}).get("vid")})
            self._send(req, 200 if ok else 503, body.encode(), "application/json")
        else:
            self._send(req, 404, b"not found: try /metrics, /health/live or /health/ready\n", "text/plain")

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, body: bytes, kind: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", kind)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
