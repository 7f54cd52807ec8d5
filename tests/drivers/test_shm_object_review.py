"""Object segments (runtime.drivers.shm_objects) against a hostile peer and local failures
(review rev12): what a peer says about objects counts only for objects it is a member of, and
nothing one peer sends pushes out what an honest one said; a block that cannot be written
into its segment never gets the sender cut off; a lost member's segments are freed."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from typing import Any

import pytest

from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.drivers import shm_objects
from runtime.drivers.shm_objects import KEEP_MAPPED, MAX_SEGMENTS
from runtime.drivers.shm_transport import TransportMode
from runtime.drivers.shm_worker import SLOW_CALLS
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage
from runtime.wire.shm_setup import ShmBlockInPlace, ShmInPlace, ShmObjectAnswer, ShmObjectOffer, ShmSegmentFree
from runtime.wire.transfers import block_frame_head
from tests.drivers.test_shm_object_segments import BLOCK, BlockBytes, segments, wrote
from tests.drivers.test_shm_transport import pair, turns

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def _block(oid: ObjectId, data: bytes) -> tuple[bytes, memoryview]:
    return block_frame_head(oid, 0, BLOCK), memoryview(data)[:BLOCK]


def test_a_non_member_saying_in_place_cannot_turn_a_members_blocks_into_bytes(shm_dir: str) -> None:
    sender, seg = segments(1, [2, 3, 4], shm_dir)  # node 4 is a peer, no member of the object
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    seg.sending(d, memoryview(data))
    seg.reads_in_place(2, ShmInPlace(d.oid))
    for i in range(200):
        seg.reads_in_place(4, ShmInPlace(ObjectId(7, i, 1)))
    seg.reads_in_place(4, ShmInPlace(d.oid))  # not a member of it: ignored
    assert seg.block_out(2, *_block(d.oid, data)), "node 2 reads in place: no bytes to it"
    assert not seg.block_out(4, *_block(d.oid, data))
    seg.close()


def test_a_peers_early_notes_do_not_push_out_another_peers(shm_dir: str) -> None:
    relay, seg = segments(2, [1, 3, 4], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    seg.reads_in_place(3, ShmInPlace(d.oid))  # node 3 opened the object before this node
    for i in range(200):
        seg.reads_in_place(4, ShmInPlace(ObjectId(7, i, 1)))
    assert seg.receiving(d) is None  # no offer here: this node gets bytes, and relays them
    assert seg.block_out(3, *_block(d.oid, data)), "node 3 reads in place: a frame saying so"
    assert relay.of(ShmBlockInPlace)
    seg.close()


def test_a_peers_flood_of_offers_does_not_push_out_another_senders_offer(shm_dir: str) -> None:
    honest, hseg = segments(1, [2, 3], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    hseg.sending(d, memoryview(data))
    member, mseg = segments(2, [1, 3, 5], shm_dir)
    mseg.offered(1, honest.of(ShmObjectOffer)[-1][1])
    mseg.reads_in_place(3, ShmInPlace(d.oid))
    hostile, xseg = segments(5, [2], shm_dir)
    for i in range(70):
        x = describe(ObjectId(5, i, 1), (5, 2), b"x" * BLOCK, BLOCK)
        xseg.sending(x, memoryview(b"x" * BLOCK))
        mseg.offered(5, hostile.of(ShmObjectOffer)[-1][1])
    view = mseg.receiving(d)
    assert view is not None, "node 1's offer was kept"
    assert mseg.block_out(3, *_block(d.oid, data)), "node 3 still reads in place"
    del view
    for s in (mseg, xseg, hseg):
        s.close()


def _files(d: str) -> list[str]:
    return [n for n in os.listdir(d) if n.endswith(".obj")]


def test_a_block_that_cannot_be_written_frees_its_segment(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sender, seg = segments(1, [2], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
    seg.sending(d, memoryview(data))

    def no_room(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.EIO, "an I/O error")

    monkeypatch.setattr(shm_objects.os, "pwrite", no_room)
    assert not seg.block_out(2, *_block(d.oid, data))
    monkeypatch.undo()
    assert seg.placed == {} and all(s.busy is None for s in seg.segments.values())
    seg.close()


def test_no_offer_when_the_segments_room_cannot_be_reserved(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shm_objects.os, "posix_fallocate", full)
    sender, seg = segments(1, [2], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
    seg.sending(d, memoryview(data))
    assert sender.of(ShmObjectOffer) == []
    assert not seg.block_out(2, *_block(d.oid, data))
    assert seg.segments == {} and seg.placed == {}
    SLOW_CALLS.drain()
    assert _files(shm_dir) == []
    seg.close()


def test_a_write_failing_before_the_room_is_reserved_means_no_offer(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the loop, the offer waits for the reservation: a block whose write failed meanwhile
    (no room yet) leaves every member on bytes, nobody reading in place to refuse them."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)  # as a segment too large to reserve on the loop

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
        seg.sending(d, memoryview(data))
        assert sender.of(ShmObjectOffer) == [], "offered before its room is reserved"
        real = os.pwrite

        def no_room(fd: int, data: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        shm_objects.os.pwrite = no_room  # type: ignore[assignment]
        try:
            assert seg.block_out(2, *_block(d.oid, data)), "the send waits for the block's write"
            await wrote(sender)
            assert [n for n, _ in sender.of(BlockBytes)] == [2], "the write failed: its bytes went"
        finally:
            shm_objects.os.pwrite = real  # type: ignore[assignment]
        for _ in range(100):
            SLOW_CALLS.drain()
            await asyncio.sleep(0.01)
        assert sender.of(ShmObjectOffer) == [] and seg.segments == {} and seg.placed == {}
        # A next object gets the spare reserved meanwhile (after the first found none): offered at once.
        d2 = describe(ObjectId(1, 1, 1), (1, 2), data, BLOCK)
        assert seg.spare is not None
        seg.sending(d2, memoryview(data))
        assert [o.oid for _, o in sender.of(ShmObjectOffer)] == [d2.oid]
        for _ in range(100):
            if sender.of(ShmObjectOffer):
                break
            await asyncio.sleep(0.01)
        assert [o.oid for _, o in sender.of(ShmObjectOffer)] == [d2.oid]
        seg.close()
        SLOW_CALLS.drain()

    asyncio.run(main())


def test_segments_are_closed_and_unmapped_off_the_loop(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeing a large segment's pages takes a tenth of a second per 512 MB: not on the loop."""
    threads: list[str] = []
    real_close = os.close

    def close(fd: int) -> None:
        threads.append(threading.current_thread().name)
        real_close(fd)

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        member, mseg = segments(2, [1], shm_dir)
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
        seg.sending(d, memoryview(data))
        for _ in range(100):
            if sender.of(ShmObjectOffer):
                break
            await asyncio.sleep(0.01)
        mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
        mseg.owner_gone(1)
        mapped = next(iter(mseg.mapped.values()))  # not its mm: a reference keeps it mapped
        SLOW_CALLS.drain()  # closes other tests left queued on the shared thread
        monkeypatch.setattr(shm_objects.os, "close", close)
        seg._drop_segment(next(iter(seg.segments.values())))
        mseg.done(d.oid)
        for _ in range(3):
            mseg.sweep()
        assert mseg.mapped == {}
        SLOW_CALLS.drain()
        assert threads and set(threads) == {"shm-slow-calls"}
        assert mapped.mm.closed
        seg.close()
        mseg.close()

    asyncio.run(main())


