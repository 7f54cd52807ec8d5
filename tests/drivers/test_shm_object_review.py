"""Object segments (runtime.drivers.shm_objects) against a hostile peer and local failures
(review rev12): what a peer says about objects counts only for objects it is a member of, and
nothing one peer sends pushes out what an honest one said; a block that cannot be written
into its segment never gets the sender cut off; a lost member's segments are freed."""

from __future__ import annotations

import os

import pytest

from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.wire.shm_setup import ShmBlockInPlace, ShmInPlace, ShmObjectOffer
from runtime.wire.transfers import block_frame_head
from tests.drivers.test_shm_object_segments import BLOCK, segments, shm_dir  # noqa: F401

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
