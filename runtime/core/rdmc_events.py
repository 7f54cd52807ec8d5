"""Inputs and outputs of the block transfer engine (:mod:`runtime.core.rdmc_transfer`).

The engine is sans-I/O like the rest of the core: the driver turns frames and view changes
into these events, feeds them to ``TransferEngine.step`` and carries out the effects it gets
back (in order). Whatever a peer can send (a block, a credit) never raises: a bad one comes
back as a refusal effect and changes nothing. Only the node's own mistakes raise.

``sender`` on a peer's input is the node id the transport vouches for (the identity its
connection proved), never a field of the frame: a block is checked against the node the
schedule names, so a peer cannot pass off a block as another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId

__all__ = [
    "BlockArrived",
    "BlockRefused",
    "BlockWritten",
    "CreditGranted",
    "CreditRefused",
    "Effect",
    "EpochEnded",
    "FailureReason",
    "GrantCredit",
    "MemberRemoved",
    "ObjectAnnounced",
    "ObjectComplete",
    "ObjectFailed",
    "ObjectReleased",
    "Refusal",
    "SendBlock",
    "StartSending",
    "TransferEvent",
]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartSending:
    """This node sends ``data`` as the object ``descriptor`` describes (built by ``describe``).

    The engine slices blocks straight out of ``data`` (no copy), so the caller must not change
    it until the object is released or failed."""

    descriptor: ObjectDescriptor
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class ObjectAnnounced:
    """This node learned an object it is to receive (its descriptor came through the ordered
    multicast, or with the sender's first control frame): allocate, then grant credits."""

    descriptor: ObjectDescriptor


@dataclass(frozen=True, slots=True)
class BlockArrived:
    """A block reached this node from ``sender`` in a frame of its own: the engine copies it
    into the object's buffer (the one copy a framed transport cannot avoid)."""

    oid: ObjectId
    sender: int
    block: int
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class BlockWritten:
    """The bytes of a block are already in place: the driver read them straight into the view
    ``TransferEngine.destination`` gave it for this block and sender (zero copy)."""

    oid: ObjectId
    sender: int
    block: int


@dataclass(frozen=True, slots=True)
class CreditGranted:
    """``sender`` lets this node have sent it up to ``upto`` blocks of the object in total.

    Credits are cumulative counts, not increments: a repeated or reordered grant is harmless,
    the highest one counts (the SST's rule: values only grow, a stale copy only delays)."""

    oid: ObjectId
    sender: int
    upto: int


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """``node`` left the view (failure or departure): every transfer it is a member of fails
    here; the view change decides what is delivered and what is resent."""

    node: int


@dataclass(frozen=True, slots=True)
class EpochEnded:
    """Views up to ``vid`` are over: their transfers still running fail, and blocks or credits
    of those epochs are refused from now on (a resent object is a new transfer)."""

    vid: int


TransferEvent = (
    StartSending | ObjectAnnounced | BlockArrived | BlockWritten | CreditGranted | MemberRemoved | EpochEnded
)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


class Refusal(Enum):
    """Why a block or a credit from a peer was refused (nothing of it was stored)."""

    UNKNOWN_OBJECT = "object not announced here yet"  # an honest peer waits for our credit first
    OBJECT_OVER = "object already released or failed here"
    EPOCH_ENDED = "epoch ended"  # the object's view is over
    OUT_OF_RANGE = "block index out of range"
    WRONG_SENDER = "the schedule does not name this sender"  # for that block to this node
    DUPLICATE = "block already held or being written"
    WRONG_SIZE = "block length differs from the descriptor's"
    NO_CREDIT = "more blocks than this node granted"
    NOT_RESERVED = "no destination was given for this block"  # BlockWritten without destination()
    NOT_A_RECEIVER = "the schedule sends this node's blocks elsewhere"  # credit from a non-receiver
    TOO_MUCH_CREDIT = "credit beyond the blocks the schedule sends there"
    TOO_MANY_EARLY = "too many credits for objects not announced here yet"
    IN_PLACE = "bytes of a block this node reads in place in the sender's segment"  # it said so first
    NOT_IN_PLACE = "a block said to be in place, of an object this node does not read in place"


class FailureReason(Enum):
    """Why an object failed at this node. It is never delivered from this transfer."""

    SENDER_LOST = "the sender left the view"
    MEMBER_LOST = "a member (relay or receiver) left the view"
    EPOCH_ENDED = "the view ended before the object was through"
    DIGEST_MISMATCH = "the received bytes do not match the descriptor's digest"


@dataclass(frozen=True, slots=True)
class SendBlock:
    """Send block ``block`` of the object to ``to``. ``data`` is a slice of the sender's
    object or of this node's receive buffer: the bytes are never copied by the engine."""

    oid: ObjectId
    to: int
    block: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class GrantCredit:
    """Tell ``to`` it may have sent this node up to ``upto`` blocks of the object in total."""

    oid: ObjectId
    to: int
    upto: int


@dataclass(frozen=True, slots=True)
class ObjectComplete:
    """Every block is here and the digest matches: ``data`` is the buffer allocated once for
    the object and filled in place. The object's delivery in the total order is the caller's
    business (it waits until every member holds every block); this node may still relay."""

    descriptor: ObjectDescriptor
    data: memoryview  # the buffer (writable, or read-only where the transport placed the object)


@dataclass(frozen=True, slots=True)
class ObjectReleased:
    """This node's part of the transfer is over (it holds the object and issued every send the
    schedule gives it): its slot under ``max_objects`` is free."""

    oid: ObjectId


@dataclass(frozen=True, slots=True)
class ObjectFailed:
    """The transfer ended here without completing this node's part. ``node`` is the member
    whose loss failed it (None for a digest mismatch or an ended epoch). ``complete_here``:
    this node held the whole, checked object already (``ObjectComplete`` was given; a sender
    always holds its object), so it may keep it for a resend in the next view."""

    oid: ObjectId
    reason: FailureReason
    node: int | None
    complete_here: bool


@dataclass(frozen=True, slots=True)
class BlockRefused:
    """A block from ``sender`` was refused and not stored. Log it; a WRONG_SENDER, NO_CREDIT or
    WRONG_SIZE block means the peer is broken or hostile (an honest one never sends it)."""

    oid: ObjectId
    sender: int
    block: int
    reason: Refusal


@dataclass(frozen=True, slots=True)
class CreditRefused:
    """A credit grant from ``sender`` was refused and not stored."""

    oid: ObjectId
    sender: int
    upto: int
    reason: Refusal


Effect = SendBlock | GrantCredit | ObjectComplete | ObjectReleased | ObjectFailed | BlockRefused | CreditRefused
