"""The metrics endpoint under attack and its TLS (issue 19, "Metrics endpoint").

Before: a threaded HTTP server without timeouts; 400 half-sent requests held 400 threads and
~1,010 used every file descriptor of the node, so its member port stopped accepting. Now the
endpoint is one asyncio loop with a connection cap (``limits.metrics_max_connections``) and a
deadline per connection (``limits.metrics_timeout_ms``), optionally TLS with a client
certificate of the cluster's CA (``security.metrics_tls``).

The first tests run the server in this process with small limits (exact counts, fast); the
last ones run a real 3-node TLS group with ``metrics_tls`` on and throw 1,000 half-sent
requests at one node's metrics port while a client keeps putting and a new client connects
to the same node's member port.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import resource
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import CLIENT_NAME, LocalCluster
from runtime.drivers import metrics
from runtime.drivers.metrics import MetricsServer
from tests.security.rogue import bare_context, client_context, log_of, wait_until

pytestmark = pytest.mark.timeout(120)
log = logging.getLogger(__name__)

ATTACK = 1000
CAP = 32
DEADLINE_MS = 2000


@da.replicated
class Reg:
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    @da.ordered
    def put(self, key: str, value: int) -> int:
        self.data[key] = value
        return len(self.data)


# ------------------------------------------------------------------------------ helpers
def fake_status() -> dict[str, Any]:
    return {"node": 1, "vid": 3, "members": [[1, "a"], [2, "b"]], "adequate": True, "app": {"replicas": {}}}


def get(address: str, path: str = "/metrics", ctx: ssl.SSLContext | None = None, timeout: float = 5) -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read().decode()
    finally:
        conn.close()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Whether the other end closed ``sock`` (EOF or reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, socket.timeout):
        return False
    except OSError:
        return True


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """What a process's descriptors are (sockets, pipes, files...), for a failure's message."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target else target.rsplit("/", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This process opens over 1,000 sockets: raise its soft limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * ATTACK))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ----------------------------------------------------------------- the server, in-process
def test_connections_past_the_cap_are_closed_at_once_and_held_ones_at_the_deadline() -> None:
    server = MetricsServer("127.0.0.1:0", fake_status, max_connections=4, timeout=0.8)
    server.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port_of(server.address)))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        wait_until(lambda: server.active == 4, 5, "4 held connections")
        extra = socket.create_connection(("127.0.0.1", port_of(server.address)))
        started = time.monotonic()
        assert closed_by_peer(extra, 2.0), "a connection past the cap was kept"
        assert time.monotonic() - started < 0.5
        extra.close()
        assert server.refused >= 1
        # The held ones go at the deadline, not before.
        assert not closed_by_peer(socks[0], 0.3)
        for s in socks:
            assert closed_by_peer(s, 2.0), "a half-sent request outlived metrics_timeout"
        wait_until(lambda: server.active == 0, 5, "no connection left")
        assert server.timed_out == 4
        code, text = get(server.address)
        assert code == 200 and "derecho_up 1.0" in text
        code, text = get(server.address, "/health/ready")
        assert code == 200 and '"ok": true' in text
        assert get(server.address, "/nope")[0] == 404
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_a_request_head_past_8_kib_is_refused_and_post_is_not_served() -> None:
    server = MetricsServer("127.0.0.1:0", fake_status, max_connections=4, timeout=2)
    server.start()
    try:
        port = port_of(server.address)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (16 << 10) + b"\r\n\r\n")
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 431"), data[:40]
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            assert s.recv(4096).startswith(b"HTTP/1.1 405")
    finally:
        server.stop()


def test_a_failing_snapshot_costs_one_answer_not_the_endpoint() -> None:
    calls = []

    def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the status")
        return fake_status()

    server = MetricsServer("127.0.0.1:0", flaky, timeout=2)
    server.start()
    try:
        assert get(server.address)[0] == 500
        code, text = get(server.address)
        assert code == 200 and "derecho_up 1.0" in text
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("node1.example.org", False),
    ],
)
def test_which_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert metrics._loopback(host) is loopback


