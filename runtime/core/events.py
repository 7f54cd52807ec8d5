"""Inputs to the core. Every event carries ``now``: the core has no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.core.messages import Message, ShardKey
from runtime.core.object_transfers import TransferInput


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the driver sends one at (or after) ``Ready.wakeup_at``."""

    now: float


@dataclass(frozen=True, slots=True)
class MessageArrived:
    """A peer's message reached this node. ``sender`` is the node id the transport vouches
    for (the id the connection was opened with), never a field of the message itself."""

    now: float
    sender: int
    message: Message


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """The application asks this node to leave the group gracefully."""

    now: float


@dataclass(frozen=True, slots=True)
class PeerLost:
    """The transport lost its connection to ``node`` (EOF, reset): for a view member that is
    as good as a missed heartbeat deadline, and much faster."""

    now: float
    node: int


@dataclass(frozen=True, slots=True)
class Persisted:
    """The application's log for ``shard`` now holds every version up to ``version`` on disk
    (persistent delivery mode). Feeds the shard's ``persisted`` SST column."""

    now: float
    shard: ShardKey
    version: int


@dataclass(frozen=True, slots=True)
class TransferArrived:
    """A peer's block or credit of a large object reached this node. Its ``sender`` is the
    node id the transport vouches for (the connection's proven identity), never a frame field."""

    now: float
    transfer: TransferInput


Event = Tick | MessageArrived | LeaveRequested | PeerLost | Persisted | TransferArrived
