"""Large objects written once into a segment of their sender and read in place by its
co-located members (issue 23): the shared-memory transport's ``ObjectMemory``.

Through rings, each block of an object was copied four times between three members on one
host (into the sender's ring, out of it into a receiver's buffer, into that receiver's ring for
its relay, out again), and every receiver's buffer was fresh memory: the kernel zero-filled
and mapped each of its pages (0.36 ms/MB, the largest per-byte cost of a receiver, paid again
at every receiver). Here the sender writes each block once into one segment (``pwrite``: the
kernel copies it into the segment's pages without mapping them here), and each member whose
pair is all in shared memory maps the segment read-only as its receive buffer: its blocks land
there without a copy, and the pages are the sender's (mapping them costs a fault per 16 pages).

The schedule, credits and hashing do not change: a block still moves from whom the schedule
says, after the receiver's credit; only its bytes do not travel to a member that said it reads
the object in place (``ShmInPlace``): the block frame becomes ``ShmBlockInPlace``. Every
receiver hashes the blocks in its view of the segment as they land and checks the digest the
sender put in the total order over exactly the bytes it delivers.

Who gets what (all frames go over the pair's ring or its TLS connection, whose certificate
proved the peer's node id):

1. The sender, starting an object all of whose other members share both rings with it,
   creates ``<prefix>obj-p<pid>-<random>.obj`` in /dev/shm (``O_EXCL``, mode 0600, only if
   /dev/shm has room for it, less what this process promised to segments not reserved yet,
   ``_ROOM``), writes a header (magic, size, a 16-byte random token),
   reserves the segment's room (``posix_fallocate``: then no write into it can fail for room,
   which would leave members reading in place without a block; 0.26 ms/MB, so on the loop only
   up to ``RESERVE_NOW``, larger ones on a worker thread, ``shm_worker``, with a spare reserved
   ahead for the next object) and only then offers it (``ShmObjectOffer``) to the object's
   members only, through their rings: when reserved at once and the object is admitted at once
   (the default limits), before its descriptor leaves; otherwise a member may open the object
   before the offer comes, and then gets its bytes. If the room cannot be reserved, there is no
   offer: every member gets bytes.
2. A member checks the name is one the sender may offer, opens it read-only without following
   links, checks owner, mode, size, magic, size and token, maps it read-only and answers
   (``ShmObjectAnswer``, naming the token). It maps nothing for an object already open (as
   bytes) or over here, or of an epoch ended here: such an offer is late (its segment was
   reserved off the loop). The owner counts every member that mapped a segment of its, also
   from an answer that comes after it let go of the object, or tells it the segment is gone
   (``ShmSegmentFree``): no mapping is left that nobody would ever tell to go. The owner
   unlinks the file once every member answered (the mappings live on), so after that a kill -9
   of anyone leaves nothing; before it, the owner's next start removes it
   (``shm_names.remove_stale``). A peer never removes a file.
3. When the member opens the object (its descriptor arrived), it reads it in place if it mapped
   the offer and both rings with every other member work: it says so to each
   (``ShmInPlace``, before its first credit on the same ring, so before any block comes;
   a relay whose own ring to it is not switched sends its ``ShmBlockInPlace`` over TCP). A
   member that cannot (no offer, a peer still on TCP) gets bytes, as before: the sender writes
   every block into the segment before sending it anywhere, so relays from in-place members
   read the bytes they send from there.
4. A segment is written again, for a later object of the same sender, only once every member
   it was offered to answered, and every one that maps it said nothing there refers to it any
   more (``ShmSegmentFree``: no view of it in
   the engine, the application or a transport's queue, counted as ``rdmc_buffers`` counts its
   own mappings); the member then keeps it mapped, and the offer of the next object names it by
   its token. Fresh pages cost the sender 0.26 ms/MB to allocate and 0.14 to free (shmem, here),
   so this reuse is what makes the segment cheaper than a receive buffer of each member's own.
   Bounds: a sender keeps at most ``KEEP_IDLE`` bytes and ``KEEP_MAPPED`` of segments nobody
   uses (its last used: those its members keep) and ``MAX_SEGMENTS`` open; a member keeps
   ``KEEP_MAPPED`` idle segments per sender mapped.

What the sender can still do to the bytes. The owner keeps its descriptor to the file open (to
write its next objects there); nobody maps it writable. So the sender's process, or any of the
same user (through ``/proc``), can write into a segment while members read it, also after a
member checked the digest. It gains nothing by that: the same user can already write into
every member's memory (ptrace, ``/proc/<pid>/mem``), as ``docs/security.md`` says of the
same-uid attacker; a process of another user cannot open the file (0600) nor learn its name
or token (told over the pair's ring or its TLS connection only). What an honest sender never
does is write a segment a member still refers to: step 4.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import secrets
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.drivers.shm_names import new_object_path, offered_object_path, unlink_quietly
from runtime.drivers.shm_segment import RingError, attach_segment
from runtime.drivers.shm_worker import BLOCK_WRITES, SLOW_CALLS
from runtime.drivers.transport import BlockDestination
from runtime.wire.codec import frame
from runtime.wire.shm_setup import ShmBlockInPlace, ShmInPlace, ShmObjectAnswer, ShmObjectOffer, ShmSegmentFree
from runtime.wire.transfers import BLOCK_HEADER_SIZE, BlockDropped, BlockLanded, parse_block_header

if TYPE_CHECKING:
    from runtime.drivers.shm_transport import ShmTransport

log = logging.getLogger("derecho.shm")

HEADER = 4096  # the object starts on a page of its own
MAGIC = 0x3130_4A42_4F44_5244  # b"DRDOBJ01" as a little-endian word; bump with the layout
_HEAD = struct.Struct("<QQ16s")  # magic, size, token
MAX_OFFERS = 64  # offers of one peer mapped and not opened yet, at most (its oldest go first)
MAX_EARLY = 64  # "in place" notes of one peer for objects not opened here yet, at least (see ``limit``)
MAX_SIZE = 1 << 40  # an offered object we map at most, unless the engine says less (``limit``)
MAX_PENDING = 1 << 40  # bytes of one peer's offers mapped and not opened yet, unless ``limit`` says less


GRANULE = 1 << 20  # segments are made in multiples of this: objects of nearly one size share them
KEEP_IDLE = 128 << 20  # bytes of idle segments a sender keeps for its next objects
ROOM_LEFT = 64 << 20  # /dev/shm bytes a new segment leaves free at least (for rings, other users)
MAX_SEGMENTS = 16  # segments a sender keeps open at most, busy or waiting for their members' "free"
KEEP_MAPPED = 2  # idle segments of one sender a member keeps mapped for its next objects
# A new segment's room up to this is reserved on the loop (~1 ms), larger ones off it: as the
# object is digested (``prepare``), or after it started (then it goes as bytes, see ``sending``).
RESERVE_NOW = 4 << 20
SPARE_IDLE = 1.0  # seconds a spare segment (reserved ahead, see ``_make_spare``) waits for an object


_WRITING = 2  # a block's write into its segment is on the writer thread
_WRITTEN = 1  # ... is done (0: not started)


def capacity_for(size: int) -> int:
    """The bytes of object room in a new segment for an object of ``size`` bytes."""
    return max(GRANULE, -(-size // GRANULE) * GRANULE)


@dataclass(slots=True)
class _Segment:
    """A segment of this node: its file (unlinked once every member it was offered to
    answered), open for writing; who maps it, and who said it refers to it no more."""

    fd: int
    path: str
    capacity: int
    token: bytes
    holders: set[int] = field(default_factory=set)  # members that mapped it
    free: set[int] = field(default_factory=set)  # holders that hold no view of it now
    busy: ObjectId | None = None  # the object in it now (written, moving, held by members)
    waiting: set[int] = field(default_factory=set)  # members that have not answered its first offer
    reserved: bool = False  # its pages are allocated (posix_fallocate): a write there cannot fail for room
    promised: int = 0  # bytes of /dev/shm promised to it until its reservation ended (``_ROOM``)
    retired: bool = False  # a member that mapped it is gone: never written again, closed once idle


@dataclass(slots=True)
class _Placed:
    """An object of this node in one of its segments."""

    segment: _Segment
    block_size: int
    written: bytearray  # per block: _WRITTEN in the segment, _WRITING on the writer thread, or not
    # Sends of a block whose write is on the writer thread: they go once it is there.
    waiting: dict[int, list[tuple[int, bytes, memoryview]]] = field(default_factory=dict)
    offer: ObjectDescriptor | None = None  # reserved, offered once no write of it is pending
    over: bool = False  # the engine let go of it: never offered any more


@dataclass(slots=True)
class _Mapped:
    """A segment of a peer this member maps: for the object it reads in place there now, and
    kept (``KEEP_MAPPED``) for the peer's next objects once nothing here refers to it."""

    mm: mmap.mmap
    busy: ObjectId | None = None  # the object being received or delivered from it
    told_free: bool = False  # the owner was told nothing here refers to it any more
    gone: bool = False  # the owner will not offer it again: unmapped once nothing refers to it


