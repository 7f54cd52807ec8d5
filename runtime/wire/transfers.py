"""Frames of large-object transfers: blocks and credits, outside msgpack.

A block is most of a megabyte of payload; msgpack would copy it on encode and on decode. So a
transfer frame is the usual 4-byte length prefix, then a body that no msgpack value can start
with (``0xC1`` is the one byte msgpack never uses), a kind byte and a fixed header; a block's
bytes follow the header raw. The sender writes ``[prefix + header, block view]`` (no join),
and the receiver's decoder (:class:`runtime.wire.codec.FrameDecoder` with a sink) reads the
bytes of a block straight into the place the transfer engine gives it in the object's buffer.

Nothing here says who sent a frame: the connection's proven identity does (the driver stamps
it on what it hands the core), and the engine checks it against the schedule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Final

from runtime.core.rdmc_descriptor import ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.errors import WireError

__all__ = [
    "BLOCK_HEADER_SIZE",
    "BlockDropped",
    "BlockLanded",
    "BlockSink",
    "CreditFrame",
    "TRANSFER_MAGIC",
    "block_frame_head",
    "credit_frame",
    "parse_block_header",
    "parse_credit",
]

TRANSFER_MAGIC: Final = 0xC1
"""First body byte of a transfer frame: never the first byte of a msgpack value."""
KIND_BLOCK: Final = 1
KIND_CREDIT: Final = 2

_PREFIX = struct.Struct(">I")
_OID = struct.Struct(">BBQQQQ")  # magic, kind, sender, seq, vid, stream
_BLOCK = struct.Struct(">BBQQQQI")  # ... block index
_CREDIT = struct.Struct(">BBQQQQQ")  # ... upto
BLOCK_HEADER_SIZE: Final = _BLOCK.size
"""Body bytes of a block frame before the block's own bytes."""


@dataclass(frozen=True, slots=True)
class BlockLanded:
    """A block's bytes are in the place the sink gave for them (step ``BlockWritten``)."""

    oid: ObjectId
    block: int


@dataclass(frozen=True, slots=True)
class BlockDropped:
    """A block frame whose bytes were read and discarded: the sink refused it."""

    oid: ObjectId
    block: int
    reason: Refusal


@dataclass(frozen=True, slots=True)
class CreditFrame:
    """The sender lets this node have sent it up to ``upto`` blocks of the object."""

    oid: ObjectId
    upto: int


BlockSink = Callable[[ObjectId, int, int], "memoryview | Refusal"]
"""``(object, block, length)`` -> where the block's bytes go, or why they may not be taken."""


def block_frame_head(oid: ObjectId, block: int, length: int) -> bytes:
    """Length prefix and header of a block frame; the block's ``length`` bytes follow."""
    return _PREFIX.pack(BLOCK_HEADER_SIZE + length) + _BLOCK.pack(
        TRANSFER_MAGIC, KIND_BLOCK, oid.sender, oid.seq, oid.vid, oid.stream, block
    )


def credit_frame(oid: ObjectId, upto: int) -> bytes:
    """A whole credit frame (length prefix included)."""
    return _PREFIX.pack(_CREDIT.size) + _CREDIT.pack(
        TRANSFER_MAGIC, KIND_CREDIT, oid.sender, oid.seq, oid.vid, oid.stream, upto
    )


def is_block_head(buf: bytes | bytearray | memoryview, off: int) -> bool:
    """Whether the body starting at ``off`` is a block frame's (needs 2 bytes there)."""
    return buf[off] == TRANSFER_MAGIC and buf[off + 1] == KIND_BLOCK


def parse_block_header(buf: bytes | bytearray | memoryview, off: int) -> tuple[ObjectId, int]:
    """The object and block index of the block frame body at ``off``; WireError if bad (an
    ObjectId checks its own fields; unsigned fields cannot be negative)."""
    _, _, sender, seq, vid, stream, block = _BLOCK.unpack_from(buf, off)
    return ObjectId(sender, seq, vid, stream), block


def parse_credit(body: bytes | bytearray | memoryview) -> CreditFrame:
    """A credit frame's body (the prefix stripped), or WireError."""
    if len(body) != _CREDIT.size:
        raise WireError(f"credit frame body must be {_CREDIT.size} bytes, got {len(body)}")
    _, kind, sender, seq, vid, stream, upto = _CREDIT.unpack_from(body, 0)
    if kind != KIND_CREDIT:
        raise WireError(f"transfer frame kind {kind} is not a credit here")
    return CreditFrame(ObjectId(sender, seq, vid, stream), upto)


def transfer_kind(body: bytes | bytearray | memoryview) -> int:
    """The kind byte of a transfer frame body (whose first byte is ``TRANSFER_MAGIC``)."""
    if len(body) < 2:
        raise WireError("transfer frame body too short for its kind")
    return body[1]
