"""A single-producer/single-consumer byte ring in a shared mapping: one direction of one pair
of co-located members (``runtime.drivers.shm_transport`` holds two per pair).

The ring carries a byte stream, the same bytes a TCP connection would (length-prefixed frames
and block frames), so the reading side feeds them to the same ``FrameDecoder``, a frame may
wrap around the end of the ring, and a frame larger than the ring passes in pieces (the
producer writes what fits, the consumer frees room, the producer writes on).

Layout of the segment (a file in /dev/shm, ``HEADER`` bytes of header then ``capacity`` bytes
of data; ``capacity`` a power of two). Every header field is one 8-byte little-endian word at
an 8-byte aligned offset, each written by one side only, on its own 64-byte cache line:

====== ================ ======== =====================================================
offset field            writer   meaning
====== ================ ======== =====================================================
0      magic            owner    ``MAGIC`` (the layout version is part of it)
8      capacity         owner    bytes of data
16, 24 token            owner    16 random bytes, also told to the consumer over TLS
64     head             producer bytes written since the start (never wraps in practice)
128    tail             consumer bytes consumed since the start
192    consumer_sleeps  consumer nonzero (an epoch): it may sleep; wake it up
256    producer_waits   producer nonzero (an epoch): the ring was full; tell it about room
====== ================ ======== =====================================================

Memory ordering. The indices are published with single aligned 8-byte stores
(``memoryview.cast("Q")`` item assignment, a fixed-size copy the C compiler emits as one
``mov``), which x86-64 performs atomically. The design relies on x86's total store order:
the producer copies the data and then stores ``head``, and a store is never seen before the
stores that precede it, so a consumer that reads the new ``head`` sees the data; likewise the
consumer reads the data before it stores ``tail``, and loads are not reordered with older
loads or younger stores, so the producer never overwrites bytes still being read. CPython
adds no reordering of its own across these steps (each is an opaque C call).

The one reordering x86 does allow, a load passing an older store to another address, matters
to the sleep protocol (the "store my flag, then load your index" pattern on both sides): a
consumer that stores ``consumer_sleeps`` and then loads ``head`` could miss a write whose
producer loaded ``consumer_sleeps`` before the flag became visible, and neither would ring.
Both sides put a full fence between that store and that load: :func:`full_fence` takes and
releases an uncontended ``threading.Lock``, which in CPython on Linux is a ``sem_trywait`` /
``sem_post`` pair, i.e. ``lock``-prefixed read-modify-writes, full barriers on x86. On top of
that the transport sweeps its rings every few milliseconds, so even a missed wake-up delays
frames, never loses them.

A port to ARM (or any weakly ordered CPU) needs release stores of ``head``/``tail`` and
acquire loads of them (``stlr``/``ldar``), which Python cannot express; so the shared-memory
transport is only offered on x86-64 (``SUPPORTED``), and elsewhere peers use TCP.
"""

from __future__ import annotations

import mmap
import platform
import threading
from dataclasses import dataclass

from runtime.drivers.shm_segment import RingError, attach_segment, create_segment, token_words

__all__ = ["HEADER", "MAGIC", "MIN_CAPACITY", "SUPPORTED", "RingError", "RingSpec", "ShmRing", "full_fence"]

HEADER = 4096
MAGIC = 0x3147_4E49_5244_5244  # b"DRDRING1" as a little-endian word; bump with the layout
MIN_CAPACITY = 4096
SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")
"""Whether this CPU's memory order is the one the ring relies on (see the module docstring)."""

# Word indices (offset // 8) of the header fields.
_MAGIC, _CAPACITY, _TOKEN0, _TOKEN1 = 0, 1, 2, 3
_HEAD, _TAIL, _CONSUMER_SLEEPS, _PRODUCER_WAITS = 8, 16, 24, 32

_FENCE = threading.Lock()
_acquire, _release = _FENCE.acquire, _FENCE.release


def full_fence() -> None:
    """A full memory barrier on x86 (a locked read-modify-write in ``sem_trywait`` and
    ``sem_post``); see the module docstring for where it is needed and why."""
    _acquire()
    _release()


@dataclass(frozen=True, slots=True)
class RingSpec:
    """What the consumer is told over TLS to find and check the producer's segment."""

    path: str
    capacity: int
    token: bytes  # 16 bytes