class ObjectSegments:
    """See the module docstring: the sender's segments and a member's mapped offers."""

    def __init__(self, transport: ShmTransport) -> None:
        self.transport = transport
        self.segments: dict[bytes, _Segment] = {}  # this node's, by token
        self.placed: dict[ObjectId, _Placed] = {}
        self.mapped: OrderedDict[tuple[int, bytes], _Mapped] = OrderedDict()  # peers', by (owner, token)
        self.offers: OrderedDict[ObjectId, tuple[int, bytes]] = OrderedDict()  # offered, not opened yet
        self.adopted: set[ObjectId] = set()  # objects this node reads in place
        self.ended = -1  # the last epoch ended here
        self.in_place: dict[ObjectId, set[int]] = {}  # members reading oid in place (objects open here)
        # The members of every object open here (sent or received): a peer's "in place" counts
        # only for an object it is a member of, so a peer cannot make this node send an honest
        # member's blocks as bytes (which that member, reading in place, takes as hostile).
        self.members: dict[ObjectId, frozenset[int]] = {}
        # The last seq opened here per (sender, epoch, stream), of epochs not ended here: the
        # engine opens a stream's objects in seq order, so one at or below it is open or over.
        self.opened: dict[tuple[int, int, int], int] = {}
        # "In place" notes that came before this node opened the object, per peer: bounded per
        # peer, so a peer's flood only pushes out its own notes.
        self.early: dict[int, OrderedDict[ObjectId, None]] = {}
        # Objects the engine let go of, by the sweep they did: the driver still carries out the
        # sends the engine issued in the same step (its last relays), which need what is here.
        self.retiring: list[tuple[int, ObjectId]] = []
        self.sweeps = 0
        self._warn = RateLimitedLog(log)  # what peers' frames make us say, a few lines a peer
        self.placed_total = 0  # objects this node placed in a segment (status, tests)
        self.reused_total = 0  # ... in one it had used before
        self.adopted_total = 0  # objects this node read in place
        self._told: set[int] = set()  # senders whose objects were logged as read in place
        self.max_size = MAX_SIZE  # an offer's size at most
        self.spare: _Segment | None = None  # a segment reserved ahead, offered to no one yet
        self._sparing: _Segment | None = None  # ... being reserved (close() removes it)
        self._spare_since = 0.0  # when the spare was ready
        self.max_pending = MAX_PENDING  # bytes of one peer's offers mapped and not opened yet
        self.max_early = MAX_EARLY  # "in place" notes of one peer for objects not opened here
        self.closed = False  # close() ran: writes that end later send nothing
        # Segments reserved off the loop for objects being digested (``prepare``), offered to
        # no one yet, with when they were ready (unused for ``SPARE_IDLE``, they go).
        self.ready: list[_Segment] = []
        self._ready_since: dict[bytes, float] = {}
        # ... being made and reserved there, or made and not handed to the loop yet (the loop
        # may stop before it runs the hand-over): close() removes their files.
        self._preparing: dict[bytes, _Segment] = {}
        self._preparing_lock = threading.Lock()

    def limit(self, max_object_size: int, max_bytes: int, max_objects: int = 0) -> None:
        """The engine's bounds: no object is larger than ``max_object_size``, nor a sender's
        objects in flight more than ``max_bytes`` (what a peer's offers may make us map), nor
        a node's objects in flight more than ``max_objects``. A peer's notes for objects not
        opened here are for objects it has open, so twice its count (its configuration may be
        larger than ours by as much) never evicts an honest peer's note."""
        self.max_size = min(MAX_SIZE, max_object_size)
        self.max_pending = min(MAX_PENDING, max(max_bytes, max_object_size))
        self.max_early = max(MAX_EARLY, 2 * max_objects)

    def _switched(self, node: int) -> bool:
        """Both rings of the pair with ``node`` work: ours is switched and we read its. Object
        frames about segments (answers, "free") come back only through its ring (a peer
        without one could make us map files over TCP), so a pair that is shared memory one
        way only would leave the peer waiting in every segment offered it, never told one is
        gone: such a pair's objects go as bytes."""
        pair = self.transport.pairs.get(node)
        return (
            pair is not None
            and pair.switched
            and pair.writer is not None
            and not pair.writer.closed
            and pair.reader is not None
            and not pair.reader.closed
        )

    def _dir(self) -> str:
        return self.transport.shm_dir or "/dev/shm"

    # ------------------------------------------------------------ ObjectMemory: the sender
    def sending(self, descriptor: ObjectDescriptor, data: memoryview) -> None:
        self._opened(descriptor)
        others = descriptor.members[1:]
        if self.transport.refusal or not others or not all(self._switched(m) for m in others):
            return
        oid, size = descriptor.oid, descriptor.size
        need = set(others)
        seg = None
        # One reserved for this object as it was digested goes first (its pages are paid for,
        # and until offered it has a name: a kill -9 would leave it in /dev/shm); then an idle
        # one every member maps: no new pages. Not one a member has not answered yet (it may map
        # it, and read an object in place there, before its answer comes: it is a holder too).
        ready = min((r for r in self.ready if r.capacity >= size), key=lambda r: r.capacity, default=None)
        for s in self.segments.values() if ready is None else ():
            if (
                s.busy is None
                and s.reserved
                and not s.retired
                and s.capacity >= size
                and need <= s.holders
                and s.holders <= s.free
                and not s.waiting
            ):
                if seg is None or s.capacity < seg.capacity:
                    seg = s
        fresh = seg is None
        if seg is not None:
            seg.free -= need
            self.segments[seg.token] = self.segments.pop(seg.token)  # the last used: kept longest
            self.reused_total += 1
        else:
            spare, self.spare = self.spare, None
            if ready is not None:  # offered at once
                self.ready.remove(ready)
                del self._ready_since[ready.token]
                seg = self.segments[ready.token] = ready
                self.spare = spare
            elif spare is not None and spare.capacity >= size:
                seg = self.segments[spare.token] = spare  # reserved already: offered at once
            else:
                if spare is not None:
                    self._drop_spare(spare)
                seg = self._new_segment(oid, capacity_for(size))
                if seg is None:
                    return
                self.segments[seg.token] = seg
            seg.waiting = set(need)
            if ready is None:  # objects digested by the driver get theirs from ``prepare``
                self._make_spare(capacity_for(size))  # for the next object that finds no idle segment
        seg.busy = oid
        placed = self.placed[oid] = _Placed(seg, descriptor.block_size, bytearray(descriptor.blocks))
        self.placed_total += 1
        if not seg.reserved and seg.capacity <= RESERVE_NOW:
            # Small enough to reserve on the loop (0.26 ms/MB: at most ~35 ms here), so the
            # offer goes before the descriptor and the members read this object in place.
            try:
                _reserve(seg)
            except OSError as exc:
                log.warning(
                    "object %s goes through the rings: cannot reserve %d bytes for it: %s", oid, seg.capacity, exc
                )
                self._abandon(oid, placed)
                return
            seg.reserved = True
        if seg.reserved:
            self._offer(descriptor, placed, fresh=fresh)
            return
        # Offered only once its room is reserved, so no write a member reads in place can fail
        # for room (several senders on this host cannot overcommit /dev/shm together). Until
        # then its blocks are written as they go (so all are there when it is offered), and a
        # write that fails only means no offer: every member gets bytes.
        SLOW_CALLS.submit(lambda: _reserve(seg), lambda got: self._reserved(descriptor, placed, got))

    def _reserved(self, descriptor: ObjectDescriptor, placed: _Placed, got: Any) -> None:
        """The reservation of a new segment's room ended (``got``: the error, if it failed)."""
        seg = placed.segment
        if self.segments.get(seg.token) is not seg:
            return  # dropped meanwhile (a failed write, close)
        if isinstance(got, OSError):
            log.warning(
                "object %s goes through the rings: cannot reserve %d bytes for it: %s",
                descriptor.oid,
                seg.capacity,
                got,
            )
            self._abandon(descriptor.oid, placed)
            return
        seg.reserved = True
        if placed.over:  # a member that ended its epoch would map it for nothing: it goes
            self._abandon(descriptor.oid, placed)
        elif self.placed.get(descriptor.oid) is placed:  # still in flight
            if _WRITING in placed.written:  # one may yet fail for room: offered once all are done
                placed.offer = descriptor
            else:
                self._offer(descriptor, placed, fresh=True)

    def _offer(self, descriptor: ObjectDescriptor, placed: _Placed, *, fresh: bool) -> None:
        """Offer the segment to the object's members: by its name if ``fresh``, else by its
        token (they map it already)."""
        seg = placed.segment
        base = seg.path if fresh else ""
        offer = frame(ShmObjectOffer(descriptor.oid, base, descriptor.size, seg.token))
        for m in descriptor.members[1:]:
            self.transport.send(m, offer)

    def _abandon(self, oid: ObjectId, placed: _Placed) -> None:
        """``oid`` is not (any more) in its segment: its blocks go as bytes; the segment, busy
        with it no more, is closed (its members unmap it once nothing there refers to it)."""
        if self.placed.get(oid) is placed:
            del self.placed[oid]
        seg = placed.segment
        if seg.busy == oid:
            seg.busy = None
        if self.segments.get(seg.token) is seg:
            self._drop_segment(seg)

    def _new_segment(self, oid: ObjectId | None, capacity: int) -> _Segment | None:
        path = new_object_path(self.transport.cluster, self.transport.node_id, self._dir())
        token = secrets.token_bytes(16)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("%s goes through the rings: cannot create its segment: %s", _what(oid), exc)
            return None
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, HEADER + capacity)
            os.pwrite(fd, _HEAD.pack(MAGIC, capacity, token), 0)
            promised = _ROOM.claim(fd, HEADER + capacity, self._dir())  # last: nothing after it fails
        except OSError as exc:
            os.close(fd)
            _remove(path)  # just made, nothing holds it: at once
            log.warning("%s goes through the rings: a segment of %d bytes: %s", _what(oid), capacity, exc)
            return None
        return _Segment(fd, path, capacity, token, promised=promised)

    def _make_spare(self, capacity: int) -> None:
        """Reserve a segment of ``capacity`` bytes ahead (off the loop), unless one is ready or
        being made: a new segment larger than ``RESERVE_NOW`` is offered only once reserved, so
        an object that finds no idle segment would otherwise go as bytes while its own is."""
        if capacity <= RESERVE_NOW or self._sparing or self.transport.refusal or len(self.segments) >= MAX_SEGMENTS:
            return
        if self.spare is not None and self.spare.capacity >= capacity:
            return
        seg = self._new_segment(None, capacity)
        if seg is None:
            return
        self._sparing = seg

        def reserved(got: Any) -> None:
            if self._sparing is not seg:
                return  # dropped meanwhile (close)
            self._sparing = None
            if isinstance(got, OSError):
                log.info("no spare segment of %d bytes: %s", capacity, got)
                self._drop_spare(seg)
                return
            seg.reserved = True
            if self.spare is not None:
                self._drop_spare(self.spare)
            self.spare = seg
            self._spare_since = time.monotonic()

        SLOW_CALLS.submit(lambda: _reserve(seg), reserved)

    def prepare(self, size: int) -> Callable[[], None] | None:
        """On the digest's worker thread, before an object of ``size`` bytes can start: make
        and reserve a segment for it there, so the object is offered at once (before its
        descriptor: its members read it in place) and no ``posix_fallocate`` runs on the loop
        (0.26 ms/MB alone; 65-155 ms for 100 MB on the loop of a loaded sender). Returns what
        hands the segment to the loop (run there before the object can start), or None when
        an idle segment would do or none can be made. Reads the loop's tables only as a hint
        (a copy of each, taken whole under the GIL)."""
        if self.closed or self.transport.refusal or not self.transport.pairs or capacity_for(size) <= RESERVE_NOW:
            return None  # (a small one is reserved on the loop: no named file waits for it)
        segments, ready = list(self.segments.values()), list(self.ready)
        if len(segments) + len(ready) >= MAX_SEGMENTS:
            return None
        if any(r.capacity >= size for r in ready) or any(
            s.busy is None
            and s.reserved
            and not s.retired
            and s.capacity >= size
            and s.holders <= s.free
            and not s.waiting
            for s in segments
        ):
            return None
        with self._preparing_lock:  # close() removes what is made here until the loop has it
            if self.closed:
                return None
            made = self._new_segment(None, capacity_for(size))
            if made is None:
                return None
            seg = self._preparing[made.token] = made
        try:
            _reserve(seg)
        except OSError as exc:
            log.info("no segment reserved ahead for an object of %d bytes: %s", size, exc)
            with self._preparing_lock:
                self._preparing.pop(seg.token, None)
            os.close(seg.fd)
            _remove(seg.path)  # on the worker already
            return None
        seg.reserved = True

        def hand_over() -> None:
            with self._preparing_lock:
                if self._preparing.pop(seg.token, None) is None:  # close() removed its file
                    fd = seg.fd
                    SLOW_CALLS.submit(lambda: os.close(fd))
                    return
            self.ready.append(seg)
            self._ready_since[seg.token] = time.monotonic()

        return hand_over

    def _drop_spare(self, seg: _Segment) -> None:
        if self.spare is seg:
            self.spare = None
        fd = seg.fd
        SLOW_CALLS.submit(lambda: os.close(fd))
        _unlink(seg.path)

    def block_out(self, node: int, head: bytes, data: memoryview) -> bool:
        """A block frame for ``node`` (the transport's ``send_block``): written into this
        node's segment first if the object is its own; True if this took the send over (a
        ``ShmBlockInPlace`` frame went, as ``node`` reads the object in place, or the send
        waits for the block's write), False if the caller sends the bytes now.

        The write runs on the writer thread (``BLOCK_WRITES``): a turn of the engine sends a
        window of blocks of every object in flight, 90 ms of ``pwrite`` here when they ran on
        the loop. Every send of the block, bytes too, waits for it: a member that got the
        bytes may relay the block to one reading in place as a ``ShmBlockInPlace``, which
        must find it in the segment."""
        if not self.placed and not self.in_place:
            return False
        oid, block = parse_block_header(head, len(head) - BLOCK_HEADER_SIZE)
        p = self.placed.get(oid)
        if p is not None and p.written[block] != _WRITTEN:
            if _on_loop():
                p.waiting.setdefault(block, []).append((node, head, data))
                if p.written[block] != _WRITING:
                    p.written[block] = _WRITING
                    self._write_later(oid, p, block, data)
                return True
            try:  # no loop (tools, unit tests that drive the segments by hand): written here
                _check_write(os.pwrite(p.segment.fd, data, HEADER + block * p.block_size), len(data))
            except OSError as exc:
                self._write_failed(oid, p, block, exc)
                return False
            p.written[block] = _WRITTEN
        return self._in_place_frame(node, oid, block, len(data))

    def _in_place_frame(self, node: int, oid: ObjectId, block: int, length: int) -> bool:
        """Tell ``node`` block ``block`` of ``oid`` is in the segment, if it reads it in place."""
        readers = self.in_place.get(oid)
        if readers is None or node not in readers:
            return False
        self.transport.send(node, frame(ShmBlockInPlace(oid, block, length)))
        return True

    def _write_later(self, oid: ObjectId, p: _Placed, block: int, data: memoryview) -> None:
        """Write ``block`` into ``p``'s segment on the writer thread; its sends go after."""
        fd = os.dup(p.segment.fd)  # the job's own: the segment may be closed before it runs
        offset = HEADER + block * p.block_size

        def write() -> int:
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        BLOCK_WRITES.submit(write, lambda got: self._wrote(oid, p, block, len(data), got))

    def _wrote(self, oid: ObjectId, p: _Placed, block: int, length: int, got: Any) -> None:
        """On the loop: the write of ``block`` ended (``got``: bytes written, or the error)."""
        if self.closed:
            return
        waiting = p.waiting.pop(block, [])
        try:
            if not isinstance(got, int):
                raise got if isinstance(got, OSError) else OSError(errno.EIO, "the write failed")
            _check_write(got, length)
        except OSError as exc:
            p.written[block] = 0
            self._write_failed(oid, p, block, exc)
            for node, head, data in waiting:
                self.transport.send_block_bytes(node, head, data)
            return
        p.written[block] = _WRITTEN
        for node, head, data in waiting:
            if not self._in_place_frame(node, oid, block, length):
                self.transport.send_block_bytes(node, head, data)
        if p.offer is not None and _WRITING not in p.written and self.placed.get(oid) is p:
            descriptor, p.offer = p.offer, None
            self._offer(descriptor, p, fresh=True)

    def _write_failed(self, oid: ObjectId, p: _Placed, block: int, exc: OSError) -> None:
        # Not offered yet (its room not reserved): no member reads it in place, all get
        # bytes. Offered, its room was reserved: not for want of room (an I/O error of the
        # kernel's); a member reading in place then refuses the bytes, and the view change
        # ends the object (it is sent again in the next view).
        log.error("object %s: block %s cannot be written into its segment: %s", oid, block, exc)
        p.offer = None
        self._abandon(oid, p)

    def answered(self, sender: int, answer: ShmObjectAnswer) -> None:
        """A member mapped the segment ``answer.token`` (or could not). Every mapping of a
        member is counted here (a holder: told when the segment goes) or told at once that
        the segment is gone, also when the answer comes after this node let go of the object
        or of the segment: a mapping nobody counts would stay said free, and so mapped, for
        the pair's life."""
        seg = self.segments.get(answer.token)
        held = seg is not None and sender in seg.holders
        offered = held or (seg is not None and sender in seg.waiting)
        if seg is not None and sender in seg.waiting:
            seg.waiting.discard(sender)
            if not seg.waiting:
                _unlink(seg.path)  # every member has it mapped (or will not): the name has done its job
        if seg is not None and offered and answer.mapped:
            seg.holders.add(sender)
            return
        if not answer.mapped:
            log.info("node %s did not map the segment of object %s: it gets the bytes", sender, answer.oid)
        if seg is not None:
            seg.holders.discard(sender)
            seg.free.discard(sender)
        if answer.mapped or held:  # it maps the segment (or may: it refused an offer of one it kept)
            self.transport.send(sender, frame(ShmSegmentFree(answer.token, False)))

    def segment_free(self, sender: int, msg: ShmSegmentFree) -> None:
        """From a member: it holds no view of one of our segments now (or unmapped it:
        ``kept`` False). From an owner (``kept`` False): it will not offer that segment again."""
        m = self.mapped.get((sender, msg.token))
        if m is not None and not msg.kept:
            m.gone = True
            return
        seg = self.segments.get(msg.token)
        if seg is None or sender not in seg.holders:
            return
        if msg.kept:
            seg.free.add(sender)
        else:
            seg.holders.discard(sender)
            seg.free.discard(sender)

    def owner_gone(self, owner: int) -> None:
        """Our shared memory with ``owner`` closed (its process died, restarted, left, or the
        pair fell back to TCP): its segments are unmapped here once nothing refers to them (it
        offers them no more). Our own segments it mapped are never written again (if it lives
        on, it may still view one, and it will never say "free" over a ring that is gone):
        each is closed once no object of ours is in it, so a killed member's pages go with its
        mappings, and its other members unmap it once nothing there refers to it."""
        for (who, _), m in self.mapped.items():
            if who == owner:
                m.gone = True
        for oid in [oid for oid, (who, _) in self.offers.items() if who == owner]:
            self._drop_offer(oid)  # its descriptor may never come: else mapped for good
        for seg in list(self.segments.values()):
            if owner in seg.holders or owner in seg.waiting:
                seg.holders.discard(owner)
                seg.free.discard(owner)
                if owner in seg.waiting:
                    seg.waiting.discard(owner)
                    if not seg.waiting:
                        _unlink(seg.path)
                seg.retired = True
                if seg.busy is None:
                    self._drop_segment(seg)

    # ------------------------------------------------------------ ObjectMemory: a member
    def offered(self, sender: int, offer: ShmObjectOffer) -> None:
        """The sender's segment for one of its objects (new, or one mapped here already):
        check it, map it, answer."""
        why = late = ""
        key = (sender, offer.token)
        oid = offer.oid
        # An honest offer comes late when its segment was reserved off the loop: after the
        # descriptor (the object goes as bytes here), or after the view changed here. Mapped,
        # it would be held for nothing until the next view change.
        if oid.vid <= self.ended:
            late = f"its epoch {oid.vid} ended here"
        elif oid.seq <= self.opened.get((oid.sender, oid.vid, oid.stream), -1):
            late = "the object is open or over here (it comes as bytes)"
        if oid.sender != sender:
            why = f"it offers object {oid} of node {oid.sender}"
        elif late:
            why = late
        elif oid in self.offers:
            why = "a second offer of the object"
        elif not 0 <= offer.size <= self.max_size:
            why = f"size {offer.size} is out of range (at most {self.max_size})"
        elif not self._room_for(sender, capacity_for(offer.size)):
            why = f"its offers not opened yet would map more than {self.max_pending} bytes"
        elif offer.base:
            path = offered_object_path(offer.base, self.transport.cluster, sender, self._dir())
            if path is None:
                why = f"{offer.base!r} is not a path node {sender} may offer"
            elif key in self.mapped:
                why = "a second offer of a segment mapped here"
            else:
                try:
                    self.mapped[key] = _Mapped(_attach(path, capacity_for(offer.size), offer.token))
                except RingError as exc:
                    why = str(exc)
        else:
            m = self.mapped.get(key)
            if m is None:
                why = "a segment not mapped here (unmapped, or never offered)"
            elif m.busy is not None or not m.told_free:
                why = "a segment still in use here (not said free)"
            else:
                m.told_free = False
                self.mapped.move_to_end(key)
        if why:
            (log.info if late else log.warning)("node %s's segment for object %s refused: %s", sender, oid, why)
        else:
            self.mapped[key].busy = oid
            self.offers[oid] = key
            mine = [o for o, (owner, _) in self.offers.items() if owner == sender]
            for o in mine[: len(mine) - MAX_OFFERS]:  # its objects never opened here (a view ended)
                self._drop_offer(o)
        self.transport.send(sender, frame(ShmObjectAnswer(oid, not why, offer.token)))

    def _room_for(self, sender: int, size: int) -> bool:
        """Whether ``sender``'s offers mapped here and not opened yet, with one more of ``size``
        bytes, stay within ``max_pending``; its oldest go first (objects never opened here)."""
        mine = []
        total = size
        for oid, (owner, token) in self.offers.items():
            m = self.mapped.get((owner, token)) if owner == sender else None
            if m is not None:
                mine.append((oid, len(m.mm) - HEADER))
                total += len(m.mm) - HEADER
        for oid, n in mine:
            if total <= self.max_pending:
                break
            self._drop_offer(oid)
            total -= n
        return total <= self.max_pending

    def _drop_offer(self, oid: ObjectId) -> None:
        """Forget an offer never opened here: only the offer (its segment is idle again here),
        nothing of an object in flight."""
        key = self.offers.pop(oid, None)
        m = self.mapped.get(key) if key is not None else None
        if m is not None and m.busy == oid:
            m.busy = None

    def receiving(self, descriptor: ObjectDescriptor) -> memoryview | None:
        self._opened(descriptor)
        oid = descriptor.oid
        key = self.offers.pop(oid, None)
        m = self.mapped.get(key) if key is not None else None
        if m is None:
            return None
        me = self.transport.node_id
        others = [n for n in descriptor.members if n != me]
        if m.gone or len(m.mm) < HEADER + descriptor.size or not all(self._switched(n) for n in others):
            m.busy = None
            return None
        said = frame(ShmInPlace(oid))
        for n in others:  # before this node's first credit to any of them, on the same ring
            self.transport.send(n, said)
        self.adopted.add(oid)
        self.adopted_total += 1
        if oid.sender not in self._told:
            self._told.add(oid.sender)
            log.info("objects of node %s are read in place from its segments", oid.sender)
        return memoryview(m.mm)[HEADER : HEADER + descriptor.size]

    def _opened(self, descriptor: ObjectDescriptor) -> None:
        """The engine opened ``descriptor`` here: its members' "in place" notes count now."""
        oid = descriptor.oid
        members = self.members[oid] = frozenset(descriptor.members)
        stream = (oid.sender, oid.vid, oid.stream)
        self.opened[stream] = max(oid.seq, self.opened.get(stream, -1))
        for peer in members:
            notes = self.early.get(peer)
            if notes is not None and notes.pop(oid, 0) is None:
                self.in_place.setdefault(oid, set()).add(peer)
                if not notes:
                    del self.early[peer]

    def reads_in_place(self, sender: int, msg: ShmInPlace) -> None:
        """A member reads ``msg.oid`` in place: its blocks go to it as ``ShmBlockInPlace``. Only
        from a member of an object open here; one not open yet is noted (bounded per peer)."""
        oid = msg.oid
        members = self.members.get(oid)
        if members is not None:
            if sender in members:
                self.in_place.setdefault(oid, set()).add(sender)
            else:
                self._warn.warning(
                    ("not-member", str(sender)),
                    "node %s says it reads object %s in place, of which it is no member: ignored",
                    sender,
                    oid,
                )
            return
        notes = self.early.setdefault(sender, OrderedDict())
        notes[oid] = None
        while len(notes) > self.max_early:  # objects never opened here (a view ended): its own oldest go
            notes.popitem(last=False)

    def landed(self, sender: int, msg: ShmBlockInPlace, sink: BlockDestination | None) -> Any:
        """A block in place: reserve it as if its bytes had come (the engine checks sender,
        credit and length), and hand the driver what a block frame would have become.

        Hostile only for an object open here and read as bytes: no honest relay says its block
        is in place for it. For one not open here the engine answers as it would the bytes
        (UNKNOWN_OBJECT, OBJECT_OVER, EPOCH_ENDED): an honest relay with our credit may send
        it late, after the object ended here, or a relay's frames queued for this node's
        previous process may reach this one (a restart at the same address)."""
        oid = msg.oid
        adopted = oid in self.adopted
        if oid in self.members and not adopted:
            return BlockDropped(oid, msg.block, Refusal.NOT_IN_PLACE)
        got = sink(sender, oid, msg.block, msg.length) if sink is not None else Refusal.UNKNOWN_OBJECT
        if isinstance(got, Refusal):
            return BlockDropped(oid, msg.block, got)
        if not adopted:  # the engine holds an object not open here: it opens none without us
            return BlockDropped(oid, msg.block, Refusal.NOT_IN_PLACE)
        return BlockLanded(oid, msg.block)

    # ------------------------------------------------------------ both
    def done(self, oid: ObjectId) -> None:
        """The engine let go of ``oid``: forgotten here two sweeps later (see ``retiring``),
        and never offered from now on (its segment may still be being reserved)."""
        p = self.placed.get(oid)
        if p is not None:
            p.over = True
            p.offer = None
        self.retiring.append((self.sweeps, oid))

    def sweep(self) -> None:
        """The transport's periodic sweep: forget what the engine let go of before the last
        one; tell owners which of their segments nothing here refers to any more; keep
        within the bounds of idle segments."""
        self.sweeps += 1
        now = time.monotonic()
        if self.spare is not None and now - self._spare_since > SPARE_IDLE:
            self._drop_spare(self.spare)  # no object came for it: its pages go back
        for r in [r for r in self.ready if now - self._ready_since.get(r.token, now) > SPARE_IDLE]:
            self.ready.remove(r)
            del self._ready_since[r.token]
            self._drop_spare(r)
        retiring = self.retiring
        later: list[tuple[int, ObjectId]] = []
        while retiring and retiring[0][0] < self.sweeps - 1:
            oid = retiring.pop(0)[1]
            p = self.placed.get(oid)
            if p is not None and p.waiting:  # sends still wait for a write: they need what is here
                later.append((self.sweeps, oid))
            else:
                self._release(oid)
        retiring.extend(later)
        idle_mapped: dict[int, list[tuple[int, bytes]]] = {}
        for key, m in self.mapped.items():
            # Idle: only this table refers to the mapping (no view of it, in the engine, the
            # application or a transport's queue), as ``rdmc_buffers`` counts its own.
            if m.busy is None and sys.getrefcount(m.mm) <= 2:
                idle_mapped.setdefault(key[0], []).append(key)
        for owner, keys in idle_mapped.items():
            for key in [k for k in keys if self.mapped[k].gone]:
                keys.remove(key)
                _unmap(self.mapped.pop(key).mm)
            # Those said free first (the owner may be offering one again right now: unmapped,
            # that offer would be refused and its object go as bytes), then the last used.
            # Said free are never more than KEEP_MAPPED, so only ones never said free go.
            keys.sort(key=lambda k: not self.mapped[k].told_free, reverse=True)
            for key in keys[:-KEEP_MAPPED]:  # beyond the bound: unmapped
                _unmap(self.mapped.pop(key).mm)
                self.transport.send(owner, frame(ShmSegmentFree(key[1], False)))
            for key in keys[-KEEP_MAPPED:]:
                m = self.mapped[key]
                if not m.told_free:
                    m.told_free = True
                    self.transport.send(owner, frame(ShmSegmentFree(key[1], True)))
        # Segments every holder let go of are kept up to KEEP_IDLE bytes and KEEP_MAPPED of them
        # (newest first: last used, in the order members keep theirs, so this node offers none a
        # member has just unmapped); those a member's application still holds cost nothing more
        # here (the pages are the same), so they wait for its "free", at most MAX_SEGMENTS of
        # them (the oldest go first).
        kept = count = 0
        for s in reversed(list(self.segments.values())):
            if s.busy is None and (s.retired or s.holders <= s.free):
                if not s.retired and count < KEEP_MAPPED and kept + s.capacity <= KEEP_IDLE:
                    kept += s.capacity
                    count += 1
                else:
                    self._drop_segment(s)
        if len(self.segments) > MAX_SEGMENTS:
            for s in [s for s in self.segments.values() if s.busy is None][: len(self.segments) - MAX_SEGMENTS]:
                self._drop_segment(s)

    def _drop_segment(self, seg: _Segment, tell: bool = True) -> None:
        del self.segments[seg.token]
        fd = seg.fd
        SLOW_CALLS.submit(lambda: os.close(fd))  # the last reference frees every page: off the loop
        if seg.waiting:
            _unlink(seg.path)
        gone = frame(ShmSegmentFree(seg.token, False))
        for member in seg.holders if tell else ():  # so it unmaps the pages once nothing there refers to them
            self.transport.send(member, gone)

    def _release(self, oid: ObjectId) -> None:
        p = self.placed.pop(oid, None)
        if p is not None and p.segment.busy == oid:
            p.segment.busy = None
            if p.segment.retired and self.segments.get(p.segment.token) is p.segment:
                self._drop_segment(p.segment)
        self.offers.pop(oid, None)
        for m in self.mapped.values():
            if m.busy == oid:
                m.busy = None
        self.adopted.discard(oid)
        self.in_place.pop(oid, None)
        self.members.pop(oid, None)

    def epoch_ended(self, vid: int) -> None:
        """Every object of ``vid`` and earlier is over here: offers of them never opened go
        (their segments idle again, unmapped if their owner is gone), and so do the notes and
        the last seqs opened (a late offer of them is refused by its epoch, see ``offered``)."""
        self.ended = max(self.ended, vid)
        self.opened = {key: seq for key, seq in self.opened.items() if key[1] > vid}
        for oid in [oid for oid in self.offers if oid.vid <= vid]:
            self._drop_offer(oid)
        for peer, notes in list(self.early.items()):
            for oid in [oid for oid in notes if oid.vid <= vid]:
                del notes[oid]
            if not notes:
                del self.early[peer]

    def close(self) -> None:
        with self._preparing_lock:
            self.closed = True
            preparing, self._preparing = list(self._preparing.values()), {}
        for seg in preparing:  # its descriptor is the worker's or the hand-over's: closed at exit
            _remove(seg.path)
        for r in self.ready:
            self._drop_spare(r)
        self.ready.clear()
        self._ready_since.clear()
        if self.spare is not None:
            self._drop_spare(self.spare)
        sparing, self._sparing = self._sparing, None
        if sparing is not None:  # its reservation queued before this close: the file goes now
            self._drop_spare(sparing)
        self.retiring.clear()
        self.placed.clear()
        for seg in list(self.segments.values()):
            self._drop_segment(seg, tell=False)
        for m in self.mapped.values():
            try:
                m.mm.close()
            except BufferError:  # a view of it is still held: unmapped when that goes
                pass
        self.mapped.clear()
        self.offers.clear()
        self.in_place.clear()
        self.members.clear()
        self.opened.clear()
        self.early.clear()
        unlink_pending()  # the names this close dropped (and any other queued): gone with the node
        self.adopted.clear()


