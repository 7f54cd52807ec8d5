"""Admission of large objects to a node's transfer engine: no configuration a node accepts may
leave objects waiting on each other for room.

Each sender keeps at least one object undelivered, so with fewer ``max_objects`` than senders
a shard's objects can exceed what one node admits. Admitted as they arrived, nodes that opened
different sets waited on each other for ever (simulator seed 161: three senders, room for two).
Admitted in the shard's total order, every node holds a prefix of one sequence and the earliest
object is never kept out. The network below is driven by hand: each case first delivers the
pushes so that every node sees a different set of objects first (the crossing that deadlocked),
then lets everything run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import pytest

from runtime.core.object_policy import ObjectPolicy
from runtime.core.object_transfers import NodeObjects, Sorted
from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, describe
from runtime.core.rdmc_transfer import TransferConfig
from tests.core.shard_net import ShardNet
from tests.core.test_object_gating import CONFIG, POLICY, blob


@dataclass(frozen=True)
class Crossing:
    """``members`` each send ``each`` objects at once; node ``members[i]`` first takes the
    pushes of the ``ahead`` members after it in rank order (cyclically), so every node opens
    its own object and a different set of others' before the rest arrive."""

    name: str
    members: tuple[int, ...]
    max_objects: int
    each: int = 1
    ahead: int = 1


CROSSINGS = [
    Crossing("3 senders, room for 2 (seed 161)", (1, 2, 3), max_objects=2),
    Crossing("3 senders, room for 1", (1, 2, 3), max_objects=1),
    Crossing("4 senders, room for 3", (1, 2, 3, 4), max_objects=3, ahead=2),
    Crossing("4 senders, room for 2", (1, 2, 3, 4), max_objects=2),
    Crossing("5 senders, room for 3", (1, 2, 3, 4, 5), max_objects=3, ahead=2),
    Crossing("3 senders, room for 2, two objects each", (1, 2, 3), max_objects=2, each=2),
    Crossing("4 senders, room for 3, three objects each", (1, 2, 3, 4), max_objects=3, each=3, ahead=2),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CROSSINGS, ids=[c.name for c in CROSSINGS])
def test_objects_opened_in_crossing_sets_are_all_delivered(case: Crossing) -> None:
    net = ShardNet(case.members, replace(CONFIG, objects=replace(POLICY, max_objects=case.max_objects)))
    mine = {n: [blob(1500 + 100 * j, seed=10 * n + j) for j in range(case.each)] for n in case.members}
    queued = {n: list(objs) for n, objs in mine.items()}
    for n in case.members:  # one object each now (the quota); the rest as the window opens
        assert net.send(n, *queued[n]) == 1
        del queued[n][0]
    n_members = len(case.members)
    for i, dst in enumerate(case.members):
        for step in range(1, case.ahead + 1):
            src = case.members[(i + step) % n_members]
            while net.deliver_one(src, dst):
                pass
    for _ in range(100 * case.each):
        net.settle()
        for n in case.members:
            if queued[n] and net.send(n, *queued[n]):
                del queued[n][0]
        if not any(queued.values()) and not net.in_flight() and not net.transfers_in_flight():
            net.settle()
            break
    everything = sorted(p for objs in mine.values() for p in objs)
    order = net.payloads(case.members[0])
    assert sorted(order) == everything, "objects left undelivered: their nodes wait on each other for room"
    for m in case.members:
        assert net.payloads(m) == order
        objects = net.cores[m].objects
        assert objects is not None and objects.engine.in_flight() == () and objects.waiting == 0
    assert not net.rejected


def test_with_room_for_every_quota_a_receiver_opens_an_object_as_it_arrives() -> None:
    """Default shape (quotas fit the room: 3 x 1 within 4): a receiver opens an object from its
    descriptor alone, though it holds nothing yet of the senders before it in the order."""
    net = ShardNet((1, 2, 3), CONFIG)
    net.send(2, blob(2000, 1))  # slot 1; slot 0 (node 1's) not sent
    while net.deliver_one(2, 3):
        pass
    objects = net.cores[3].objects
    assert objects is not None and len(objects.engine.in_flight()) == 1


def test_in_total_order_a_receiver_opens_an_object_once_it_holds_every_message_before_it() -> None:
    """Room for fewer than the quotas (2 for 3 senders): node 3 opens node 2's object (slot 1)
    only once it holds slot 0 (node 1's null, sent when node 1 learns of the object), and node
    2 itself starts it only then too."""
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, max_objects=2)))
    net.send(2, blob(2000, 1))
    while net.deliver_one(2, 3):
        pass
    receiver, sender = net.cores[3].objects, net.cores[2].objects
    assert receiver is not None and sender is not None
    assert receiver.engine.in_flight() == () and sender.engine.in_flight() == ()
    while net.deliver_one(2, 1):
        pass
    net.tick(CONFIG.null_interval)  # node 1 sends its null for slot 0
    for dst in (2, 3):
        while net.deliver_one(1, dst):
            pass
    assert len(receiver.engine.in_flight()) == 1 and len(sender.engine.in_flight()) == 1
    net.settle()
    assert all(len(net.payloads(m)) == 1 for m in (1, 2, 3))


