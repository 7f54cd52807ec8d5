"""Each example runs as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def test_kv_store_example_demo() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "kv_store.py"), "demo"], capture_output=True, text=True, timeout=150
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "100 keys written" in out.stdout


def test_kv_demo_command_reports_no_lost_write(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "derecho_actors.tools.cli",
            "demo",
            "--nodes",
            "4",
            "--writes",
            "600",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "every acknowledged write survived the failure" in out.stdout
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the demo left node processes behind"


def test_demo_refuses_an_odd_node_count() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "derecho_actors.tools.cli", "demo", "--nodes", "3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--nodes" in out.stderr


def test_counter_and_lock_example_releases_a_failed_holders_lock() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "counter_lock.py"), "demo"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "counter reached 500" in out.stdout and "replicas agree: True" in out.stdout
    assert "node 1 tries it: {False}" in out.stdout
    assert "after node 3 failed, holder is {None}" in out.stdout and "node 1 tries again: {True}" in out.stdout


def test_chat_example_same_transcript_everywhere() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "chat.py"), "demo"], capture_output=True, text=True, timeout=150
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "every member holds the same transcript: True" in out.stdout


def test_persistent_kv_example_survives_kill_9_of_every_node() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "persistent_kv.py"), "demo", "--writes", "2000"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "0 missing or different" in out.stdout and "restarted all 3" in out.stdout


def test_example_clients_fail_in_one_line_that_says_what_to_check(tmp_path: Path) -> None:
    """A wrong CA or a port nobody listens on: one line naming the problem and what to check,
    exit code 1, no traceback."""
    import derecho_actors as da
    from derecho_actors.tools.cluster import _free_ports
    from examples.kv_store import KV
    from runtime.security.certs import ensure_cluster_certs

    other = tmp_path / "other-ca"
    ensure_cluster_certs(other, [], clients=("operator",), cluster="derecho")

    def kv(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(ROOT / "examples" / "kv_store.py"), *args, "--certs-dir", str(other)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)

    (closed,) = _free_ports(1)
    out = kv("get", "animal", "--contact", f"127.0.0.1:{closed}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("kv_store.py: error: no contact reachable") and "check --contact" in lines[0]
    layout = da.Layout({KV: da.ShardPolicy(shards=2)})
    with da.local_cluster(nodes=2, types=[KV], layout=layout, cluster="derecho", workdir=str(tmp_path / "w")) as c:
        out = kv("put", "animal", "otter", "--contact", c.address(1))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "check --certs-dir" in lines[0], lines[0]