def guard_sink(sink: BlockDestination) -> BlockDestination:
    """``sink`` for a transport's block bytes: refuses a block of an object read in place
    (a read-only view: its member said it takes no bytes for it, so they are never written)."""

    def guarded(sender: int, oid: ObjectId, block: int, length: int) -> memoryview | Refusal:
        got = sink(sender, oid, block, length)
        if isinstance(got, memoryview) and got.readonly:
            return Refusal.IN_PLACE
        return got

    return guarded


class _Room:
    """The /dev/shm bytes this process promised to new segments whose room is not reserved
    yet: a new segment is made only if the free room, less those, leaves ``ROOM_LEFT``, so a
    segment, a spare and other senders of this process cannot all pass the check and then
    reserve /dev/shm down to nothing (the rings and boards of pairs set up later would find no
    room, and stay on TCP). The check and the promise are one step under a lock; the
    reservation (on the loop or the worker thread) settles it. Only this process: nodes on one
    host are separate processes and may together fill /dev/shm, which costs no process its
    life: every page of a ring, a board or an object's segment is allocated before it is used
    (``shm_segment.create_segment``, ``_reserve``), so no first write into one can SIGBUS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.promised = 0

    def claim(self, fd: int, size: int, where: str) -> int:
        """Promise ``size`` bytes to the segment open at ``fd``, or raise ENOSPC."""
        with self._lock:
            room = os.fstatvfs(fd)
            free = room.f_bavail * room.f_frsize - self.promised
            if free < size + ROOM_LEFT:
                raise OSError(errno.ENOSPC, f"{where} has not {size + ROOM_LEFT} bytes free (promised or used)")
            self.promised += size
            return size

    def settle(self, seg: _Segment) -> None:
        """``seg``'s reservation ended (its pages are allocated, or will not be)."""
        with self._lock:
            self.promised -= seg.promised
            seg.promised = 0


