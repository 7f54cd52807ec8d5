"""Object segments (runtime.drivers.shm_objects) after the second review: an honest relay's
late block in place is stale, a dead sender's offers are unmapped, a relay on TCP still reaches
a member reading in place, a spare being reserved at close is removed, /dev/shm is promised
once per process, a short write is a failed write, a peer's notes follow the engine's bound,
and a segment said free is kept mapped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.core.object_transfers import HOSTILE, STALE
from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.core.rdmc_events import Refusal
from runtime.drivers import shm_objects, shm_transport
from runtime.drivers.shm_objects import HEADER, KEEP_MAPPED, MAX_EARLY, ROOM_LEFT
from runtime.drivers.shm_worker import SLOW_CALLS
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage
from runtime.wire.shm_setup import ShmBlockInPlace, ShmInPlace, ShmObjectOffer, ShmSegmentFree
from runtime.wire.transfers import BlockDropped, BlockLanded, block_frame_head
from tests.drivers.test_shm_object_segments import BLOCK, BlockBytes, segments, wrote
from tests.drivers.test_shm_transport import pair, turns

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def _files(d: str) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".obj"))


def test_a_late_block_in_place_of_an_object_let_go_of_is_stale_not_hostile(shm_dir: str) -> None:
    """A relay with our credit sends its block in place after the object ended here (a view
    change) and was forgotten: answered as its bytes would be, never as a hostile peer."""
    sender, sseg = segments(1, [2, 3], shm_dir)
    member, mseg = segments(2, [1, 3], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    sseg.sending(d, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    view = mseg.receiving(d)
    assert view is not None and d.oid in mseg.adopted
    del view
    mseg.done(d.oid)  # EpochEnded / MemberRemoved failed it here
    for _ in range(3):
        mseg.sweep()
    assert d.oid not in mseg.adopted

    def engine(*_: Any) -> Refusal:  # the engine holds no such object any more
        return Refusal.OBJECT_OVER

    got = mseg.landed(3, ShmBlockInPlace(d.oid, 1, BLOCK), engine)
    assert isinstance(got, BlockDropped) and got.reason in STALE and got.reason not in HOSTILE
    mseg.epoch_ended(1)  # a block of the ended epoch is still stale
    got = mseg.landed(3, ShmBlockInPlace(d.oid, 1, BLOCK), lambda *_: Refusal.EPOCH_ENDED)
    assert isinstance(got, BlockDropped) and got.reason is Refusal.EPOCH_ENDED
    # An object of a live epoch this node never read in place: a block in place is hostile.
    live = ObjectId(1, 5, 2)
    got = mseg.landed(3, ShmBlockInPlace(live, 0, BLOCK), lambda *_: memoryview(bytearray(BLOCK)))
    assert isinstance(got, BlockDropped) and got.reason is Refusal.NOT_IN_PLACE
    sseg.close()
    mseg.close()


def test_a_dead_senders_offers_not_opened_yet_are_unmapped(shm_dir: str) -> None:
    """Offers mapped, their descriptors never delivered (the sender was killed): the owner's
    end drops them, and the sweep unmaps them."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    for i in range(3):
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, i, 1), (1, 2), data, BLOCK)
        sseg.sending(d, memoryview(data))
        mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    assert len(mseg.mapped) == 3
    sseg.close()
    mseg.owner_gone(1)
    mseg.sweep()
    SLOW_CALLS.drain()
    assert mseg.mapped == {} and mseg.offers == {}
    mseg.close()


def test_offers_of_an_ended_epoch_are_dropped(shm_dir: str) -> None:
    """The view changed before the descriptors were delivered: the offers go with the epoch,
    and their segments are idle again here (said free to a sender that lives on)."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    data = os.urandom(2 * BLOCK)
    old = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
    sseg.sending(old, memoryview(data))
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    mseg.epoch_ended(1)
    assert mseg.offers == {} and all(m.busy is None for m in mseg.mapped.values())
    mseg.sweep()
    assert [m.kept for _, m in member.of(ShmSegmentFree)] == [True]
    sseg.close()
    mseg.close()


def test_a_relays_blocks_in_place_over_tcp_reach_a_member_reading_in_place(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 2's ring to node 1 cannot be made: 1->2 is switched, 2->1 stays on TCP. A block in
    place from node 2 then comes over TCP and must land (dropped, the object hung for good:
    heartbeats flow). Such a pair no longer starts objects in place (``_switched`` asks for
    both rings, rev15), but one whose ring closes mid-object is in this state."""
    real = shm_transport.RingWriter.create

    def create(loop: Any, names: Any, *a: Any, **k: Any) -> Any:
        if "-n2-to1-" in names.base:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(loop, names, *a, **k)

    monkeypatch.setattr(shm_transport.RingWriter, "create", staticmethod(create))

    async def main() -> None:
        a, b = await pair(shm_dir)
        try:
            a.shm.send(2, frame(AppMessage(b"x")))
            b.shm.send(1, frame(AppMessage(b"y")))
            for _ in range(100):
                await turns()
                if a.shm.pairs[2].switched:
                    break
                await asyncio.sleep(0.02)
            assert a.shm.pairs[2].switched and a.shm.pairs[2].reader is None
            landed: list[Any] = []

            def land(sender: int, msg: ShmBlockInPlace, sink: Any) -> Any:
                landed.append(msg)
                return BlockLanded(msg.oid, msg.block)

            monkeypatch.setattr(a.shm.objects, "landed", land)
            b.shm.send(1, frame(ShmBlockInPlace(ObjectId(3, 0, 1), 0, BLOCK)))  # relay 2 to node 1
            for _ in range(50):
                await turns()
                if landed:
                    break
                await asyncio.sleep(0.01)
            assert [m.oid for m in landed] == [ObjectId(3, 0, 1)]
        finally:
            await a.shm.close()
            await b.shm.close()

    asyncio.run(main())


