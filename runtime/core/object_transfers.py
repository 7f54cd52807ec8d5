"""The node's transfer engine, tied to its shards: what the core does with block transfers.

The core owns one :class:`~runtime.core.rdmc_transfer.TransferEngine` per node (objects of
every shard and view share it). This module feeds it what the shards produce (objects to start,
descriptors to announce) and what the driver hands in (blocks, credits), and sorts what comes
out: sends for the driver, completions for the shards (which then count the object's slot as
received), refusals for the log, failures for the view change.

**Admission.** An object a node has not admitted stalls every member: its slot is stable only
once every member holds it. So room must never form a cycle, in which each node's room is held
by objects that wait for room at another node. Each shard gets its own room at a node
(``ObjectPolicy.shard_capacity``), so waits never cross shards, and within a shard:

- When the senders' quotas together fit the node's room for the shard (the default limits, one
  shard: 3 senders x 2 objects within 8), no object of the shard ever waits for room there:
  each is admitted as it arrives, and a sender takes a slot for its own only when there is
  room now (back-pressure before its slot is taken, as before).
- Otherwise (fewer ``max_objects`` than senders, each sender's quota being at least one
  object; or a node in several shards) objects are admitted **in the shard's total order**:
  the node admits the object in global slot ``g``, its own or another's, only once it holds
  every message before ``g`` (so it knows every object before it) and has admitted each of
  them. Every node then holds a prefix of the same sequence of objects, and the earliest object
  not finished everywhere cannot be kept out anywhere: a node that has not admitted it holds
  only objects before it in the order, all finished, so it has room. That object finishes and
  the argument moves on. Arrival order gives no such prefix: nodes that opened different
  pairs of three senders' objects with room for two each waited on each other for ever
  (simulator seed 161). The wait for the earlier messages costs nothing in throughput and
  little in latency: a receiver waits for them to deliver the object anyway, and the sender's
  first block waits for a receiver's credit, which comes no earlier.

Bytes are back-pressure on a node's own objects only, before their slots are taken: a sender
takes a slot for an object only while what its node holds in flight, with its own objects
waiting for their turn, stays within ``max_bytes`` together with it. Once its slot is taken an
object waits for count room alone: a start that waited on bytes there could wait on received
objects of another shard that wait on it. The engine's limits are guards admission never
reaches (``ObjectPolicy.transfer_config``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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

__all__ = [
    "HOSTILE",
    "Admission",
    "ShardStream",
    "STALE",
    "NodeObjects",
    "Sorted",
    "TransferInput",
    "TransferOutput",
    "as_received",
]

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
        Refusal.IN_PLACE,
        Refusal.NOT_IN_PLACE,
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


Admission = StartSending | ObjectDescriptor
"""An object to admit: one of this node's own to start, or another's to be announced."""

ShardStream = tuple[int, int]
"""A shard's objects at a node: (view id, the shard's stream in that view)."""


@dataclass(slots=True)
class _ShardRoom:
    """One shard's share of the node's engine: its room, what it holds, what waits."""

    capacity: int
    ordered: bool  # admitted in the shard's total order (see the module's "Admission")
    held: int = 0
    waiting: deque[Admission] = field(default_factory=deque)


class NodeObjects:
    """One node's block transfers: its engine and the admission of objects to it."""

    def __init__(self, node: int, policy: ObjectPolicy) -> None:
        self.node = node
        self.policy = policy
        self.engine = TransferEngine(node, policy.transfer_config())
        self._rooms: dict[ShardStream, _ShardRoom] = {}
        self._admitted: set[ObjectId] = set()
        self._queued_own = 0  # bytes of this node's objects waiting for their turn

    def open_view(self, vid: int, senders: Mapping[int, int]) -> dict[int, bool]:
        """The shards of view ``vid`` this node is in, by stream, with their senders: give
        each its room. Returns, by stream, whether the shard's objects are admitted in its
        total order (the shard then releases them to :meth:`admit` in that order)."""
        shards = len(senders)
        capacity = self.policy.shard_capacity(shards)
        ordered: dict[int, bool] = {}
        for stream, n in senders.items():
            ordered[stream] = not self.policy.admits_on_arrival(n, shards)
            self._rooms[vid, stream] = _ShardRoom(capacity, ordered[stream])
        guard = self.policy.transfer_config(shards)
        self.engine.config = replace(self.engine.config, max_objects=guard.max_objects, max_bytes=guard.max_bytes)
        return ordered

    def room(self, key: ShardStream, size: int) -> bool:
        """Whether this node may take a slot in shard ``key`` for an object of its own of
        ``size`` bytes now: what it holds and its own objects waiting, with this one, stay
        within ``max_bytes``; in a shard admitting on arrival, the shard has room now too
        (objects waiting for it come first)."""
        r = self._rooms.get(key)
        if r is None or self.engine.bytes_in_flight + self._queued_own + size > self.policy.max_bytes:
            return False
        return r.ordered or (not r.waiting and r.held < r.capacity)

    @property
    def waiting(self) -> int:
        return sum(len(r.waiting) for r in self._rooms.values())

    def admit(self, item: Admission, out: Sorted) -> None:
        """Start one of this node's objects or open another's (its shard releases them in
        the order they must be admitted): now, or once the shard has room."""
        oid = item.descriptor.oid if isinstance(item, StartSending) else item.oid
        r = self._rooms.get((oid.vid, oid.stream))
        if r is None:
            return  # a shard of a view this node has left: nothing of it moves any more
        if isinstance(item, StartSending):
            self._queued_own += item.descriptor.size
        r.waiting.append(item)
        self._drain(r, out)

    def _drain(self, r: _ShardRoom, out: Sorted) -> None:
        while r.waiting and r.held < r.capacity:
            item = r.waiting[0]
            start = isinstance(item, StartSending)
            try:
                effects = self.engine.step(item if isinstance(item, StartSending) else ObjectAnnounced(item))
            except TooManyObjects:
                return  # the engine's guard: admission keeps within it, so only a bug meets it
            r.waiting.popleft()
            r.held += 1
            d = item.descriptor if isinstance(item, StartSending) else item
            if start:
                self._queued_own -= d.size
            self._admitted.add(d.oid)
            self._sort(effects, out)

    def arrived(self, event: TransferInput, out: Sorted) -> None:
        self._sort(self.engine.step(event), out)

    def end_epoch(self, vid: int, out: Sorted) -> None:
        """Views up to ``vid`` are over: their transfers end, objects of them waiting for
        room are dropped."""
        for key in [key for key in self._rooms if key[0] <= vid]:
            r = self._rooms.pop(key)
            self._queued_own -= sum(i.descriptor.size for i in r.waiting if isinstance(i, StartSending))
        self._sort(self.engine.step(EpochEnded(vid)), out)

    def retry(self, out: Sorted) -> None:
        """Admit waiting objects while there is room."""
        for r in self._rooms.values():
            self._drain(r, out)

    def _left(self, oid: ObjectId) -> None:
        """``oid`` left the engine: its shard's room is free."""
        if oid not in self._admitted:
            return
        self._admitted.discard(oid)
        r = self._rooms.get((oid.vid, oid.stream))
        if r is not None:
            r.held -= 1

    def _sort(self, effects: list[Effect], out: Sorted) -> None:
        for e in effects:
            match e:
                case SendBlock() | GrantCredit():
                    out.sends.append(e)
                case ObjectComplete():
                    out.complete.append(e)
                case ObjectReleased(oid=oid):
                    self._left(oid)
                    out.freed = True
                case ObjectFailed(oid=oid, reason=reason):
                    self._left(oid)
                    out.freed = True
                    if reason is FailureReason.DIGEST_MISMATCH:
                        out.corrupt.append(e)
                case BlockRefused() | CreditRefused():
                    if e.reason not in STALE:
                        out.refused.append(e)

    def destination(self, oid: ObjectId, sender: int, block: int, length: int) -> memoryview | Refusal:
        """Where the driver may read a block straight from the transport (zero copy)."""
        return self.engine.destination(oid, sender, block, length)
