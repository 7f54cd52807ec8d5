"""The transfer engine's credits, limits and zero-copy promise, and the node's own misuse.

Bad credits are refused and never kept; limits refuse before anything is allocated; the node's
own mistakes raise typed errors and change nothing; relays send views of the one receive buffer
and the sender views of the caller's object. The receiver set-up (``D``, ``opened``, ``finish``)
is the one of ``test_rdmc_transfer_faults.py``.
"""

from __future__ import annotations

import array
from dataclasses import replace

import pytest

from runtime.core.rdmc_descriptor import (
    ObjectDescriptor,
    ObjectId,
    ObjectTooLarge,
    TooManyObjects,
    TransferUsageError,
    describe,
    object_digest,
)
from runtime.core.rdmc_events import (
    BlockArrived,
    CreditGranted,
    CreditRefused,
    EpochEnded,
    GrantCredit,
    ObjectAnnounced,
    ObjectComplete,
    ObjectReleased,
    Refusal,
    SendBlock,
    StartSending,
)
from runtime.core.rdmc_plan import NO_SENDER, node_plan
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.rdmc_transfer import TransferConfig, TransferEngine
from tests.core.test_rdmc_transfer import KINDS, one_object
from tests.core.test_rdmc_transfer_faults import DATA, MEMBERS, D, opened

pytestmark = pytest.mark.timeout(60)

# --------------------------------------------------------------------------------------------
# Credits
# --------------------------------------------------------------------------------------------


def test_bad_credits_are_refused_and_not_kept() -> None:
    engine = TransferEngine(5, TransferConfig(max_objects=2))
    engine.step(StartSending(D, DATA))
    root_sends = node_plan(D, 0).sends
    target = next(iter(root_sends))
    not_target = next(m for m in MEMBERS[1:] if m not in root_sends) if len(root_sends) < 3 else 99
    assert engine.step(CreditGranted(D.oid, not_target, 1)) == [
        CreditRefused(D.oid, not_target, 1, Refusal.NOT_A_RECEIVER)
    ]
    too_much = len(root_sends[target]) + 1
    assert engine.step(CreditGranted(D.oid, target, too_much)) == [
        CreditRefused(D.oid, target, too_much, Refusal.TOO_MUCH_CREDIT)
    ]
    assert engine.step(CreditGranted(D.oid, target, 1)) == [
        SendBlock(D.oid, target, root_sends[target][0], memoryview(DATA)[:4])
    ]
    assert engine.step(CreditGranted(D.oid, target, 0)) == []  # a stale, lower grant changes nothing
    # Credits for objects not announced here yet: kept up to max_objects per granting node.
    later = [replace(D.oid, seq=s) for s in (1, 2, 3)]
    assert engine.step(CreditGranted(later[0], 6, 1)) == []
    assert engine.step(CreditGranted(later[1], 6, 1)) == []
    assert engine.step(CreditGranted(later[2], 6, 1)) == [CreditRefused(later[2], 6, 1, Refusal.TOO_MANY_EARLY)]
    assert engine.step(CreditGranted(later[2], 7, 1)) == []  # another node's budget
    engine.step(EpochEnded(2))
    assert engine.early_credits() == 0
    assert engine.step(CreditGranted(later[0], 6, 1)) == [CreditRefused(later[0], 6, 1, Refusal.EPOCH_ENDED)]


def test_credits_from_a_downstream_that_learned_the_object_first_are_used() -> None:
    """Chain 1 -> 2 -> 3: node 3 grants node 2 before node 2 is announced."""
    d = describe(ObjectId(1, 0, 0), (1, 2, 3), b"abcdef", 2, ScheduleKind.CHAIN)
    relay = TransferEngine(2)
    assert relay.step(CreditGranted(d.oid, 3, 3)) == []
    assert relay.step(ObjectAnnounced(d)) == [GrantCredit(d.oid, 1, 3)]
    out = relay.step(BlockArrived(d.oid, 1, 0, b"ab"))
    assert [type(e) for e in out] == [SendBlock]  # relayed at once: the early credit was kept
    assert isinstance(out[0], SendBlock) and bytes(out[0].data) == b"ab"


# --------------------------------------------------------------------------------------------
# Limits and the node's own mistakes
# --------------------------------------------------------------------------------------------


def objects_of(sender: int, count: int, size: int = 8) -> list[ObjectDescriptor]:
    return [describe(ObjectId(sender, s, 0), (sender, 2), bytes(size), 4) for s in range(count)]


