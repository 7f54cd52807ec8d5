"""Real node processes on loopback: ordering, kill -9 of members and of the leader, joins.

Every node logs each delivered message as one line ``vid shard g sender k node:seq``; the
tests compare those logs across nodes, per view.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pytest

from derecho_actors.tools.multicast_demo import MulticastCluster
from derecho_actors.tools.ports import free_ports

pytestmark = pytest.mark.timeout(180)

FAST = ["--set", "timeouts.heartbeat_ms=20", "--set", "timeouts.suspicion_ms=400"]


def _free_base(n: int) -> int:
    """A base port such that base+1 .. base+n are free on loopback right now, below the
    ephemeral range (a port from it may go to a node's outgoing connection first)."""
    return free_ports(n + 1, consecutive=True)[0]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MulticastCluster]:
    c = MulticastCluster(tmp_path, _free_base(12), cluster="test", extra=FAST)
    try:
        yield c
    finally:
        c.stop_all()


def per_view(lines: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        out[int(line.split(" ", 1)[0])].append(line)
    return out


def start_group(c: MulticastCluster, ids: list[int], send: int, wait_members: int | None = None) -> None:
    c.start(ids[0], send=send, wait_members=wait_members or len(ids))
    c.wait_for(lambda: "vid" in c.status(ids[0]), 15, "the founder")
    for n in ids[1:]:
        c.start(n, send=send, contact=ids[0], wait_members=wait_members or len(ids))
    c.wait_view(set(ids), timeout=30)
    for n in ids:  # every node has installed it itself, not only the one asked first
        c.wait_view(set(ids), timeout=30, via=n)


def installed_views(c: MulticastCluster, node: int) -> set[int]:
    text = (c.workdir / f"node-{node}.log").read_text()
    return {int(m) for m in re.findall(r"view (\d+) installed", text)}


def assert_virtually_synchronous(c: MulticastCluster, nodes: list[int]) -> None:
    """Per view: the nodes that went on to the next view delivered exactly the same messages
    in it; every other node (killed, or still in it when stopped) delivered a prefix of that."""
    logs = {n: per_view(c.deliveries(n)) for n in nodes}
    views = {n: installed_views(c, n) for n in nodes}
    for vid in sorted({v for log in logs.values() for v in log}):
        movers = [n for n in nodes if vid + 1 in views[n]]
        seqs = {n: logs[n].get(vid, []) for n in nodes}
        ref = seqs[movers[0]] if movers else max(seqs.values(), key=len)
        for n in movers:
            assert seqs[n] == ref, (
                f"node {n} delivered {len(seqs[n])} messages in view {vid}, node {movers[0]} {len(ref)}"
            )
        for n in nodes:
            assert seqs[n] == ref[: len(seqs[n])], (
                f"node {n}'s deliveries in view {vid} are not a prefix of the others'"
            )


@pytest.mark.parametrize("nodes, per_node", [(3, 5000), (5, 2000)])
def test_all_nodes_deliver_the_same_sequence(cluster: MulticastCluster, nodes: int, per_node: int) -> None:
    ids = list(range(1, nodes + 1))
    start_group(cluster, ids, per_node)
    total = nodes * per_node
    cluster.wait_for(lambda: all(len(cluster.deliveries(n)) >= total for n in ids), 120, f"{total} deliveries", 0.2)
    time.sleep(0.3)
    logs = [cluster.deliveries(n) for n in ids]
    assert all(len(log) == total for log in logs)
    assert all(log == logs[0] for log in logs), "nodes delivered different sequences"
    # Every node's messages are all there, each in its send order.
    for sender in ids:
        seqs = [int(line.split()[-1].split(":")[1]) for line in logs[0] if line.split()[-1].startswith(f"{sender}:")]
        assert seqs == list(range(per_node))


@pytest.mark.parametrize("victim", ["member", "leader"])
def test_kill_9_under_load(cluster: MulticastCluster, victim: str) -> None:
    ids = [1, 2, 3, 4]
    start_group(cluster, ids, 300000)  # far more than is delivered before the kill (the survivors are killed)
    cluster.wait_for(lambda: len(cluster.deliveries(1)) > 5000, 60, "load to flow", 0.05)
    dead = 1 if victim == "leader" else 3
    t0 = time.monotonic()
    cluster.kill(dead)
    assert len(cluster.deliveries(2)) < 4 * 300000, "the load finished before the kill"
    survivors = [n for n in ids if n != dead]
    view = cluster.wait_view(set(survivors), timeout=20, via=survivors[0])
    took = time.monotonic() - t0
    assert took < 5, f"view change took {took:.2f} s"
    assert view["leader"] == view["members"][0][0] != dead
    # The survivors keep delivering in the new view.
    cluster.wait_for(
        lambda: all(view["vid"] in per_view(cluster.deliveries(n)) for n in survivors),
        30,
        "deliveries in the new view",
        0.1,
    )
    for n in survivors:
        cluster.kill(n, signal.SIGKILL)
    assert_virtually_synchronous(cluster, ids)
    # The view the kill ended was left by every survivor with the same deliveries.
    assert all(view["vid"] in installed_views(cluster, n) for n in survivors)


def test_node_joins_mid_stream(cluster: MulticastCluster) -> None:
    ids = [1, 2, 3]
    start_group(cluster, ids, 300000)
    cluster.wait_for(lambda: cluster.delivered_count(1) > 5000, 60, "load to flow", 0.05)
    # The joiner sends too: the others' 300,000 each may all be delivered before it is in (a
    # faster data plane, a slow start on a loaded machine), and it must still deliver in its
    # first view, the others answering its slots with nulls once they are idle.
    cluster.start(4, contact=2, send=3000, wait_members=4)
    view = cluster.wait_view({1, 2, 3, 4}, timeout=20)
    cluster.wait_for(
        lambda: len(per_view(cluster.deliveries(4)).get(view["vid"], [])) > 1000, 60, "node 4 delivering", 0.1
    )
    for n in [1, 2, 3, 4]:
        cluster.kill(n, signal.SIGKILL)
    logs = {n: per_view(cluster.deliveries(n)) for n in [1, 2, 3, 4]}
    assert min(logs[4]) == view["vid"], "the joiner delivered nothing before the view that admitted it"
    for vid, seq in logs[4].items():
        for n in (1, 2, 3):
            other = logs[n].get(vid, [])
            shorter = min(len(seq), len(other))
            assert seq[:shorter] == other[:shorter], f"node 4 and node {n} disagree in view {vid}"
    assert len(logs[4][view["vid"]]) > 1000


def test_graceful_leave_on_sigterm(cluster: MulticastCluster) -> None:
    ids = [1, 2, 3]
    start_group(cluster, ids, 0)
    cluster.kill(2, signal.SIGTERM)
    cluster.wait_view({1, 3}, timeout=20)
    assert cluster.procs[2].wait(10) == 0
    log = (cluster.workdir / "node-2.log").read_text()
    assert "left the group" in log


def test_status_shows_the_group(cluster: MulticastCluster) -> None:
    import subprocess
    import sys

    start_group(cluster, [1, 2, 3], 100)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "derecho_actors.tools.cli",
            "status",
            "--contact",
            cluster.address(2),
            "--cluster",
            "test",
            "--certs-dir",
            str(cluster.certs_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "leader node 1" in out.stdout and "127.0.0.1:" in out.stdout and "default/0/0" in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "derecho_actors.tools.cli",
            "status",
            "--contact",
            "127.0.0.1:1",
            "--timeout",
            "1",
            "--certs-dir",
            str(cluster.certs_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0 and "cannot reach" in bad.stderr and bad.stderr.count("\n") == 1
