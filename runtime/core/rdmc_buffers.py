"""Receive buffers of large objects: allocated without a pass over them, and reused.

A receiver writes each object into one buffer of the object's size (the engine's only copy of
it), which the application then gets as a read-only view. Two costs come with a fresh buffer,
both paid in the kernel at every receiver for every byte: mapping its pages (zero-filled,
charged to the memory cgroup, one by one: ``MADV_POPULATE_WRITE`` ahead of each block, see
:func:`runtime.core.rdmc_object.prefault`) and unmapping them when the last view goes. On the
bench machine that was 0.36 ms/MB of a receiver's ~1.2 ms/MB (cProfile of a receiver of
100 MB objects: ``madvise`` alone took more than ``recv_into`` or the digest).

So a node keeps the mappings it received into, and once nothing refers to one any more (the
application dropped the object, every relay of its blocks left the transport's queue) the next
object of the same rounded size is written into it: its pages are mapped already. What is
kept idle is bounded (``keep_bytes``), and an idle mapping that is not reused at the next
allocation beyond that bound is unmapped then. An application that keeps its objects keeps
their mappings busy: they are never reused while it holds them, and the pool stops tracking
the oldest once it tracks ``MAX_TRACKED`` (they are unmapped when the application lets go, as
any buffer).

"Nothing refers to it" is the mapping's reference count: every view of it (a slice, a read-only
view, one queued in a transport) holds the underlying buffer, which holds the mapping, so a
count of the pool's own references alone means no view exists and no byte of it can be read
again. A reused buffer's old bytes are all overwritten before the object completes (every
block is written whole before it is held), and the digest is checked over what was written.
"""

from __future__ import annotations

import mmap
import sys

__all__ = ["LAZY_BUFFER_BYTES", "MAX_TRACKED", "BufferPool", "object_buffer"]

LAZY_BUFFER_BYTES = 1 << 20
"""From this size on, a receive buffer is an anonymous memory mapping, not a ``bytearray``."""

GRANULE = 1 << 20
"""Mappings are made in multiples of this: objects of nearly the same size share them."""

MAX_TRACKED = 16
"""Mappings the pool watches at most (busy and idle): a scan per allocation stays short."""


def object_buffer(size: int) -> memoryview:
    """A zero-filled writable buffer of ``size`` bytes whose allocation costs no pass over it.

    ``bytearray(size)`` writes every byte at once: every page faulted in and zeroed on the
    node's loop, ~1.3 s per GiB on the bench machine, which would stall heartbeats as a
    whole-object digest would. An anonymous private mapping (memory only, no file, nothing
    shared) is zero-filled by the kernel page by page as blocks are written into it, so that
    cost is spread over the blocks, and the memory is returned when the last view of it goes.
    Small objects take a ``bytearray`` (a mapping's page granularity would waste memory)."""
    if size < LAZY_BUFFER_BYTES:
        return memoryview(bytearray(size))
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


class BufferPool:
    """One node's receive buffers: fresh mappings, or idle ones whose pages are mapped."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._tracked: list[mmap.mmap] = []  # oldest first
        self.reused = 0  # allocations served by an idle mapping (tests, status)

    def take(self, size: int) -> tuple[memoryview, bool]:
        """A writable buffer of ``size`` bytes, and whether its pages are mapped already (a
        reused mapping: no need to pre-fault it). Small sizes get a fresh ``bytearray``."""
        if size < LAZY_BUFFER_BYTES:
            return memoryview(bytearray(size)), False
        length = -(-size // GRANULE) * GRANULE
        tracked = self._tracked
        # Index by index: the list's slot and getrefcount's argument are the only references
        # of an idle mapping (a loop variable would be a third).
        idle = [i for i in range(len(tracked)) if sys.getrefcount(tracked[i]) <= 2]
        chosen = next((i for i in idle if len(tracked[i]) == length), None)
        kept, drop = 0, []
        for i in reversed(idle):  # newest first: the likeliest to be reused next
            if i == chosen:
                continue
            if kept + len(tracked[i]) <= self.keep_bytes:
                kept += len(tracked[i])
            else:
                drop.append(i)
        if chosen is not None:
            mm = tracked.pop(chosen)
            drop = [i - (i > chosen) for i in drop]
        for i in sorted(drop, reverse=True):
            del tracked[i]  # its last reference: unmapped here
        if chosen is None:
            if length > self.keep_bytes:  # never kept idle: a plain buffer, not tracked
                return object_buffer(size), False
            mm = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            self.reused += 1
        tracked.append(mm)
        if len(tracked) > MAX_TRACKED:
            del tracked[0]  # the oldest: if busy, it lives on with its holders, untracked
        return memoryview(mm)[:size], chosen is not None

    @property
    def idle_bytes(self) -> int:
        """Bytes of mappings kept that nothing else refers to now."""
        tracked = self._tracked
        return sum(len(tracked[i]) for i in range(len(tracked)) if sys.getrefcount(tracked[i]) <= 2)
