"""A sender's blocks go into its segment off the node's loop (``BLOCK_WRITES``): a turn of the
engine sends a window of blocks of every object in flight, and their ``pwrite`` on the loop
held it 90-180 ms (bench/objects.py, 100 MB x 5 over shared memory). A block's sends, in-place
frames and bytes alike, go only once it is in the segment."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.drivers import shm_objects
from runtime.drivers.shm_objects import HEADER
from runtime.drivers.shm_worker import SLOW_CALLS
from runtime.wire.shm_setup import ShmBlockInPlace, ShmInPlace, ShmObjectOffer
from runtime.wire.transfers import block_frame_head
from tests.drivers.test_shm_object_segments import BLOCK, BlockBytes, segments, wrote

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def test_blocks_are_written_off_the_loop_and_announced_once_in_the_segment(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)  # as a segment too large to reserve on the loop
    loop_thread = threading.get_ident()
    writers: list[int] = []
    real = os.pwrite

    def spy(fd: int, data: Any, offset: int) -> int:
        if offset >= HEADER:  # a block (the header is written at the segment's creation)
            writers.append(threading.get_ident())
        return real(fd, data, offset)

    async def main() -> None:
        sender, seg = segments(1, [2, 3], shm_dir)
        data = os.urandom(3 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
        ready = seg.prepare(len(data))  # as the digest's worker thread does
        assert ready is not None
        ready()
        seg.sending(d, memoryview(data))
        path = sender.of(ShmObjectOffer)[0][1].base
        seg.reads_in_place(2, ShmInPlace(d.oid))  # node 2 reads in place, node 3 gets bytes
        monkeypatch.setattr(os, "pwrite", spy)
        view = memoryview(data)
        for b in range(3):
            for to in (2, 3):
                assert seg.block_out(to, block_frame_head(d.oid, b, BLOCK), view[b * BLOCK : (b + 1) * BLOCK])
        assert sender.of(ShmBlockInPlace) == [] and sender.of(BlockBytes) == [], "sent before the write"
        await wrote(sender)
        assert writers and loop_thread not in writers, "a block was written on the loop's thread"
        assert len(writers) == 3, "each block written once"
        assert [(n, m.block) for n, m in sender.of(ShmBlockInPlace)] == [(2, 0), (2, 1), (2, 2)]
        assert [(n, m.data) for n, m in sender.of(BlockBytes)] == [
            (3, data[b * BLOCK : (b + 1) * BLOCK]) for b in range(3)
        ]
        with open(path, "rb") as f:
            assert f.read()[HEADER : HEADER + len(data)] == data
        # Written: a later send of the block goes at once, with no second write.
        assert seg.block_out(2, block_frame_head(d.oid, 1, BLOCK), view[BLOCK : 2 * BLOCK])
        assert len(sender.of(ShmBlockInPlace)) == 4 and len(writers) == 3
        seg.close()

    asyncio.run(main())


def test_a_segment_prepared_off_the_loop_is_offered_at_once_and_none_reserved_on_it(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest's worker thread reserves a segment for the object (``prepare``): its offer
    goes when the object starts, and no ``posix_fallocate`` runs on the loop's thread (65-155
    ms for 100 MB on a loaded sender's loop)."""
    loop_thread = threading.get_ident()
    reservers: list[int] = []
    real = os.posix_fallocate

    def spy(fd: int, offset: int, length: int) -> None:
        reservers.append(threading.get_ident())
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", spy)
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)  # as a segment too large to reserve on the loop

    async def main() -> None:
        sender, seg = segments(1, [2, 3], shm_dir)
        data = os.urandom(3 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, seg.prepare, len(data))
        assert ready is not None
        ready()
        assert seg.prepare(len(data)) is None, "one ready already fits: no second"
        seg.sending(d, memoryview(data))
        assert [n for n, _ in sender.of(ShmObjectOffer)] == [2, 3], "offered as the object starts"
        assert reservers and loop_thread not in reservers
        # Without one prepared, the object starts on bytes; its segment is reserved off the loop.
        d2 = describe(ObjectId(1, 1, 1), (1, 2, 3), data, BLOCK)
        seg.sending(d2, memoryview(data))
        assert loop_thread not in reservers, "reserved on the loop"
        seg.close()

    asyncio.run(main())


def test_an_offer_after_the_reservation_waits_for_the_writes_in_flight(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reserved off the loop (a large segment), the offer goes only once no write of the
    object is pending: one could still fail for room, and a member reading in place would
    then refuse its bytes."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)
    gate = threading.Event()
    real = os.pwrite

    def slow(fd: int, data: Any, offset: int) -> int:
        if offset >= HEADER:
            gate.wait(10)
        return real(fd, data, offset)

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data = os.urandom(2 * BLOCK)
        d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
        monkeypatch.setattr(os, "pwrite", slow)
        seg.sending(d, memoryview(data))
        assert seg.block_out(2, block_frame_head(d.oid, 0, BLOCK), memoryview(data)[:BLOCK])
        for _ in range(100):  # the reservation ends; the write does not
            await asyncio.sleep(0.01)
            if seg.placed[d.oid].segment.reserved:
                break
        assert seg.placed[d.oid].segment.reserved
        assert sender.of(ShmObjectOffer) == [], "offered while a write of it may still fail"
        gate.set()
        await wrote(sender)
        assert [o.oid for _, o in sender.of(ShmObjectOffer)] == [d.oid]
        seg.close()

    asyncio.run(main())


def test_close_leaves_no_name_in_dev_shm_of_a_segment_prepared_or_queued_for_removal(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process may end right after close: a segment prepared on the digest's thread whose
    hand-over never ran, and names queued for removal on the worker thread behind a slow
    call, are removed by close itself (else they outlive the process in /dev/shm)."""
    monkeypatch.setattr(shm_objects, "RESERVE_NOW", 0)
    gate = threading.Event()

    async def main() -> None:
        sender, seg = segments(1, [2], shm_dir)
        data = os.urandom(2 * BLOCK)
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, seg.prepare, len(data))
        assert ready is not None and len(os.listdir(shm_dir)) == 1  # made; its hand-over never runs
        other_t, other = segments(3, [2], shm_dir)
        made = await loop.run_in_executor(None, other.prepare, len(data))
        assert made is not None
        made()
        d = describe(ObjectId(3, 0, 1), (3, 2), data, BLOCK)
        other.sending(d, memoryview(data))
        assert other_t.of(ShmObjectOffer)
        SLOW_CALLS.submit(lambda: gate.wait(10))  # the worker is busy: queued removals wait
        seg.close()
        other.close()
        try:
            assert os.listdir(shm_dir) == [], "a name outlives close"
        finally:
            gate.set()
        SLOW_CALLS.drain()
        ready()  # late: nothing to hand over any more
        assert seg.ready == []

    asyncio.run(main())
