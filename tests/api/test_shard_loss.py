"""A shard never restarts empty in silence (real node processes, TLS on).

- The README's cluster by hand (the KV example's code layout with ``layout.KV.min_nodes=2``
  merged over it, five nodes) loses a node to ``kill -9`` and still reads back every
  acknowledged write: never ``None``.
- A layout that leaves a shard one replica is warned about at start; when that replica dies,
  the node that takes the shard starts it anew with an ERROR naming it, counts it in its status,
  and callers get ``ShardStateLost`` (reads until the first write, and that first write) rather
  than an empty answer.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

import derecho_actors as da
from examples.kv_store import KV, LAYOUT, shard_of

pytestmark = pytest.mark.timeout(150)

FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "400"}
TRANSIENT = (da.ReplicaLost, da.ShardUnavailable, da.TimeoutError, da.GroupClosed)


def _layout_of(cluster: Any, node: int) -> dict[str, list[int]]:
    return {shard: list(members) for shard, members in cluster.status(node)["layout"]}


def _settled(call: Callable[[], dict[int, Any]], timeout: float = 30.0) -> dict[int, Any] | BaseException:
    """The call's result once the group answers it, or its error when that error is not one a
    view change makes (those are retried): what a patient caller ends up seeing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        except da.DerechoError as exc:
            return exc


def test_the_readme_layout_loses_no_acknowledged_write_to_a_kill(tmp_path) -> None:
    overrides = {"layout.KV.min_nodes": "2", **FAST}  # the README's --set, over the code's LAYOUT
    with da.local_cluster(nodes=5, types=[KV], layout=LAYOUT, overrides=overrides, workdir=str(tmp_path)) as cluster:
        shards = _layout_of(cluster, 1)
        assert sorted(len(m) for m in shards.values()) == [2, 3], shards  # merged: shards=2, max 3, min 2
        keys = {f"animal-{i}": f"otter-{i}".encode() for i in range(24)}
        for key, value in keys.items():
            cluster.handle(KV, shard=shard_of(key)).put(key, value).get(timeout=20)
        victim = next(m[0] for m in shards.values() if len(m) == 2)  # a shard left with one survivor
        cluster.kill(victim)
        cluster.wait_members({1, 2, 3, 4, 5} - {victim}, timeout=30)
        for key, value in keys.items():
            got = _settled(lambda key=key: cluster.handle(KV, shard=shard_of(key)).get(key).get(timeout=10))
            assert isinstance(got, dict) and list(got.values()) == [value], (key, got)
        logs = "".join(p.read_text() for p in tmp_path.glob("node-*.log"))
        assert "lost every replica" not in logs
        assert "one failure loses this shard's state" not in logs


def test_a_shard_whose_replicas_all_died_starts_anew_loudly(tmp_path) -> None:
    # shards=2 and min_nodes=1 on three nodes: one shard has a single replica (the README's old
    # layout). Its node is warned at start; kill -9 of it loses the shard.
    layout = da.Layout({KV: da.ShardPolicy(shards=2, min_nodes=1)})
    with da.local_cluster(nodes=3, types=[KV], layout=layout, overrides=FAST, workdir=str(tmp_path)) as cluster:
        shards = _layout_of(cluster, 1)
        lone_shard, (lone,) = next((s, m) for s, m in shards.items() if len(m) == 1)
        shard = int(lone_shard.rsplit("/", 1)[1])
        assert "one failure loses this shard's state" in (tmp_path / f"node-{lone}.log").read_text()
        key = next(f"animal-{i}" for i in range(100) if shard_of(f"animal-{i}") == shard)
        kv = cluster.handle(KV, shard=shard)
        assert list(kv.put(key, b"otter").get(timeout=20).values()) == [1]  # acknowledged

        cluster.kill(lone)
        survivors = {1, 2, 3} - {lone}
        cluster.wait_members(survivors, timeout=30)
        kv = cluster.handle(KV, shard=shard)
        read = _settled(lambda: kv.get(key).get(timeout=10))
        assert isinstance(read, da.ShardStateLost), f"a read of the lost shard answered {read!r}"
        assert lone_shard in str(read) and "call again" in str(read)
        again = _settled(lambda: kv.get(key).get(timeout=10))
        assert isinstance(again, da.ShardStateLost), "reads before the first write are told too"
        first_write = _settled(lambda: kv.put(key, b"heron").get(timeout=10))
        assert isinstance(first_write, da.ShardStateLost), f"the first write after the loss answered {first_write!r}"
        still = _settled(lambda: kv.get(key).get(timeout=10))
        assert isinstance(still, da.ShardStateLost), "the refused write was not run: reads are still told"
        second = _settled(lambda: kv.put(key, b"heron").get(timeout=10))
        assert isinstance(second, dict) and set(second.values()) == {1}, second
        assert set(_settled(lambda: kv.get(key).get(timeout=10)).values()) == {b"heron"}  # type: ignore[union-attr]

        holders = _layout_of(cluster, min(survivors))[lone_shard]
        for node in holders:
            log = (tmp_path / f"node-{node}.log").read_text()
            error = next((line for line in log.splitlines() if " ERROR " in line and "lost every replica" in line), "")
            assert lone_shard in error and f"node {lone} held it last" in error, log[-2000:]
            assert "before version" in error
            app = cluster.status(node)["app"]
            assert app["shards_restarted_empty"] == 1, app
            assert app["restarted_empty"][0]["shard"] == lone_shard
