"""A client's streamed call through a contact that holds no replica of the call's shard, between
real node processes with TLS on: the contact relays the blocks to a member as they arrive (no
one frame, no cap below the client's stream limits), the member multicasts the call as if the
client had streamed it there: 100 MB arrives intact and is applied once at every replica, in
the caller's order; a contact killed mid-relay has the call sent again and applied once; a
client over its bound is refused with what to do and the contact's memory is freed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

import derecho_actors as da
from tests.api.stream_cluster import (
    Blobs,
    app_status,
    digest,
    proc_bytes,
    slow_blocks,
    split,
    stream_cluster,
    streams,
    wait_until,
    warnings_of,
)

pytestmark = pytest.mark.timeout(300)

THREE = da.Layout({Blobs: da.ShardPolicy(min_nodes=3, max_nodes=3)})  # of 5 nodes: 2 outside


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[da.LocalCluster]:
    with stream_cluster(5, THREE, tmp_path_factory.mktemp("relay")) as c:
        yield c


def test_100_mb_through_a_contact_outside_the_shard_is_applied_once_in_order(cluster: da.LocalCluster) -> None:
    members, outside = split(cluster)
    assert len(members) == 3 and outside, (members, outside)
    contact = outside[0]
    data = os.urandom(100_000_000)
    expected = digest(data)
    took: dict[str, float] = {}
    for how, node in (("direct", members[0]), ("relayed", contact)):
        with cluster.new_client(contacts=[cluster.address(node)]) as client:
            blobs = client.handle(Blobs)
            blobs.put(b"warm-up").wait_all(timeout=30)
            peak_before = proc_bytes(cluster, node, "VmHWM")
            started = time.perf_counter()
            big = blobs.put(data)
            after = blobs.put(b"after " + how.encode())  # made after it: ordered after it
            replies = big.wait_all(timeout=180)
            took[how] = time.perf_counter() - started
            assert set(replies) == set(members)
            assert set(replies.values()) == {expected}
            assert set(after.wait_all(timeout=60).values()) == {digest(b"after " + how.encode())}
            peak = proc_bytes(cluster, node, "VmHWM")
            print(
                f"100 MB {how} (contact node {node}) to 3 replicas, TLS on: {took[how]:.2f} s; contact's peak RSS "
                f"{peak / 2**20:.0f} MiB (before {peak_before / 2**20:.0f} MiB)"
            )
            logs = blobs.log().wait_all(timeout=30)
            assert set(logs) == set(members)
            for node_log in logs.values():
                assert node_log[-2:] == [expected, digest(b"after " + how.encode())]
    for node_log in logs.values():
        assert node_log.count(expected) == 2, "each call applied once at every replica"
    st = streams(cluster, contact)
    assert st["relayed"] >= 1, (st, warnings_of(cluster, contact))
    wait_until(lambda: streams(cluster, contact).get("held_bytes") == 0, 10, "the contact to free what it held")
    wait_until(lambda: streams(cluster, contact).get("relaying") == 0, 10, "the contact to end the relay")
    assert sum(streams(cluster, m).get("relayed_delivered", 0) for m in members) >= 1
    assert all(streams(cluster, m).get("relayed_in_bytes") == 0 for m in members)


def test_a_client_over_its_bound_through_a_contact_outside_is_refused_and_freed(cluster: da.LocalCluster) -> None:
    members, outside = split(cluster)
    contact = outside[-1]
    with cluster.new_client(contacts=[cluster.address(contact)]) as client:
        blobs = client.handle(Blobs)
        with pytest.raises(da.ClientLimit, match=r"limits.client_stream_bytes.*wait for earlier large calls"):
            blobs.put(os.urandom(200 << 20)).get(timeout=60)
        assert streams(cluster, contact)["held_bytes"] == 0  # at once: nothing waits for an answer
        small = os.urandom(3 << 20)  # within the bound: relayed and served
        assert set(blobs.put(small).wait_all(timeout=60).values()) == {digest(small)}
    wait_until(lambda: streams(cluster, contact).get("held_bytes") == 0, 10, "the contact to free what it held")
    assert all(streams(cluster, m).get("relayed_in_bytes") == 0 for m in members)


def test_a_client_gone_mid_relay_frees_the_contact_and_the_member(
    cluster: da.LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    members, outside = split(cluster)
    contact = outside[0]
    # The stream crawls from 8 MiB on: the client is closed mid-stream.
    slow_blocks(monkeypatch, lambda offset: 0.05 if offset >= 8 << 20 else 0)
    client = cluster.new_client(contacts=[cluster.address(contact)])
    try:
        pending = client.handle(Blobs).put(os.urandom(120 << 20))
        wait_until(lambda: streams(cluster, contact).get("relaying") == 1, 30, "the relay to start")
        wait_until(lambda: sum(streams(cluster, m).get("relayed_in_bytes", 0) for m in members) > 0, 30, "the member")
    finally:
        client.close()
    with pytest.raises(da.DerechoError):
        pending.get(timeout=5)
    wait_until(lambda: streams(cluster, contact).get("held_bytes") == 0, 10, "the contact to free it")
    wait_until(lambda: streams(cluster, contact).get("relaying") == 0, 10, "the contact to end the relay")
    wait_until(
        lambda: all(streams(cluster, m).get("relayed_in_bytes") == 0 for m in members), 10, "the member to free it"
    )


def test_a_contact_killed_mid_relay_has_the_call_applied_once(
    cluster: da.LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last in this module: it kills a contact (kill -9) while it relays a call; the client
    sends the whole call again through its next contact (outside the shard too: relayed again),
    under the same number, and it is applied once at every replica."""
    members, outside = split(cluster)
    assert len(outside) >= 2
    first, second = outside[0], outside[1]
    client = cluster.new_client(contacts=[cluster.address(first), cluster.address(second)])
    # The first contact is killed while the stream to it crawls.
    slow_blocks(monkeypatch, lambda offset: 0.05 if client.connections == 1 and offset >= 4 << 20 else 0)
    data = os.urandom(60 << 20)
    expected = digest(data)
    with client:
        blobs = client.handle(Blobs)
        pending = blobs.put(data)
        wait_until(lambda: streams(cluster, first).get("relaying") == 1, 30, "the relay to start at the first contact")
        wait_until(lambda: sum(streams(cluster, m).get("relayed_in_bytes", 0) for m in members) > 0, 30, "the member")
        cluster.kill(first)
        replies = pending.get(timeout=120)
        assert client.connected_to == cluster.address(second)
        assert set(replies.values()) == {expected}
        after = blobs.put(b"after the failover")
        assert set(after.get(timeout=30).values()) == {digest(b"after the failover")}
        logs = blobs.log().get(timeout=30)
        assert set(members) <= set(logs)
        for node_log in logs.values():
            assert node_log.count(expected) == 1, "applied once at every replica"
            assert node_log[-2:] == [expected, digest(b"after the failover")]
    assert streams(cluster, second)["relayed"] >= 1
    wait_until(lambda: all(streams(cluster, m).get("relayed_in_bytes") == 0 for m in members), 10, "members freed")


