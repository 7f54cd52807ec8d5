"""The public API against real node processes (``local_cluster``): concurrent callers, a
replica killed mid-stream, per-replica results and state equal at every replica."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

import derecho_actors as da

pytestmark = pytest.mark.timeout(180)


@da.replicated
class Ledger:
    def __init__(self) -> None:
        self.entries: dict[str, int] = {}

    @da.ordered
    def credit(self, account: str, amount: int) -> int:
        self.entries[account] = self.entries.get(account, 0) + amount
        return self.entries[account]

    @da.ordered
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.entries.items())).encode()).hexdigest()

    @da.p2p
    def balance(self, account: str) -> int:
        return self.entries.get(account, 0)


def test_concurrent_callers_and_a_kill_keep_replicas_equal(tmp_path) -> None:
    layout = da.Layout({Ledger: da.ShardPolicy(min_nodes=3)})
    fast = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "500"}
    with da.local_cluster(nodes=4, types=[Ledger], layout=layout, overrides=fast, workdir=str(tmp_path)) as cluster:
        results: dict[str, list[da.QueryResults]] = {}

        def caller(name: str) -> None:
            with cluster.new_client(contacts=[cluster.address(n) for n in (3, 4, 1)]) as client:
                ledger = client.handle(Ledger)
                mine = [ledger.credit(f"{name}-{i % 20}", 1) for i in range(1500)]
                for r in mine:
                    r.wait_all(timeout=60)
                results[name] = mine

        threads = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b", "c")]
        for t in threads:
            t.start()
        cluster.kill(2)  # a replica dies while the calls stream in
        for t in threads:
            t.join(120)
        assert set(results) == {"a", "b", "c"}
        cluster.wait_members({1, 3, 4})
        # Per-replica results agree (a replica that died first may miss some replies).
        for mine in results.values():
            for r in mine[-50:]:
                values = {v for v in r.wait_all(timeout=10).values() if not isinstance(v, Exception)}
                assert len(values) == 1
        # Every credit applied exactly once, identically at every surviving replica.
        digests = cluster.handle(Ledger).digest().get(timeout=20)
        assert set(digests) == {1, 3, 4} and len(set(digests.values())) == 1
        for name in "abc":
            total = sum(cluster.handle(Ledger).balance(f"{name}-{k}").get(timeout=10).popitem()[1] for k in range(20))
            assert total == 1500, f"caller {name}: {total} credits applied, 1500 made"
        with pytest.raises(da.RemoteError):
            cluster.handle(Ledger).credit("x", "not a number").get(timeout=10)


# ------------------------------------------------------------------ checks before and after starting
def test_a_layout_the_nodes_cannot_run_is_refused_before_any_node_starts(tmp_path) -> None:
    """Six nodes' worth of layout on three: the reason is known before starting, so it is
    said at once (not after a 30 s wait), and no process or folder is made."""
    layout = da.Layout({Ledger: da.ShardPolicy(shards=2, min_nodes=3)})
    started = time.monotonic()
    with pytest.raises(da.LayoutError, match="needs 3 more nodes") as caught:
        with da.local_cluster(nodes=3, types=[Ledger], layout=layout, workdir=str(tmp_path / "work")):
            pass
    assert time.monotonic() - started < 5
    assert "pass nodes=6" in str(caught.value) and "Ledger/0/1" in str(caught.value)
    assert not (tmp_path / "work").exists()
    # Layout overrides count, merged over the code's policy as the nodes will merge them.
    with pytest.raises(da.LayoutError, match="needs 1 more node\\b"):
        with da.local_cluster(nodes=3, types=[Ledger], overrides={"layout.Ledger.min_nodes": "4"}):
            pass


def _kept_folder(exc: BaseException) -> Path:
    text = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
    found = re.search(r"kept at (\S+)", text)
    assert found, text
    return Path(found.group(1))


def test_a_cluster_that_fails_to_start_keeps_its_work_folder_and_says_why() -> None:
    # A node that cannot start (its configuration is refused): the error quotes its log, and
    # the folder holding that log is still there to read.
    with pytest.raises(da.GroupClosed) as caught:
        with da.local_cluster(nodes=1, types=[Ledger], overrides={"timeouts.heartbeat_ms": "0"}):
            pass
    folder = _kept_folder(caught.value)
    try:
        assert folder.is_dir() and (folder / "node-1.log").exists()
        assert "timeouts.heartbeat_ms must be >= 1" in str(caught.value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # A start that times out: the folder its message names exists.
    with pytest.raises(da.GroupClosed, match="timed out after 0.01 s") as caught:
        with da.local_cluster(nodes=2, types=[Ledger], start_timeout=0.01):
            pass
    folder = _kept_folder(caught.value)
    try:
        assert folder.is_dir() and str(folder) in str(caught.value)  # "logs in <folder>" is true
    finally:
        shutil.rmtree(folder, ignore_errors=True)