# (max_objects, senders, shards) -> quota, room per shard, admitted on arrival
POLICY_SHAPES = [
    (8, 3, 1, 2, 8, True),
    (4, 3, 1, 1, 4, True),
    (3, 3, 1, 1, 3, True),
    (2, 3, 1, 1, 2, False),
    (1, 2, 1, 1, 1, False),
    (8, 3, 2, 2, 4, False),
    (8, 2, 2, 4, 4, False),
    (8, 4, 2, 2, 4, False),
    (8, 2, 4, 4, 2, False),
    (16, 2, 2, 8, 8, False),
    (16, 4, 4, 4, 4, False),
    (12, 3, 1, 4, 12, True),
    (2, 1, 3, 2, 1, False),
    (1, 1, 1, 1, 1, True),
]


@pytest.mark.parametrize(("max_objects", "senders", "shards", "quota", "room", "on_arrival"), POLICY_SHAPES)
def test_policy_shapes(max_objects: int, senders: int, shards: int, quota: int, room: int, on_arrival: bool) -> None:
    policy = ObjectPolicy(max_objects=max_objects)
    assert policy.quota(senders) == quota
    assert policy.shard_capacity(shards) == room
    assert policy.admits_on_arrival(senders, shards) is on_arrival


@pytest.mark.parametrize("shards", [1, 2, 3, 7, 8, 9, 20])
def test_the_engine_guard_covers_every_shards_room_and_bytes(shards: int) -> None:
    """The engine refuses only past what admission can reach: every shard's room together, and
    that many objects of the largest size (own starts are held to max_bytes by admission)."""
    policy = ObjectPolicy(max_objects=8, max_object_size=1000, max_bytes=3000)
    guard: TransferConfig = policy.transfer_config(shards)
    together = shards * policy.shard_capacity(shards)
    assert guard.max_objects == max(together, policy.max_objects)
    assert guard.max_bytes >= together * policy.max_object_size
    assert guard.max_bytes >= policy.max_bytes


@pytest.mark.parametrize("max_objects", [1, 8])
def test_bytes_hold_a_sender_back_before_its_slot_never_after(max_objects: int) -> None:
    """max_bytes 3,000: node 1 holds node 2's object of 2,500 bytes, so its own of 2,500 is
    not taken (no slot, nothing waits on it) until that one is released; then it goes. With
    room for one object (admitted in total order) as with room for eight."""
    policy = replace(POLICY, max_object_size=3000, max_bytes=3000, max_objects=max_objects)
    net = ShardNet((1, 2), replace(CONFIG, objects=policy))
    theirs, mine = blob(2500, 2), blob(2500, 1)
    assert net.send(2, theirs) == 1
    net.settle_messages()
    objects = net.cores[1].objects
    assert objects is not None and len(objects.engine.in_flight()) == 1
    assert net.send(1, mine) == 0
    net.settle()
    assert objects.engine.in_flight() == ()
    assert net.send(1, mine) == 1
    net.settle()
    assert net.payloads(1) == net.payloads(2) == [theirs, mine]


def announced(stream: int, sender: int, members: tuple[int, ...] = (2, 1, 3)) -> ObjectDescriptor:
    members = (sender, *(m for m in members if m != sender))
    return describe(ObjectId(sender, 0, 0, stream), members, blob(600, sender), POLICY.block_size, POLICY.kind)


# (max_objects, the node's shards (stream -> senders), announcements in arrival order as
# (stream, sender)) -> how many are admitted now, per stream
SHARD_ROOMS = [
    (2, {0: 3, 1: 3}, [(0, 2), (0, 3), (1, 3)], {0: 1, 1: 1}),
    (2, {0: 3, 1: 3, 2: 3}, [(0, 2), (1, 2), (2, 2), (2, 3)], {0: 1, 1: 1, 2: 1}),
    (4, {0: 3, 1: 3}, [(0, 2), (0, 3), (1, 2), (1, 3)], {0: 2, 1: 2}),
    (8, {0: 3}, [(0, 2), (0, 3)], {0: 2}),
]


@pytest.mark.parametrize(("max_objects", "shards", "arrivals", "admitted"), SHARD_ROOMS)
def test_each_shard_has_its_own_room_at_a_node(
    max_objects: int, shards: dict[int, int], arrivals: list[tuple[int, int]], admitted: dict[int, int]
) -> None:
    """A node's shards do not take each other's room (their orders are unrelated, so a wait
    across two of them could close a cycle neither order breaks); each has at least one."""
    node = NodeObjects(1, replace(POLICY, max_objects=max_objects))
    node.open_view(0, shards)
    out = Sorted()
    for stream, sender in arrivals:
        node.admit(announced(stream, sender), out)
    held = Counter(oid.stream for oid in node.engine.in_flight())
    assert dict(held) == admitted
    assert node.waiting == len(arrivals) - sum(admitted.values())
