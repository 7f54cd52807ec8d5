"""Memory a transport holds objects in, as the transfer engine sees it (the shared-memory
transport's object segments, ``runtime.drivers.shm_objects``).

A transport that can place an object where its co-located receivers read it (one segment the
sender writes once, mapped read-only by each receiver) tells the engine through this protocol,
set as ``TransferConfig.memory``; the engine stays pure (it calls, the transport does the I/O).
Nothing else changes for the engine: blocks still move by the schedule, with credits, each
landed block is hashed and the digest checked over the bytes the receiver delivers; only the
bytes of a block that is already in the receiver's buffer do not travel again.
"""

from __future__ import annotations

from typing import Protocol

from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId

__all__ = ["ObjectMemory"]


class ObjectMemory(Protocol):
    """What the engine asks of a transport's object memory (every call on the node's loop)."""

    def sending(self, descriptor: ObjectDescriptor, data: memoryview) -> None:
        """This node starts sending ``data`` (before any block of it is sent): the transport
        may place it where the object's receivers can read it."""

    def receiving(self, descriptor: ObjectDescriptor) -> memoryview | None:
        """This node receives the object: a read-only view of ``descriptor.size`` bytes where
        its sender places it (every block lands there before it is announced to this node),
        or None for a buffer of the engine's own."""

    def done(self, oid: ObjectId) -> None:
        """The object left the engine (released or failed): what the transport holds for it
        may go (a receiver's view lives on with whoever still refers to it)."""

    def epoch_ended(self, vid: int) -> None:
        """Every object of view ``vid`` and earlier is over here (after their ``done``): what
        the transport keeps for them (offers never opened, answers for late frames) may go."""
