"""One object at one node: which blocks it holds, what it owes whom, which credits it has.

The per-object state machine under :class:`runtime.core.rdmc_transfer.TransferEngine`, which
keeps the table of objects, the limits and the failure rules; this module only knows one
object and its plan. Each block is MISSING, then RESERVED (only when the driver reads it straight
into the buffer), then HELD; only HELD blocks are hashed, relayed or counted towards completion.
"""

from __future__ import annotations

import mmap
import sys
from collections import deque
from enum import Enum

from runtime.core.rdmc_descriptor import ObjectDescriptor, object_hasher
from runtime.core.rdmc_events import Effect, GrantCredit, Refusal, SendBlock
from runtime.core.rdmc_plan import NodePlan

__all__ = ["ObjectTransfer", "Outcome"]

_MISSING, _RESERVED, _HELD = 0, 1, 2  # per block, in a bytearray: one byte per block

# Linux's MADV_POPULATE_WRITE (5.14+; CPython's mmap module names it only from 3.12 on).
_POPULATE_WRITE: int | None = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform == "linux" else None)


def prefault(buffer: memoryview, offset: int, size: int) -> None:
    """Map the pages of ``buffer[offset:offset + size]`` before a block is written there, if
    the buffer is an anonymous mapping (``object_buffer``): one call that zero-fills the
    block's pages in the kernel instead of a page fault per 4 KiB as the copy touches them.
    Measured on the bench machine (100 MB in 1 MiB blocks, copy and sha256 of each (the digest then), median of
    7): 1.29 ms/MB of CPU against 1.41; a receiver of 100 MB objects over shared memory, 1.49
    against 1.64 ms/MB (bench/objects.py, A/B interleaved). Huge pages (MADV_HUGEPAGE) were
    tried too: bimodal here (1.0 or 4.3 ms/MB by run) and worse end to end, so not used.
    Without the advice (older kernels) nothing changes."""
    global _POPULATE_WRITE
    mm = buffer.obj
    if _POPULATE_WRITE is None or size <= 0 or not isinstance(mm, mmap.mmap):
        return
    start = offset - offset % mmap.PAGESIZE
    try:
        mm.madvise(_POPULATE_WRITE, start, offset + size - start)
    except (OSError, ValueError):  # the kernel does not know it: fault page by page, as before
        _POPULATE_WRITE = None


class Outcome(Enum):
    """What taking one block did to the object."""

    HELD = "held"  # more blocks to come
    COMPLETED = "completed"  # that was the last one and the digest matches
    CORRUPT = "corrupt"  # that was the last one and the digest differs: the object fails


class _Link:
    """What this node still owes one downstream node, and the credit it has from it."""

    __slots__ = ("pending", "credit", "sent", "total")

    def __init__(self, blocks: tuple[int, ...]) -> None:
        self.pending = deque(blocks)  # schedule order
        self.total = len(blocks)
        self.sent = 0
        self.credit = 0  # cumulative: the highest grant seen


class _Upstream:
    """What this node expects from one upstream node, and the credit it gave it."""

    __slots__ = ("expected", "got", "granted")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.got = 0  # blocks taken from it (written, or being written into a destination)
        self.granted = 0  # cumulative