_ROOM = _Room()
_UNLINKING: set[str] = set()  # names queued for removal on the worker thread (``unlink_pending``)


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_write(wrote: int, length: int) -> None:
    if wrote != length:  # out of room partway (not reserved yet): the rest is not there
        raise OSError(errno.ENOSPC, f"wrote {wrote} of its {length} bytes")


def _reserve(seg: _Segment) -> None:
    """Allocate ``seg``'s pages (``posix_fallocate``; on the loop or the worker thread) and
    settle the room promised to it, reserved or not."""
    try:
        mine = os.dup(seg.fd)  # the loop may close the segment's own descriptor meanwhile
        try:
            os.posix_fallocate(mine, 0, HEADER + seg.capacity)
        finally:
            os.close(mine)
    finally:
        _ROOM.settle(seg)


def _attach(path: str, size: int, token: bytes) -> mmap.mmap:
    mm = attach_segment(path, HEADER + size, f"a segment of {size}", writable=False)
    magic, got_size, got_token = _HEAD.unpack_from(mm, 0)
    if (magic, got_size, got_token) != (MAGIC, size, token):
        mm.close()
        raise RingError(f"{path} does not hold the object segment the peer announced")
    return mm


def _what(oid: ObjectId | None) -> str:
    return "a spare segment" if oid is None else f"object {oid}"


def _unmap(mm: mmap.mmap) -> None:
    """Unmap ``mm`` off the loop (the last mapping of a segment frees its pages; nothing here
    refers to it any more)."""

    def unmap() -> None:
        try:
            mm.close()
        except BufferError:  # a view was made after all: unmapped when that goes
            pass

    SLOW_CALLS.submit(unmap)


def _unlink(path: str) -> None:
    """Remove ``path`` off the loop: an unlink waits for the file's inode, which a
    ``posix_fallocate`` or a ``pwrite`` into it holds (79 ms on the loop of a loaded sender)."""
    SLOW_CALLS.submit(lambda: _remove(path))
    _UNLINKING.add(path)


def unlink_pending() -> None:
    """Remove at once the names queued for removal (close: the process may end before the
    worker thread gets to them, and a name left in /dev/shm outlives it)."""
    for path in list(_UNLINKING):
        _remove(path)


def _remove(path: str) -> None:
    _UNLINKING.discard(path)
    unlink_quietly(path)


__all__ = ["HEADER", "ObjectSegments", "guard_sink"]
