"""A 100 MB call relayed by a contact outside the shard costs no member its place: while the
call streams to the contact, is relayed to a member, multicast and applied, no node's loop stops
turning long enough to be reported as stalled (half the suspicion timeout), and nobody is
suspected or removed, with the suspicion timeout at 1 s. Each replica used to copy the call's
argument out of its received object holding the GIL (``msgpack.unpackb``): every member's loop
stood still at the same moment, 70-330 ms here and 0.9-1.2 s in a CI run on two busy cores,
where the group removed a member (``wire.large_args`` copies it with the GIL released; its own
test shows the loop's wait in-process)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import derecho_actors as da
from tests.api.stream_cluster import Blobs, digest, split, stream_cluster, warnings_of

pytestmark = pytest.mark.timeout(300)

THREE = da.Layout({Blobs: da.ShardPolicy(min_nodes=3, max_nodes=3)})  # of 5 nodes: 2 outside
SUSPICION_MS = 1000


def test_a_100_mb_relayed_call_stalls_no_loop_and_removes_no_member(tmp_path: Path) -> None:
    overrides = {"timeouts.suspicion_ms": str(SUSPICION_MS)}
    with stream_cluster(5, THREE, tmp_path, overrides=overrides) as cluster:
        members, outside = split(cluster)
        assert len(members) == 3 and outside, (members, outside)
        before = {n: (cluster.status(n)["vid"], cluster.status(n)["members"]) for n in cluster.procs}
        data = os.urandom(100_000_000)
        with cluster.new_client(contacts=[cluster.address(outside[0])]) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"warm-up").wait_all(timeout=30)
            replies = blobs.put(data).wait_all(timeout=180)
            assert set(replies) == set(members) and set(replies.values()) == {digest(data)}
            after = blobs.put(b"after").wait_all(timeout=60)
            assert set(after) == set(members)
        for n in cluster.procs:
            st = cluster.status(n)
            stalls = st.get("stalls")
            print(f"node {n} ({'member' if n in members else 'outside'}): stalls {stalls}")
            assert stalls is None, (
                f"node {n}'s loop stopped for over {SUSPICION_MS // 2} ms: {stalls}; {warnings_of(cluster, n)}"
            )
            assert (st["vid"], st["members"]) == before[n], f"node {n}'s view changed: {warnings_of(cluster, n)}"
            assert not st.get("suspected"), f"node {n} suspects {st['suspected']}"
