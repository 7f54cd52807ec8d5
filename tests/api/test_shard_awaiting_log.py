"""A persistent shard whose every replica died waits for a node holding its log (real node
processes, TLS on).

Three nodes, ``PersistentKV`` in two shards with ``min_nodes=1``: one shard lives on a single
node. After ``kill -9`` of that node the shard waits: every call is answered with
``ShardAwaitingLog`` naming the node to bring back, status says so, and nothing starts from an
empty log. When the node comes back with its data folder the shard resumes from its log (the
node serves it even though the new layout gives it the other shard) and every acknowledged
write reads back. Without that node, a node started with ``--accept-loss`` ends the wait: the
shard starts anew, loudly (``ShardStateLost``).
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

import pytest

import derecho_actors as da
from examples.persistent_kv import PersistentKV
from runtime.drivers.status import render_status

pytestmark = pytest.mark.timeout(200)

FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "400"}
TRANSIENT = (da.ReplicaLost, da.ShardUnavailable, da.TimeoutError, da.GroupClosed)
LAYOUT = da.Layout({PersistentKV: da.ShardPolicy(shards=2, min_nodes=1)})


def _layout_of(cluster: Any, node: int) -> dict[str, list[int]]:
    return {shard: list(members) for shard, members in cluster.status(node)["layout"]}


def _settled(call: Callable[[], dict[int, Any]], timeout: float = 30.0) -> dict[int, Any] | BaseException:
    """The call's result once the group answers it, or its error when that error is not one a
    view change makes (those are retried)."""
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


def _until(call: Callable[[], dict[int, Any] | BaseException], ok: Callable[[Any], bool], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = call()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def _lose_the_lone_shard(cluster: Any, tmp_path: Any) -> tuple[str, int, int, dict[str, bytes], set[int]]:
    """Write to the single-replica shard, kill its node; return the shard, its index, the
    node, the acknowledged writes and the survivors."""
    shards = _layout_of(cluster, 1)
    lone_shard, (lone,) = next((s, m) for s, m in shards.items() if len(m) == 1)
    index = int(lone_shard.rsplit("/", 1)[1])
    kv = cluster.handle(PersistentKV, shard=index)
    acked = {f"k{i}": f"v{i}".encode() for i in range(20)}
    last = None
    for key, value in acked.items():
        last = kv.put(key, value)
        assert len(last.get(timeout=20)) == 1  # acknowledged by its one replica
    assert last is not None
    last.persisted(timeout=20)  # on disk: what the shard must never lose (an ack alone is not a promise of disk)
    cluster.kill(lone)
    survivors = {1, 2, 3} - {lone}
    cluster.wait_members(survivors, timeout=30)
    return lone_shard, index, lone, acked, survivors


def test_the_shard_waits_for_its_holder_and_resumes_from_its_log(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with da.local_cluster(
        nodes=3, types=[PersistentKV], layout=LAYOUT, overrides=FAST, workdir=str(tmp_path)
    ) as cluster:
        lone_shard, index, lone, acked, survivors = _lose_the_lone_shard(cluster, tmp_path)
        kv = cluster.handle(PersistentKV, shard=index)

        read = _settled(lambda: kv.get("k0").get(timeout=10))
        assert isinstance(read, da.ShardAwaitingLog), f"a read of the waiting shard answered {read!r}"
        assert lone_shard in str(read) and f"node {lone} held it last" in str(read)
        write = _settled(lambda: kv.put("k0", b"heron").get(timeout=10))
        assert isinstance(write, da.ShardAwaitingLog), f"a write to the waiting shard answered {write!r}"

        member = _layout_of(cluster, min(survivors))[lone_shard][0]
        status = cluster.status(member)
        assert status["app"]["shards_awaiting_log"] == 1, status["app"]
        assert status["app"]["awaiting_log"][0]["last_holders"] == [lone]
        assert "waiting for a node that held it last" in status["app"]["replicas"][lone_shard]
        render_status(status)  # what `derecho-actors status` prints
        printed = " ".join(capsys.readouterr().out.split())
        assert f"shard {lone_shard} waits for a node that held it last ([{lone}]" in printed, printed
        log = (tmp_path / f"node-{member}.log").read_text()
        assert any(" ERROR " in line and "waits" in line and lone_shard in line for line in log.splitlines()), log[
            -2000:
        ]

        cluster.restart([lone], timeout=60)  # back with its data folder
        got = _until(lambda: _settled(lambda: kv.get("k0").get(timeout=10)), lambda g: isinstance(g, dict))
        assert isinstance(got, dict), f"the shard did not resume: {got!r}"
        for key, value in acked.items():
            answer = _settled(lambda key=key: kv.get(key).get(timeout=10))
            assert isinstance(answer, dict) and set(answer.values()) == {value}, (key, answer)
        after = _settled(lambda: kv.put("k0", b"heron").get(timeout=10))
        assert isinstance(after, dict) and after, after
        assert set(_settled(lambda: kv.get("k0").get(timeout=10)).values()) == {b"heron"}  # type: ignore[union-attr]
        for node in (1, 2, 3):
            app = cluster.status(node)["app"]
            assert app["shards_awaiting_log"] == 0 and app["shards_restarted_empty"] == 0, (node, app)


def test_a_node_started_with_accept_loss_ends_the_wait_loudly(tmp_path) -> None:
    with da.local_cluster(
        nodes=3, types=[PersistentKV], layout=LAYOUT, overrides=FAST, workdir=str(tmp_path)
    ) as cluster:
        lone_shard, index, lone, acked, survivors = _lose_the_lone_shard(cluster, tmp_path)
        kv = cluster.handle(PersistentKV, shard=index)
        assert isinstance(_settled(lambda: kv.get("k0").get(timeout=10)), da.ShardAwaitingLog)

        shutil.rmtree(cluster.data_dir(lone))  # its disk is gone: the operator gives the shard up
        cluster.restart([lone], timeout=60, accept_loss=True)
        got = _until(
            lambda: _settled(lambda: kv.get("k0").get(timeout=10)), lambda g: not isinstance(g, da.ShardAwaitingLog)
        )
        assert isinstance(got, da.ShardStateLost), f"the first read after the accepted loss answered {got!r}"
        first = _settled(lambda: kv.put("k0", b"heron").get(timeout=10))
        assert isinstance(first, da.ShardStateLost), first
        second = _settled(lambda: kv.put("k0", b"heron").get(timeout=10))
        assert isinstance(second, dict) and second, second
        assert set(_settled(lambda: kv.get("k0").get(timeout=10)).values()) == {b"heron"}  # type: ignore[union-attr]
        holders = _layout_of(cluster, 1)[lone_shard]
        for node in holders:
            app = cluster.status(node)["app"]
            assert app["shards_awaiting_log"] == 0 and app["shards_restarted_empty"] == 1, (node, app)