def test_object_frames_are_ignored_where_shared_memory_is_refused(shm_dir: str) -> None:
    """A node set to TCP (or a peer whose ring is not mapped) opens no file a peer names."""

    async def main() -> None:
        a, b = await pair(shm_dir, TransportMode.TCP)
        offers: list[Any] = []
        b.shm.objects.offered = lambda sender, offer: offers.append(offer)  # type: ignore[method-assign]
        a.shm.send(2, frame(AppMessage(b"x")))
        await turns()
        path = os.path.join(shm_dir, "derecho-t-n1-obj-p1-0123456789abcdef.obj")
        a.tcp.send(2, frame(ShmObjectOffer(ObjectId(1, 0, 1), path, BLOCK, b"t" * 16)))
        await turns()
        assert offers == []
        assert b.shm.object_memory is None
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


def test_a_lost_members_segments_are_closed(shm_dir: str) -> None:
    """A member killed before it said "free" held every segment: closed once it is lost."""
    sender, seg = segments(1, [2], shm_dir)
    for i in range(20):
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, i, 1), (1, 2), data, BLOCK)
        seg.sending(d, memoryview(data))
        seg.answered(2, ShmObjectAnswer(d.oid, True, seg.placed[d.oid].segment.token))
        if i < 19:
            seg.done(d.oid)
        for _ in range(3):
            seg.sweep()
    assert len(seg.segments) == MAX_SEGMENTS  # what the lost member holds, one of them busy
    seg.owner_gone(2)
    assert len(seg.segments) == 1, "the one still busy is closed once its object is done"
    seg.done(d.oid)
    for _ in range(3):
        seg.sweep()
    assert seg.segments == {}
    SLOW_CALLS.drain()
    seg.close()