def test_a_spare_being_reserved_at_close_is_removed(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)  # its reservation goes to the worker thread
    size = 8 << 20

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data = bytearray(size)
        d = describe(ObjectId(1, 0, 1), (1, 2), data, 1 << 20)
        seg.sending(d, memoryview(data))
        assert seg._sparing is not None
        seg.close()  # the node leaves while the spare is reserved: the loop ends before its answer

    asyncio.run(main())
    SLOW_CALLS.drain()
    assert _files(shm_dir) == []


def test_room_promised_to_segments_not_reserved_yet_counts_for_the_next(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/shm has room for one more segment: a segment and a spare of one sender, and a
    second sender of this process, must not all pass the check before any is reserved."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)
    cap = 1 << 20
    free = HEADER + cap + ROOM_LEFT + cap // 2  # one segment and its margin, not two
    real = os.fstatvfs

    def fstatvfs(fd: int) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(shm_dir):
            return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)
        return real(fd)

    monkeypatch.setattr(os, "fstatvfs", fstatvfs)
    gate = threading.Event()

    async def main() -> None:
        SLOW_CALLS.submit(lambda: gate.wait(10))  # the worker is busy: no reservation ends yet
        one_t, one = segments(1, [2], shm_dir)
        two_t, two = segments(5, [2], shm_dir)
        data = bytes(cap)
        one.sending(describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK), memoryview(data))
        two.sending(describe(ObjectId(5, 0, 1), (5, 2), data, BLOCK), memoryview(data))
        try:
            assert len(_files(shm_dir)) == 1, _files(shm_dir)
            assert one._sparing is None and two.placed == {}
        finally:
            gate.set()
        for _ in range(100):
            if one_t.of(ShmObjectOffer):
                break
            await asyncio.sleep(0.01)
        assert len(one_t.of(ShmObjectOffer)) == 1 and two_t.of(ShmObjectOffer) == []
        assert shm_objects._ROOM.promised == 0, "settled by the reservation"
        one.close()
        two.close()
        SLOW_CALLS.drain()

    asyncio.run(main())


def test_a_short_write_into_a_segment_is_a_failed_write(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block written only in part (out of room partway, before the reservation) is not
    marked written: no offer follows, every member gets bytes."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
        seg.sending(d, memoryview(data))
        real = os.pwrite

        def short(fd: int, buf: Any, offset: int) -> int:
            return real(fd, memoryview(buf)[: len(buf) // 2], offset)

        monkeypatch.setattr(os, "pwrite", short)
        assert seg.block_out(2, block_frame_head(d.oid, 0, BLOCK), memoryview(data)[:BLOCK]), "waits for its write"
        await wrote(sender)
        monkeypatch.setattr(os, "pwrite", real)
        assert seg.placed == {}, "marked written, its second half missing"
        assert [(n, m.data) for n, m in sender.of(BlockBytes)] == [(2, data[:BLOCK])], "its bytes went"
        for _ in range(50):
            SLOW_CALLS.drain()
            await asyncio.sleep(0.01)
        assert sender.of(ShmObjectOffer) == []
        seg.close()
        SLOW_CALLS.drain()

    asyncio.run(main())


def test_a_peers_notes_follow_the_engines_bound_on_objects_in_flight(shm_dir: str) -> None:
    """With more objects in flight allowed than ``MAX_EARLY``, an honest peer's notes for
    objects it opened before this node are all kept (evicted, its blocks would come as bytes
    this node refuses as IN_PLACE... or in place, refused as hostile)."""
    relay, seg = segments(2, [1, 3], shm_dir)
    seg.limit(1 << 30, 1 << 30, 4 * MAX_EARLY)
    data = os.urandom(2 * BLOCK)
    count = 3 * MAX_EARLY
    ds = [describe(ObjectId(1, i, 1), (1, 2, 3), data, BLOCK) for i in range(count)]
    for d in ds:
        seg.reads_in_place(3, ShmInPlace(d.oid))  # node 3 opened them all before this node
    for d in ds:
        assert seg.receiving(d) is None  # no offer here: bytes, relayed
    assert all(seg.block_out(3, block_frame_head(d.oid, 0, BLOCK), memoryview(data)[:BLOCK]) for d in ds)
    seg.close()


def test_a_segment_said_free_stays_mapped_when_an_older_one_is_let_go_of_later(shm_dir: str) -> None:
    """Two segments said free, the newest held by the application: when it is let go of, the
    two the owner may be offering again right now stay mapped, the newest goes."""
    sender, sseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    views = {}
    ds = []
    for i in range(KEEP_MAPPED + 1):
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, i, 1), (1, 2), data, BLOCK)
        ds.append(d)
        sseg.sending(d, memoryview(data))
        mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
        views[i] = mseg.receiving(d)
        assert views[i] is not None
    for d in ds:
        mseg.done(d.oid)
    for _ in range(3):
        mseg.sweep()
    del views[0], views[1]  # the last object is still held by the application
    mseg.sweep()
    said = [m.token for _, m in member.of(ShmSegmentFree) if m.kept]
    assert len(said) == KEEP_MAPPED
    del views[2]
    mseg.sweep()
    assert all((1, token) in mseg.mapped for token in said), "a segment said free was unmapped"
    gone = [m.token for _, m in member.of(ShmSegmentFree) if not m.kept]
    assert len(gone) == 1 and gone[0] not in said
    sseg.close()
    mseg.close()
