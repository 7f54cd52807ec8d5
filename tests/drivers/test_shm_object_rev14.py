"""Object segments (runtime.drivers.shm_objects) after the third review: an offer that comes
after its object is over at the member maps nothing, a sender offers nothing for an object the
engine let go of, a member that maps a segment the sender no longer counts is told it is gone,
a segment is not written again while a member has not answered its offer, and a block in place
of an object not open here is refused as its bytes would be, not as a hostile peer's.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from runtime.core.object_transfers import HOSTILE
from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, describe
from runtime.core.rdmc_events import Refusal
from runtime.drivers import shm_objects
from runtime.drivers.shm_objects import KEEP_MAPPED, ObjectSegments
from runtime.drivers.shm_worker import SLOW_CALLS
from runtime.wire.shm_setup import ShmBlockInPlace, ShmObjectAnswer, ShmObjectOffer, ShmSegmentFree
from runtime.wire.transfers import BlockDropped, block_frame_head
from tests.drivers.test_shm_object_segments import BLOCK, FakeShm, segments, wrote

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def _settle(seg: ObjectSegments, n: int = 3) -> None:
    for _ in range(n):
        seg.sweep()
    SLOW_CALLS.drain()


def _send_blocks(seg: ObjectSegments, d: ObjectDescriptor, data: bytes, to: int) -> None:
    for b in range(d.blocks):
        seg.block_out(to, block_frame_head(d.oid, b, BLOCK), memoryview(data)[b * BLOCK : (b + 1) * BLOCK])


def _object(seq: int, members: tuple[int, ...] = (1, 2), vid: int = 1) -> tuple[bytes, ObjectDescriptor]:
    data = os.urandom(2 * BLOCK)
    return data, describe(ObjectId(members[0], seq, vid), members, data, BLOCK)


def test_a_late_offer_of_an_ended_epoch_is_refused_and_maps_nothing(shm_dir: str) -> None:
    """The member's view changed before the sender's offer for an object of that view came
    (its reservation ended later): refused, nothing mapped, so nothing is held here until the
    next view change, and the sender counts no holder."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    data, d = _object(0)
    sseg.sending(d, memoryview(data))
    mseg.epoch_ended(1)
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    answer = member.of(ShmObjectAnswer)[-1][1]
    assert not answer.mapped
    assert mseg.mapped == {} and mseg.offers == {}
    sseg.answered(2, answer)
    seg = next(iter(sseg.segments.values()))
    assert seg.holders == set() and seg.waiting == set()
    sseg.close()
    mseg.close()


def test_a_late_offer_of_an_object_open_or_over_here_is_refused(shm_dir: str) -> None:
    """The descriptor came before the offer: the object is received as bytes here, and an
    offer of it (now, or after it is over here) maps nothing. The sender's next object is
    offered and mapped as usual."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    data, d = _object(0)
    assert mseg.receiving(d) is None  # no offer yet: bytes
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    assert not member.of(ShmObjectAnswer)[-1][1].mapped and mseg.mapped == {}

    data, d = _object(1)
    assert mseg.receiving(d) is None
    mseg.done(d.oid)
    _settle(mseg)  # over and forgotten here
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    assert not member.of(ShmObjectAnswer)[-1][1].mapped and mseg.mapped == {}

    data, d = _object(2)
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    assert member.of(ShmObjectAnswer)[-1][1].mapped and len(mseg.mapped) == 1
    view = mseg.receiving(d)
    assert view is not None
    del view
    sseg.close()
    mseg.close()


def test_no_offer_once_the_engine_let_go_of_the_object(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment reserved off the loop: if the object is over (a view change) before the
    reservation ends, it is offered to no one (a member that ended the epoch would map it for
    nothing), and the segment goes."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)
    gate = threading.Event()
    real = os.posix_fallocate

    def slow(fd: int, offset: int, length: int) -> None:
        gate.wait(10)
        real(fd, offset, length)

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data, d = _object(0)
        monkeypatch.setattr(os, "posix_fallocate", slow)
        seg.sending(d, memoryview(data))
        placed = seg.placed[d.oid]
        seg.done(d.oid)
        gate.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if placed.segment.reserved or placed.segment.token not in seg.segments:
                break
        await wrote(sender)
        assert SLOW_CALLS.drain()
        await asyncio.sleep(0.01)
        assert sender.of(ShmObjectOffer) == [], "offered after the engine let go of it"
        assert placed.segment.token not in seg.segments
        seg.close()

    asyncio.run(main())


def _late_answer(sender: FakeShm, sseg: ObjectSegments, member: FakeShm, mseg: ObjectSegments, seq: int) -> None:
    """One object read in place whose member's answer reaches the sender after the sender let
    go of it; the member then lets go of it too and says so."""
    data, d = _object(seq)
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    answer = member.of(ShmObjectAnswer)[-1][1]
    view = mseg.receiving(d)
    assert view is not None
    _send_blocks(sseg, d, data, 2)
    assert bytes(view) == data
    sseg.done(d.oid)
    _settle(sseg)
    sseg.answered(2, answer)
    del view
    mseg.done(d.oid)
    _settle(mseg)
    for _, f in member.of(ShmSegmentFree):
        sseg.segment_free(2, f)
    member.sent.clear()


def _normal(sender: FakeShm, sseg: ObjectSegments, member: FakeShm, mseg: ObjectSegments, seq: int) -> None:
    data, d = _object(seq)
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    sseg.answered(2, member.of(ShmObjectAnswer)[-1][1])
    view = mseg.receiving(d)
    assert view is not None
    _send_blocks(sseg, d, data, 2)
    assert bytes(view) == data
    del view
    sseg.done(d.oid)
    mseg.done(d.oid)
    _settle(sseg)
    _settle(mseg)
    for _, f in member.of(ShmSegmentFree):
        sseg.segment_free(2, f)
    member.sent.clear()
    _settle(sseg)


def test_late_answers_do_not_leave_mappings_that_stop_reuse(shm_dir: str) -> None:
    """Answers that reach the sender after it let go of the object still make the member
    count (or be told the segment is gone): no mapping here is said free for good with the
    sender not counting it, and later objects reuse segments as usual."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    for seq in range(KEEP_MAPPED):
        _late_answer(sender, sseg, member, mseg, seq)
    before = sseg.reused_total
    for seq in range(KEEP_MAPPED, KEEP_MAPPED + 8):
        _normal(sender, sseg, member, mseg, seq)
    assert sseg.reused_total - before >= 6, "segments are not reused"
    held = {token for s in sseg.segments.values() for token in [s.token] if 2 in s.holders}
    assert {token for _, token in mseg.mapped} <= held, "mapped here, not counted by the sender"
    sseg.close()
    mseg.close()


