"""The shared-memory ring, mirrored across a network by one-sided writes: one direction of one
RDMA pair.

Each side of a direction holds a full copy of the ring (``shm_ring``'s layout: header words,
then the data), in a private mapping registered with the NIC. The producer writes frames into
its copy exactly as into a shared segment (``ShmRing.write``), then *publishes*: it writes the
bytes it just wrote, then the ``head`` word, into the same offsets of the consumer's copy. The
consumer reads its copy as a shared segment and publishes its ``tail`` word (and its sleep
epoch) back into the producer's copy; the producer publishes its wait epoch. Each header word
still has one writer, so the two copies agree on every word's latest published value, and the
code above (``shm_link``'s writer and reader: framing, back-pressure, the sleep/wait epochs) is
the code the shared-memory transport runs in every test.

Ordering assumptions (the ones Derecho's SST makes): RDMA writes posted on one RC queue pair
land in the peer's memory in the order posted, message after message, while the bytes within
one write may land in any order; so the data goes in its own write(s) and ``head`` in a later
one, and a consumer that sees the new ``head`` sees the data. An aligned 8-byte word written
by one write is assumed to be seen whole by the peer's CPU (true of x86 and PCIe in practice,
not promised by the verbs specification). The consumer frees room with its ``tail`` only
after reading, as on shared memory.

The publication is a function ``(offset, length)``: "copy these bytes of my copy to the same
offset of the peer's". The RDMA transport passes one that posts an ``RDMA_WRITE``
(``rdma_verbs.VerbsPair.write``); tests pass one that copies into a second buffer in the same
process, which runs the same ring code, publication ranges and ordering.

Wake-ups: there is no doorbell across machines without a two-sided message, so the RDMA
transport polls its rings on the loop (``rdma_transport.POLL_INTERVAL``) and the rings'
doorbells are :class:`PolledBell`, whose ``ring`` has nothing to do.
"""

from __future__ import annotations

import mmap
import os
from typing import Callable

from runtime.drivers.shm_doorbell import Doorbell
from runtime.drivers.shm_ring import HEADER, MAGIC, MIN_CAPACITY, RingError, ShmRing

Publish = Callable[[int, int], None]
"""``(offset, length)``: copy that range of this side's copy into the peer's copy."""

# Byte offsets of the header words each side publishes (shm_ring's layout).
HEAD_AT, TAIL_AT, CONSUMER_SLEEPS_AT, PRODUCER_WAITS_AT = 64, 128, 192, 256
WORD = 8


def written_ranges(head: int, n: int, capacity: int) -> list[tuple[int, int]]:
    """The byte ranges ``(offset, length)`` of the ring's copy that a write of ``n`` bytes at
    stream position ``head`` changed, in the order they must reach the peer: the data (one
    piece, or two where it wraps), then the ``head`` word."""
    if n <= 0:
        return []
    pos = head & (capacity - 1)
    first = min(n, capacity - pos)
    out = [(HEADER + pos, first)]
    if n > first:
        out.append((HEADER, n - first))
    out.append((HEAD_AT, WORD))
    return out


def ring_buffer(capacity: int) -> mmap.mmap:
    """A private anonymous mapping for one copy of a ring, its header written (the peer's
    copy is made the same way from the capacity agreed in the setup)."""
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise RingError(f"ring capacity must be a power of two >= {MIN_CAPACITY}, got {capacity}")
    buf = mmap.mmap(-1, HEADER + capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with memoryview(buf) as whole, whole[:HEADER].cast("Q") as words:
        words[1] = capacity
        words[0] = MAGIC
    return buf


class MirroredRing(ShmRing):
    """A ring whose every store by this side is published to the peer's copy."""

    __slots__ = ("publish",)

    def __init__(self, buf: mmap.mmap, capacity: int, publish: Publish, label: str) -> None:
        super().__init__(buf, capacity, label)
        self.publish = publish

    def write(self, data: bytes | bytearray | memoryview) -> int:
        head = self._head
        n = super().write(data)
        for offset, length in written_ranges(head, n, self.capacity):
            self.publish(offset, length)
        return n

    def consume(self, n: int) -> None:
        super().consume(n)
        self.publish(TAIL_AT, WORD)

    def set_consumer_sleeps(self, epoch: int) -> None:
        super().set_consumer_sleeps(epoch)
        self.publish(CONSUMER_SLEEPS_AT, WORD)

    def set_producer_waits(self, epoch: int) -> None:
        super().set_producer_waits(epoch)
        self.publish(PRODUCER_WAITS_AT, WORD)


class PolledBell(Doorbell):
    """A doorbell for a ring read by polling: its fd (a local eventfd nobody writes) keeps the
    link's ``add_reader`` calls valid, and ``ring`` does nothing (the peer's poller finds the
    bytes). See the module docstring."""

    __slots__ = ()

    @classmethod
    def local(cls) -> PolledBell:
        return cls("", os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def ring(self) -> None:
        return None
