"""A node under hostile input keeps serving; a bad config ends with one clear line."""

from __future__ import annotations

import random
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from derecho_actors.tools.multicast_demo import MulticastCluster
from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, JoinRequest, ShardPush
from runtime.core.sst import RowDelta
from runtime.security.certs import ensure_cluster_certs
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import encode, frame
from runtime.wire.control import Hello
from tests.drivers.test_cluster import FAST, _free_base, start_group

pytestmark = pytest.mark.timeout(180)


def _blast(address: str, chunks: list[bytes], tls: ssl.SSLContext | None = None) -> None:
    """Send ``chunks`` on one connection (TLS with ``tls``'s certificate if given)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as raw:
            s = tls.wrap_socket(raw) if tls is not None else raw
            for c in chunks:
                s.sendall(c)
            s.settimeout(0.2)
            try:
                s.recv(1024)
            except (socket.timeout, OSError):
                pass
    except OSError:
        pass  # the node may cut us off mid-way: that is its right


def _garbage(rng: random.Random) -> list[list[bytes]]:
    """Connections' worth of nonsense: random bytes, absurd lengths, valid frames cut short,
    frames that decode but lie (wrong rank, unknown shard, stranger's node id)."""
    hello = frame(Hello(99, "test", "member"))
    lies = [
        ShardPush(0, ShardId("default", 0, 0), 0, None, 0, (b"x",)),
        GroupPush(10**6, 0, RowDelta(0, 1, {"suspected": (1, 1, 1)})),
        GroupPush(1, 0, RowDelta(0, 9, {"heartbeat": "many"})),
        JoinRequest(5, "nowhere:1"),
    ]
    lying = [frame(m) for m in lies]
    out: list[list[bytes]] = []
    for _ in range(30):
        kind = rng.randrange(6)
        if kind == 0:
            out.append([rng.randbytes(rng.randrange(1, 4096))])
        elif kind == 1:
            out.append([struct.pack(">I", rng.choice([0, 2**31, 2**32 - 1])) + rng.randbytes(64)])
        elif kind == 2:
            f = rng.choice(lying)
            out.append([hello, f[: rng.randrange(1, len(f))]])
        elif kind == 3:
            out.append([hello] + rng.sample(lying, len(lying)))
        elif kind == 4:
            body = bytearray(encode(rng.choice(lies)))
            for _ in range(3):
                body[rng.randrange(len(body))] = rng.randrange(256)
            out.append([hello, struct.pack(">I", len(body)) + bytes(body)])
        else:
            out.append([frame(Hello(1, "other-cluster", "member")), rng.randbytes(100)])
    return out


def test_random_and_truncated_frames_do_not_disturb_the_group(tmp_path: Path) -> None:
    with MulticastCluster(tmp_path, _free_base(6), cluster="test", extra=FAST) as c:
        ids = [1, 2, 3]
        start_group(c, ids, 6000)
        rng = random.Random(1234)
        # Half the garbage comes from strangers (stopped by the TLS handshake), half from a
        # holder of a valid certificate of the cluster (node 99): the frame layer's turn.
        insider = load_credentials(TlsCredentials.for_node(ensure_cluster_certs(c.certs_dir, [99]), 99), "node", 99)
        ctx = insider.client_context()
        for i, chunks in enumerate(_garbage(rng)):
            _blast(c.address(rng.choice(ids)), chunks, ctx if i % 2 else None)
        total = 3 * 6000
        c.wait_for(lambda: all(len(c.deliveries(n)) >= total for n in ids), 120, f"{total} deliveries", 0.2)
        assert all(c.procs[n].poll() is None for n in ids), "a node died from garbage input"
        logs = [c.deliveries(n) for n in ids]
        assert all(log == logs[0] for log in logs)
        view = c.status(1)
        assert view["vid"] >= 1 and {m for m, _ in view["members"]} == set(ids) and not view["suspected"]
        log = (tmp_path / "node-1.log").read_text() + (tmp_path / "node-2.log").read_text()
        assert "TLS handshake with" in log
        assert "bad frame" in log or "cannot be re-synchronised" in log


def _node(args: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``derecho-actors node`` (node 1, with a certificate from a CA made in ``cwd``)."""
    certs = ensure_cluster_certs(cwd / "certs", [1])
    return subprocess.run(
        [sys.executable, "-m", "derecho_actors.tools.cli", "node", "--certs-dir", str(certs), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


BAD_CONFIGS = [
    ("[node]\nid = -3\n", "node.id"),
    ('[node]\nid = "one"\n', "node.id"),
    ('[node]\nlisten = "localhost"\n', "node.listen"),
    ("[nodes]\nid = 1\n", "nodes"),
    ("[timeouts]\nhearbeat_ms = 5\n", "hearbeat_ms"),
    ("[timeouts]\nheartbeat_ms = 500\nsuspicion_ms = 100\n", "suspicion_ms"),
    ("[multicast]\nwindow_size = 0\n", "window_size"),
    ("[layout.KV]\nmin_nodes = 3\nmax_nodes = 2\n", "layout.KV"),
    ("[node\nid = 1\n", "line"),
]


@pytest.mark.parametrize("text, field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_config_is_one_line_and_nonzero_exit(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    out = _node(["--config", str(path)], tmp_path)
    assert out.returncode == 2
    assert field in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_missing_config_file_and_bad_flag(tmp_path: Path) -> None:
    out = _node(["--config", str(tmp_path / "absent.toml")], tmp_path)
    assert out.returncode == 2 and "absent.toml" in out.stderr and out.stderr.count("\n") == 1
    out = _node(["--set", "node.id"], tmp_path)
    assert out.returncode == 2 and "node.id" in out.stderr and out.stderr.count("\n") == 1


def test_port_in_use_and_unreachable_contact(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _node(["--listen", f"127.0.0.1:{port}"], tmp_path)
        assert out.returncode == 2 and "node.listen" in out.stderr and out.stderr.count("\n") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    started = time.monotonic()
    out = _node(
        ["--listen", f"127.0.0.1:{free}", "--contact", f"127.0.0.1:{dead}", "--set", "timeouts.connect_timeout_ms=500"],
        tmp_path,
    )
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]  # after the node's own log lines
    assert "node.contacts" in last and "no contact reachable" in last
    assert "Traceback" not in out.stderr and time.monotonic() - started < 20
