"""SST rows by one-sided writes between real node processes (issue 23), TLS on the control
connections, loopback only.

Three nodes on shared memory (every node writes its rows into its peers' boards, ``shm_rows``):
ordered calls sent through every node as contact (so every member multicasts) reach every
replica in one order; a kill -9 of a member still ends in a new view installed by the others
(its rows stop; the view change runs over the boards); its next start leaves nothing of the
killed process in /dev/shm; a view where one node talks TCP to everyone works alongside the
others' boards. Each node logs the first row that reaches it through a board, which the tests
look for, so a transport that silently fell back to frames would fail them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from tests.shm_support import files_of, own_cluster, wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]

FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "500", "node.transport": "shm"}
BOARD_LINE = "SST rows arrive by one-sided writes into"


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> Iterator[str]:
    with own_cluster(request) as name:
        yield name


@da.replicated
class Journal:
    def __init__(self) -> None:
        self.entries: list[str] = []

    @da.ordered
    def add(self, entry: str) -> int:
        self.entries.append(entry)
        return len(self.entries)

    @da.ordered
    def all(self) -> list[str]:
        return list(self.entries)


def boards_read(workdir: Path, node: int) -> list[str]:
    """The boards (by file name) this node read rows from, per its log."""
    text = (workdir / f"node-{node}.log").read_text(errors="replace")
    return [line.split(BOARD_LINE, 1)[1].strip() for line in text.splitlines() if BOARD_LINE in line]


def write_through_every_contact(cluster: LocalCluster, nodes: list[int], per_node: int) -> None:
    """``per_node`` ordered adds through each node as contact at once (each member sends)."""
    errors: list[BaseException] = []

    def run(node: int) -> None:
        try:
            with cluster.new_client(contacts=[cluster.address(node)]) as client:
                h = client.handle(Journal)
                pending = [h.add(f"{node}:{i}") for i in range(per_node)]
                for r in pending:
                    r.wait_all(timeout=90)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not errors, errors


def load_until(cluster: LocalCluster, nodes: list[int], done: Callable[[], bool], rounds: int = 8) -> None:
    """Rounds of ordered adds through every contact until ``done()``. A push goes to a board
    only if it is a row of ints alone; most pushes of a busy member carry messages or owed
    nulls (about one shard push in ten under this load is a row alone), so whether a given
    direction used its board in one round is chance."""
    for _ in range(rounds):
        if done():
            return
        write_through_every_contact(cluster, nodes, 100)
        time.sleep(0.5)  # the last receipts and stability rows after the load


def test_three_nodes_multicast_with_rows_on_boards_and_survive_a_kill(tmp_path: Path, cluster_name: str) -> None:
    layout = da.Layout({Journal: da.ShardPolicy(min_nodes=2, max_nodes=3)})
    with da.local_cluster(
        nodes=3, types=[Journal], layout=layout, overrides=FAST, workdir=str(tmp_path), cluster=cluster_name
    ) as cluster:
        journal = cluster.handle(Journal)
        journal.add("start").wait_all(timeout=30)
        write_through_every_contact(cluster, [1, 2, 3], 400)
        logs = journal.all().wait_all(timeout=30)
        assert set(logs) == {1, 2, 3}
        first = logs[1]
        assert all(v == first for v in logs.values())  # one order everywhere
        assert len(first) == 1 + 3 * 400 and len(set(first)) == len(first)
        # every node reads rows of both peers from their boards
        load_until(cluster, [1, 2, 3], lambda: all(len(boards_read(tmp_path, n)) >= 2 for n in (1, 2, 3)))
        for node in (1, 2, 3):
            owners = {name.split("-n", 1)[1].split("-", 1)[0] for name in boards_read(tmp_path, node)}
            assert owners == {str(p) for p in (1, 2, 3) if p != node}, f"node {node} read boards of {owners}"
        first = journal.all().wait_all(timeout=30)[1]
        dead_pid = cluster.procs[3].pid
        cluster.kill(3)  # kill -9: its rows stop, the others' view change goes over their boards
        cluster.wait_members({1, 2}, timeout=60)
        write_through_every_contact(cluster, [1, 2], 50)
        after = journal.all().wait_all(timeout=30)
        assert set(after) == {1, 2} and after[1] == after[2] and len(after[1]) == len(first) + 100
        assert after[1][: len(first)] == first
        # Files a process killed mid-setup leaves: its next start removes them (peers never do).
        left = [f"/dev/shm/derecho-{cluster_name}-n3-to1-p{dead_pid}-0123456789abcdef{s}" for s in (".ring", ".rows")]
        for path in left:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        time.sleep(0.3)
        assert files_of(cluster_name, 3) == sorted(left)
        cluster.start(3)
        cluster.wait_members({1, 2, 3}, timeout=60)
        assert [f for f in files_of(cluster_name, 3) if f"-p{dead_pid}-" in f] == []
        write_through_every_contact(cluster, [1, 2, 3], 30)
        final = journal.all().wait_all(timeout=30)
        assert len({tuple(v) for v in final.values()}) == 1 and set(final) == {1, 2, 3}
        wait_for(lambda: files_of(cluster_name, 3) == [], 10, "node 3's names unlinked once its rings were accepted")


def test_a_mixed_view_one_node_on_tcp(tmp_path: Path, cluster_name: str) -> None:
    layout = da.Layout({Journal: da.ShardPolicy(min_nodes=3)})
    with da.local_cluster(
        nodes=3,
        types=[Journal],
        layout=layout,
        overrides={**FAST, "node.transport": "auto"},
        workdir=str(tmp_path),
        cluster=cluster_name,
        node_overrides={3: {"node.transport": "tcp"}},
    ) as cluster:
        journal = cluster.handle(Journal)
        journal.add("start").wait_all(timeout=30)
        write_through_every_contact(cluster, [1, 2, 3], 300)
        logs = journal.all().wait_all(timeout=30)
        assert set(logs) == {1, 2, 3} and len({tuple(v) for v in logs.values()}) == 1
        assert len(logs[1]) == 1 + 900
        # A push of a row alone goes by board; one that carries messages (owed nulls ride with
        # receipts) as a frame: with all three sending, a direction may carry frames only.
        load_until(cluster, [1, 2, 3], lambda: bool(boards_read(tmp_path, 1) or boards_read(tmp_path, 2)))
        assert boards_read(tmp_path, 1) or boards_read(tmp_path, 2), "no board between 1 and 2"
        assert all("-n2-to1-" in b for b in boards_read(tmp_path, 1))
        assert all("-n1-to2-" in b for b in boards_read(tmp_path, 2))
        assert boards_read(tmp_path, 3) == []  # node 3 gets every row as a frame over TCP
