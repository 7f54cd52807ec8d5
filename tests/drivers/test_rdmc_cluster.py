"""Large objects between real node processes over TLS: payloads above the threshold move as
blocks on the members' connections (read straight into each object's buffer, relayed by the
binomial pipeline), and every node delivers the same sequence, every object checked against
its digest before delivery."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from derecho_actors.tools.multicast_demo import MulticastCluster
from tests.drivers.test_cluster import FAST, _free_base, installed_views

pytestmark = pytest.mark.timeout(180)

RDMC = ["--set", "rdmc.enabled=true", "--set", "rdmc.block_size=65536", "--set", "rdmc.threshold_bytes=100000"]
SIZE = 1_500_000  # above multicast.max_message_size: only the block pipeline can carry it (23 blocks)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MulticastCluster]:
    c = MulticastCluster(tmp_path, _free_base(8), cluster="rdmc", extra=FAST + RDMC)
    try:
        yield c
    finally:
        c.stop_all()


def test_every_node_delivers_the_same_large_objects_in_one_order(cluster: MulticastCluster) -> None:
    ids = [1, 2, 3]
    per_sender = 15
    cluster.start(1, send=per_sender, size=SIZE, wait_members=3)
    cluster.wait_for(lambda: "vid" in cluster.status(1), 15, "the founder")
    for n in ids[1:]:
        cluster.start(n, send=per_sender, size=SIZE, contact=1, wait_members=3)
    total = per_sender * len(ids)
    cluster.wait_for(lambda: all(cluster.delivered_count(n) >= total for n in ids), 90, "every object everywhere")
    logs = {n: cluster.deliveries(n) for n in ids}
    assert len(logs[1]) == total
    assert logs[2] == logs[1] and logs[3] == logs[1]
    senders = sorted(line.split()[-1].split(":")[0] for line in logs[1])
    assert senders == sorted(str(n) for n in ids for _ in range(per_sender))
    # Heartbeats (every 20 ms, suspicion at 400 ms) never waited long behind blocks: nobody was
    # suspected, so the views are the founding one and the two joins.
    assert all(installed_views(cluster, n) <= {0, 1, 2} for n in ids)
    for n in ids:
        text = (cluster.workdir / f"node-{n}.log").read_text()
        assert "refused" not in text and "Traceback" not in text, text[-2000:]
