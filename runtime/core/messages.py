"""What cores say to each other. Drivers carry these; the wire module encodes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from runtime.core.sst import RowDelta

ShardKey = Hashable
"""Names a shard. The layout uses ``ShardId(type_name, subgroup, shard)``; any hashable works."""

Payload = bytes | None
"""A multicast body; ``None`` is a null message (it only advances the round-robin order)."""


@dataclass(frozen=True, slots=True)
class ShardPush:
    """One push of a shard member: its row delta and the messages it sent since its last push.

    ``first`` is the sender index of ``messages[0]``; a push from a member that is not a sender,
    or that sent nothing, has an empty ``messages`` list. ``row`` may be ``None`` when only
    messages are carried (a long batch split over several pushes).
    """

    shard: ShardKey
    rank: int
    row: RowDelta | None
    first: int
    messages: tuple[Payload, ...]
