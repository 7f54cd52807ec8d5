"""The public API against real node processes (``local_cluster``): concurrent callers, a
replica killed mid-stream, per-replica results and state equal at every replica."""

from __future__ import annotations

import hashlib
import threading

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
