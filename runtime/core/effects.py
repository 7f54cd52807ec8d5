"""Outputs of the core: what the driver must do. Collected in a :class:`Ready`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from runtime.core.messages import Message, Payload, ShardKey
from runtime.core.object_transfers import TransferOutput
from runtime.core.rdmc_descriptor import OwnPayload
from runtime.core.view import View

DeliveredMessage = tuple[int, int, int, bytes | memoryview]
"""``(global_index, sender_node, sender_index, payload)``; null messages are never delivered.
A large object's payload at a receiver is a read-only ``memoryview`` of its receive buffer
(handed over without a copy), elsewhere ``bytes``."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Send ``message`` to each node in ``to`` (one frame per destination, in order)."""

    to: tuple[int, ...]
    message: Message


@dataclass(frozen=True, slots=True)
class ContactSend:
    """Send ``message`` to an address (a joiner reaching a contact whose node id it does not
    know yet)."""

    address: str
    message: Message


@dataclass(frozen=True, slots=True)
class Delivery:
    """Messages of one shard that are now delivered, in global order.

    ``frontier`` is the shard's delivered count after this batch (the global index of the
    next message to deliver); nulls between the items are consumed but not listed.
    """

    shard: ShardKey
    frontier: int
    messages: Sequence[DeliveredMessage]  # a list, or the SMC's DeliveredBatch (read-only, laid out on first read)
    vid: int = 0
    final: bool = False  # the view's last delivery, bounded by the agreed ragged trim


@dataclass(frozen=True, slots=True)
class Rejected:
    """Input the core refused (malformed, from a stranger, out of sequence). Log it; the
    core's state is unchanged by it. ``forged``: the frame claims to come from another member
    than the one the driver says sent it (its rank or row is another's): the driver should
    close that sender's connections, since an honest node never does this."""

    sender: int
    reason: str
    forged: bool = False


@dataclass(slots=True)
class Ready:
    """Everything the driver must act on since the last call to ``NodeCore.ready()``.

    Order of duty: send ``outgoing`` and ``contact_sends``; hand ``deliveries`` and ``views``
    to the application (a delivery list never mixes views out of order: every delivery of a
    view precedes that view's successor in ``views``); retry sends on the shards in
    ``window_open``; take back ``orphaned`` payloads (trimmed messages of a shard this node no
    longer belongs to); report ``persisted`` frontiers (shard, version on disk at every
    member) and ``delivered_everywhere`` frontiers; log ``rejected``; stop if ``excluded``; and feed a ``Tick`` no later
    than ``wakeup_at`` (``None``: no timer needed).

    ``accepted`` comes first, before anything else of the same Ready (as etcd-raft's
    ``HardState`` must be on stable storage before its ``Ready``'s messages go out): it is the
    view id of a proposal this node now accepts, higher than any it handed out before (None:
    no new one). The driver must make it durable (the highest such id, written and synced)
    before it sends any of ``outgoing``: one of them carries the acceptance, and a change
    commits once a majority accepted it, so a total restart from any majority of the old view
    learns of every change that may have been installed (``RestartReport.accepted_vid``) and
    plans its view above it. A node that crashes before the write simply never accepted.
    """

    outgoing: list[Outgoing] = field(default_factory=list)
    contact_sends: list[ContactSend] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    views: list[View] = field(default_factory=list)
    window_open: list[ShardKey] = field(default_factory=list)
    orphaned: list[tuple[ShardKey, list[OwnPayload]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    persisted: list[tuple[ShardKey, int]] = field(default_factory=list)
    # (shard, view id, n): every member of the shard has delivered the view's global indices
    # below n (trails ``deliveries`` by at most a lazy push).
    delivered_everywhere: list[tuple[ShardKey, int, int]] = field(default_factory=list)
    excluded: str | None = None
    wakeup_at: float | None = None
    accepted: int | None = None  # durable before ``outgoing`` is sent (see above)
    # Blocks and credits of large objects to send, in order (per peer, order matters: a
    # credit is cumulative, blocks go in schedule order per link).
    transfers: list[TransferOutput] = field(default_factory=list)
    # Seconds this node did not run (the longest such gap since the last Ready), when long
    # enough to matter: peers were given that time back instead of being suspected. Log it.
    stalled: float | None = None


__all__ = ["ContactSend", "DeliveredMessage", "Delivery", "Outgoing", "Payload", "Ready", "Rejected"]