def test_more_objects_than_allowed_are_refused_before_anything_is_allocated() -> None:
    engine = TransferEngine(1, TransferConfig(max_objects=2))
    first, second, third = objects_of(1, 3)
    engine.step(StartSending(first, bytes(8)))
    engine.step(StartSending(second, bytes(8)))
    with pytest.raises(TooManyObjects, match="max_objects=2") as raised:
        engine.step(StartSending(third, bytes(8)))
    assert raised.value.applied is False
    assert engine.in_flight() == (first.oid, second.oid) and engine.bytes_in_flight == 16
    receiver = TransferEngine(2, TransferConfig(max_objects=2))
    receiver.step(ObjectAnnounced(first))
    receiver.step(ObjectAnnounced(second))
    with pytest.raises(TooManyObjects):
        receiver.step(ObjectAnnounced(third))
    # Once the first object is through, its slot is free.
    for b in range(2):
        receiver.step(BlockArrived(first.oid, 1, b, bytes(4)))
    assert first.oid not in receiver.in_flight()
    receiver.step(ObjectAnnounced(third))
    assert receiver.in_flight() == (second.oid, third.oid)


def test_bytes_in_flight_are_bounded_and_one_object_too() -> None:
    engine = TransferEngine(1, TransferConfig(max_bytes=20, max_object_size=12, max_blocks=3))
    small, big = objects_of(1, 2, size=12)
    engine.step(StartSending(small, bytes(12)))
    with pytest.raises(TooManyObjects, match="max_bytes=20"):
        engine.step(StartSending(big, bytes(12)))
    huge = describe(ObjectId(1, 5, 0), (1, 2), bytes(13), 5)
    with pytest.raises(ObjectTooLarge):
        engine.step(StartSending(huge, bytes(13)))
    many_blocks = describe(ObjectId(1, 6, 0), (1, 2), bytes(8), 2)
    with pytest.raises(ObjectTooLarge, match="max_blocks=3"):
        engine.step(StartSending(many_blocks, bytes(8)))
    assert engine.in_flight() == (small.oid,)


MISUSE = [
    ("not a member", 9, ObjectAnnounced(D), "not a member"),
    ("the sender announced its own object", 5, ObjectAnnounced(D), "rank is 0"),
    ("a receiver starting", 6, StartSending(D, DATA), "rank is 1"),
    ("data of another size", 5, StartSending(D, DATA + b"x"), "17 bytes"),
]


@pytest.mark.parametrize(("node", "event", "message"), [r[1:] for r in MISUSE], ids=[r[0] for r in MISUSE])
def test_the_nodes_own_mistakes_raise_and_change_nothing(
    node: int, event: StartSending | ObjectAnnounced, message: str
) -> None:
    engine = TransferEngine(node)
    with pytest.raises(TransferUsageError, match=message):
        engine.step(event)
    assert engine.in_flight() == () and engine.bytes_in_flight == 0


def test_objects_open_once_and_in_seq_order() -> None:
    engine = opened()
    with pytest.raises(TransferUsageError, match="out of order"):
        engine.step(ObjectAnnounced(D))
    older = describe(replace(D.oid, seq=0, sender=5), MEMBERS, DATA, 4)
    engine.step(ObjectAnnounced(describe(replace(D.oid, seq=4), MEMBERS, DATA, 4)))
    with pytest.raises(TransferUsageError, match="out of order"):
        engine.step(ObjectAnnounced(replace(older, oid=replace(D.oid, seq=3))))
    with pytest.raises(TransferUsageError, match="not a transfer event"):
        engine.step("hello")  # type: ignore[arg-type]


def test_seq_order_is_per_stream() -> None:
    """A member of two shards learns their descriptors in no fixed order: a lower seq of
    another stream of the same sender still opens, and the stream's own order still holds."""
    engine = opened()
    other = describe(replace(D.oid, seq=0, stream=1), MEMBERS, DATA, 4)
    engine.step(ObjectAnnounced(other))
    assert other.oid in engine.in_flight()
    with pytest.raises(TransferUsageError, match="out of order"):
        engine.step(ObjectAnnounced(describe(replace(D.oid, seq=0, stream=1), MEMBERS, DATA, 4)))


BAD_DESCRIPTORS = [
    ("no members", dict(members=())),
    ("members repeated", dict(members=(5, 6, 6))),
    ("sender not first", dict(members=(6, 5))),
    ("negative size", dict(size=-1)),
    ("block size zero", dict(block_size=0)),
    ("kind as a string", dict(kind="binomial")),
    ("digest too short", dict(digest=b"x" * 16)),
    ("members as a list", dict(members=[5, 6])),
]


@pytest.mark.parametrize("changes", [r[1] for r in BAD_DESCRIPTORS], ids=[r[0] for r in BAD_DESCRIPTORS])
def test_a_malformed_descriptor_cannot_be_built(changes: dict[str, object]) -> None:
    with pytest.raises(TransferUsageError):
        replace(D, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", [dict(window=0), dict(max_objects=0), dict(max_bytes=-1), dict(max_blocks=True), dict(window=1.5)]
)
def test_a_bad_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(TransferUsageError):
        TransferConfig(**bad)  # type: ignore[arg-type]


