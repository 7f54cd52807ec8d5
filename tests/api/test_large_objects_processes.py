"""Large arguments between real node processes, TLS on: through a ``Client`` to every replica
identically, across a kill -9 of a relay mid-object, and past a node forging blocks."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

import derecho_actors as da
from runtime.core.rdmc_descriptor import ObjectId
from runtime.security.certs import ensure_cluster_certs
from runtime.wire.transfers import block_frame_head
from tests.api.stream_cluster import FAST as STREAM_FAST
from tests.api.stream_cluster import Blobs, digest
from tests.security.rogue import Conn, node_context

pytestmark = pytest.mark.timeout(240)


FAST = {**STREAM_FAST, "timeouts.suspicion_ms": "500"}
EVERYONE = da.Layout({Blobs: da.ShardPolicy(min_nodes=3)})


def test_a_large_argument_through_a_client_arrives_identical_at_every_replica(tmp_path: Path) -> None:
    size = 40 << 20  # 40 MiB: too large for one frame, streamed to the contact in blocks
    data = os.urandom(size)
    with da.local_cluster(nodes=3, types=[Blobs], layout=EVERYONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        with cluster.new_client(contacts=[cluster.address(2)]) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"warm-up").wait_all(timeout=30)
            started = time.perf_counter()
            replies = blobs.put(data).wait_all(timeout=120)
            took = time.perf_counter() - started
            assert set(replies) == {1, 2, 3}
            assert set(replies.values()) == {digest(data)}
            print(
                f"a {size >> 20} MiB call through a client to 3 replicas, TLS on: {took:.2f} s, {size / took / 1e6:.0f} MB/s"
            )
            logs = blobs.log().wait_all(timeout=30)
            assert len({tuple(v) for v in logs.values()}) == 1


def test_kill_9_of_a_relay_mid_object_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Five replicas (binomial pipeline: the middle ranks relay blocks); a client streams 4 MiB
    calls through node 1 while node 3 is killed. Every call the client saw answered is applied
    exactly once, in one order, at every survivor."""
    layout = da.Layout({Blobs: da.ShardPolicy(min_nodes=3)})
    overrides = {**FAST, "rdmc.block_size": str(256 << 10)}
    with da.local_cluster(nodes=5, types=[Blobs], layout=layout, overrides=overrides, workdir=str(tmp_path)) as cluster:
        acked: list[str] = []
        errors: list[BaseException] = []

        def stream() -> None:
            with cluster.new_client(contacts=[cluster.address(n) for n in (1, 2)]) as client:
                blobs = client.handle(Blobs)
                for i in range(24):
                    data = os.urandom((4 << 20) + i)
                    try:
                        replies = blobs.put(data).get(timeout=60)
                    except da.DerechoError as exc:  # an outcome the client could not learn
                        errors.append(exc)
                        continue
                    assert set(replies.values()) == {digest(data)}
                    acked.append(digest(data))

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.kill(3)  # a relay, with the next objects in flight
        t.join(180)
        assert not t.is_alive()
        cluster.wait_members({1, 2, 4, 5}, timeout=30)
        logs = cluster.handle(Blobs).log().wait_all(timeout=30)
        survivors = {n: v for n, v in logs.items() if n != 3}
        assert set(survivors) == {1, 2, 4, 5}
        first = next(iter(survivors.values()))
        assert all(v == first for v in survivors.values()), "survivors applied different sequences"
        assert len(first) == len(set(first)), "a call applied twice"
        missing = [d for d in acked if d not in first]
        assert not missing, f"{len(missing)} acknowledged calls lost; errors: {errors!r}"
        assert len(acked) >= 20, f"only {len(acked)} of 24 calls answered: {errors!r}"


def _status_oid(cluster: da.LocalCluster, receiver: int, sender: int) -> ObjectId | None:
    """The object of ``sender`` that ``receiver`` waits for now, read from its status: its
    received count for that sender stops at the descriptor's slot until the object is whole."""
    st = cluster.status(receiver)
    core = st.get("core", st)
    vid = core.get("vid")
    shards = core.get("shards") or []
    if vid is None or not shards:
        return None
    shard = shards[0]
    members = [m["node"] for m in shard["members"]]
    mine = next(m for m in shard["members"] if m["node"] == receiver)
    pos = members.index(sender)
    return ObjectId(sender, mine["received"][pos], vid, 0)


def test_a_forged_block_is_refused_and_never_delivered(tmp_path: Path) -> None:
    """Node 9's certificate (valid, but not a member) sends blocks for the object in flight, in
    the name of no one but itself: the schedule never names it, so its blocks are refused and
    its connection cut; the object still arrives intact at every replica."""
    data = os.urandom(32 << 20)
    # Small blocks, one in flight per link: the object is in flight long enough to be hit.
    overrides = {**FAST, "rdmc.block_size": str(32 << 10), "rdmc.window_blocks": "1"}
    with da.local_cluster(
        nodes=3, types=[Blobs], layout=EVERYONE, overrides=overrides, workdir=str(tmp_path)
    ) as cluster:
        ensure_cluster_certs(cluster.certs_dir, [9], cluster=cluster.cluster)
        ctx = node_context(cluster.certs_dir, 9)
        with cluster.new_client(contacts=[cluster.address(1)]) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"warm-up").wait_all(timeout=30)
            pending = blobs.put(data)
            sent = 0
            with Conn(cluster.address(2), ctx) as rogue:
                rogue.hello_member(9, cluster.cluster, 1)
                for _ in range(2000):  # until the node cuts us off (or the object is through)
                    if pending.done() or rogue.closed:
                        break
                    oid = _status_oid(cluster, 2, 1)
                    if oid is not None:
                        garbage = os.urandom(32 << 10)
                        for block in range(4):
                            rogue.send_raw(block_frame_head(oid, block, len(garbage)) + garbage)
                            sent += 1
                    time.sleep(0.005)
            replies = pending.wait_all(timeout=120)
        assert set(replies) == {1, 2, 3}
        assert set(replies.values()) == {digest(data)}
        assert sent > 0
        log = (Path(cluster.workdir) / "node-2.log").read_text()
        refused = re.findall(
            r"(cut off: block \d+ of object .* refused|block \d+ of object .* from node 9 dropped)", log
        )
        assert refused, log[-3000:]