@pytest.mark.parametrize("loopback", [True, False])
def test_a_non_loopback_address_without_tls_is_warned_about(
    loopback: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests listen on loopback only: the address check is swapped instead of binding 0.0.0.0.
    monkeypatch.setattr(metrics, "_loopback", lambda host: loopback)
    server = MetricsServer("127.0.0.1:0", fake_status)
    with caplog.at_level(logging.INFO, logger="derecho.metrics"):
        server.start()
    server.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool([m for m in lines if "without TLS" in m and "metrics_tls" in m]) != loopback, lines


# ----------------------------------------------------------------- a real group, TLS on
def metrics_address(workdir: Path, node: int) -> str:
    def found() -> str | None:
        m = re.search(r"metrics and health on https://(\S+) \(", log_of(workdir, node))
        return m.group(1) if m else None

    return str(wait_until(found, 20, f"node {node}'s metrics address in its log"))


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("metrics")
    overrides = {
        "node.metrics": "127.0.0.1:0",
        "security.metrics_tls": "true",
        "limits.metrics_max_connections": str(CAP),
        "limits.metrics_timeout_ms": str(DEADLINE_MS),
        "timeouts.suspicion_ms": "1500",  # a busy 2-core machine must not look like a failure
    }
    with LocalCluster(3, [Reg], overrides=overrides, workdir=str(wd), cluster="met") as c:
        c.handle(Reg).put("seed", 0).get(timeout=20)
        yield c


def test_metrics_tls_requires_a_client_certificate_of_the_cluster_ca(group: LocalCluster) -> None:
    address = metrics_address(group.workdir, 2)
    code, text = get(address, ctx=client_context(group.certs_dir, CLIENT_NAME))
    assert code == 200 and "derecho_up 1.0" in text and "derecho_members 3.0" in text
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        get(address, ctx=bare_context())  # TLS without a certificate: refused in the handshake
    with pytest.raises((ConnectionError, http.client.HTTPException, TimeoutError)):
        get(address, timeout=3)  # plain HTTP: not served
    assert get(address, "/health/ready", ctx=client_context(group.certs_dir, CLIENT_NAME))[0] == 200


def test_1000_half_sent_requests_leave_the_member_port_and_the_group_serving(
    group: LocalCluster, many_fds: None
) -> None:
    c = group
    address = metrics_address(c.workdir, 1)
    host, port = address.rsplit(":", 1)
    pid = c.procs[1].pid
    fds_before, threads_before = fds(pid), threads(pid)

    # An honest client keeps putting through node 1 meanwhile; every put must succeed.
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def putter() -> None:
        with c.new_client(contacts=[c.address(1)]) as client:
            h = client.handle(Reg)
            i = 0
            while not stop.is_set():
                t = time.monotonic()
                try:
                    h.put(f"k{i}", i).get(timeout=20)
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    errors.append(exc)
                    return
                latencies.append(time.monotonic() - t)
                i += 1

    worker = threading.Thread(target=putter, daemon=True)
    worker.start()
    wait_until(lambda: len(latencies) >= 5, 30, "the honest client's first puts")
    held: list[socket.socket] = []
    ctx = client_context(c.certs_dir, CLIENT_NAME)
    try:
        # 40 authenticated scrapers that never finish their request, then 960 strangers: half
        # connect and say nothing, half send the start of a TLS record and stall.
        tls_held = 0
        for _ in range(40):
            raw = socket.create_connection((host, int(port)), timeout=5)
            try:
                tls_sock = ctx.wrap_socket(raw)
                tls_sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                held.append(tls_sock)
                tls_held += 1
            except (ssl.SSLError, OSError):
                raw.close()  # past the cap: closed before the handshake finished
        for i in range(ATTACK - 40):
            plain = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:
                plain.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            held.append(plain)
        opened = time.monotonic()
        assert tls_held <= CAP

        # The member port accepts a new client, which puts through node 1.
        with c.new_client(contacts=[c.address(1)]) as fresh:
            assert fresh.handle(Reg).put("fresh", 1).get(timeout=20)
        # The node holds at most CAP of them: the others were closed at once. "At once" is the
        # endpoint thread's next turns: on a busy 2-core machine (CI) it may still be accepting
        # and closing the tail of the 960 when we look, so the count may take a moment to
        # settle; what must never happen is that it stays above the cap.
        bound = fds_before + CAP + 16
        settle = time.monotonic() + 5
        while (fds_during := fds(pid)) > bound and time.monotonic() < settle:
            time.sleep(0.05)
        threads_during = threads(pid)
        assert fds_during <= bound, (fds_before, fds_during, fd_kinds(pid))
        assert threads_during <= threads_before + 3, (threads_before, threads_during)
        closed = sum(closed_by_peer(h, 0.001) for h in held[-200:])
        assert closed >= 200 - CAP, f"only {closed} of the last 200 connections were closed at once"
        # After the deadline none is left, and a normal scrape works.
        for h in held:
            assert closed_by_peer(h, max(0.01, opened + DEADLINE_MS / 1000 + 3 - time.monotonic())), (
                "a half-sent request outlived limits.metrics_timeout_ms"
            )
    finally:
        for h in held:
            h.close()
    code, text = get(address, ctx=ctx)
    assert code == 200 and "derecho_up 1.0" in text
    stop.set()
    worker.join(30)
    assert not errors, f"the honest client's put failed: {errors[0]!r}"
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    log.info(
        "honest puts during the attack: %d, p99 %.1f ms; node fds %d -> %d",
        len(latencies),
        p99 * 1000,
        fds_before,
        fds_during,
    )
    assert p99 < 5.0
    assert fds(pid) <= fds_before + 8, "descriptors of the attack were kept"
    st = c.status(1)
    assert sorted(m for m, _ in st["members"]) == [1, 2, 3], "a member left during the attack"
    warnings = [line for line in log_of(c.workdir, 1).splitlines() if "WARNING" in line and "metrics endpoint" in line]
    assert any("metrics_max_connections" in w for w in warnings), "the cap was not reported"
    assert len(warnings) <= 10, f"{len(warnings)} warning lines for one attack"
