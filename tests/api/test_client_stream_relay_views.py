"""A client's large call relayed by a contact outside the shard while a view adds a member, between
real node processes with TLS on: a node joins while the call streams, and the new layout either
adds it to the shard (the contact stays outside: a session's calls stay pinned to the member its
relay began with) or promotes the contact itself into the shard (it multicasts the call itself,
and the relay to the member is dropped there). Either way the call is applied exactly once and
every replica answers, or it is refused "not run, call again"; never lost, never applied twice;
and a call made after it is ordered after it.

The contact is node 3. ``Other`` (one replica) takes node 3 or node 4, so the layout says where
node 3 stands: ``OUTSIDE`` keeps it out of ``Blobs`` for good; ``PROMOTED`` deals it to ``Blobs``
once node 4, coming back, takes ``Other`` from it. Node 4 is stopped before each test and
started again (a new process, joining) while the call is in flight."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import derecho_actors as da
from runtime.drivers.status import StatusError
from tests.api.stream_cluster import Blobs, app_status, digest, slow_blocks, stream_cluster, streams, wait_until

pytestmark = pytest.mark.timeout(300)

CONTACT = 3


@da.replicated
class Other:
    """The type that keeps node 3 (or node 4) busy: what it holds does not matter."""

    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def bump(self) -> int:
        self.n += 1
        return self.n


OUTSIDE = da.Layout(
    {
        Blobs: da.ShardPolicy(min_nodes=2, max_nodes=3, reserved=((1, 2, 4),)),
        Other: da.ShardPolicy(min_nodes=1, max_nodes=1, reserved=((3,),)),
    }
)
PROMOTED = da.Layout(
    {
        Blobs: da.ShardPolicy(min_nodes=2, max_nodes=3, reserved=((1, 2),)),
        Other: da.ShardPolicy(min_nodes=1, max_nodes=1, reserved=((4,),)),
    }
)


def _blobs_members(cluster: da.LocalCluster) -> set[int]:
    """The live nodes that hold a replica of ``Blobs`` (serving or waiting for its state)."""
    held = set()
    for n in [n for n, p in cluster.procs.items() if p.poll() is None]:
        try:
            replicas = app_status(cluster, n).get("replicas") or {}
        except StatusError:  # not listening yet (just started)
            continue
        if any(k.startswith("Blobs/") for k in replicas):
            held.add(n)
    return held


def _without_node_4(cluster: da.LocalCluster) -> None:
    """Node 4 leaves (SIGTERM): the view is {1, 2, 3}, ``Blobs`` on nodes 1 and 2, node 3 outside."""
    cluster.stop(4)
    cluster.wait_members({1, 2, 3}, timeout=30)
    wait_until(lambda: _blobs_members(cluster) == {1, 2}, 30, "Blobs on nodes 1 and 2 only")


def _answers(cluster: da.LocalCluster, node: int) -> bool:
    """Whether node ``node``'s process answers a status request yet."""
    try:
        cluster.status(node)
    except StatusError:
        return False
    return True


def _relay_target(cluster: da.LocalCluster) -> int:
    wait_until(lambda: streams(cluster, CONTACT).get("relaying") == 1, 30, "the relay to start at the contact")
    wait_until(lambda: any(streams(cluster, m).get("relayed_in_bytes") for m in (1, 2)), 30, "the member's relay")
    return next(m for m in (1, 2) if streams(cluster, m).get("relayed_in_bytes"))


def _check_logs(blobs: da.Handle, members: set[int], expected: list[str]) -> None:
    """Every replica of ``members`` applied each of ``expected`` once, and last, in that order."""
    logs = blobs.log().wait_all(timeout=60)
    assert set(logs) == members, (sorted(logs), sorted(members))
    for node, log in logs.items():
        for d in expected:
            assert log.count(d) == 1, f"node {node} applied {d[:8]} {log.count(d)} times"
        assert log[-len(expected) :] == expected, f"node {node}: out of call order"