@pytest.mark.parametrize("which", [0, -1], ids=["first-outside", "last-outside"])
def test_the_member_killed_mid_relay_has_the_call_sent_on_and_applied_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: int
) -> None:
    """The member a contact relays to is killed (kill -9) mid-relay: the contact sends the call
    again, from its first byte, to a member of the next view (or multicasts it itself if it now
    holds a replica); it is applied once at every replica, and a call made after it follows it."""
    layout = da.Layout({Blobs: da.ShardPolicy(min_nodes=2, max_nodes=3)})
    with stream_cluster(5, layout, tmp_path) as c:
        members, outside = split(c)
        # When the member goes the layout promotes one of the two nodes outside: a contact
        # promoted multicasts the call itself, one left outside relays it again (which one is
        # promoted varies from run to run: both contacts are taken, and both paths do occur).
        contact = outside[which]
        client = c.new_client(contacts=[c.address(contact)])
        slow_blocks(monkeypatch, lambda offset: 0.02 if offset >= 4 << 20 else 0)  # killed while this crawls
        data = os.urandom(40 << 20)
        expected = digest(data)
        with client:
            blobs = client.handle(Blobs)
            pending = blobs.put(data)
            wait_until(lambda: any(streams(c, m).get("relayed_in_bytes", 0) for m in members), 30, "the relay to start")
            target = next(m for m in members if streams(c, m).get("relayed_in_bytes", 0))
            c.kill(target)
            replies = pending.get(timeout=120)
            assert set(replies.values()) == {expected}
            assert target not in replies
            after = blobs.put(b"after")
            assert set(after.get(timeout=30).values()) == {digest(b"after")}
            logs = blobs.log().get(timeout=30)
            assert len(logs) >= 2
            for node_log in logs.values():
                assert node_log.count(expected) == 1, "applied once at every replica"
                assert node_log[-2:] == [expected, digest(b"after")]
        st, now_member = streams(c, contact), bool(app_status(c, contact).get("replicas"))
        print(f"after the kill: relays resent {st['relays_resent']}, contact now a replica: {now_member}")
        assert st["relays_resent"] >= 1 or now_member  # sent on to another member, or multicast here
        wait_until(lambda: streams(c, contact).get("held_bytes") == 0, 10, "the contact to free what it held")
