"""Large answers in bulk never cost the group a member (real processes, TLS on).

One ordinary client pipelining P2P calls whose answers are large: 2,000 calls for 200 KB each
(400 MB) through a contact that holds no replica, so every answer crosses a member link back to
it, and 400 calls for 1 MB each to a contact that runs them itself. Before answers went out in
pieces and bounded loop turns (``derecho_actors.node.answer_queue``), a replica encoded its
answers to the contact as one 400 MB message in one loop callback, and a contact wrote its
client's 400 MB in one: the loop stopped for 0.3-0.7 s, the peers removed the silent node (the
layout then too small, every call failed with ``ShardUnavailable``). Now every call is
answered, nobody is suspected, and the view stays the one it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import fetch_status
from runtime.security.certs import ensure_cluster_certs

log = logging.getLogger("tests.load")

pytestmark = pytest.mark.timeout(180)

GROUP = "answers"
OBSERVER = "observer"  # the test's own status polls (status is rate-limited per identity)


@da.replicated
class Blob:
    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def bump(self) -> int:
        self.n += 1
        return self.n

    @da.p2p
    def blob(self, size: int, tag: int) -> bytes:
        return tag.to_bytes(4, "big") * (size // 4)


LAYOUT = da.Layout({Blob: da.ShardPolicy(shards=1, min_nodes=3, max_nodes=3)})
# The shipped heartbeat, and a suspicion timeout with room for a busy 2-core test machine.
OVERRIDES = {"timeouts.heartbeat_ms": "50", "timeouts.suspicion_ms": "1000"}


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("answers")
    with LocalCluster(4, [Blob], LAYOUT, overrides=OVERRIDES, workdir=str(wd), cluster=GROUP) as c:
        ensure_cluster_certs(c.certs_dir, [], clients=(OBSERVER,), cluster=GROUP)
        c.handle(Blob).bump().get(timeout=30)
        yield c


def status(c: LocalCluster, node: int) -> dict[str, Any]:
    return fetch_status(c.address(node), GROUP, timeout=10, credentials=client_credentials(c.certs_dir, OBSERVER))


def replicas(c: LocalCluster) -> list[int]:
    ((shard, members),) = [(s, m) for s, m in status(c, 1)["layout"] if s.startswith("Blob")]
    return list(members)


def pipeline(c: LocalCluster, contact: int, calls: int, size: int) -> tuple[int, list[str], float]:
    """``calls`` P2P calls for ``size``-byte answers through a client of ``contact``, all sent
    before any is read; returns how many came back right, the errors, and the seconds taken."""
    client = c.new_client(contacts=[c.address(contact)])
    try:
        handle = client.handle(Blob, 0)
        start = time.perf_counter()
        futures = [handle.blob(size, i) for i in range(calls)]
        right, errors = 0, []
        for i, f in enumerate(futures):
            try:
                (value,) = f.get(timeout=120).values()  # a P2P call: {replica: its answer}
                right += len(value) == size and value[:4] == i.to_bytes(4, "big")
            except Exception as e:  # noqa: BLE001 - counted and shown by the assertion
                errors.append(f"{type(e).__name__}: {e}")
        return right, errors, time.perf_counter() - start
    finally:
        client.close()


@pytest.mark.parametrize(
    "where, calls, size",
    [("no replica: every answer crosses a member link", 2000, 200_000), ("a replica", 400, 1_000_000)],
)
def test_a_client_pipelining_large_answers_costs_no_member(
    group: LocalCluster, where: str, calls: int, size: int
) -> None:
    c = group
    shard = replicas(c)
    contact = next(n for n in c.procs if n not in shard) if where.startswith("no") else shard[0]
    before = {n: (status(c, n)["vid"], status(c, n)["members"]) for n in c.procs}
    right, errors, took = pipeline(c, contact, calls, size)
    after = {n: status(c, n) for n in c.procs}
    stalls = {n: st.get("stalls", {}).get("longest_ms", 0.0) for n, st in after.items()}
    log.info(
        "%d x %d B through %s (node %d): %d right in %.1f s (%.0f MB/s); longest loop stall per node (ms) %s",
        calls, size, where, contact, right, took, calls * size / took / 1e6, stalls,
    )  # fmt: skip
    assert not errors, f"{len(errors)} calls failed, first: {errors[:3]}"
    assert right == calls
    for n, st in after.items():
        assert (st["vid"], st["members"]) == before[n], f"node {n}'s view changed: {before[n]} -> {st['vid']}"
        assert not st.get("suspected"), f"node {n} suspects {st['suspected']}"
