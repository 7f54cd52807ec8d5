"""Object segments (runtime.drivers.shm_objects) after the fourth review: a pair that is shared
memory one way only (the peer could not make its ring: /dev/shm full, a descriptor limit) sends
its objects as bytes, since the peer's answers about segments could not come back and it would
wait in every segment offered it; and a peer's notes that it reads an object in place of which
it is no member are logged a few lines a peer, not a line a frame.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import pytest

from runtime.core.rdmc_descriptor import ObjectId, describe
from runtime.drivers import shm_ring
from runtime.drivers.shm_worker import SLOW_CALLS
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage
from runtime.wire.shm_setup import ShmInPlace
from tests.drivers.test_shm_object_segments import BLOCK
from tests.drivers.test_shm_transport import pair

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def test_a_pair_shared_one_way_only_sends_objects_as_bytes_and_leaves_no_mapping(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shm_ring.create_segment

    def create(path: str, size: int) -> int:
        if "-n2-to1-" in path:  # node 2 cannot make its ring to node 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, size)

    monkeypatch.setattr(shm_ring, "create_segment", create)

    async def main() -> None:
        a, b = await pair(shm_dir)
        try:
            a.shm.send(2, frame(AppMessage(b"x")))
            b.shm.send(1, frame(AppMessage(b"y")))
            for _ in range(100):
                await asyncio.sleep(0.005)
            assert a.shm.pairs[2].switched and a.shm.pairs[2].reader is None  # 1 -> 2 only
            sender, member = a.shm.objects, b.shm.objects
            for seq in range(4):
                data = os.urandom(2 * BLOCK)
                d = describe(ObjectId(1, seq, 1), (1, 2), data, BLOCK)
                sender.sending(d, memoryview(data))
                for _ in range(10):
                    await asyncio.sleep(0.002)
                assert member.receiving(d) is None  # bytes
                sender.done(d.oid)
                member.done(d.oid)
                for _ in range(3):
                    sender.sweep()
                    member.sweep()
                    await asyncio.sleep(0.005)
                SLOW_CALLS.drain()
            assert sender.placed_total == 0 and not sender.segments  # nothing offered one way
            assert not member.mapped
            assert not [n for n in os.listdir(shm_dir) if n.endswith(".obj")]
        finally:
            await a.shm.close()
            await b.shm.close()

    asyncio.run(main())


def test_in_place_notes_of_a_non_member_are_logged_a_few_lines_a_peer(
    shm_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        try:
            data = os.urandom(2 * BLOCK)
            d = describe(ObjectId(2, 0, 1), (2, 1), data, BLOCK)
            a.shm.objects.receiving(d)  # node 2's object, open at node 1
            caplog.set_level(logging.WARNING, logger="derecho.shm")
            caplog.clear()
            a.shm.frames_from_tcp(3, [ShmInPlace(d.oid)] * 1000)  # node 3: no member of it
            lines = [r for r in caplog.records if "of which it is no member" in r.getMessage()]
            assert 1 <= len(lines) <= 3
            assert d.oid not in a.shm.objects.in_place or 3 not in a.shm.objects.in_place[d.oid]
        finally:
            await a.shm.close()
            await b.shm.close()

    asyncio.run(main())


def test_a_segment_that_cannot_be_mapped_is_refused_as_a_bad_one(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap as mmap_module

    from runtime.drivers import shm_segment
    from runtime.drivers.shm_segment import RingError, attach_segment

    path = os.path.join(shm_dir, "seg")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)

    def no_room(*args: object, **kwargs: object) -> mmap_module.mmap:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(shm_segment.mmap, "mmap", no_room)
    with pytest.raises(RingError, match="cannot map"):  # an OSError went past the offer's answer
        attach_segment(path, 4096, "a segment", writable=False)
