"""Object segments (runtime.drivers.shm_objects), one process, real files in a private
directory under /dev/shm: a sender's segment is offered to its object's members only, a member
refuses a segment its sender may not offer, a segment is written again only once every member
that maps it let go of it, and a killed sender's segment is removed at its next start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.drivers.shm_names import new_object_path, remove_stale
from runtime.drivers.shm_objects import ObjectSegments
from runtime.drivers.shm_worker import BLOCK_WRITES
from runtime.wire.codec import FrameDecoder
from runtime.wire.shm_setup import ShmInPlace, ShmObjectAnswer, ShmObjectOffer, ShmSegmentFree
from runtime.wire.transfers import block_frame_head

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]

BLOCK = 4096


@dataclass
class _Writer:
    closed: bool = False


@dataclass
class _Reader:
    closed: bool = False


@dataclass
class _Pair:
    switched: bool = True
    writer: _Writer = field(default_factory=_Writer)
    reader: _Reader = field(default_factory=_Reader)  # the peer's ring to us, mapped


@dataclass(frozen=True)
class BlockBytes:
    """A block sent as bytes (the transport's ``send_block_bytes``), in ``FakeShm.sent``."""

    head: bytes
    data: bytes


@dataclass
class FakeShm:
    """What ObjectSegments uses of its ShmTransport: switched pairs, and frames sent (decoded)."""

    node_id: int
    peers: list[int]
    shm_dir: str
    cluster: str = "seg"
    refusal: str = ""
    sent: list[tuple[int, Any]] = field(default_factory=list)
    pairs: dict[int, _Pair] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = {p: _Pair() for p in self.peers}

    def send(self, node: int, data: bytes) -> None:
        self.sent.extend((node, m) for m in FrameDecoder().feed(data))

    def send_block_bytes(self, node: int, head: bytes, data: memoryview) -> None:
        self.sent.append((node, BlockBytes(head, bytes(data))))

    def of(self, kind: type) -> list[tuple[int, Any]]:
        return [(n, m) for n, m in self.sent if type(m) is kind]


def segments(node: int, peers: list[int], shm_dir: str) -> tuple[FakeShm, ObjectSegments]:
    t = FakeShm(node, peers, shm_dir)
    return t, ObjectSegments(t)  # type: ignore[arg-type]


async def wrote(sender: FakeShm) -> None:
    """Wait until the block writes submitted so far ran and their ends reached the loop."""
    assert BLOCK_WRITES.drain(), "the writer thread is stuck"
    for _ in range(3):  # their ends come by call_soon_threadsafe: a turn or two
        await asyncio.sleep(0)


def send_all(seg: ObjectSegments, data: bytes, oid: ObjectId, to: int) -> None:
    """The sender's engine sends every block of ``oid`` to ``to``."""
    view = memoryview(data)
    for b, off in enumerate(range(0, len(data), BLOCK)):
        seg.block_out(to, block_frame_head(oid, b, len(view[off : off + BLOCK])), view[off : off + BLOCK])


def test_a_segment_is_offered_to_the_objects_members_only(shm_dir: str) -> None:
    sender, seg = segments(1, [2, 3, 4], shm_dir)  # node 4 is a peer, not a member of the object
    data = os.urandom(3 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    seg.sending(d, memoryview(data))
    offers = sender.of(ShmObjectOffer)
    assert sorted(n for n, _ in offers) == [2, 3]
    path = offers[0][1].base
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    seg.close()
    assert not os.path.exists(path)


def test_a_member_refuses_a_segment_its_sender_may_not_offer(shm_dir: str) -> None:
    sender, seg = segments(1, [2, 3], shm_dir)
    data = os.urandom(BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2, 3), data, BLOCK)
    seg.sending(d, memoryview(data))
    offer = sender.of(ShmObjectOffer)[0][1]
    member, mseg = segments(2, [1, 3], shm_dir)
    mseg.offered(3, offer)  # node 3 passing on node 1's offer: not its object, not its file
    mseg.offered(1, ShmObjectOffer(offer.oid, os.path.join(shm_dir, "elsewhere.obj"), offer.size, offer.token))
    mseg.offered(1, ShmObjectOffer(offer.oid, offer.base, offer.size, b"x" * 16))  # another token
    assert [m.mapped for _, m in member.of(ShmObjectAnswer)] == [False, False, False]
    assert mseg.mapped == {} and mseg.offers == {}  # the object would come as bytes
    mseg.offered(1, offer)
    assert member.of(ShmObjectAnswer)[-1][1].mapped
    view = mseg.receiving(d)
    assert view is not None
    del view
    seg.close()
    mseg.close()


def test_blocks_land_in_place_and_a_segment_is_written_again_only_once_every_member_let_go(shm_dir: str) -> None:
    sender, seg = segments(1, [2, 3], shm_dir)
    members = {n: segments(n, [m for m in (1, 2, 3) if m != n], shm_dir) for n in (2, 3)}
    first = os.urandom(3 * BLOCK)
    d1 = describe(ObjectId(1, 0, 1), (1, 2, 3), first, BLOCK)
    seg.sending(d1, memoryview(first))
    views = {}
    for n, (t, mseg) in members.items():
        mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
        views[n] = mseg.receiving(d1)
        assert views[n] is not None and views[n].readonly
        assert [m for m, msg in t.of(ShmInPlace)] == [m for m in (1, 2, 3) if m != n]
        seg.answered(n, t.of(ShmObjectAnswer)[-1][1])
        seg.reads_in_place(n, ShmInPlace(d1.oid))
    send_all(seg, first, d1.oid, 2)  # the schedule's sends: in place, no bytes
    assert all(bytes(v) == first for v in views.values() if v is not None)
    offered = sender.of(ShmObjectOffer)[0][1].base
    assert not os.path.exists(offered), "every member answered: the name is gone"
    spare = [os.path.basename(seg.spare.path)] if seg.spare is not None else []  # reserved ahead, offered to none
    assert [n for n in os.listdir(shm_dir) if n.endswith(".obj")] == spare
    for _, mseg in members.values():
        mseg.done(d1.oid)
    seg.done(d1.oid)
    for _ in range(3):  # the objects are let go of, and node 3's application still holds its view
        seg.sweep()
        for _, mseg in members.values():
            mseg.sweep()
    del views[2]
    for _, mseg in members.values():
        mseg.sweep()
    frees = {n: t.of(ShmSegmentFree) for n, (t, _) in members.items()}
    assert [m.kept for _, m in frees[2]] == [True] and frees[3] == []
    for n in (2, 3):
        for _, msg in frees[n]:
            seg.segment_free(n, msg)
    second = os.urandom(2 * BLOCK)
    d2 = describe(ObjectId(1, 1, 1), (1, 2, 3), second, BLOCK)
    seg.sending(d2, memoryview(second))
    assert sender.of(ShmObjectOffer)[-1][1].base != "", "node 3 still views the first: a new segment"
    assert bytes(views[3]) == first
    del views[3]
    t3, m3 = members[3]
    m3.sweep()
    seg.segment_free(3, t3.of(ShmSegmentFree)[-1][1])
    seg.done(d2.oid)
    seg.sweep()
    seg.sweep()
    third = os.urandom(2 * BLOCK)
    d3 = describe(ObjectId(1, 2, 1), (1, 2, 3), third, BLOCK)
    seg.sending(d3, memoryview(third))
    offer = sender.of(ShmObjectOffer)[-1][1]
    assert offer.base == "" and seg.reused_total == 1, "every member let go of the first: written again"
    t2, m2 = members[2]
    m2.offered(1, offer)
    view = m2.receiving(d3)
    assert view is not None and len(view) == len(third)
    send_all(seg, third, d3.oid, 2)
    assert bytes(view) == third  # the new object's bytes, every one of them
    for _, mseg in members.values():
        mseg.close()
    seg.close()


def test_a_killed_senders_segment_is_removed_at_its_next_start(shm_dir: str) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    path = new_object_path("seg", 1, shm_dir).replace(f"-p{os.getpid()}-", f"-p{pid}-")
    open(path, "wb").close()
    mine = new_object_path("seg", 1, shm_dir)
    open(mine, "wb").close()
    other = new_object_path("seg", 2, shm_dir).replace(f"-p{os.getpid()}-", f"-p{pid}-")
    open(other, "wb").close()
    assert remove_stale("seg", 1, shm_dir) == 1
    assert not os.path.exists(path) and os.path.exists(mine) and os.path.exists(other)


def test_a_segment_of_a_sender_that_is_gone_is_unmapped_once_nothing_refers_to_it(shm_dir: str) -> None:
    sender, seg = segments(1, [2], shm_dir)
    data = os.urandom(2 * BLOCK)
    d = describe(ObjectId(1, 0, 1), (1, 2), data, BLOCK)
    seg.sending(d, memoryview(data))
    member, mseg = segments(2, [1], shm_dir)
    mseg.offered(1, sender.of(ShmObjectOffer)[-1][1])
    view = mseg.receiving(d)
    assert view is not None
    mseg.owner_gone(1)  # its process died: it will never offer this segment again
    mseg.done(d.oid)
    for _ in range(3):
        mseg.sweep()
    assert len(mseg.mapped) == 1, "the application still views the object: mapped on"
    del view
    mseg.sweep()
    assert mseg.mapped == {} and member.of(ShmSegmentFree) == []  # unmapped, nothing offered back
    seg.close()
