"""The two ends of one ring on the event loop: the owner writes (``RingWriter``), the peer
reads (``RingReader``), each woken by a doorbell only when the other side said it may sleep.

Wake-ups. The reader, finding the ring empty, stores a fresh *sleep epoch* in the header,
fences, and looks once more (a write that raced with it is then seen); only then does it rely
on its doorbell. The writer, after publishing bytes, fences and reads that word: a nonzero
epoch it has not rung for yet means "ring once". So a busy stream pays no system call per
frame (the reader is awake and says so with epoch 0), and an idle reader costs one ``write``
and one ``read`` per wake-up. The same dance runs the other way when the ring is full: the
writer stores a *wait epoch*, the reader rings the room doorbell once half the ring is free
(``room_mark``; rung at every consume, a large object streaming through a full ring cost a
room bell per MiB, now one per two MiB), and the writer, finding less than that free after
its fence, waits for that bell.

Back-pressure: what does not fit waits in the writer, in order, frames before blocks of large
objects (a block already begun is finished first: the ring is one byte stream), so heartbeats
and SST pushes wait behind at most one block, as on TCP. Frames waiting past ``max_backlog``
bytes mean the reader stopped reading: the writer reports it (``on_stuck``) and the transport
cuts the peer off as TCP does; nothing is dropped silently.

Reading: at most ``READ_BUDGET`` bytes per loop callback, then the rest on the next turn, so
one busy peer cannot hold the loop.

SST rows (``shm_rows``): a ring made by ``RingWriter.create`` has a row board next to it. The
owner writes rows there after the frames that precede them (``write_rows``) and wakes the
reader as for frames; the reader, awake, reads the board when its ``gen`` moved, then reads
the ring up to the head it loaded after the board, and only then hands the rows on, so no row
overtakes a frame written before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

from runtime.drivers.shm_board import RowBoard, RowCopy
from runtime.drivers.shm_doorbell import Doorbell
from runtime.drivers.shm_names import RingNames
from runtime.drivers.shm_ring import ShmRing, full_fence
from runtime.drivers.shm_rows import RowImage, image_frame
from runtime.wire.codec import FrameDecoder

log = logging.getLogger("derecho.shm")

READ_BUDGET = 1 << 20  # bytes read from one ring per loop callback


def room_mark(capacity: int) -> int:
    """Free bytes a waiting writer is woken for (and goes on at): half the ring. Woken at
    every consume, a writer streaming 1 MiB blocks through a full 4 MiB ring got a room bell
    per MiB (two processes, 300 MiB: 281 bells, writer CPU 0.13 ms/MB); at half, 141 bells
    and 0.10-0.115 ms/MB. Nothing waits longer for it: the reader goes on reading, and it
    rings at the latest when the ring is empty."""
    return capacity // 2


class RingWriter:
    """The owner's end: ``send``/``send_block`` never block; what does not fit waits here."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        names: RingNames,
        ring: ShmRing,
        data_bell: Doorbell,
        room_bell: Doorbell,
        max_backlog: int,
        on_stuck: Callable[[], None],
        rows: RowBoard | None = None,
    ) -> None:
        self.loop = loop
        self.rows = rows  # the board our SST rows go into (None: pushes travel as frames)
        self.names = names
        self.ring = ring
        self.data_bell = data_bell  # we ring it: data arrived
        self.room_bell = room_bell  # we wait on it: room freed
        self.max_backlog = max_backlog
        self.on_stuck = on_stuck
        self.frames: deque[memoryview] = deque()
        self.blocks: deque[tuple[bytes, memoryview]] = deque()
        self.unit: deque[memoryview] = deque()  # what is left of the item being written
        self.queued = 0  # bytes of frames waiting (blocks are bounded by the driver's windows)
        self.sent = 0
        self.wakeups = 0  # doorbell rings, for tests and status
        self._rung_for = 0  # the reader's sleep epoch last rung for
        self._wait_epoch = 0
        self.room_mark = room_mark(ring.capacity)
        self.closed = False
        loop.add_reader(room_bell.fd, self._on_room)

    @classmethod
    def create(
        cls,
        loop: asyncio.AbstractEventLoop,
        names: RingNames,
        capacity: int,
        token: bytes,
        max_backlog: int,
        on_stuck: Callable[[], None],
    ) -> RingWriter:
        """Make the ring's files (mode 0600) and open them; on failure nothing is left."""
        made: list[Any] = []
        try:
            ring = ShmRing.create(names.ring, capacity, token)
            made.append(ring)
            data_bell = Doorbell.create(names.data)
            made.append(data_bell)
            room_bell = Doorbell.create(names.room)
            made.append(room_bell)
            rows = RowBoard.create(names.rows, token)
        except BaseException:
            for thing in made:
                thing.close()
            names.remove()
            raise
        return cls(loop, names, ring, data_bell, room_bell, max_backlog, on_stuck, rows)

    def send(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        self.sent += len(data)
        if not self.unit and not self.frames and not self.blocks:
            n = self.ring.write(data)
            if n == len(data):
                self._wake_reader()
                return
            self.unit.append(memoryview(data)[n:])
            self._wake_reader()
            self._wait_for_room()
            return
        self.frames.append(memoryview(data))
        self.queued += len(data)
        if self.queued > self.max_backlog:
            self.on_stuck()
            return
        self.pump()

    def write_rows(self, images: list[RowImage]) -> None:
        """Write ``images`` into the board and wake the reader if every frame sent before is in
        the ring (the reader sees those first); else send each as a frame of its whole row,
        now, behind those frames. Rows never wait for the queue to empty: frames sent after
        them would hold them back (a heartbeat behind a busy link for longer than the
        suspicion timeout), and an image written later would carry values of later pushes,
        some of them sent to other peers only."""
        if self.closed:
            return
        if self.unit or self.frames:
            for image in images:
                self.send(image_frame(image))
            return
        if len(images) > 1:  # an image is the whole row: one write per table suffices
            images = list({image.key: image for image in images}.values())
        rows = self.rows
        if rows is None:
            left = images
        else:
            left = [image for image in images if not rows.write(image)]
            if len(left) < len(images):
                rows.publish()
                self._wake_reader()
        for image in left:  # no room on the board: its frame, widened to the whole row
            self.send(image_frame(image))

    def send_block(self, head: bytes, data: memoryview) -> None:
        if self.closed:
            return
        self.sent += len(head) + len(data)
        self.blocks.append((head, data))
        self.pump()

    def backlog(self) -> int:
        """Bytes waiting here, not yet in the ring: what ``Transport.backlog`` means ("not yet
        taken by the kernel"; the ring plays the socket buffer's part). Counting the ring's
        unread bytes too made a link whose reader was 1 MiB behind look congested, and the
        node's answers to members (``answer_queue``: written while a link's backlog is under
        1 MiB, else retried 2 ms later) waited where TCP, whose kernel buffer holds as much as
        the ring, wrote them at once."""
        return self.queued + sum(len(p) for p in self.unit)

    def unread(self) -> int:
        """Bytes in the ring the reader has not consumed yet."""
        return self.ring.capacity - self.ring.free()

    def pump(self) -> None:
        """Write what waits, in order, until it is all in or the ring is full."""
        if self.closed:
            return
        ring, unit = self.ring, self.unit
        wrote = False
        while True:
            if not unit:
                if self.frames:
                    piece = self.frames.popleft()
                    self.queued -= len(piece)
                    unit.append(piece)
                elif self.blocks:
                    head, data = self.blocks.popleft()
                    unit.append(memoryview(head))
                    unit.append(data)
                else:
                    break
            piece = unit[0]
            n = ring.write(piece)
            wrote = wrote or n > 0
            if n < len(piece):
                unit[0] = piece[n:]
                break
            unit.popleft()
        if wrote:
            self._wake_reader()
        if unit or self.frames or self.blocks:
            self._wait_for_room()

    def _wake_reader(self) -> None:
        epoch = self.ring.sleeping_consumer()  # fenced: our head store before this load
        if epoch and epoch != self._rung_for:
            self._rung_for = epoch
            self.wakeups += 1
            self.data_bell.ring()

    def _wait_for_room(self) -> None:
        self._wait_epoch += 1
        self.ring.set_producer_waits(self._wait_epoch)
        full_fence()
        if self.ring.free() >= self.room_mark:  # the reader freed room meanwhile: go on now
            self.ring.set_producer_waits(0)
            self.loop.call_soon(self.pump)

    def _on_room(self) -> None:
        self.room_bell.drain()
        self.ring.set_producer_waits(0)
        self.pump()

    def close(self) -> None:
        """Stop writing, unmap, and remove the ring's files (we own them)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.room_bell.fd)
        self.frames.clear()
        self.blocks.clear()
        self.unit.clear()
        self.data_bell.close()
        self.room_bell.close()
        self.ring.close()
        if self.rows is not None:
            self.rows.close()
        self.names.remove()


class RingReader:
    """The peer's end: decodes what arrives and hands the frames on, once ``start`` is called
    (at the owner's switch frame on TCP, so nothing overtakes what came before on TCP)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ring: ShmRing,
        data_bell: Doorbell,
        room_bell: Doorbell,
        decoder: FrameDecoder,
        on_items: Callable[[list[Any]], None],
        rows: RowCopy | None = None,
    ) -> None:
        self.loop = loop
        self.ring = ring
        self.rows = rows  # the owner's row board (None: its pushes arrive as frames)
        # Rows read from the board, the latest per table (a whole row supersedes the one
        # before: bounded by the tables, however long the ring stays behind), handed on once ...
        self._held: dict[tuple[Any, ...], Any] = {}
        self._held_until = 0  # ... the ring is consumed up to here
        self.rows_seen = False  # a row came through the board (logged once)
        self.data_bell = data_bell  # we wait on it
        self.room_bell = room_bell  # we ring it
        self.decoder = decoder
        self.on_items = on_items
        self.received = 0
        self.wakeups = 0
        self.started = False
        self.closed = False
        self._epoch = 1
        self._rung_for = 0
        self.room_mark = room_mark(ring.capacity)
        self._again: asyncio.Handle | None = None
        ring.set_consumer_sleeps(self._epoch)  # asleep until started: the owner may ring
        loop.add_reader(data_bell.fd, self._on_data)

    def start(self) -> None:
        self.started = True
        self.read()

    def _on_data(self) -> None:
        self.data_bell.drain()
        self.wakeups += 1
        if self.started:
            self.read()

    def read(self) -> None:
        """Read up to ``READ_BUDGET`` bytes; then sleep, or come back next turn if more wait.
        Rows of the board are read first and handed on after the ring's frames up to the
        head seen after them (see ``shm_rows``: no row overtakes an earlier frame)."""
        self._again = None
        if self.closed or not self.started:
            return
        ring, rows = self.ring, self.rows
        ring.set_consumer_sleeps(0)
        budget = READ_BUDGET
        while True:
            if rows is not None and rows.changed():
                got = rows.read()
                if got:
                    held = self._held
                    for push in got:
                        held[(type(push), push.vid, getattr(push, "shard", None), push.rank)] = push
                    self._held_until = ring.published()  # loaded after the board's slots
            pieces = ring.pieces(budget)
            if not pieces:
                if self._held:
                    self._hand_rows()
                    if self.closed:
                        return
                    continue
                # Empty: say we may sleep, then look once more (see the module docstring).
                self._epoch += 1
                if ring.try_sleep(self._epoch) and (rows is None or not rows.changed()):
                    self._free_room()  # empty: a writer still waiting gets its bell now
                    return
                ring.set_consumer_sleeps(0)
                continue
            if len(pieces) == 1:
                piece = pieces[0]
                items = self.decoder.feed(piece)
                n = len(piece)
                piece.release()
            else:  # wrapped around the ring's end
                items = []
                n = 0
                for piece in pieces:
                    items.extend(self.decoder.feed(piece))
                    n += len(piece)
                    piece.release()
            ring.consume(n)
            self.received += n
            budget -= n
            self._free_room()
            if items:
                self.on_items(items)
                if self.closed:
                    return
            if self._held and ring.consumed >= self._held_until:
                self._hand_rows()
                if self.closed:
                    return
            if budget <= 0:
                self._again = self.loop.call_soon(self.read)
                return

    def _free_room(self) -> None:
        """Ring a waiting writer once half the ring is free (``room_mark``), not at every
        consume: the writer, seeing less than that after its fence, waits for this bell."""
        ring = self.ring
        epoch = ring.waiting_producer()  # fenced: our tail store before this load
        if epoch and epoch != self._rung_for and ring.capacity - ring.readable() >= self.room_mark:
            self._rung_for = epoch
            self.room_bell.ring()

    def _hand_rows(self) -> None:
        held, self._held = list(self._held.values()), {}
        if not self.rows_seen:
            self.rows_seen = True
            log.info("SST rows arrive by one-sided writes into %s", self.rows.path if self.rows else "?")
        self.on_items(held)

    def waiting(self) -> bool:
        """Bytes or rows wait to be read (for the transport's sweep for missed wake-ups)."""
        rows = self.rows
        return bool(self.ring.readable() or self._held or (rows is not None and rows.changed()))

    def close(self) -> None:
        """Stop reading and unmap; the files are the owner's to remove."""
        if self.closed:
            return
        self.closed = True
        if self._again is not None:
            self._again.cancel()
        self.loop.remove_reader(self.data_bell.fd)
        self.data_bell.close()
        self.room_bell.close()
        self.ring.close()
        self._held.clear()
        if self.rows is not None:
            self.rows.close()
