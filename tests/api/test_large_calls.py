"""Ordered calls with large arguments (``[rdmc]`` on), in-process nodes over TLS: the call goes
as a descriptor in the order and its bytes by the block pipeline, runs at every replica in its
place among the small calls, and returns every replica's reply."""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import pytest

import derecho_actors as da
from tests.api.groups import address, client, running_groups

pytestmark = pytest.mark.timeout(120)


@da.replicated
class Store:
    def __init__(self) -> None:
        self.log = hashlib.sha256()
        self.sizes: list[int] = []

    @da.ordered
    def put(self, data: bytes) -> str:
        """The argument's digest, as this replica received it."""
        self.log.update(data)
        self.sizes.append(len(data))
        return hashlib.sha256(data).hexdigest()

    @da.ordered
    def state(self) -> tuple[str, list[int]]:
        return self.log.hexdigest(), self.sizes


RDMC = {
    "rdmc.enabled": "true",
    "rdmc.block_size": str(256 << 10),
    "rdmc.max_object_size": str(24 << 20),
    "rdmc.max_bytes_in_flight": str(256 << 20),
    "multicast.max_frame_bytes": str(16 << 20),  # below max_object_size: relayed calls stop first
}
LAYOUT = da.Layout({Store: da.ShardPolicy(min_nodes=3, max_nodes=3)})


@pytest.fixture(scope="module")
def groups() -> Iterator[list[da.Group]]:
    with running_groups(4, [Store], LAYOUT, "large-calls", 2000, extra=RDMC) as made:
        yield made


def store_members(groups: list[da.Group]) -> list[int]:
    view = groups[0].view
    assert view is not None
    return sorted(next(m for sid, m in view.layout.shards.items() if sid.type_name == "Store"))


def test_a_large_argument_arrives_identical_at_every_replica(groups: list[da.Group]) -> None:
    members = store_members(groups)
    data = os.urandom(5 << 20)
    replies = groups[members[0] - 1].handle(Store).put(data).wait_all(timeout=60)
    assert set(replies) == set(members)
    assert set(replies.values()) == {hashlib.sha256(data).hexdigest()}


def test_large_and_small_calls_run_in_one_order_everywhere(groups: list[da.Group]) -> None:
    members = store_members(groups)
    outsider = next(g for g in groups if g.node_id not in members)  # relays through a member
    calls = []
    for i in range(6):
        size = (3 << 20) + i if i % 2 else 100 + i
        calls.append(groups[members[i % 3] - 1].handle(Store).put(os.urandom(size)))
        calls.append(outsider.handle(Store).put(os.urandom(1000 + i)))
    for c in calls:
        assert len(set(c.wait_all(timeout=60).values())) == 1
    states = groups[members[0] - 1].handle(Store).state().wait_all(timeout=30)
    assert len({repr(s) for s in states.values()}) == 1


def test_a_call_beyond_max_object_size_is_refused_at_the_caller(groups: list[da.Group]) -> None:
    member = groups[store_members(groups)[0] - 1]
    with pytest.raises(da.PayloadTooLarge, match=r"rdmc.max_object_size\): split the argument"):
        member.handle(Store).put(b"x" * (25 << 20))


def test_a_relayed_call_beyond_one_frame_is_refused_at_the_caller(groups: list[da.Group]) -> None:
    members = store_members(groups)
    outsider = next(g for g in groups if g.node_id not in members)
    with pytest.raises(da.PayloadTooLarge, match=r"multicast.max_frame_bytes\): call from a member"):
        outsider.handle(Store).put(b"x" * (16 << 20))
    member = groups[members[0] - 1]  # the same call from a member of the shard goes
    assert len(set(member.handle(Store).put(b"x" * (16 << 20)).wait_all(timeout=60).values())) == 1


def test_a_clients_large_call_returns_every_replicas_reply(groups: list[da.Group]) -> None:
    members = store_members(groups)
    outsider = next(g for g in groups if g.node_id not in members)
    data = os.urandom(6 << 20)
    # Through a contact outside the shard (it relays) and through a member of it.
    for contact in (outsider, groups[members[1] - 1]):
        with client(groups, contacts=[address(contact)]) as c:
            assert c.max_message_size >= len(data)
            replies = c.handle(Store).put(data).wait_all(timeout=60)
            assert set(replies) == set(members)
            assert set(replies.values()) == {hashlib.sha256(data).hexdigest()}


def test_a_clients_call_beyond_its_limit_is_refused_at_the_client(groups: list[da.Group]) -> None:
    with client(groups) as c:
        limit = groups[0].config.client_call_limit()
        assert c.max_message_size == limit == 24 << 20  # rdmc.max_object_size: larger calls stream
        with pytest.raises(da.PayloadTooLarge, match=r"rdmc.max_object_size with large objects on"):
            c.handle(Store).put(b"x" * limit)


def test_a_clients_streamed_call_beyond_one_relay_frame_goes_through_a_contact_outside_the_shard(
    groups: list[da.Group],
) -> None:
    """A contact outside the shard relays a streamed call to a member block by block
    (``node.stream_relay``), not in one frame: a call above ``multicast.max_frame_bytes`` goes
    through it as through a member."""
    members = store_members(groups)
    outsider = next(g for g in groups if g.node_id not in members)
    data = os.urandom(20 << 20)  # above multicast.max_frame_bytes (16 MiB), within max_object_size
    for contact in (outsider, groups[members[0] - 1]):
        with client(groups, contacts=[address(contact)]) as c:
            replies = c.handle(Store).put(data).get(timeout=60)
            assert set(replies) == set(members)
            assert set(replies.values()) == {hashlib.sha256(data).hexdigest()}