def test_a_late_answer_for_a_segment_the_sender_closed_is_told_it_is_gone(shm_dir: str) -> None:
    """The sender closed the segment before the member's answer came (here: a member it was
    also offered to is lost): the member is told the segment is gone, and unmaps it once
    nothing refers to it."""
    sender, sseg = segments(1, [2, 3], shm_dir)
    member, mseg = segments(2, [1, 3], shm_dir)
    data, d = _object(0, (1, 2, 3))
    sseg.sending(d, memoryview(data))
    offer = [m for n, m in sender.of(ShmObjectOffer) if n == 2][-1]
    mseg.offered(1, offer)
    answer = member.of(ShmObjectAnswer)[-1][1]
    assert answer.mapped
    sseg.done(d.oid)
    _settle(sseg)
    sseg.owner_gone(3)  # node 3 is lost: the segment is never written again and closed
    assert offer.token not in sseg.segments
    sseg.answered(2, answer)
    assert [(n, f) for n, f in sender.of(ShmSegmentFree)] == [(2, ShmSegmentFree(offer.token, False))]
    mseg.segment_free(1, sender.of(ShmSegmentFree)[-1][1])
    mseg.epoch_ended(1)  # its object never opened here
    _settle(mseg)
    assert mseg.mapped == {}
    sseg.close()
    mseg.close()


def test_a_segment_is_not_written_again_while_a_member_has_not_answered_its_offer(shm_dir: str) -> None:
    """Node 4 (rank 3 of four: it gets relays only) reads object 1 in place, its answer not at
    the sender yet. Object 2 of the same sender, of members without 4, must not be written
    into that segment: 4's application may hold object 1's view there."""
    sender, sseg = segments(1, [2, 3, 4], shm_dir)
    t4, m4 = segments(4, [1, 2, 3], shm_dir)
    data1, d1 = _object(0, (1, 2, 3, 4))
    sseg.sending(d1, memoryview(data1))
    offer = [m for n, m in sender.of(ShmObjectOffer) if n == 4][-1]
    for n in (2, 3):
        sseg.answered(n, ShmObjectAnswer(d1.oid, True, offer.token))
    m4.offered(1, offer)
    view = m4.receiving(d1)
    assert view is not None
    _send_blocks(sseg, d1, data1, 2)
    assert bytes(view) == data1
    sseg.done(d1.oid)
    _settle(sseg)
    seg = sseg.segments[offer.token]
    for n in (2, 3):
        sseg.segment_free(n, ShmSegmentFree(seg.token, True))
    data2, d2 = _object(1, (1, 2, 3))
    sseg.sending(d2, memoryview(data2))
    _send_blocks(sseg, d2, data2, 2)
    assert sseg.reused_total == 0
    assert bytes(view) == data1, "node 4's delivered object changed under it"
    del view
    sseg.close()
    m4.close()


def test_a_block_in_place_of_an_object_not_open_here_is_refused_as_its_bytes_would_be(shm_dir: str) -> None:
    """A restarted member gets a relay's block in place queued for its old process: refused as
    the bytes would be (the engine does not know the object), not as a hostile peer's. For an
    object open here and read as bytes, a block in place is still hostile."""
    _, fresh = segments(2, [1, 3], shm_dir)
    got = fresh.landed(3, ShmBlockInPlace(ObjectId(1, 7, 4), 0, BLOCK), lambda *_: Refusal.UNKNOWN_OBJECT)
    assert isinstance(got, BlockDropped) and got.reason is Refusal.UNKNOWN_OBJECT
    assert got.reason not in HOSTILE
    _, d = _object(0, (1, 2, 3))
    assert fresh.receiving(d) is None  # open here, read as bytes

    def engine(*_: object) -> memoryview:  # the engine's buffer for it
        return memoryview(bytearray(BLOCK))

    got = fresh.landed(3, ShmBlockInPlace(d.oid, 0, BLOCK), engine)
    assert isinstance(got, BlockDropped) and got.reason is Refusal.NOT_IN_PLACE
    fresh.close()