class ObjectTransfer:
    """One object at this node, as sender (``buffer`` None: it reads the caller's data, every
    block held from the start) or as receiver (``buffer``: allocated once, filled in place)."""

    __slots__ = (
        "descriptor", "plan", "view", "buffer", "window", "state", "held", "hasher", "hashed", "complete", "links",
        "upstream", "mapped",
    )  # fmt: skip

    def __init__(
        self,
        descriptor: ObjectDescriptor,
        plan: NodePlan,
        view: memoryview,
        buffer: memoryview | None,
        window: int,
        mapped: bool = False,
    ) -> None:
        self.descriptor = descriptor
        self.plan = plan
        self.view = view
        self.buffer = buffer
        self.window = window
        blocks = descriptor.blocks
        self.state = bytearray([_HELD if buffer is None else _MISSING]) * blocks
        self.held = blocks if buffer is None else 0
        self.hasher = object_hasher()
        self.hashed = 0  # blocks hashed so far: a prefix, so hashing keeps pace with arrival
        self.complete = buffer is None  # holds every block, digest checked (a sender trusts itself)
        self.links = {q: _Link(bs) for q, bs in plan.sends.items()}
        self.upstream = {p: _Upstream(c) for p, c in plan.expected_counts().items()}
        self.mapped = mapped  # the buffer's pages are mapped already (a reused one): no pre-faulting

    @property
    def finished(self) -> bool:
        """This node's part is over: it holds the checked object and issued every send."""
        return self.complete and all(not link.pending for link in self.links.values())

    def holds(self, block: int) -> bool:
        return 0 <= block < len(self.state) and self.state[block] == _HELD

    def _span(self, block: int) -> memoryview:
        offset, size = self.descriptor.block_span(block)
        return self.view[offset : offset + size]

    # ----------------------------------------------------------------------------------------
    # Blocks in
    # ----------------------------------------------------------------------------------------

    def locate(self, sender: int, block: int) -> Refusal | None:
        """None if the schedule names ``sender`` for this block to this node, else why not."""
        if not 0 <= block < len(self.state):
            return Refusal.OUT_OF_RANGE
        if self.plan.expected_from[block] != sender:
            return Refusal.WRONG_SENDER
        return None

    def check(self, sender: int, block: int, length: int) -> Refusal | None:
        """None if a block of ``length`` bytes from ``sender`` may be taken now, else why not."""
        refusal = self.locate(sender, block)
        if refusal is not None:
            return refusal
        if self.state[block] != _MISSING:
            return Refusal.DUPLICATE
        if length != self.descriptor.block_span(block)[1]:
            return Refusal.WRONG_SIZE
        up = self.upstream[sender]
        return Refusal.NO_CREDIT if up.got >= up.granted else None

    def reserve(self, sender: int, block: int) -> memoryview:
        """Mark a checked block as being written in place; the view to write it into."""
        self.state[block] = _RESERVED
        self.upstream[sender].got += 1
        offset, size = self.descriptor.block_span(block)
        if self.buffer is not None and not self.mapped:
            prefault(self.buffer, offset, size)
        return self.view[offset : offset + size]

    def write(self, sender: int, block: int, data: memoryview) -> None:
        """Copy a checked block into the buffer (the one copy a framed transport needs)."""
        self.reserve(sender, block)[:] = data

    def written_refusal(self, sender: int, block: int) -> Refusal | None:
        """None if the block was reserved (its bytes are now in place), else why it is refused."""
        refusal = self.locate(sender, block)
        if refusal is None and self.state[block] != _RESERVED:
            refusal = Refusal.DUPLICATE if self.state[block] == _HELD else Refusal.NOT_RESERVED
        return refusal

    def accept(self, sender: int, block: int, out: list[Effect]) -> Outcome:
        """The block's bytes are in the buffer: hold it, credit it back, hash what is now a
        prefix, relay what is due (nothing is relayed from a corrupt object)."""
        self.state[block] = _HELD
        self.held += 1
        self.top_up(sender, out)
        state, blocks = self.state, len(self.state)
        while self.hashed < blocks and state[self.hashed] == _HELD:
            self.hasher.update(self._span(self.hashed))
            self.hashed += 1
        outcome = Outcome.HELD
        if self.held == blocks:
            if self.hasher.digest() != self.descriptor.digest:
                return Outcome.CORRUPT
            self.complete = True
            outcome = Outcome.COMPLETED
        self.pump(out)
        return outcome

    def top_up(self, p: int, out: list[Effect]) -> None:
        """Grant ``p`` credit up to ``window`` blocks past what it sent here, once half of the
        window is used (or the rest of what it will send fits): fewer credit messages, and a
        link never waits for credit while a grant is in flight, unless the window is 1."""
        up = self.upstream[p]
        target = min(up.expected, up.got + self.window)
        if target > up.granted and (target - up.granted >= max(1, self.window // 2) or target == up.expected):
            up.granted = target
            out.append(GrantCredit(self.descriptor.oid, p, target))

    def grant_initial(self, out: list[Effect]) -> None:
        """A receiver's first credits: one window to every node that sends it blocks."""
        for p in self.upstream:
            self.top_up(p, out)

    # ----------------------------------------------------------------------------------------
    # Blocks out
    # ----------------------------------------------------------------------------------------

    def take_credit(self, receiver: int, upto: int) -> Refusal | None:
        """Record a grant from ``receiver`` (the highest counts), or say why it is refused."""
        link = self.links.get(receiver)
        if link is None:
            return Refusal.NOT_A_RECEIVER
        if upto > link.total:
            return Refusal.TOO_MUCH_CREDIT
        link.credit = max(link.credit, upto)
        return None

    def pump(self, out: list[Effect]) -> None:
        """Issue every send that is held and credited, in schedule order per link."""
        oid, state = self.descriptor.oid, self.state
        for q, link in self.links.items():
            pending = link.pending
            while pending and link.sent < link.credit and state[pending[0]] == _HELD:
                block = pending.popleft()
                link.sent += 1
                out.append(SendBlock(oid, q, block, self._span(block)))
