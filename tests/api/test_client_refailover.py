"""A client that fails over to the very contact it left (its only one) while an ordered call's
answers are still due: the call it sends again was delivered already, and must still come back
with every replica's answer, applied once.

The contact is frozen on purpose (SIGSTOP for longer than the client's ``liveness_timeout``,
then SIGCONT) after the call was delivered and while the replicas are still running it (the
method sleeps), so the client gives the contact up, dials it again and sends the call again:
a streamed call from its first byte (the contact still holds the first copy's bytes until an
answer comes), a small call in a frame. Real node processes, TLS on, loopback only."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any, Iterator

import pytest

import derecho_actors as da

pytestmark = pytest.mark.timeout(180)

HOLD = 3.0  # seconds each replica spends in a call: its answers are still due after the failover
NODES = {1, 2, 3}
CONTACT = 2
STREAM_BYTES = 24 << 20  # one streamed call; the contact's bound holds one copy, not two
# Suspicion well above the freeze: the frozen contact stays a member (a false failover).
OVERRIDES = {"timeouts.suspicion_ms": "8000", "limits.client_stream_bytes": str(40 << 20)}


@da.replicated
class Slow:
    def __init__(self) -> None:
        self.applied: list[str] = []

    @da.ordered
    def put(self, data: bytes, hold: float) -> str:
        time.sleep(hold)  # deterministic here: every replica sleeps alike
        digest = hashlib.sha256(data).hexdigest()
        self.applied.append(digest)
        return digest

    @da.ordered
    def log(self) -> list[str]:
        return self.applied


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[da.LocalCluster]:
    layout = da.Layout({Slow: da.ShardPolicy(min_nodes=3, max_nodes=3)})
    workdir = str(tmp_path_factory.mktemp("refail"))
    with da.local_cluster(nodes=3, types=[Slow], layout=layout, overrides=OVERRIDES, workdir=workdir) as c:
        yield c


def _streams(cluster: da.LocalCluster, node: int) -> dict[str, int]:
    app = cluster.status(node).get("app") or {}
    return dict(app.get("client_streams") or {})


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _freeze(cluster: da.LocalCluster, node: int, seconds: float) -> None:
    """Stop node ``node``'s process for ``seconds`` (longer than the client's silence limit)."""
    pid = cluster.procs[node].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _check(cluster: da.LocalCluster, client: da.Client, results: da.QueryResults, data: bytes) -> None:
    expected = hashlib.sha256(data).hexdigest()
    replies = results.wait_all(timeout=60)
    assert client._session.connections >= 2, "the client did not fail over: the test proves nothing"
    assert set(replies) == NODES, f"answers from {sorted(replies)} only: {replies}"
    assert set(replies.values()) == {expected}
    logs = client.handle(Slow).log().wait_all(timeout=30)
    assert set(logs) == NODES
    assert all(v.count(expected) == 1 for v in logs.values()), "applied once at every replica"


def test_a_streamed_call_sent_again_to_the_same_contact_gets_every_replicas_answer(
    cluster: da.LocalCluster,
) -> None:
    data = os.urandom(STREAM_BYTES)
    with cluster.new_client(contacts=[cluster.address(CONTACT)], liveness_timeout=0.5) as client:
        slow = client.handle(Slow)
        slow.put(b"warm-up", 0.0).wait_all(timeout=30)
        results = slow.put(data, HOLD)
        # Delivered (the contact holds its bytes until an answer), the replicas still in it.
        _wait(lambda: _streams(cluster, CONTACT).get("waiting_answers") == 1, 30, "the call to be delivered")
        _freeze(cluster, CONTACT, 1.5)
        _check(cluster, client, results, data)
    _wait(lambda: _streams(cluster, CONTACT).get("held_bytes") == 0, 15, "the contact to free what it held")


def test_a_small_call_sent_again_after_a_false_failover_gets_every_replicas_answer(
    cluster: da.LocalCluster,
) -> None:
    data = os.urandom(1000)
    with cluster.new_client(contacts=[cluster.address(CONTACT)], liveness_timeout=0.5) as client:
        slow = client.handle(Slow)
        slow.put(b"warm-up", 0.0).wait_all(timeout=30)
        results = slow.put(data, HOLD)
        time.sleep(0.5)  # taken and multicast; the replicas are in it for HOLD seconds
        _freeze(cluster, CONTACT, 1.5)
        _check(cluster, client, results, data)
