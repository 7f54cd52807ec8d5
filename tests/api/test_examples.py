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
            "derecho_actors.cli",
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
        [sys.executable, "-m", "derecho_actors.cli", "demo", "--nodes", "3"], capture_output=True, text=True, timeout=30
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