def test_offers_are_bounded_by_the_engines_sizes(shm_dir: str) -> None:
    honest, hseg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    mseg.limit(max_object_size=4 << 20, max_bytes=8 << 20)
    big = ShmObjectOffer(
        ObjectId(1, 0, 1), os.path.join(shm_dir, "derecho-seg-n1-obj-p1-0123456789abcdef.obj"), 1 << 40, b"t" * 16
    )
    mseg.offered(1, big)
    assert [a.mapped for _, a in member.of(ShmObjectAnswer)] == [False]
    sent = []
    for i in range(12):  # 12 offers of 1 MiB segments: at most 8 MiB of them mapped, the newest
        x = describe(ObjectId(1, i, 1), (1, 2), b"x" * BLOCK, BLOCK)
        hseg.sending(x, memoryview(b"x" * BLOCK))
        mseg.offered(1, honest.of(ShmObjectOffer)[-1][1])
        sent.append(x.oid)
    assert all(a.mapped for _, a in member.of(ShmObjectAnswer)[1:])
    assert list(mseg.offers) == sent[-8:]
    mseg.close()
    hseg.close()


def test_a_fifo_at_an_offered_name_does_not_block(shm_dir: str) -> None:
    member, mseg = segments(2, [1], shm_dir)
    path = os.path.join(shm_dir, "derecho-seg-n1-obj-p1-0123456789abcdef.obj")
    os.mkfifo(path, 0o600)
    mseg.offered(1, ShmObjectOffer(ObjectId(1, 0, 1), path, BLOCK, b"t" * 16))  # the timeout guards a hang
    assert [a.mapped for _, a in member.of(ShmObjectAnswer)] == [False]
    mseg.close()


def test_a_sender_keeps_the_idle_segments_its_members_keep(shm_dir: str) -> None:
    """Members keep their last KEEP_MAPPED idle segments of a sender mapped: the sender keeps
    no others, so it never offers one a member has just unmapped."""
    sender, seg = segments(1, [2], shm_dir)
    member, mseg = segments(2, [1], shm_dir)
    oids = []
    for i in range(KEEP_MAPPED + 2):  # each in a segment of its own: all in flight at once
        data = os.urandom(BLOCK)
        d = describe(ObjectId(1, i, 1), (1, 2), data, BLOCK)
        seg.sending(d, memoryview(data))
        mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
        seg.answered(2, member.of(ShmObjectAnswer)[-1][1])
        assert mseg.receiving(d) is not None
        oids.append(d.oid)
    for oid in oids:
        seg.done(oid)
        mseg.done(oid)
    for _ in range(3):
        seg.sweep()
        mseg.sweep()
        for _, msg in member.of(ShmSegmentFree):
            seg.segment_free(2, msg)
        seg.sweep()
    kept_here = {t for (_, t) in mseg.mapped}
    assert len(kept_here) == KEEP_MAPPED
    assert set(seg.segments) == kept_here
    mseg.close()
    seg.close()
