"""What anyone who can connect may cost a node, on real node processes with small limits
(``security.*`` overrides): memory held for partly received frames stays within the receive
budget (RSS from /proc/<pid>/status), idle clients are closed, connections that never finish
their handshake are closed, and a flood of half-open connections is cut at
``max_unauthenticated`` while a legitimate Client still gets through afterwards."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from runtime.security.certs import ensure_cluster_certs
from runtime.wire.control import Hello, Ping, Pong, Welcome
from tests.security.rogue import Conn, client_context, rss_bytes, wait_until, warnings_of

pytestmark = pytest.mark.timeout(120)

FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "400"}
MB = 1 << 20
IDLE_S = 1.0
HANDSHAKE_S = 1.5
MAX_UNAUTH = 8
BUDGET = 16 * MB
LIMITS = {
    "security.client_idle_timeout_ms": str(int(IDLE_S * 1000)),
    "security.handshake_timeout_ms": str(int(HANDSHAKE_S * 1000)),
    "security.max_unauthenticated": str(MAX_UNAUTH),
    "security.receive_budget_bytes": str(BUDGET),
}
HUGE = 60 * MB  # the partial frame


@da.replicated
class Box:
    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.items[key] = value
        return len(self.items)

    @da.p2p
    def size(self) -> int:
        return len(self.items)


LAYOUT = da.Layout({Box: da.ShardPolicy(min_nodes=1)})


class Peak:
    """Samples a process's RSS every 20 ms on a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, AssertionError):
                return

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)


def partial_frame(conn: Conn, size: int, piece: int = 256 << 10, stall: float = 2.0) -> int:
    """Send a frame header announcing ``size`` bytes, then body bytes until ``size`` are out,
    the node closes the connection, or it stops reading for ``stall`` s; returns bytes sent."""
    conn.sock.settimeout(stall)
    sent = 0
    chunk = b"\x00" * piece
    try:
        conn.sock.sendall(struct.pack(">I", size))
        while sent < size - 1:
            n = min(piece, size - 1 - sent)
            conn.sock.sendall(chunk[:n])
            sent += n
    except (socket.timeout, TimeoutError, OSError):
        pass
    return sent


def serves(c: LocalCluster, n: int = 20, size: int = 20_000, timeout: float = 20) -> bool:
    """A client's ordered calls (large enough to arrive in pieces) all come back."""
    h = c.handle(Box)
    results = [h.put(f"k{i}-{time.monotonic_ns()}", b"v" * size) for i in range(n)]
    return all(r.get(timeout=timeout) for r in results)


# ----------------------------------------------------------------------- TLS, one node
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("limits")
    with LocalCluster(1, [Box], LAYOUT, overrides={**FAST, **LIMITS}, workdir=str(wd), cluster="lim") as c:
        ensure_cluster_certs(c.certs_dir, [], clients=("mallory",), cluster="lim")
        assert serves(c, 2)
        yield c


def test_idle_clients_are_closed_after_the_idle_timeout(node: LocalCluster) -> None:
    c = node
    ctx = client_context(c.certs_dir, "mallory")
    idle: list[tuple[Conn, float]] = []
    try:
        for i in range(50):
            conn = Conn(c.address(1), ctx)
            conn.hello_client(1000 + i, "lim")
            idle.append((conn, time.monotonic()))
        busy = Conn(c.address(1), ctx)  # the same, but pinging: it stays
        busy.hello_client(999, "lim")
        with busy:
            for k in range(8):
                busy.send(Ping(k))
                busy.read(0.3)
            for conn, opened in idle:
                assert conn.wait_closed(max(0.1, opened + IDLE_S + 3.0 - time.monotonic())), "an idle client was kept"
            assert not busy.closed, f"a pinging client was closed: {busy.goodbyes()}"
            assert sum(isinstance(m, Pong) for m in busy.received) >= 7
        for conn, _ in idle:
            assert any(isinstance(m, Welcome) for m in conn.received)
            assert any(g.startswith("idle") for g in conn.goodbyes()), conn.received
    finally:
        for conn, _ in idle:
            conn.close()
    assert serves(c, 2)