def test_object_ids_are_non_negative_ints() -> None:
    bad: tuple[object, object, object]
    for bad in ((-1, 0, 0), (0, True, 0), (0, 0, "1")):
        with pytest.raises(TransferUsageError):
            ObjectId(*bad)


# --------------------------------------------------------------------------------------------
# Zero copy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_place", [False, True], ids=["copied-in", "read-in-place"])
@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_relays_send_views_of_the_one_receive_buffer(kind: ScheduleKind, in_place: bool) -> None:
    """No payload copy per relay: every block a node relays is a view of the buffer it
    completes with, and the sender's blocks are views of the caller's own object."""
    net, d = one_object(9, kind, 3000, 100, seed=3, in_place=in_place)
    net.run()
    net.check_delivered(d.oid)
    data = net.objects[d.oid][1]
    assert net.relay_views or kind is ScheduleKind.SEQUENTIAL
    for node, send in net.relay_views:
        assert send.data.obj is net.complete[d.oid, node].data.obj  # the one buffer itself
    buffers = {id(c.data) for c in net.complete.values()}
    assert len(buffers) == len(d.members) - 1  # one buffer per receiver, nothing else
    engine = TransferEngine(1)
    fresh = describe(ObjectId(1, 0, 0), (1, 2), data, 100, kind)
    sends = [e for e in engine.step(StartSending(fresh, data)) if isinstance(e, SendBlock)]
    assert sends == []  # nobody granted credit yet
    sends = [e for e in engine.step(CreditGranted(fresh.oid, 2, 4)) if isinstance(e, SendBlock)]
    assert len(sends) == 4 and all(s.data.obj is data for s in sends)


def test_a_typed_buffer_is_sent_as_its_bytes() -> None:
    """A NumPy-like typed buffer (a memoryview of 4-byte ints here) goes out as a flat byte view
    of itself (no copy)."""
    values = array.array("I", range(50))
    d = describe(ObjectId(1, 0, 0), (1, 2), memoryview(values), 64)
    assert d.size == 200 and d.digest == object_digest(values.tobytes())
    sender, receiver = TransferEngine(1), TransferEngine(2)
    sender.step(StartSending(d, memoryview(values)))
    grants = receiver.step(ObjectAnnounced(d))
    sends = [e for g in grants if isinstance(g, GrantCredit) for e in sender.step(CreditGranted(d.oid, 2, g.upto))]
    completed = [
        e for s in sends if isinstance(s, SendBlock) for e in receiver.step(BlockArrived(d.oid, 1, s.block, s.data))
    ]
    done = [e for e in completed if isinstance(e, ObjectComplete)]
    assert bytes(done[0].data) == values.tobytes()
    assert all(s.data.obj is values for s in sends if isinstance(s, SendBlock))
    assert ObjectReleased(d.oid) in completed


def test_expected_senders_cover_every_block_but_the_senders() -> None:
    for rank in range(len(MEMBERS)):
        plan = node_plan(D, rank)
        assert (NO_SENDER in plan.expected_from) == (rank == 0)


def test_prefaulting_a_block_keeps_what_the_buffer_holds() -> None:
    """The receive buffer's pages are mapped ahead of each block (MADV_POPULATE_WRITE): that
    must never change a byte already written, nor the zeros of the rest, and a buffer that is
    not a mapping (a small object's bytearray) is left alone."""
    import mmap

    from runtime.core.rdmc_object import prefault
    from runtime.core.rdmc_transfer import LAZY_BUFFER_BYTES, object_buffer

    size = 3 * LAZY_BUFFER_BYTES + 1234
    buf = object_buffer(size)
    assert isinstance(buf.obj, mmap.mmap)
    buf[5000:5010] = b"0123456789"
    prefault(buf, 4096 + 7, LAZY_BUFFER_BYTES)  # an unaligned block start: rounded down to its page
    prefault(buf, size - 1234, 1234)  # the short last block
    assert bytes(buf[5000:5010]) == b"0123456789"
    assert buf[:5000].tobytes().count(0) == 5000 and buf[5010:].tobytes().count(0) == size - 5010
    small = object_buffer(100)
    small[:3] = b"abc"
    prefault(small, 0, 100)
    assert bytes(small[:4]) == b"abc\0"


@pytest.mark.parametrize(
    ("block_size", "expected"), [(4 << 20, 4096), (1 << 20, 4096), (256 << 10, 16384), (8 << 20, 4096)]
)
def test_a_node_accepts_the_largest_object_cut_in_blocks_down_to_1_mib(block_size: int, expected: int) -> None:
    """4 GiB objects: a node with 4 MiB blocks (the default) still accepts one cut in 1 MiB
    blocks (another release's default, during a rolling upgrade); smaller own blocks count
    as before."""
    from runtime.core.object_policy import ObjectPolicy

    assert ObjectPolicy(max_object_size=4 << 30, max_bytes=4 << 30, block_size=block_size).max_blocks == expected
