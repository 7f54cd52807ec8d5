"""The block transfer engine: one node's part in moving large objects among a shard's members.

Sans-I/O, like the rest of the core: the driver feeds :mod:`runtime.core.rdmc_events` events
to :meth:`TransferEngine.step` and carries out the effects it returns, in order. The same
engine runs under TCP frames now, under shared memory or RDMA later, and in the simulator.

Per object and node, the life is short: the sender starts with its bytes (every block held);
a receiver is announced the descriptor, allocates one buffer of the object's size and grants
credits to the nodes the schedule says will send it blocks; each accepted block is written in
place, hashed, credited back, and relayed to whoever the schedule says gets it from this node;
once every block is held the digest is checked (``ObjectComplete``, or ``ObjectFailed`` on a
mismatch), and once every send of this node is issued too the object is released.

**Order of sends: as soon as held and credited, in schedule order per link.** Each node knows
from the schedule, per downstream node ``q``, the blocks it owes ``q`` in step order; block
``i`` on that list goes out when this node holds it and ``q`` has granted at least ``i + 1``
blocks, and never before block ``i - 1`` to ``q``. There is no step barrier: a global barrier
would cost a round of messages per step and pace every link by the slowest one, and RDMC does
not keep one either (each node walks its own schedule). Order is kept per link, as in Derecho's
binomial pipeline, because that keeps the pipeline's shape (a relay receives first the blocks
it must pass on first, so the receive window holds what is needed next) and makes each link's
credit a plain count; order across a node's links is not kept, since a slow receiver would then
stall the others for nothing. This cannot deadlock: the schedule is valid step by step, so
every condition a send waits on (its block arriving, an earlier send on its link, a credit,
which a receiver grants on receipt alone) is a transfer of an earlier step: the waits form no
cycle and the earliest unsent transfer can always go.

**Flow control.** A receiver grants each upstream node cumulative credits, ``window`` blocks
ahead of what it received from it (topped up once half the window is used, and never past the
blocks the schedule sends on that link), so at most ``window`` blocks of an object are in
flight per link; a block beyond the credit is refused. Credits that arrive before this node
knows the object (its downstream learned the descriptor first) are kept, at most
``max_objects`` objects' worth per granting node, until the object is announced here. A
sender's objects of one epoch and stream are opened in ``seq`` order at every node (the ordered multicast
delivers a sender's descriptors in order), so a credit for a lower ``seq`` that is not in flight
is a stale copy for an object already over here, dropped without storing it.

**Memory.** A node holds at most ``max_objects`` objects in flight in any role, starts its own
only while the sizes of all it holds stay within ``max_bytes``, and refuses more with
:class:`TooManyObjects` before allocating anything. Received objects are not held to
``max_bytes``: a receiver waiting for byte room could wait on a sender that waits for it
(each sender's object fits its own node, all of them do not: a cycle); it holds at most
``max_objects`` of at most ``max_object_size`` each.
At a sender that is back-pressure (start later). At a receiver it is a guard: an object it
refuses stalls (its upstream never gets credit) until the view change, so the integration keeps
the objects a shard has in flight within every member's limit, as the SMC window bounds
messages, and a correct run never meets it there. A receiver's buffer is its only copy of the
object: blocks are written into it (or read straight into it via
:meth:`TransferEngine.destination`), relayed as slices of it and delivered as it. Once nothing
refers to it any more, the next object of its size is written into it (its pages are mapped
already; :mod:`runtime.core.rdmc_buffers`), with at most ``keep_idle_bytes`` kept idle.

**Failures.** A block is refused (``BlockRefused``, nothing stored) when its object is unknown,
over or of an ended epoch, its index is out of range, the schedule does not name its sender for
that block at this node, it is held or being written already, its length differs, or it
exceeds the credit. A digest mismatch fails the object here and nothing more of it is relayed
(nodes waiting on this one stall until the view change, which the driver asks for on seeing the
failure). A member removed mid-object (``MemberRemoved``) or the end of the epoch
(``EpochEnded``) fails it at every survivor where it is still in flight, complete there or not
(a survivor that released it already holds it whole): the engine never decides delivery. The
view change does, as for any message of the old view: the descriptor's place in the order is
delivered everywhere or trimmed and resent as a new transfer in the next view, and a node whose
copy is complete (``ObjectFailed.complete_here``) may keep it for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from runtime.core.rdmc_buffers import LAZY_BUFFER_BYTES, BufferPool, object_buffer
from runtime.core.rdmc_descriptor import (
    ObjectDescriptor,
    ObjectId,
    ObjectTooLarge,
    TooManyObjects,
    TransferUsageError,
    byte_view,
)
from runtime.core.rdmc_events import (
    BlockArrived,
    BlockRefused,
    BlockWritten,
    CreditGranted,
    CreditRefused,
    Effect,
    EpochEnded,
    FailureReason,
    MemberRemoved,
    ObjectAnnounced,
    ObjectComplete,
    ObjectFailed,
    ObjectReleased,
    Refusal,
    StartSending,
    TransferEvent,
)
from runtime.core.rdmc_memory import ObjectMemory
from runtime.core.rdmc_object import ObjectTransfer, Outcome
from runtime.core.rdmc_plan import node_plan

__all__ = ["LAZY_BUFFER_BYTES", "TransferConfig", "TransferEngine", "object_buffer"]


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Limits of one node's engine. ``window``: blocks of one object in flight per link;
    ``max_objects``: objects in flight at this node in any role; ``max_bytes``: their sizes
    together, checked when this node starts one of its own (received objects are bounded by
    the count, see the module's "Memory"); ``max_object_size`` and ``max_blocks`` bound one
    object."""

    window: int = 4
    max_objects: int = 8
    max_bytes: int = 8 << 30
    max_object_size: int = 16 << 30
    max_blocks: int = 1 << 20
    # A receiver's buffer of ``size`` bytes (writable, flat). None: the engine's own pool of
    # anonymous mappings, reused once idle (``runtime.core.rdmc_buffers``), at most
    # ``keep_idle_bytes`` of them kept idle; a transport with memory of its own (shared
    # mappings, registered RDMA regions) passes its own.
    allocate: Callable[[int], memoryview] | None = field(default=None, compare=False)
    keep_idle_bytes: int = 128 << 20
    # Where a transport places objects for co-located receivers (``rdmc_memory``): None, or a
    # receiver's object it has no place for, and the buffer is the engine's own.
    memory: ObjectMemory | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("window", "max_objects", "max_bytes", "max_object_size", "max_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TransferUsageError(f"TransferConfig.{name} must be an int >= 1, got {value!r}")
        keep = self.keep_idle_bytes
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise TransferUsageError(f"TransferConfig.keep_idle_bytes must be an int >= 0, got {keep!r}")


class TransferEngine:
    """One node's block transfers: every object it sends, relays or receives."""

    def __init__(self, node: int, config: TransferConfig | None = None) -> None:
        self.node = node
        self.config = config or TransferConfig()
        self.buffers = BufferPool(self.config.keep_idle_bytes)
        self._objects: dict[ObjectId, ObjectTransfer] = {}
        self._early: dict[int, dict[ObjectId, int]] = {}  # granting node -> object -> upto
        self._ended = -1  # epochs up to this one are over
        # (sender, epoch, stream) -> the highest seq of that sender's objects of the stream opened
        # here: they are opened in seq order, so a lower or equal seq not in the table is over.
        self._opened: dict[tuple[int, int, int], int] = {}
        self._bytes = 0

    # ----------------------------------------------------------------------------------------
    # Queries
    # ----------------------------------------------------------------------------------------

    def in_flight(self) -> tuple[ObjectId, ...]:
        """Objects this node holds a part in now, oldest first."""
        return tuple(self._objects)

    @property
    def bytes_in_flight(self) -> int:
        """The sizes of the objects in flight here, together (bounded by ``max_bytes``)."""
        return self._bytes

    def early_credits(self) -> int:
        """Credits kept for objects not announced here yet (bounded per granting node)."""
        return sum(len(credits) for credits in self._early.values())

    def holds(self, oid: ObjectId, block: int) -> bool:
        """Whether this node holds the block now (only held blocks are ever sent on)."""
        t = self._objects.get(oid)
        return t is not None and t.holds(block)

    def destination(self, oid: ObjectId, sender: int, block: int, length: int) -> memoryview | Refusal:
        """Where the driver may read a block straight from the transport (zero copy).

        Checks the block as :class:`BlockArrived` would, then reserves it: the driver reads
        ``length`` bytes into the returned view and reports :class:`BlockWritten`. A second
        request for the same block is refused (DUPLICATE), so a repeated frame never lands in
        the buffer. A reserved block that is never written keeps the object from completing
        until the view change ends it (its sender's connection broke, so it is being removed).
        """
        t, refusal = self._find(oid)
        if t is None:
            return refusal
        why = t.check(sender, block, length)
        return why if why is not None else t.reserve(sender, block)

    # ----------------------------------------------------------------------------------------
    # Events
    # ----------------------------------------------------------------------------------------

    def step(self, event: TransferEvent) -> list[Effect]:
        """Take one event; return what the driver must do, in order.

        Peer input (blocks, credits) never raises: refusals are effects, and change nothing.
        The node's own calls (start, announce) raise :class:`TransferUsageError`,
        :class:`TooManyObjects` or :class:`ObjectTooLarge` and change nothing when they do.
        """
        out: list[Effect] = []
        match event:
            case BlockArrived(oid, sender, block, data):
                self._block_arrived(oid, sender, block, data, out)
            case BlockWritten(oid, sender, block):
                self._block_written(oid, sender, block, out)
            case CreditGranted(oid, sender, upto):
                self._credit(oid, sender, upto, out)
            case StartSending(descriptor, data):
                self._start(descriptor, data, out)
            case ObjectAnnounced(descriptor):
                t = self._open(descriptor, None)
                t.grant_initial(out)
                self._apply_early(t, out)
            case MemberRemoved(node):
                self._early.pop(node, None)
                for t in [t for t in self._objects.values() if node in t.descriptor.members]:
                    lost = FailureReason.SENDER_LOST if node == t.descriptor.oid.sender else FailureReason.MEMBER_LOST
                    self._fail(t, lost, node, out)
            case EpochEnded(vid):
                self._ended = max(self._ended, vid)
                self._opened = {key: seq for key, seq in self._opened.items() if key[1] > vid}
                self._early = {
                    p: kept
                    for p, credits in self._early.items()
                    if (kept := {o: u for o, u in credits.items() if o.vid > vid})
                }
                for t in [t for t in self._objects.values() if t.descriptor.oid.vid <= vid]:
                    self._fail(t, FailureReason.EPOCH_ENDED, None, out)
                if self.config.memory is not None:
                    self.config.memory.epoch_ended(vid)
            case _:
                raise TransferUsageError(f"not a transfer event: {event!r}")
        return out

    def _open(self, descriptor: ObjectDescriptor, data: memoryview | None) -> ObjectTransfer:
        """Admit the node's own start (``data``) or announce (None), or raise and change nothing."""
        oid = descriptor.oid
        if oid.vid <= self._ended:
            raise TransferUsageError(f"object {oid} belongs to an ended epoch (<= {self._ended})")
        if oid.seq <= self._opened.get((oid.sender, oid.vid, oid.stream), -1):
            raise TransferUsageError(
                f"object {oid} opened out of order: seq {self._opened[oid.sender, oid.vid, oid.stream]} of its "
                "sender, epoch and stream was opened here already (a sender's objects are opened in seq order, as the ordered "
                "multicast delivers its descriptors)"
            )
        rank = descriptor.rank_of(self.node)
        if rank is None:
            raise TransferUsageError(f"node {self.node} is not a member of object {oid}: {descriptor.members}")
        if (data is not None) != (rank == 0):
            role = "start sending" if data is not None else "be announced"
            raise TransferUsageError(f"node {self.node} cannot {role} object {oid}: its rank is {rank}")
        if data is not None and data.nbytes != descriptor.size:
            raise TransferUsageError(
                f"object {oid}: data has {data.nbytes} bytes, the descriptor says {descriptor.size}"
            )
        cfg = self.config
        if descriptor.size > cfg.max_object_size or descriptor.blocks > cfg.max_blocks:
            raise ObjectTooLarge(
                f"object {oid}: {descriptor.size} bytes in {descriptor.blocks} blocks exceeds "
                f"max_object_size={cfg.max_object_size} or max_blocks={cfg.max_blocks}"
            )
        # Bytes bound what this node starts, not what it receives: a receiver that waited for
        # byte room could wait on an object whose own sender waits for this node's (three
        # senders' objects that fit each its own node but not all three at once: a cycle, no
        # delivery). A receiver's bytes stay bounded by the count (the senders' quotas keep it
        # under max_objects) times max_object_size, and each sender's by its own max_bytes.
        over_bytes = data is not None and self._bytes + descriptor.size > cfg.max_bytes
        if len(self._objects) >= cfg.max_objects or over_bytes:
            raise TooManyObjects(
                f"node {self.node} holds {len(self._objects)} objects ({self._bytes} bytes) in flight; "
                f"object {oid} of {descriptor.size} bytes would exceed max_objects={cfg.max_objects} "
                f"or max_bytes={cfg.max_bytes}"
            )
        plan = node_plan(descriptor, rank)
        if data is not None:
            t = ObjectTransfer(descriptor, plan, data, None, cfg.window)
        else:
            # The object's one allocation at this node (a reused mapping's pages are mapped
            # already), unless the transport places it (read-only: its blocks land there).
            placed = cfg.memory.receiving(descriptor) if cfg.memory is not None else None
            if placed is not None:
                buffer, mapped = placed, True
            elif cfg.allocate is None:
                buffer, mapped = self.buffers.take(descriptor.size)
            else:
                buffer, mapped = cfg.allocate(descriptor.size), False
            t = ObjectTransfer(descriptor, plan, buffer, buffer, cfg.window, mapped)
        self._objects[oid] = t
        self._opened[oid.sender, oid.vid, oid.stream] = oid.seq
        self._bytes += descriptor.size
        return t

    def _start(self, descriptor: ObjectDescriptor, data: bytes | bytearray | memoryview, out: list[Effect]) -> None:
        t = self._open(descriptor, byte_view(data))
        if self.config.memory is not None:  # before any block of it goes out
            self.config.memory.sending(descriptor, t.view)
        self._apply_early(t, out)
        t.pump(out)
        self._release_if_finished(t, out)

    def _find(self, oid: ObjectId) -> tuple[ObjectTransfer | None, Refusal]:
        """The object in flight here, and why a peer's input for it is refused if it is not."""
        if oid.vid <= self._ended:
            why = Refusal.EPOCH_ENDED
        elif oid.seq <= self._opened.get((oid.sender, oid.vid, oid.stream), -1):
            why = Refusal.OBJECT_OVER
        else:
            why = Refusal.UNKNOWN_OBJECT
        return self._objects.get(oid), why

    def _block_arrived(
        self, oid: ObjectId, sender: int, block: int, data: bytes | bytearray | memoryview, out: list[Effect]
    ) -> None:
        view = byte_view(data)  # the driver's frame buffer (a non-contiguous one is its bug)
        t, refusal = self._find(oid)
        found = refusal if t is None else t.check(sender, block, view.nbytes)
        if t is None or found is not None:
            out.append(BlockRefused(oid, sender, block, found or refusal))
            return
        t.write(sender, block, view)
        self._accepted(t, sender, block, out)

    def _block_written(self, oid: ObjectId, sender: int, block: int, out: list[Effect]) -> None:
        t, refusal = self._find(oid)
        found = refusal if t is None else t.written_refusal(sender, block)
        if t is None or found is not None:
            out.append(BlockRefused(oid, sender, block, found or refusal))
            return
        self._accepted(t, sender, block, out)

    def _accepted(self, t: ObjectTransfer, sender: int, block: int, out: list[Effect]) -> None:
        outcome = t.accept(sender, block, out)
        if outcome is Outcome.CORRUPT:
            self._fail(t, FailureReason.DIGEST_MISMATCH, None, out)
            return
        if outcome is Outcome.COMPLETED and t.buffer is not None:  # only receivers accept blocks
            out.append(ObjectComplete(t.descriptor, t.buffer))
        self._release_if_finished(t, out)

    def _credit(self, oid: ObjectId, sender: int, upto: int, out: list[Effect]) -> None:
        t, refusal = self._find(oid)
        if t is None:
            # A downstream node may learn the descriptor before this one: keep its credit, a
            # bounded number of objects per granting node, until the object is opened here.
            # A credit for an object over here is a stale copy (a reordering transport): harmless.
            early = self._early.get(sender, {})
            if refusal is Refusal.OBJECT_OVER:
                pass
            elif refusal is Refusal.UNKNOWN_OBJECT and (oid in early or len(early) < self.config.max_objects):
                self._early.setdefault(sender, early)[oid] = max(early.get(oid, 0), upto)
            else:
                why = refusal if refusal is Refusal.EPOCH_ENDED else Refusal.TOO_MANY_EARLY
                out.append(CreditRefused(oid, sender, upto, why))
            return
        taken = t.take_credit(sender, upto)
        if taken is not None:
            out.append(CreditRefused(oid, sender, upto, taken))
            return
        t.pump(out)
        self._release_if_finished(t, out)

    def _apply_early(self, t: ObjectTransfer, out: list[Effect]) -> None:
        """Credits that came before the object was opened here: take them now."""
        oid = t.descriptor.oid
        for sender in [p for p, credits in self._early.items() if oid in credits]:
            credits = self._early[sender]
            upto = credits.pop(oid)
            if not credits:
                del self._early[sender]
            taken = t.take_credit(sender, upto)
            if taken is not None:
                out.append(CreditRefused(oid, sender, upto, taken))

    def _release_if_finished(self, t: ObjectTransfer, out: list[Effect]) -> None:
        if t.finished:
            self._forget(t)
            out.append(ObjectReleased(t.descriptor.oid))

    def _fail(self, t: ObjectTransfer, reason: FailureReason, node: int | None, out: list[Effect]) -> None:
        self._forget(t)
        out.append(ObjectFailed(t.descriptor.oid, reason, node, t.complete))

    def _forget(self, t: ObjectTransfer) -> None:
        del self._objects[t.descriptor.oid]
        self._bytes -= t.descriptor.size
        if self.config.memory is not None:
            self.config.memory.done(t.descriptor.oid)
