"""Large objects in the ordered multicast, in the core alone: a payload above the threshold
goes as a descriptor in the order and its bytes by blocks, and its slot is delivered only once
every member holds the whole object (RDMC completion gates SMC delivery)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from runtime.core.effects import Rejected
from runtime.core.events import MessageArrived, TransferArrived
from runtime.core.messages import ShardPush
from runtime.core.object_policy import ObjectPolicy
from runtime.core.rdmc_descriptor import Digested, ObjectDescriptor, ObjectId, ObjectTooLarge, describe
from runtime.core.rdmc_events import BlockArrived
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.smc import MulticastConfig
from tests.core.shard_net import SHARD, ShardNet, fixed_core

POLICY = ObjectPolicy(threshold=1000, block_size=256, max_object_size=1 << 20, max_objects=4, window=2)
CONFIG = MulticastConfig(window_size=50, null_interval=0.001, max_message_size=4096, objects=POLICY)


def blob(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def received(net: ShardNet, node: int) -> tuple[int, ...]:
    smc = net.cores[node].shards[SHARD]
    return tuple(smc.sst.mine["received_num"])  # type: ignore[arg-type]


def pushed_descriptors(net: ShardNet, src: int, dst: int) -> list[ObjectDescriptor]:
    return [
        m
        for push in net.links.get((src, dst), ())
        if isinstance(push, ShardPush)
        for m in push.messages
        if isinstance(m, ObjectDescriptor)
    ]


# Which path a payload takes, by size: (size, goes as an object).
THRESHOLD_CASES = [(0, False), (999, False), (1000, False), (1001, True), (4096, True), (50_000, True)]


@pytest.mark.parametrize(("size", "as_object"), THRESHOLD_CASES)
def test_payloads_above_the_threshold_go_as_objects(size: int, as_object: bool) -> None:
    net = ShardNet((1, 2, 3), CONFIG)
    data = blob(size)
    assert net.send(1, data) == 1
    assert bool(pushed_descriptors(net, 1, 2)) is as_object
    net.settle()
    for m in (1, 2, 3):
        assert net.payloads(m) == [data]


def test_the_descriptor_waits_for_every_member_to_hold_the_object() -> None:
    net = ShardNet((1, 2, 3), CONFIG)
    small_a, big, small_b = b"a", blob(5000, 1), b"b"
    assert net.send(1, small_a, big, small_b) == 3
    net.settle_messages()
    # Every member holds the three messages, but counts only the first as received: the
    # object is not whole anywhere yet, so nothing after it is stable.
    for m in (2, 3):
        assert received(net, m)[0] == 1
        assert net.payloads(m) == [small_a]
    assert net.payloads(1) == [small_a]
    net.settle()
    for m in (1, 2, 3):
        assert net.payloads(m) == [small_a, big, small_b]
        assert received(net, m)[0] == 3
        assert net.cores[m].objects is not None and net.cores[m].objects.engine.in_flight() == ()


def test_one_member_missing_blocks_holds_back_every_member() -> None:
    """Stability is the minimum over the shard: a member that holds every block is not
    enough; delivery waits for the last one."""
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, kind=ScheduleKind.SEQUENTIAL)))
    big = blob(3000, 2)
    net.send(1, big)
    net.settle_messages()
    while net.deliver_transfer(2, 1) or net.deliver_transfer(1, 2) or net.deliver_transfer(3, 1):
        net.settle_messages()
    assert net.payloads(2) == [] and received(net, 2)[0] == 1  # whole at 2, not at 3
    assert net.payloads(1) == []
    net.settle()
    assert all(net.payloads(m) == [big] for m in (1, 2, 3))


def test_senders_interleave_objects_and_messages_in_one_order() -> None:
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, max_objects=6)))  # two each
    sends = {1: [blob(2000, 10), b"x1", blob(1500, 11)], 2: [b"y1", blob(4000, 12)], 3: [b"z1", b"z2"]}
    for node, payloads in sends.items():
        assert net.send(node, *payloads) == len(payloads)
    net.settle()
    order = net.payloads(1)
    assert sorted(order) == sorted(p for ps in sends.values() for p in ps)
    assert net.payloads(2) == order and net.payloads(3) == order
    assert not net.rejected


def test_a_sender_keeps_its_share_of_objects_undelivered() -> None:
    """max_objects 4 over 3 senders: each may have one object undelivered; the next waits for
    a window_open after the first is delivered, and nothing is lost."""
    net = ShardNet((1, 2, 3), CONFIG)
    first, second = blob(2000, 20), blob(2000, 21)
    assert net.send(1, first, second, b"after") == 1
    opened = net.window_opened[1]
    net.settle()
    assert net.window_opened[1] > opened
    assert net.send(1, second, b"after") == 2
    net.settle()
    assert all(net.payloads(m) == [first, second, b"after"] for m in (1, 2, 3))


def test_an_object_beyond_max_object_size_is_refused_at_the_sender() -> None:
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, max_object_size=3000, max_bytes=3000)))
    with pytest.raises(ObjectTooLarge, match="max_object_size 3000"):
        net.send(1, blob(3001))
    assert net.send(1, blob(3000)) == 1


def test_without_objects_a_large_payload_is_refused_as_before() -> None:
    net = ShardNet((1, 2), replace(CONFIG, objects=None))
    with pytest.raises(ValueError, match="exceeds max_message_size 4096"):
        net.send(1, blob(4097))


def descriptor_for(oid: ObjectId, members: tuple[int, ...], size: int = 2000) -> ObjectDescriptor:
    return describe(oid, members, blob(size), POLICY.block_size, POLICY.kind)


BAD_DESCRIPTORS = [
    ("another sender", descriptor_for(ObjectId(3, 1, 0, 0), (3, 1, 2)), "names"),
    ("another slot", descriptor_for(ObjectId(1, 5, 0, 0), (1, 2, 3)), "its slot is"),
    ("another view", descriptor_for(ObjectId(1, 0, 4, 0), (1, 2, 3)), "its slot is"),
    ("another stream", descriptor_for(ObjectId(1, 0, 0, 2), (1, 2, 3)), "its slot is"),
    ("members missing one", descriptor_for(ObjectId(1, 1, 0, 0), (1, 2)), "lists members"),
    ("members reordered", descriptor_for(ObjectId(1, 1, 0, 0), (1, 3, 2)), "lists members"),
    ("a stranger in members", descriptor_for(ObjectId(1, 1, 0, 0), (1, 2, 3, 9)), "lists members"),
    (
        "too large",
        replace(descriptor_for(ObjectId(1, 1, 0, 0), (1, 2, 3)), size=(1 << 20) + 1),
        "exceeds this node's max_object_size",
    ),
]


@pytest.mark.parametrize(("d", "why"), [c[1:] for c in BAD_DESCRIPTORS], ids=[c[0] for c in BAD_DESCRIPTORS])
def test_a_bad_descriptor_refuses_the_push_and_takes_nothing(d: ObjectDescriptor, why: str) -> None:
    core = fixed_core(2, (1, 2, 3), CONFIG)
    core.ready()
    core.step(MessageArrived(0.0, 1, ShardPush(0, SHARD, 0, None, 0, (b"ok", d))))
    ready = core.ready()
    assert [r.sender for r in ready.rejected] == [1]
    assert why in ready.rejected[0].reason
    assert list(core.shards[SHARD].sst.mine["received_num"]) == [0, 0, 0]  # type: ignore[arg-type]
    assert ready.transfers == []


def test_a_descriptor_is_refused_where_objects_are_off() -> None:
    core = fixed_core(2, (1, 2), replace(CONFIG, objects=None))
    core.ready()
    d = descriptor_for(ObjectId(1, 0, 0, 0), (1, 2))
    core.step(MessageArrived(0.0, 1, ShardPush(0, SHARD, 0, None, 0, (d,))))
    assert "bad payload" in core.ready().rejected[0].reason


def test_a_block_from_a_node_the_schedule_does_not_name_is_refused_and_closes_its_sender() -> None:
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, kind=ScheduleKind.SEQUENTIAL)))
    big = blob(2000, 30)
    net.send(1, big)
    net.settle_messages()
    d = pushed_or_held_descriptor(net)
    forged = BlockArrived(d.oid, 3, 0, big[: POLICY.block_size])  # the sequential schedule: 1 sends
    net.cores[2].step(TransferArrived(net.now, forged))
    net.flush(2)
    assert net.rejected[-1] == Rejected(3, f"block 0 of object {d.oid} refused: {forged_reason()}", forged=True)
    net.settle()
    assert all(net.payloads(m) == [big] for m in (1, 2, 3))


def test_a_corrupted_object_is_never_delivered_and_its_sender_is_suspected() -> None:
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=replace(POLICY, kind=ScheduleKind.SEQUENTIAL)))
    big = blob(2600, 31)  # 11 blocks
    net.send(1, big)
    net.settle_messages()
    corrupted = False
    for _ in range(1000):  # one transfer at a time; flip a byte of the first block to node 2
        net.settle_messages()
        q = net.transfer_links.get((1, 2))
        head = q[0] if q else None
        if not corrupted and q and isinstance(head, BlockArrived):
            bad = bytearray(head.data)
            bad[0] ^= 0xFF
            q[0] = replace(head, data=bytes(bad))
            corrupted = True
        if not any(net.deliver_transfer(src, dst) for src, dst in net.transfers_in_flight()):
            break
    assert corrupted
    net.settle()
    assert net.payloads(2) == [] and net.payloads(1) == [] and net.payloads(3) == []
    assert any("does not match its digest" in r.reason for r in net.rejected if isinstance(r, Rejected))
    core = net.cores[2]
    assert core.view is not None and core.membership is not None
    rank = core.view.rank_of(1)
    assert rank is None or core.membership.suspects(rank)  # suspected, or removed already


def pushed_or_held_descriptor(net: ShardNet) -> ObjectDescriptor:
    smc = net.cores[1].shards[SHARD]
    return next(m for m in smc._buf[smc.my_pos or 0] if isinstance(m, ObjectDescriptor))


def forged_reason() -> str:
    from runtime.core.rdmc_events import Refusal

    return Refusal.WRONG_SENDER.value


def test_a_digest_computed_off_the_loop_is_taken_as_given_and_receivers_get_their_buffer() -> None:
    """The driver digests large payloads in a worker thread and hands the core a Digested: the
    descriptor carries that digest (the core makes no pass of its own), and each receiver is
    handed its receive buffer itself, not a copy made on the loop."""
    net = ShardNet((1, 2, 3), CONFIG)
    big = blob(5000, 7)
    given = Digested.of(big)
    assert net.send(1, b"a", given, b"b") == 3  # type: ignore[arg-type]
    assert [d.digest for d in pushed_descriptors(net, 1, 2)] == [given.digest]
    net.settle()
    for m in (1, 2, 3):
        assert net.payloads(m) == [b"a", big, b"b"]
    assert net.delivered[1][1][3] is big  # the sender's own bytes
    for m in (2, 3):
        got = net.delivered[m][1][3]
        assert type(got) is memoryview and got.readonly and got == big


def test_a_wrong_digest_given_by_the_driver_fails_the_object_at_the_receivers() -> None:
    """Whoever computed it, the digest is checked at each receiver: a bad one is never
    delivered (so a driver bug cannot hand on corrupted bytes)."""
    net = ShardNet((1, 2, 3), CONFIG)
    big = blob(5000, 8)
    assert net.send(1, Digested(big, bytes(32))) == 1  # type: ignore[arg-type]
    net.settle_messages()
    for _ in range(50):
        net.tick(0.01)
    for m in (2, 3):
        assert net.payloads(m) == []


def test_objects_of_every_sender_beyond_max_bytes_together_are_delivered_not_stalled() -> None:
    """Three senders each start an object of 2,000 bytes at once, with max_bytes 3,000: each
    sender's own object fits its node, but no node could hold all three. Were a receiver to
    wait for byte room, every node would hold its own object and wait for another's, whose
    sender waits for it: a cycle, no delivery ever. Receivers admit by count only (bounded by
    the senders' quotas and max_object_size); the byte bound holds each node's own objects."""
    policy = replace(POLICY, max_object_size=3000, max_bytes=3000, max_objects=8)
    net = ShardNet((1, 2, 3), replace(CONFIG, objects=policy))
    mine = {n: blob(2000, seed=n) for n in (1, 2, 3)}
    for n in (1, 2, 3):
        assert net.send(n, mine[n]) == 1
    net.settle()
    for m in (1, 2, 3):
        assert sorted(net.payloads(m)) == sorted(mine.values())