class ShmRing:
    """One mapped ring. The producer calls :meth:`write`; the consumer :meth:`readable`,
    :meth:`pieces` and :meth:`consume`. Each side keeps its own index cached, so it reads only
    the other side's word from shared memory."""

    __slots__ = ("capacity", "path", "_mm", "_data", "_words", "_mask", "_head", "_tail")

    def __init__(self, mm: mmap.mmap, capacity: int, path: str) -> None:
        self.capacity = capacity
        self.path = path
        self._mm = mm
        whole = memoryview(mm)
        self._words = whole[:HEADER].cast("Q")
        self._data = whole[HEADER : HEADER + capacity]
        self._mask = capacity - 1
        self._head = self._words[_HEAD]
        self._tail = self._words[_TAIL]

    # ------------------------------------------------------------------ making and opening
    @classmethod
    def create(cls, path: str, capacity: int, token: bytes) -> ShmRing:
        """Create the segment at ``path`` (which must not exist) with mode 0600, owned by
        this process's user, and write its header."""
        if capacity < MIN_CAPACITY or capacity & (capacity - 1):
            raise RingError(f"ring capacity must be a power of two >= {MIN_CAPACITY}, got {capacity}")
        t0, t1 = token_words(token)
        mm = create_segment(path, HEADER + capacity)
        ring = cls(mm, capacity, path)
        words = ring._words
        words[_CAPACITY] = capacity
        words[_TOKEN0] = t0
        words[_TOKEN1] = t1
        words[_MAGIC] = MAGIC  # last: a reader that sees it sees the rest
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> ShmRing:
        """Open the peer's segment named in ``spec``; raise ``RingError`` unless it is a
        regular file of our own user, mode 0600, of the announced size, whose header holds the
        magic, the capacity and the token the peer told us over TLS (so it is the segment that
        peer made, not a file someone else put under that name)."""
        t0, t1 = token_words(spec.token)
        if spec.capacity < MIN_CAPACITY or spec.capacity & (spec.capacity - 1):
            raise RingError(f"{spec.path}: not a ring (capacity {spec.capacity} is not a power of two)")
        mm = attach_segment(spec.path, HEADER + spec.capacity, f"a ring of {spec.capacity}", writable=True)
        ring = cls(mm, spec.capacity, spec.path)
        words = ring._words
        if (words[_MAGIC], words[_CAPACITY], words[_TOKEN0], words[_TOKEN1]) != (MAGIC, spec.capacity, t0, t1):
            ring.close()
            raise RingError(f"{spec.path} does not hold the ring the peer announced")
        return ring

    def close(self) -> None:
        """Unmap (the file stays: only its owner removes it)."""
        if self._mm.closed:
            return
        self._words.release()
        self._data.release()
        try:
            self._mm.close()
        except BufferError:  # a view of a piece outlived its read: the GC unmaps it later
            pass

    @property
    def closed(self) -> bool:
        return self._mm.closed

    # ------------------------------------------------------------------ producer side
    def free(self) -> int:
        """Bytes the producer may write now."""
        return self.capacity - (self._head - self._words[_TAIL])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits, publish it, and return how many bytes that was.
        (Written for the common case, a frame that fits before the ring's end: one bounds
        test, one copy, one store; no ``min()`` or nested calls on the way.)"""
        head = self._head
        size = len(data)
        room = self.capacity - (head - self._words[_TAIL])
        n = size if size <= room else room
        if n <= 0:
            return 0
        pos = head & self._mask
        end = pos + n
        if n == size and end <= self.capacity:
            self._data[pos:end] = data
        else:
            first = n if end <= self.capacity else self.capacity - pos
            with memoryview(data) as src:
                self._data[pos : pos + first] = src[:first]
                if n > first:
                    self._data[: n - first] = src[first:n]
        head += n
        self._head = head
        self._words[_HEAD] = head  # publish: after the data (TSO keeps store order)
        return n

    def sleeping_consumer(self) -> int:
        """Fence, then the consumer's sleep epoch (0: awake): the producer's half of the
        sleep protocol after it published bytes (see the module docstring)."""
        _acquire()
        _release()
        return self._words[_CONSUMER_SLEEPS]

    def consumer_sleeps(self) -> int:
        """The consumer's sleep epoch (0: awake). Call after :func:`full_fence`."""
        return int(self._words[_CONSUMER_SLEEPS])

    def set_producer_waits(self, epoch: int) -> None:
        self._words[_PRODUCER_WAITS] = epoch

    # ------------------------------------------------------------------ consumer side
    def readable(self) -> int:
        """Bytes published and not consumed yet."""
        return int(self._words[_HEAD]) - self._tail

    def published(self) -> int:
        """The producer's ``head`` as stored now (bytes written since the start)."""
        return int(self._words[_HEAD])

    @property
    def consumed(self) -> int:
        """Bytes consumed since the start (our ``tail``)."""
        return self._tail

    def pieces(self, limit: int) -> tuple[memoryview, ...]:
        """Up to ``limit`` readable bytes, as one or two views of the ring (two where they
        wrap around its end). Valid until :meth:`consume`."""
        tail = self._tail
        n = self._words[_HEAD] - tail
        if n > limit:
            n = limit
        if n <= 0:
            return ()
        pos = tail & self._mask
        end = pos + n
        if end <= self.capacity:
            return (self._data[pos:end],)
        first = self.capacity - pos
        return (self._data[pos:], self._data[: n - first])

    def consume(self, n: int) -> None:
        """Hand ``n`` bytes back to the producer (after they were read)."""
        self._tail += n
        self._words[_TAIL] = self._tail

    def set_consumer_sleeps(self, epoch: int) -> None:
        self._words[_CONSUMER_SLEEPS] = epoch

    def try_sleep(self, epoch: int) -> bool:
        """The consumer's half of the sleep protocol: store ``epoch`` (nonzero: ring me),
        fence, look once more. True: the ring is empty, sleep; False: bytes arrived
        meanwhile (the caller reads on and stores 0 again)."""
        self.set_consumer_sleeps(epoch)  # a method: a mirrored ring (rdma_ring) publishes it
        _acquire()
        _release()
        return self._words[_HEAD] == self._tail

    def waiting_producer(self) -> int:
        """Fence, then the producer's wait epoch (0: not waiting): the consumer's check after
        it freed room (our tail store before this load)."""
        _acquire()
        _release()
        return self._words[_PRODUCER_WAITS]

    def producer_waits(self) -> int:
        """The producer's wait epoch (0: not waiting). Call after :func:`full_fence`."""
        return int(self._words[_PRODUCER_WAITS])