def test_handshake_timeout_closes_connections_that_never_finish(node: LocalCluster) -> None:
    c = node
    started = time.monotonic()
    with Conn(c.address(1)) as silent_tcp, Conn(c.address(1), client_context(c.certs_dir, "mallory")) as no_hello:
        # One never starts TLS; the other finished TLS but never says hello.
        assert silent_tcp.wait_closed(HANDSHAKE_S + 3.0)
        assert no_hello.wait_closed(max(0.1, started + HANDSHAKE_S + 3.0 - time.monotonic()))
        took = time.monotonic() - started
    assert HANDSHAKE_S * 0.6 <= took <= HANDSHAKE_S + 3.0, took
    assert any("no TLS handshake and hello within" in w for w in warnings_of(c.workdir, [1]))
    assert serves(c, 2)


def half_open(c: LocalCluster, n: int) -> list[socket.socket]:
    host, port = c.address(1).rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=2) for _ in range(n)]


def dropped(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets the node has closed or reset (a quick look at each)."""
    out = []
    for s in socks:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                out.append(s)
        except (socket.timeout, TimeoutError):
            pass
        except OSError:
            out.append(s)
    return out


def test_half_open_flood_is_cut_at_max_unauthenticated(node: LocalCluster) -> None:
    c = node
    flood = half_open(c, MAX_UNAUTH + 12)
    try:
        cut = wait_until(
            lambda: (lambda d: d if len(d) >= 12 else None)(dropped(flood)),
            HANDSHAKE_S * 0.5,
            "the connections beyond max_unauthenticated to be dropped",
        )
        assert len(cut) == 12, f"{len(cut)} of {len(flood)} dropped at once, {MAX_UNAUTH} may wait"
        # The ones that got a place are closed when their handshake time is up.
        wait_until(lambda: len(dropped(flood)) == len(flood), HANDSHAKE_S + 3, "the half-open connections to time out")
        with c.new_client() as client:
            assert all(client.handle(Box).put("after-flood", b"ok").get(timeout=20).values())
    finally:
        for s in flood:
            s.close()
    assert any("connections are already in their handshake" in w for w in warnings_of(c.workdir, [1]))


def test_client_started_during_a_half_open_flood_gets_in_when_it_ends(node: LocalCluster) -> None:
    c = node
    flood = half_open(c, MAX_UNAUTH)  # every place taken until the handshake timeout
    try:
        time.sleep(0.1)
        with c.new_client(connect_timeout=HANDSHAKE_S + 10) as client:
            assert all(client.handle(Box).put("during-flood", b"ok").get(timeout=20).values())
    finally:
        for s in flood:
            s.close()


def test_tls_client_partial_frames_stay_within_the_budget(node: LocalCluster) -> None:
    """8 clients (valid client certificates) each announce a 60 MB frame: a client's frame
    may be about max_message_size, so each is closed at once. Then 24 clients each send most
    of a 1 MB frame: together they pass the 16 MB budget, and those that would are closed."""
    c = node
    pid = c.procs[1].pid
    ctx = client_context(c.certs_dir, "mallory")
    base = rss_bytes(pid)
    with Peak(pid) as peak:
        huge: list[Conn] = []
        try:
            for i in range(8):  # each says hello at once (a silent one would count as half-open)
                huge.append(Conn(c.address(1), ctx))
                huge[-1].hello_client(2000 + i, "lim")
            for conn in huge:
                partial_frame(conn, HUGE, stall=1.0)
            assert all(conn.wait_closed(5) for conn in huge), "a client announcing a 60 MB frame was kept"
        finally:
            for conn in huge:
                conn.close()
        big: list[Conn] = []
        try:
            for i in range(24):
                big.append(Conn(c.address(1), ctx))
                big[-1].hello_client(3000 + i, "lim")
            for conn in big:
                partial_frame(conn, MB, stall=1.0)
            time.sleep(0.5)  # let the node read what it will
            closed = [conn.wait_closed(0.05) for conn in big]
            assert sum(closed) >= 24 - BUDGET // MB, f"only {sum(closed)} of 24 closed past the budget"
            assert serves(c, 5)
        finally:
            for conn in big:
                conn.close()
    grew = peak.peak - base
    assert grew < BUDGET + 48 * MB, f"RSS grew by {grew / MB:.0f} MB (budget {BUDGET // MB} MB)"
    assert any("would pass the receive budget" in w for w in warnings_of(c.workdir, [1]))


# ------------------------------------------------------------------- insecure mode
@pytest.fixture(scope="module")
def open_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("limits-open")
    with LocalCluster(
        1, [Box], LAYOUT, overrides={**FAST, **LIMITS}, workdir=str(wd), cluster="limo", insecure=True
    ) as c:
        assert serves(c, 2)
        yield c


def test_insecure_idle_clients_are_closed_too(open_node: LocalCluster) -> None:
    c = open_node
    conns: list[Conn] = []
    try:
        for i in range(50):
            conns.append(Conn(c.address(1)))
            conns[-1].hello_client(5000 + i, "limo")
            # One at a time: a connection counts as half-open until the node has read its hello.
            conns[-1].read(2.0, until=lambda got: any(isinstance(m, Welcome) for m in got))
        deadline = time.monotonic() + IDLE_S + 3.0
        assert all(conn.wait_closed(max(0.1, deadline - time.monotonic())) for conn in conns), "an idle client was kept"
        assert all(any(g.startswith("idle") for g in conn.goodbyes()) for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert serves(c, 2)


def hold_partial_frames(c: LocalCluster, node: int, n: int = 8) -> list[Conn]:
    """``n`` connections that said hello as members (ids 100..) each sending all of a 60 MB
    frame but its last byte, until the node stops reading; returns them still open."""
    conns: list[Conn] = []
    for i in range(n):
        conns.append(Conn(c.address(node)))
        conns[-1].hello_member(100 + i, "limo", incarnation=1 + i)
        conns[-1].read(2.0, until=lambda got: any(isinstance(m, Hello) for m in got))
    threads = [threading.Thread(target=partial_frame, args=(conn, HUGE, 256 << 10, 1.0)) for conn in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return conns


def test_insecure_member_partial_frames_keep_rss_bounded(open_node: LocalCluster) -> None:
    """Anyone can say hello as a member without TLS. Unbounded, the node would hold 480 MB;
    with a 16 MB budget it closes those connections (their ids are not in the view) and its RSS
    stays near the budget."""
    c = open_node
    pid = c.procs[1].pid
    base = rss_bytes(pid)
    conns: list[Conn] = []
    try:
        with Peak(pid) as peak:
            conns = hold_partial_frames(c, 1)
            time.sleep(0.3)
        grew = peak.peak - base
        assert grew < BUDGET + 48 * MB, f"RSS grew by {grew / MB:.0f} MB (budget {BUDGET // MB} MB)"
        assert any("closing node 10" in w and "receive budget" in w for w in warnings_of(c.workdir, [1]))
    finally:
        for conn in conns:
            conn.close()
    assert serves(c, 5)


def test_insecure_member_partial_frames_do_not_stall_the_group(tmp_path: Path) -> None:
    overrides = {**FAST, **LIMITS}
    with LocalCluster(3, [Box], LAYOUT, overrides=overrides, workdir=str(tmp_path), cluster="limo", insecure=True) as c:
        conns = hold_partial_frames(c, 1)
        try:
            # Calls through node 2, large enough that its pushes reach node 1 in several reads.
            with c.new_client(contacts=[c.address(2)]) as client:
                h = client.handle(Box)
                results = [h.put(f"big{i}", b"v" * (200 << 10)) for i in range(20)]
                assert all(set(r.get(timeout=3)) == {1, 2, 3} for r in results), "the group stopped answering"
        finally:
            for conn in conns:
                conn.close()
