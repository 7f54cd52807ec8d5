"""The node's transfer engine, tied to its shards: what the core does with block transfers.

The core owns one :class:`~runtime.core.rdmc_transfer.TransferEngine` per node (objects of
every shard and view share its limits). This module feeds it what the shards produce (objects
to start, descriptors to announce) and what the driver hands in (blocks, credits), and sorts
what comes out: sends for the driver, completions for the shards (which then count the
object's slot as received), refusals for the log, failures for the view change.

Announcements that find the engine full wait here in arrival order (a sender's objects must
open in order), and are retried whenever an object leaves the engine. A correct group never
needs that: each sender keeps at most its share of ``max_objects`` undelivered.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runtime.core.object_policy import ObjectPolicy
from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, TooManyObjects
from runtime.core.rdmc_events import (
    BlockArrived,
    BlockRefused,
    BlockWritten,
    CreditGranted,
    CreditRefused,
    Effect,
    EpochEnded,
    FailureReason,
    GrantCredit,
    ObjectAnnounced,
    ObjectComplete,
    ObjectFailed,
    ObjectReleased,
    Refusal,
    SendBlock,
    StartSending,
)
from runtime.core.rdmc_transfer import TransferEngine

__all__ = ["HOSTILE", "STALE", "NodeObjects", "Sorted", "TransferInput", "TransferOutput", "as_received"]

TransferInput = BlockArrived | BlockWritten | CreditGranted
"""What a peer's block or credit frame becomes (``sender``: the node the transport vouches for)."""

TransferOutput = SendBlock | GrantCredit
"""What the driver must send to a peer."""


def as_received(out: TransferOutput, sender: int) -> BlockArrived | CreditGranted:
    """``out``, sent by ``sender``, as its receiver's engine takes it: what a network that
    carries effects as they are (the simulator, the core's tests) delivers. The block's bytes
    are copied, as a transport would, so the sender's buffer is not shared."""
    if isinstance(out, SendBlock):
        return BlockArrived(out.oid, sender, out.block, bytes(out.data))
    return CreditGranted(out.oid, sender, out.upto)


HOSTILE = frozenset(
    {
        Refusal.WRONG_SENDER,
        Refusal.WRONG_SIZE,
        Refusal.NO_CREDIT,
        Refusal.OUT_OF_RANGE,
        Refusal.NOT_A_RECEIVER,
        Refusal.TOO_MUCH_CREDIT,
    }
)
"""Refusals an honest peer never earns: its connections are closed (it is removed in the next
view, as for any frame that lies about its sender)."""

STALE = frozenset({Refusal.EPOCH_ENDED, Refusal.OBJECT_OVER})
"""Refusals an honest peer earns in a view change or after an object failed here: its block or
credit was on the way when the transfer ended. Dropped without a word (nothing was stored)."""


@dataclass(slots=True)
class Sorted:
    """The engine's effects of one input, sorted by who acts on them."""

    sends: list[TransferOutput] = field(default_factory=list)
    complete: list[ObjectComplete] = field(default_factory=list)
    refused: list[BlockRefused | CreditRefused] = field(default_factory=list)
    corrupt: list[ObjectFailed] = field(default_factory=list)  # digest mismatches
    freed: bool = False  # an object left the engine: room for more


class NodeObjects:
    """One node's block transfers: its engine and the announcements waiting for room in it."""

    def __init__(self, node: int, policy: ObjectPolicy) -> None:
        self.policy = policy
        self.engine = TransferEngine(node, policy.transfer_config())
        self._waiting: deque[ObjectDescriptor] = deque()

    def room(self, size: int) -> bool:
        """Whether this node can start an object of ``size`` bytes now (announcements waiting
        for room come first: a start would take the slot they wait for)."""
        cfg = self.engine.config
        engine = self.engine
        return (
            not self._waiting
            and len(engine.in_flight()) < cfg.max_objects
            and engine.bytes_in_flight + size <= cfg.max_bytes
        )

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self, start: StartSending, out: Sorted) -> None:
        """Start sending one of this node's objects (its shard checked ``room`` first)."""
        self._sort(self.engine.step(start), out)

    def announce(self, d: ObjectDescriptor, out: Sorted) -> None:
        """A descriptor arrived in a shard's order: open the object, or wait for room."""
        if self._waiting:
            self._waiting.append(d)
            return
        self._open(d, out)

    def _open(self, d: ObjectDescriptor, out: Sorted) -> bool:
        try:
            effects = self.engine.step(ObjectAnnounced(d))
        except TooManyObjects:
            self._waiting.appendleft(d)
            return False
        self._sort(effects, out)
        return True

    def arrived(self, event: TransferInput, out: Sorted) -> None:
        self._sort(self.engine.step(event), out)

    def end_epoch(self, vid: int, out: Sorted) -> None:
        """Views up to ``vid`` are over: their transfers end, waiting announcements of them
        are dropped."""
        self._waiting = deque(d for d in self._waiting if d.oid.vid > vid)
        self._sort(self.engine.step(EpochEnded(vid)), out)

    def retry(self, out: Sorted) -> None:
        """Open waiting announcements while there is room."""
        while self._waiting:
            d = self._waiting.popleft()
            if not self._open(d, out):
                return

    def _sort(self, effects: list[Effect], out: Sorted) -> None:
        for e in effects:
            match e:
                case SendBlock() | GrantCredit():
                    out.sends.append(e)
                case ObjectComplete():
                    out.complete.append(e)
                case ObjectReleased():
                    out.freed = True
                case ObjectFailed(reason=reason):
                    out.freed = True
                    if reason is FailureReason.DIGEST_MISMATCH:
                        out.corrupt.append(e)
                case BlockRefused() | CreditRefused():
                    if e.reason not in STALE:
                        out.refused.append(e)

    def destination(self, oid: ObjectId, sender: int, block: int, length: int) -> memoryview | Refusal:
        """Where the driver may read a block straight from the transport (zero copy)."""
        return self.engine.destination(oid, sender, block, length)