@pytest.mark.parametrize("layout", [OUTSIDE, PROMOTED], ids=["member-added", "contact-promoted"])
def test_a_relayed_call_across_a_view_that_adds_a_member_is_applied_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: da.Layout
) -> None:
    promoted = layout is PROMOTED
    final = {1, 2, 3} if promoted else {1, 2, 4}
    with stream_cluster(4, layout, tmp_path, types=(Other,)) as cluster:
        _without_node_4(cluster)
        joined = threading.Event()
        # From 8 MiB on the stream crawls (4 MiB/s, above the least rate a stream may go: the
        # join has ~28 s) until the contact has installed the view that adds node 4; then it runs.
        slow_blocks(monkeypatch, lambda offset: 0 if offset < 8 << 20 or joined.is_set() else 0.25)
        data = os.urandom(120 << 20)
        # The client's socket thread sleeps in those pauses: a contact is not taken for frozen.
        with cluster.new_client(contacts=[cluster.address(CONTACT)], liveness_timeout=10.0) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"before").wait_all(timeout=30)
            big = blobs.put(data)
            target = _relay_target(cluster)
            cluster.start(4)
            wait_until(lambda: _blobs_members(cluster) == final, 90, f"Blobs on nodes {sorted(final)}")
            in_flight = streams(cluster, CONTACT).get("streams") == 1
            joined.set()
            assert in_flight, "the stream ended before the view that adds node 4: nothing tested"
            after = blobs.put(b"after")  # sent after the stream's last block: ordered after it
            try:
                replies = big.wait_all(timeout=120)
                order = [digest(data), digest(b"after")]
            except da.ShardUnavailable as exc:  # refused: it must say it did not run
                assert "not run" in str(exc) and "call again" in str(exc), str(exc)
                replies = blobs.put(data).wait_all(timeout=120)
                order = [digest(b"after"), digest(data)]
            assert set(replies.values()) == {digest(data)}
            assert set(replies) in ({1, 2}, final), sorted(replies)  # the replicas of the view that ran it
            assert set(after.wait_all(timeout=60).values()) == {digest(b"after")}
            _check_logs(blobs, final, order)
        st = streams(cluster, CONTACT)
        print(f"relayed to node {target}; contact promoted: {promoted}; contact's relays: {st}")
        wait_until(lambda: streams(cluster, CONTACT).get("held_bytes") == 0, 10, "the contact to free what it held")
        wait_until(lambda: streams(cluster, CONTACT).get("relaying") == 0, 10, "the contact to end the relay")
        wait_until(lambda: all(streams(cluster, m).get("relayed_in_bytes") == 0 for m in final), 10, "members freed")


def test_a_contact_promoted_while_its_relay_drains_keeps_the_sessions_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call is whole at the contact and its blocks still queued to the member (stopped
    with SIGSTOP meanwhile) when the contact is promoted into the shard; the client's next
    call, a small one, must still be ordered after it. Taken at the contact as its own (it now
    holds a replica) it was multicast at once, ahead of the large call its member had not
    multicast yet: replicas then took the large call as applied already (lost)."""
    # Suspicion slow enough that a member stopped for a few seconds stays in the view.
    overrides = {"timeouts.suspicion_ms": "30000"}
    with stream_cluster(4, PROMOTED, tmp_path, stream_bytes=400 << 20, types=(Other,), overrides=overrides) as cluster:
        _without_node_4(cluster)
        stopped = threading.Event()
        slow_blocks(monkeypatch, lambda offset: 0 if offset < 8 << 20 or stopped.is_set() else 0.1)
        data = os.urandom(160 << 20)
        with cluster.new_client(contacts=[cluster.address(CONTACT)], liveness_timeout=10.0) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"before").wait_all(timeout=30)
            big = blobs.put(data)
            target = _relay_target(cluster)
            pid = cluster.procs[target].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                stopped.set()
                wait_until(
                    lambda: (
                        streams(cluster, CONTACT).get("streams") == 0
                        and streams(cluster, CONTACT).get("waiting_answers") == 1
                    ),
                    60,
                    "the whole call at the contact",
                )
                cluster.start(4)  # its join waits for the stopped member
                wait_until(lambda: _answers(cluster, 4), 30, "node 4 to start")
                time.sleep(1.0)  # it asks to join
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_until(lambda: CONTACT in _blobs_members(cluster), 60, "the contact to be promoted")
            after = blobs.put(b"after")  # the large call unanswered yet
            replies = big.wait_all(timeout=120)
            assert set(replies.values()) == {digest(data)}
            assert set(after.wait_all(timeout=60).values()) == {digest(b"after")}
            _check_logs(blobs, {1, 2, 3}, [digest(data), digest(b"after")])
