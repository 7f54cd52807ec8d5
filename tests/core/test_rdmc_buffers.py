"""Receive buffers are reused only once nothing refers to them, and what is kept idle is bounded.

The pool (``runtime.core.rdmc_buffers``) saves a receiver the kernel's work of mapping fresh
pages for every object; the danger is writing a new object into a buffer whose old object is
still held somewhere (by the application, or a relay waiting in a transport's queue). These
tests hold views in each of those ways and check the bytes never change under them.
"""

from __future__ import annotations

import gc
import mmap

import pytest

from runtime.core.rdmc_buffers import GRANULE, LAZY_BUFFER_BYTES, MAX_TRACKED, BufferPool
from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, describe
from runtime.core.rdmc_events import BlockArrived, ObjectAnnounced, ObjectComplete
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.rdmc_transfer import TransferConfig, TransferEngine

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20


def test_small_buffers_are_bytearrays_and_never_pooled() -> None:
    pool = BufferPool(64 * MIB)
    view, mapped = pool.take(LAZY_BUFFER_BYTES - 1)
    assert isinstance(view.obj, bytearray) and not mapped and len(view) == LAZY_BUFFER_BYTES - 1
    assert pool.idle_bytes == 0


HOLDERS = {
    "relay slice": lambda v: v[1 * MIB : 2 * MIB],  # a block queued in a transport
    "read-only view": lambda v: v.toreadonly(),  # what the application is delivered
    "cast": lambda v: v.cast("B", (len(v),)),
}


@pytest.mark.parametrize("hold", list(HOLDERS.values()), ids=list(HOLDERS))
def test_a_buffer_is_reused_only_once_no_view_of_it_remains(hold: object) -> None:
    pool = BufferPool(64 * MIB)
    size = 3 * MIB + 5
    first, mapped = pool.take(size)
    assert not mapped and len(first) == size and first.readonly is False
    assert isinstance(first.obj, mmap.mmap) and len(first.obj) == 4 * GRANULE
    first[:4] = b"old!"
    keeper = hold(first)  # type: ignore[operator]
    del first
    second, mapped = pool.take(size)
    assert not mapped and second.obj is not keeper.obj, "a buffer still referred to was reused"
    second[:4] = b"new!"
    assert keeper.obj[:4] == b"old!" and pool.reused == 0
    del second, keeper
    gc.collect()
    third, mapped = pool.take(size)
    assert mapped and pool.reused == 1 and len(third) == size


def test_what_is_kept_idle_stays_within_keep_bytes() -> None:
    pool = BufferPool(4 * MIB)
    views = [pool.take(4 * MIB)[0] for _ in range(3)]
    assert pool.idle_bytes == 0
    del views
    assert pool.idle_bytes == 12 * MIB  # found idle at the next allocation, not before
    again, mapped = pool.take(4 * MIB)
    assert mapped
    assert pool.idle_bytes == 4 * MIB  # one reused, one kept, one unmapped
    bigger, mapped = pool.take(8 * MIB)  # larger than keep_bytes: a plain buffer, never tracked
    assert not mapped and pool.idle_bytes == 4 * MIB
    del bigger
    assert pool.idle_bytes == 4 * MIB


def test_buffers_the_application_keeps_stay_valid_past_the_tracking_limit() -> None:
    pool = BufferPool(1 << 30)
    kept = []
    for i in range(MAX_TRACKED + 4):
        view, _ = pool.take(MIB)
        view[:8] = i.to_bytes(8, "big")
        kept.append(view)
    for i, view in enumerate(kept):
        assert int.from_bytes(view[:8], "big") == i
    assert pool.reused == 0


def _announce_and_fill(engine: TransferEngine, d: ObjectDescriptor, data: bytes) -> memoryview:
    """Announce ``d`` at a receiver of a two-member group and feed it every block."""
    engine.step(ObjectAnnounced(d))
    done: ObjectComplete | None = None
    for block in range(d.blocks):
        offset, size = d.block_span(block)
        for e in engine.step(BlockArrived(d.oid, d.members[0], block, data[offset : offset + size])):
            if isinstance(e, ObjectComplete):
                done = e
    assert done is not None, "the object did not complete"
    return done.data


def _payload(size: int, fill: int) -> bytes:
    return bytes((fill + i) % 251 for i in range(251)) * (size // 251) + bytes(size % 251)


@pytest.mark.parametrize("keep_first", [False, True], ids=["dropped", "kept"])
def test_the_engine_reuses_a_receive_buffer_only_when_the_object_was_let_go(keep_first: bool) -> None:
    """Two objects of one size, one after the other, at a receiver: the second lands in the
    first one's buffer when nothing holds it, else in a fresh one, leaving the first intact."""
    engine = TransferEngine(2, TransferConfig(window=8))
    size = 3 * MIB + 123
    members = (1, 2)
    one, two = _payload(size, 1), _payload(size, 2)
    d1 = describe(ObjectId(1, 0, 1), members, one, MIB, ScheduleKind.BINOMIAL)
    d2 = describe(ObjectId(1, 1, 1), members, two, MIB, ScheduleKind.BINOMIAL)
    got1 = _announce_and_fill(engine, d1, one)
    assert bytes(got1) == one
    kept = got1.toreadonly() if keep_first else None
    del got1
    got2 = _announce_and_fill(engine, d2, two)
    assert bytes(got2) == two
    if keep_first:
        assert kept is not None and bytes(kept) == one, "the kept object changed under its holder"
        assert engine.buffers.reused == 0
    else:
        assert engine.buffers.reused == 1


def test_a_transport_with_its_own_memory_allocates_every_buffer_itself() -> None:
    made: list[int] = []

    def allocate(size: int) -> memoryview:
        made.append(size)
        return memoryview(bytearray(size))

    engine = TransferEngine(2, TransferConfig(window=8, allocate=allocate))
    size = 2 * MIB
    data = _payload(size, 3)
    d = describe(ObjectId(1, 0, 1), (1, 2), data, MIB, ScheduleKind.BINOMIAL)
    assert bytes(_announce_and_fill(engine, d, data)) == data
    assert made == [size] and engine.buffers.reused == 0
