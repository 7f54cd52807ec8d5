"""The transfer engine under faults: lost members, ended epochs, corrupt, forged and repeated
blocks. (Credits, limits, misuse and zero copy: ``test_rdmc_transfer_limits.py``.)

Peer input never raises and is never stored when refused (checked by finishing the object
afterwards and comparing every byte). Network runs reuse the net of ``test_rdmc_transfer.py``.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.rdmc_descriptor import (
    ObjectDescriptor,
    ObjectId,
    TransferUsageError,
    describe,
)
from runtime.core.rdmc_events import (
    BlockArrived,
    BlockRefused,
    BlockWritten,
    CreditGranted,
    EpochEnded,
    FailureReason,
    GrantCredit,
    MemberRemoved,
    ObjectAnnounced,
    ObjectComplete,
    Refusal,
    StartSending,
)
from runtime.core.rdmc_plan import node_plan
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.rdmc_transfer import TransferConfig, TransferEngine
from tests.core.test_rdmc_transfer import KINDS, Frame, Net, one_object

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------
# A member removed mid-object, an epoch ended mid-object
# --------------------------------------------------------------------------------------------


def cut(net: Net, d: ObjectDescriptor, seed: int) -> None:
    """Run the transfer part of the way: somewhere between the first and the last event."""
    total = Net(nodes=net.nodes, seed=seed, config=net.config)
    total.add_object(d.oid, d.members, net.objects[d.oid][1], d.block_size, d.kind)
    events = total.run()
    net.run(max_events=random.Random(seed).randrange(1, events))


@settings(derandomize=True, max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 12), kind=st.sampled_from(KINDS), blocks=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_a_member_removed_mid_object_fails_it_at_every_survivor(
    n: int, kind: ScheduleKind, blocks: int, seed: int
) -> None:
    net, d = one_object(n, kind, blocks * 5, 5, seed, config=TransferConfig(window=2))
    cut(net, d, seed)
    lost = random.Random(seed).choice(d.members)
    survivors = [m for m in d.members if m != lost]
    still_open = {m for m in survivors if (d.oid, m) in net.opened and (d.oid, m) not in net.released}
    done_before = {m for m in survivors if (d.oid, m) in net.released}
    # The view change: the lost node's frames vanish, nobody opens the object any more, and
    # every survivor is told (the driver would also end the epoch; see the next test).
    net.frames = [f for f in net.frames if lost not in (f.src, f.dst)]
    net.agenda = []
    for m in survivors:
        net.apply(m, net.engines[m].step(MemberRemoved(lost)))
    net.run()  # frames still in flight between survivors: refused, never stored
    reason = FailureReason.SENDER_LOST if lost == d.oid.sender else FailureReason.MEMBER_LOST
    for m in still_open:
        failed = net.failed[d.oid, m]
        assert (failed.reason, failed.node) == (reason, lost)
        assert failed.complete_here == ((d.oid, m) in net.complete or m == d.oid.sender)
    for m in done_before:  # released before the loss: it held the whole, checked object
        assert m == d.oid.sender or (d.oid, m) in net.complete
        assert (d.oid, m) not in net.failed
    for (oid, _), done in net.complete.items():
        assert bytes(done.data) == net.objects[oid][1]  # whatever completed is right
    assert all(r.reason in (Refusal.OBJECT_OVER, Refusal.UNKNOWN_OBJECT) for _, r in net.refused), net.refused
    for m in survivors:
        net.apply(m, net.engines[m].step(EpochEnded(d.oid.vid)))
        assert net.engines[m].in_flight() == () and net.engines[m].early_credits() == 0  # early credits gone too


@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 10), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_an_ended_epoch_fails_what_is_in_flight_and_refuses_its_leftovers(
    n: int, kind: ScheduleKind, seed: int
) -> None:
    net, d = one_object(n, kind, 60, 4, seed)
    cut(net, d, seed)
    open_before = {m for m in d.members if (d.oid, m) in net.opened and (d.oid, m) not in net.released}
    net.agenda = []
    for m in d.members:
        net.apply(m, net.engines[m].step(EpochEnded(d.oid.vid)))
    leftovers = len(net.frames)
    net.run()
    assert {m for (oid, m) in net.failed} == open_before
    assert all(f.reason is FailureReason.EPOCH_ENDED and f.node is None for f in net.failed.values())
    assert len(net.refused) == leftovers
    assert all(r.reason is Refusal.EPOCH_ENDED for _, r in net.refused)
    net.check_idle()
    with pytest.raises(TransferUsageError, match="ended epoch"):
        net.engines[d.oid.sender].step(StartSending(replace(d, oid=replace(d.oid, seq=9)), net.objects[d.oid][1]))


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
@pytest.mark.parametrize("seed", range(6))
def test_a_corrupted_block_is_never_delivered(kind: ScheduleKind, seed: int) -> None:
    """One block frame to one receiver is altered on the way (right sender, right size): the
    receiver relays it (it cannot know yet) and fails on the digest once it holds every block,
    as does every node that got the bad bytes from it; no node completes with them. Nodes that
    wait on a failed one (the victim itself, when a node it fed fails first) stall until the
    view change, which the driver starts when it sees the failure."""
    net, d = one_object(7, kind, 90, 10, seed, check_bytes=False)
    rng = random.Random(seed)
    victim, block = rng.choice(d.members[1:]), rng.randrange(d.blocks)
    deliver = net.deliver

    def corrupting(frame: Frame) -> None:
        if (frame.dst, frame.block) == (victim, block) and frame.data is not None:
            bad = bytearray(frame.data)  # a copy: the sender's own bytes stay intact
            bad[rng.randrange(len(bad))] ^= 0xFF
            frame = replace(frame, data=memoryview(bad))
        deliver(frame)

    net.deliver = corrupting  # type: ignore[method-assign]
    net.run()
    assert (d.oid, victim) not in net.complete
    assert net.failed, "the bad bytes failed nobody"  # the victim, or whoever it relayed them to first
    assert all(f.reason is FailureReason.DIGEST_MISMATCH and not f.complete_here for f in net.failed.values())
    for m in d.members[1:]:
        done = net.complete.get((d.oid, m))
        assert done is None or bytes(done.data) == net.objects[d.oid][1]
        assert (done is None) == ((d.oid, m) in net.failed or d.oid in net.engines[m].in_flight())
    assert all(r.reason is Refusal.OBJECT_OVER for _, r in net.refused)


# --------------------------------------------------------------------------------------------
# Forged, repeated and malformed blocks at one receiver, table-driven
# --------------------------------------------------------------------------------------------

MEMBERS = (5, 6, 7, 8)  # binomial, 4 blocks of 4 bytes; the receiver is node 6 (rank 1)
DATA = bytes(range(100, 116))
D = describe(ObjectId(5, 0, 2), MEMBERS, DATA, 4, ScheduleKind.BINOMIAL)
EXPECTED = node_plan(D, 1).expected_from  # block -> the node it comes from to node 6


def block_of(b: int) -> bytes:
    return DATA[b * 4 : b * 4 + 4]


def a_wrong_sender(b: int) -> int:
    return next(m for m in MEMBERS if m not in (6, EXPECTED[b]))


def opened(window: int = 4) -> TransferEngine:
    engine = TransferEngine(6, TransferConfig(window=window))
    effects = engine.step(ObjectAnnounced(D))
    assert all(isinstance(e, GrantCredit) for e in effects) and effects
    return engine


FORGED = [
    ("from a member not named for the block", BlockArrived(D.oid, a_wrong_sender(0), 0, block_of(0)), Refusal.WRONG_SENDER),
    ("from a node outside the object", BlockArrived(D.oid, 99, 0, block_of(0)), Refusal.WRONG_SENDER),
    ("index below range", BlockArrived(D.oid, EXPECTED[0], -1, block_of(0)), Refusal.OUT_OF_RANGE),
    ("index past the end", BlockArrived(D.oid, EXPECTED[0], 4, block_of(0)), Refusal.OUT_OF_RANGE),
    ("too short", BlockArrived(D.oid, EXPECTED[1], 1, block_of(1)[:3]), Refusal.WRONG_SIZE),
    ("too long", BlockArrived(D.oid, EXPECTED[1], 1, block_of(1) + b"!"), Refusal.WRONG_SIZE),
    ("an object not announced yet", BlockArrived(replace(D.oid, seq=1), EXPECTED[0], 0, block_of(0)), Refusal.UNKNOWN_OBJECT),
    ("an ended epoch", BlockArrived(replace(D.oid, vid=1), EXPECTED[0], 0, block_of(0)), Refusal.EPOCH_ENDED),
    ("written without a destination", BlockWritten(D.oid, EXPECTED[2], 2), Refusal.NOT_RESERVED),
]  # fmt: skip


def finish(engine: TransferEngine) -> bytes:
    """Deliver every block not held yet from its right sender; the completed bytes."""
    done: list[ObjectComplete] = []
    for b in range(D.blocks):
        if not engine.holds(D.oid, b):
            done += [
                e
                for e in engine.step(BlockArrived(D.oid, EXPECTED[b], b, block_of(b)))
                if isinstance(e, ObjectComplete)
            ]
    assert len(done) == 1
    return bytes(done[0].data)


@pytest.mark.parametrize(("event", "reason"), [row[1:] for row in FORGED], ids=[row[0] for row in FORGED])
def test_a_forged_or_malformed_block_is_refused_and_not_stored(
    event: BlockArrived | BlockWritten, reason: Refusal
) -> None:
    engine = opened()
    engine.step(EpochEnded(1))  # so that vid 1 is over while D (vid 2) goes on
    assert engine.step(event) == [BlockRefused(event.oid, event.sender, event.block, reason)]
    assert not any(engine.holds(D.oid, b) for b in range(D.blocks))
    assert finish(engine) == DATA  # nothing of the refused block was written


def test_a_repeated_block_is_refused_even_with_other_bytes() -> None:
    engine = opened()
    engine.step(BlockArrived(D.oid, EXPECTED[0], 0, block_of(0)))
    again = engine.step(BlockArrived(D.oid, EXPECTED[0], 0, b"evil"))
    assert again == [BlockRefused(D.oid, EXPECTED[0], 0, Refusal.DUPLICATE)]
    assert finish(engine) == DATA


def test_in_place_blocks_are_reserved_once() -> None:
    engine = opened(window=1)
    p = EXPECTED[0]
    view = engine.destination(D.oid, p, 0, 4)
    assert isinstance(view, memoryview)
    assert engine.destination(D.oid, p, 0, 4) is Refusal.DUPLICATE  # a repeated frame never lands
    assert engine.destination(D.oid, p, 1, 3) in (Refusal.WRONG_SIZE, Refusal.WRONG_SENDER)
    second = next((b for b in range(1, D.blocks) if EXPECTED[b] == p), None)
    if second is not None:  # one block in flight per link at window 1: the next one has no credit
        assert engine.destination(D.oid, p, second, 4) is Refusal.NO_CREDIT
    view[:] = block_of(0)
    assert not engine.holds(D.oid, 0)  # reserved is not held: nothing relays it yet
    engine.step(BlockWritten(D.oid, p, 0))
    assert engine.holds(D.oid, 0)
    assert engine.step(BlockWritten(D.oid, p, 0)) == [BlockRefused(D.oid, p, 0, Refusal.DUPLICATE)]
    assert finish(engine) == DATA


def test_the_sender_takes_no_blocks() -> None:
    engine = TransferEngine(5)
    engine.step(StartSending(D, DATA))
    for m in MEMBERS[1:]:
        assert engine.step(BlockArrived(D.oid, m, 0, block_of(0))) == [BlockRefused(D.oid, m, 0, Refusal.WRONG_SENDER)]


def test_blocks_after_the_object_is_over_are_refused_as_such() -> None:
    engine = opened()
    finish(engine)
    for q, blocks in node_plan(D, 1).sends.items():  # credit every relay send: node 6 is done
        engine.step(CreditGranted(D.oid, q, len(blocks)))
    assert engine.in_flight() == ()
    late = engine.step(BlockArrived(D.oid, EXPECTED[3], 3, block_of(3)))
    assert late == [BlockRefused(D.oid, EXPECTED[3], 3, Refusal.OBJECT_OVER)]
    assert engine.step(CreditGranted(D.oid, 8, 1)) == []  # a stale credit: dropped, not kept
    assert engine.early_credits() == 0
