"""What cores say to each other. Drivers carry these; the wire module encodes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.core.layout import ShardId
from runtime.core.rdmc_descriptor import ObjectDescriptor
from runtime.core.sst import RowDelta

ShardKey = ShardId
"""Names a shard: ``ShardId(type_name, subgroup, shard)`` as the layout gives it."""

Payload = bytes | memoryview | ObjectDescriptor | None
"""A multicast message slot: a body; ``None``, a null message (it only advances the round-robin
order); or the descriptor of a large object whose bytes move by the block pipeline (its slot is
delivered as the object's bytes, once every member holds them: at a receiver, its receive
buffer, as a read-only ``memoryview``, not copied to ``bytes``)."""


@dataclass(frozen=True, slots=True)
class ShardPush:
    """One push of a shard member: its row delta and the messages it sent since its last push.

    ``first`` is the sender index of ``messages[0]``; a push from a member that is not a sender,
    or that sent nothing, has an empty ``messages`` list. ``row`` may be ``None`` when only
    messages are carried (a long batch split over several pushes). ``vid`` is the view the
    push belongs to: sender indices and global indices restart with every view.
    """

    vid: int
    shard: ShardKey
    rank: int
    row: RowDelta | None
    first: int
    messages: tuple[Payload, ...]


@dataclass(frozen=True, slots=True)
class GroupPush:
    """A member's row of the view's group SST (heartbeats, suspicions, view change)."""

    vid: int
    rank: int
    row: RowDelta


@dataclass(frozen=True, slots=True)
class ViewAnnouncement:
    """Sent to joiners: the view that admits them (wire form of ``View``)."""

    view: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A node asks to join; ``address`` is where members can reach it; ``layout`` is its
    layout policy as ``LayoutPolicy.describe`` writes it (empty: not stated), which must be
    the group's: members computing different layouts would disagree on every shard."""

    node_id: int
    address: str
    layout: str = ""
    # Per shard, the last version of this node's log of it, from an earlier run in its data
    # folder (transfers that had not landed left out): a shard waiting on its lost holders
    # takes its state from one of them that comes back (see ``ShardOrphan``).
    logs: tuple[tuple[ShardId, int], ...] = ()
    # The operator started this node with ``--accept-loss``: shards that wait on lost holders
    # start anew instead.
    accept_loss: bool = False


@dataclass(frozen=True, slots=True)
class JoinReply:
    """Answer to a JoinRequest that is not a view: try the leader, or wait and retry; with
    ``final``, give up (the joiner can never be admitted as it is configured)."""

    redirect_to: str | None
    reason: str
    final: bool = False


Message = ShardPush | GroupPush | ViewAnnouncement | JoinRequest | JoinReply
