"""Outputs of the core: what the driver must do. Collected in a :class:`Ready`."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.core.messages import Payload, ShardKey, ShardPush

DeliveredMessage = tuple[int, int, int, bytes]
"""``(global_index, sender_node, sender_index, payload)``; null messages are never delivered."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Send ``push`` to each node in ``to`` (one frame per destination, in order)."""

    to: tuple[int, ...]
    push: ShardPush


@dataclass(frozen=True, slots=True)
class Delivery:
    """Messages of one shard that are now delivered, in global order.

    ``frontier`` is the shard's delivered count after this batch (the global index of the
    next message to deliver); nulls between the items are consumed but not listed.
    """

    shard: ShardKey
    frontier: int
    messages: list[DeliveredMessage]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input the core refused (malformed, from a stranger, out of sequence). Log it; the
    core's state is unchanged by it."""

    sender: int
    reason: str


@dataclass(slots=True)
class Ready:
    """Everything the driver must act on since the last call to ``NodeCore.ready()``.

    Order of duty: send ``outgoing``, hand ``deliveries`` to the application in list order,
    retry sends on the shards in ``window_open``, log ``rejected``, and feed a ``Tick`` no
    later than ``wakeup_at`` (``None``: no timer needed).
    """

    outgoing: list[Outgoing] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    window_open: list[ShardKey] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    wakeup_at: float | None = None

    def empty(self) -> bool:
        return not (self.outgoing or self.deliveries or self.window_open or self.rejected)


__all__ = ["DeliveredMessage", "Delivery", "Outgoing", "Payload", "Ready", "Rejected"]
