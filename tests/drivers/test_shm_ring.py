"""The shared-memory ring and its two ends (runtime.drivers.shm_ring, shm_link, shm_doorbell).

Everything here runs in one process on a temporary directory in /dev/shm (the real tmpfs, so
mode and FIFO semantics are Linux's): wrap-around, a full ring holding frames back in order,
frames larger than the ring passing in pieces, many frames taken per wake-up, wake-ups only
when the reader may sleep, checks of a segment that is not what the peer announced.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
from typing import Any

import pytest

from runtime.drivers.shm_doorbell import Doorbell
from runtime.drivers.shm_link import RingReader, RingWriter
from runtime.drivers.shm_names import RingNames, new_names, offered_names, remove_stale
from runtime.drivers.shm_ring import RingError, RingSpec, ShmRing
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


def make_ring(directory: str, capacity: int = 4096) -> tuple[ShmRing, ShmRing]:
    token = secrets.token_bytes(16)
    path = os.path.join(directory, "r.ring")
    owner = ShmRing.create(path, capacity, token)
    return owner, ShmRing.attach(RingSpec(path, capacity, token))


def read_all(ring: ShmRing) -> bytes:
    out = b"".join(bytes(p) for p in ring.pieces(1 << 30))
    ring.consume(len(out))
    return out


def test_bytes_wrap_around_the_end_in_order(shm_dir: str) -> None:
    w, r = make_ring(shm_dir)
    sent = bytearray()
    got = bytearray()
    for i in range(50):  # 50 x 1000 bytes through 4096: wraps a dozen times, at odd offsets
        chunk = bytes([i % 256]) * (900 + i * 3)
        assert w.write(chunk) == len(chunk)
        sent += chunk
        got += read_all(r)
    assert got == sent
    assert r.readable() == 0 and w.free() == 4096


def test_a_full_ring_takes_what_fits_and_nothing_more(shm_dir: str) -> None:
    w, r = make_ring(shm_dir)
    assert w.write(b"a" * 5000) == 4096
    assert w.write(b"b") == 0
    r.consume(len(bytes(r.pieces(100)[0])))
    assert w.free() == 100
    assert w.write(b"c" * 300) == 100


def test_attach_checks_what_the_peer_announced(shm_dir: str) -> None:
    token = secrets.token_bytes(16)
    path = os.path.join(shm_dir, "x.ring")
    ShmRing.create(path, 4096, token)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with pytest.raises(RingError, match="does not hold"):
        ShmRing.attach(RingSpec(path, 4096, secrets.token_bytes(16)))
    with pytest.raises(RingError, match="not a ring"):
        ShmRing.attach(RingSpec(path, 8192, token))
    os.chmod(path, 0o644)
    with pytest.raises(RingError, match="mode 644"):
        ShmRing.attach(RingSpec(path, 4096, token))
    with pytest.raises(RingError, match="cannot open"):
        ShmRing.attach(RingSpec(path + "-missing", 4096, token))
    with pytest.raises(FileExistsError):  # the owner never takes over an existing name
        ShmRing.create(path, 4096, token)


def test_offered_names_only_name_the_peers_rings_for_us(shm_dir: str) -> None:
    names = new_names("c1", owner=2, peer=1, directory=shm_dir)
    assert offered_names(names.base, "c1", owner=2, me=1, directory=shm_dir) == names
    assert offered_names(names.base, "c1", owner=3, me=1, directory=shm_dir) is None  # not its owner
    assert offered_names(names.base, "c1", owner=2, me=4, directory=shm_dir) is None  # not for us
    assert offered_names(names.base, "c2", owner=2, me=1, directory=shm_dir) is None  # other cluster
    assert offered_names("/etc/passwd", "c1", owner=2, me=1, directory=shm_dir) is None
    assert offered_names(os.path.join(shm_dir, "..", os.path.basename(names.base)), "c1", 2, 1, shm_dir) is None


def test_stale_files_of_dead_processes_are_removed_live_ones_kept(shm_dir: str) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    mine = new_names("c", owner=5, peer=1, directory=shm_dir)
    stale = RingNames(mine.base.replace(f"-p{os.getpid()}-", f"-p{dead}-"))
    other_node = RingNames(stale.base.replace("-n5-", "-n6-"))
    for names in (mine, stale, other_node):
        for path in (names.ring, names.data, names.room):
            open(path, "w").close()
    assert remove_stale("c", 5, directory=shm_dir) == 3
    assert os.path.exists(mine.ring) and os.path.exists(other_node.ring)
    assert not os.path.exists(stale.ring) and not os.path.exists(stale.room)


class Pair:
    """A writer and a reader of one ring on one loop, as two processes would hold them."""

    def __init__(self, directory: str, capacity: int, max_backlog: int = 1 << 30) -> None:
        loop = asyncio.get_running_loop()
        self.names = new_names("t", owner=1, peer=2, directory=directory)
        token = secrets.token_bytes(16)
        self.stuck = 0
        self.writer = RingWriter.create(loop, self.names, capacity, token, max_backlog, self._stuck)
        ring = ShmRing.attach(RingSpec(self.names.ring, capacity, token))
        self.got: list[Any] = []
        self.batches = 0
        self.reader = RingReader(
            loop,
            ring,
            Doorbell.open(self.names.data),
            Doorbell.open(self.names.room),
            FrameDecoder(1 << 20),
            self._items,
        )

    def _stuck(self) -> None:
        self.stuck += 1

    def _items(self, items: list[Any]) -> None:
        self.batches += 1
        self.got.extend(items)

    async def until(self, n: int) -> None:
        for _ in range(2000):
            if len(self.got) >= n:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"{len(self.got)} of {n} frames arrived")

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def messages(n: int, size: int) -> list[AppMessage]:
    return [AppMessage(i.to_bytes(4, "big") * (size // 4)) for i in range(n)]


def test_frames_cross_in_order_and_larger_than_the_ring_in_pieces(shm_dir: str) -> None:
    async def main() -> None:
        p = Pair(shm_dir, 4096)
        p.reader.start()
        msgs = messages(20, 100) + messages(3, 20_000) + messages(20, 10)  # 20 KB frames > 4 KiB ring
        for m in msgs:
            p.writer.send(frame(m))
        await p.until(len(msgs))
        assert p.got == msgs
        assert os.listdir(shm_dir)  # the owner's files exist while it runs
        p.close()
        assert os.listdir(shm_dir) == []  # and are gone when it closes

    asyncio.run(main())


def test_full_ring_holds_frames_in_the_writer_in_order(shm_dir: str) -> None:
    async def main() -> None:
        p = Pair(shm_dir, 4096)  # not started: nothing is read, the ring fills
        msgs = messages(200, 100)
        for m in msgs:
            p.writer.send(frame(m))
        await asyncio.sleep(0.01)
        assert p.got == []
        assert p.writer.frames and p.writer.queued > 0  # held back, in order, not dropped
        # The backlog is what the ring could not take (as TCP's is what the kernel did not).
        assert p.writer.unread() == 4096
        assert p.writer.backlog() == sum(len(frame(m)) for m in msgs) - 4096
        p.reader.start()
        await p.until(len(msgs))
        assert p.got == msgs
        assert p.writer.queued == 0 and not p.writer.frames
        p.close()

    asyncio.run(main())


def test_a_waiting_writer_is_rung_once_half_the_ring_is_free_not_at_every_consume(shm_dir: str) -> None:
    async def main() -> None:
        cap = 1 << 16
        p = Pair(shm_dir, cap)  # not started: we consume by hand, as a slow reader would
        w, ring, room = p.writer, p.reader.ring, p.writer.room_bell.fd
        for m in messages(40, 10_000):  # 400 KB: the ring fills, the rest waits in the writer
            w.send(frame(m))
        await asyncio.sleep(0.01)
        assert w.ring.free() == 0 and ring.producer_waits() != 0
        backlog = w.backlog()

        def take(n: int) -> None:  # what the reader's read does, n bytes at a time
            for piece in ring.pieces(n):
                p.got.extend(p.reader.decoder.feed(piece))
                ring.consume(len(piece))
                piece.release()
            p.reader._free_room()

        take(cap // 4)
        await asyncio.sleep(0.01)  # a quarter free: no bell, and the writer does not go on
        assert not select.select([room], [], [], 0)[0]
        assert w.backlog() == backlog and w.ring.free() == cap // 4
        take(cap // 4)
        assert select.select([room], [], [], 0)[0]  # half free: rung once
        await asyncio.sleep(0.01)
        assert w.backlog() == backlog - cap // 2 and w.ring.free() == 0  # it filled the half
        p.reader.start()
        await p.until(40)
        assert p.got == messages(40, 10_000)
        p.close()

    asyncio.run(main())


def test_a_writer_past_its_backlog_says_the_reader_is_stuck(shm_dir: str) -> None:
    async def main() -> None:
        p = Pair(shm_dir, 4096, max_backlog=10_000)
        for m in messages(200, 100):
            p.writer.send(frame(m))
        assert p.stuck > 0
        p.close()

    asyncio.run(main())


def test_many_frames_per_wake_up_and_no_bell_while_the_reader_is_awake(shm_dir: str) -> None:
    async def main() -> None:
        p = Pair(shm_dir, 1 << 20)
        p.reader.start()
        msgs = messages(5000, 100)
        for m in msgs:  # one loop turn: the reader sleeps once, the writer rings once
            p.writer.send(frame(m))
        await p.until(len(msgs))
        assert p.got == msgs
        assert p.writer.wakeups == 1
        assert p.batches <= 2
        p.close()

    asyncio.run(main())


def test_blocks_wait_behind_frames_and_a_begun_block_is_finished_first(shm_dir: str) -> None:
    async def main() -> None:
        p = Pair(shm_dir, 4096)
        w = p.writer
        w.send(frame(AppMessage(b"x" * 6000)))  # fills the ring, the rest waits
        w.send_block(b"HEAD", memoryview(b"B" * 3000))
        w.send(frame(AppMessage(b"after")))  # goes before the block: frames first
        order = [bytes(piece[:4]) for piece in w.unit] + [bytes(f[4:6]) for f in w.frames]
        assert len(order) == 2 and w.blocks  # the rest of frame 1, frame 2 waiting, the block after
        raw = bytearray()
        ring = p.reader.ring
        for _ in range(50):
            raw += b"".join(bytes(x) for x in ring.pieces(1 << 20))
            ring.consume(ring.readable())
            w.pump()
        assert raw.endswith(b"HEAD" + b"B" * 3000)
        assert raw.index(b"after") < raw.index(b"HEAD")
        p.close()

    asyncio.run(main())
