"""Inputs to the core. Every event carries ``now``: the core has no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.core.messages import ShardPush


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the driver sends one at (or after) ``Ready.wakeup_at``."""

    now: float


@dataclass(frozen=True, slots=True)
class PushArrived:
    """A peer's push reached this node. ``sender`` is the node id the transport vouches for."""

    now: float
    sender: int
    push: ShardPush


Event = Tick | PushArrived
