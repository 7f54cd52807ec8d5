"""How a node carries large objects in the ordered multicast: the tuning every member shares.

A payload above ``threshold`` bytes is not pushed through the shard's SST messages: its
descriptor takes its slot in the total order and its bytes move among the shard's members by
the block pipeline (:mod:`runtime.core.rdmc_transfer`). The rest of these settings bound one
object and the objects in flight, at a sender (back-pressure: its ``send`` takes no more) and
so at every receiver.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.core.rdmc_descriptor import TransferUsageError
from runtime.core.rdmc_schedule import ScheduleKind
from runtime.core.rdmc_transfer import TransferConfig

__all__ = ["ObjectPolicy"]


ACCEPTED_BLOCK = 1 << 20  # the smallest block size ``max_blocks`` is counted in (see there)


@dataclass(frozen=True, slots=True)
class ObjectPolicy:
    """``threshold``: payloads above it go as objects (at most the shard's
    ``max_message_size``). ``block_size``, ``kind``: how each object is cut and scheduled.
    ``max_object_size``: larger payloads are refused at the sender (``ObjectTooLarge``).
    ``max_objects``: objects in flight at one node in any role, shared among the node's shards
    (``shard_capacity``); each sender of a shard of ``n`` senders keeps at most
    ``max(1, max_objects // n)`` of its own objects undelivered (``quota``). ``max_bytes``: a node
    takes a slot for an object of its own only while all it holds in flight (and its own
    objects waiting for their turn) stay within it with that object (received objects are
    bounded by the count times ``max_object_size``). ``window``: blocks of one object in flight per link (credits).
    Every member of a group runs with the same policy: a node's admission relies on the other
    senders' quotas (see :mod:`runtime.core.object_transfers`)."""

    threshold: int = 1 << 20
    block_size: int = 4 << 20  # as runtime.config's rdmc.block_size (measured there)
    kind: ScheduleKind = ScheduleKind.BINOMIAL
    max_object_size: int = 4 << 30
    max_objects: int = 8
    max_bytes: int = 4 << 30
    window: int = 4

    def __post_init__(self) -> None:
        for name in ("threshold", "block_size", "max_object_size", "max_objects", "max_bytes", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TransferUsageError(f"ObjectPolicy.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.kind, ScheduleKind):
            raise TransferUsageError(f"ObjectPolicy.kind must be a ScheduleKind, got {self.kind!r}")
        if self.max_bytes < self.max_object_size:
            raise TransferUsageError(
                f"ObjectPolicy.max_bytes ({self.max_bytes}) must be at least max_object_size "
                f"({self.max_object_size}), or an object of the largest size could never start"
            )

    @property
    def max_blocks(self) -> int:
        """Blocks of the largest object: what a receiver accepts in a descriptor. Counted in
        blocks of at most ``ACCEPTED_BLOCK`` (1 MiB), whatever this node's own ``block_size``,
        so that a sender whose blocks are smaller (down to 1 MiB: another release's default,
        during a rolling upgrade) is not refused the largest objects."""
        return max(1, -(-self.max_object_size // min(self.block_size, ACCEPTED_BLOCK)))

    def quota(self, senders: int) -> int:
        """Objects one sender of a shard of ``senders`` senders may have undelivered."""
        return max(1, self.max_objects // max(1, senders))

    def shard_capacity(self, shards: int) -> int:
        """Objects of one shard a node in ``shards`` shards admits at once: its share of
        ``max_objects``, and at least one (or a shard could never move an object). Shards do
        not borrow each other's room: one shard's objects then never wait on another's, so no
        wait crosses shards (their orders are unrelated, a cycle through two could not be
        broken by either)."""
        return max(1, self.max_objects // max(1, shards))

    def admits_on_arrival(self, senders: int, shards: int) -> bool:
        """Whether a node in ``shards`` shards can admit each object of a shard of ``senders``
        senders as it arrives: the senders' quotas together fit its room for the shard, so no
        object of the shard ever waits for room there. Else it admits them in the shard's total
        order (see :class:`runtime.core.object_transfers.NodeObjects`)."""
        return senders * self.quota(senders) <= self.shard_capacity(shards)

    def transfer_config(self, shards: int = 1) -> TransferConfig:
        """The engine's limits for a node in ``shards`` shards: its guards, never reached when
        admission (:class:`runtime.core.object_transfers.NodeObjects`) keeps each shard within
        ``shard_capacity`` (bytes are checked before an own object's slot is taken, never
        after: see there)."""
        room = max(self.max_objects, shards)  # shard_capacity summed over the shards
        return TransferConfig(
            window=self.window,
            max_objects=room,
            max_bytes=max(self.max_bytes, room * self.max_object_size),
            max_object_size=self.max_object_size,
            max_blocks=self.max_blocks,
        )
