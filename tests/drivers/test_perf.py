"""The multicast measurement (``python -m bench.multicast``) and the load app's fast
paths: rates and percentiles, the in-process core run, one real run on loopback, and the
delivery log format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.multicast import main, percentile, steady_rate
from derecho_actors.tools.load_app import LoadApp, payload, payloads
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId

ROOT = Path(__file__).resolve().parents[2]


def test_steady_rate_counts_between_ten_and_ninety_percent() -> None:
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    counts = [0, 10, 30, 60, 90, 100]
    assert steady_rate(times, counts, 100) == pytest.approx((90 - 10) / (4.0 - 1.0))
    assert steady_rate([0.0], [5], 100) != steady_rate([0.0], [5], 100)  # nan: never reached


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 3.0
    assert percentile(list(map(float, range(100))), 99) == 99.0
    assert percentile([], 50) != percentile([], 50)


@pytest.mark.timeout(60)
def test_in_process_core_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["core", "--messages", "3000", "--repeat", "1"]) == 0
    assert "deliveries per CPU s per member" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_three_processes_on_loopback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.multicast", "--messages", "3000", "--latency"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("run 1:")][0]
    assert "msgs/s" in line and "p50" in line and "p99" in line


def test_load_payloads_are_numbered_and_padded() -> None:
    assert payload(3, 17, 12) == b"3:17:......."
    assert payload(3, 123456, 4) == b"3:123456:"  # longer than size if the prefix needs it
    assert payloads(2, 5, 3, 10) == [payload(2, s, 10) for s in (5, 6, 7)]


def test_delivery_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    app = LoadApp(1, 0, 100, path)
    shard = ShardId("T", 0, 0)
    app.on_deliver(Delivery(shard, 2, [(0, 1, 0, payload(1, 0, 100)), (1, 2, 0, payload(2, 7, 100))], 3))
    app.on_deliver(Delivery(shard, 4, [(2, 1, 1, b"x" * 40), (3, 2, 1, b"a:\xffb:c")], 3))
    app.close()
    assert path.read_text().splitlines() == [
        "3 T/0/0 0 1 0 1:0",
        "3 T/0/0 1 2 0 2:7",
        "3 T/0/0 2 1 1 " + (b"x" * 32).hex(),  # no "<node>:<seq>:" prefix: hex of 32 bytes
        "3 T/0/0 3 2 1 a:\ufffdb",
    ]
    assert app.delivered == 4
