"""Streamed calls: how a client's call too large for one frame travels to its contact.

A call whose encoded arguments do not fit one frame goes as a *start* (the call's identity and
fields, the size of its arguments and their BLAKE3 digest) and then *blocks*, the arguments' bytes in
order. Both ride in application messages like every other client frame, but their data is not a
msgpack value: it starts with :data:`STREAM_MARK` (0xC1, which msgpack never uses), so a
contact tells them apart from calls with one byte and a block's bytes never pass through
msgpack. A block's frame is built as a header plus the caller's own bytes (a ``memoryview``):
:func:`block_frame` returns the two parts for the socket to write one after the other, so the
sender copies nothing. Pure: encoding and parsing only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from runtime.core.layout import ShardId
from runtime.errors import WireError
from runtime.wire.checks import shard_id
from runtime.wire.codec import TAG_APP

__all__ = [
    "DIGEST_SIZE",
    "STREAM_MARK",
    "RelayAbort",
    "RelayBlock",
    "RelayStart",
    "StreamBlock",
    "StreamStart",
    "block_frame",
    "is_stream",
    "parse_relay",
    "parse_stream",
    "relay_abort_data",
    "relay_block_data",
    "relay_block_key",
    "relay_start_data",
    "start_frame",
]

STREAM_MARK: Final = 0xC1
"""First byte of a stream message's data: never the first byte of a msgpack value."""
KIND_START: Final = 1
KIND_BLOCK: Final = 2
DIGEST_SIZE: Final = 32  # BLAKE3 (its default length)

_BLOCK = struct.Struct(">BBQQ")  # mark, kind, call id, offset of the block in the arguments
_FRAME = struct.Struct(">IBBBI")  # length prefix; msgpack [TAG_APP, bin32 of the data]


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A streamed call begins: its fields (as a client's ``Call`` has them, less the
    arguments), how many bytes of arguments follow and their BLAKE3 digest."""

    call_id: int
    shard: ShardId
    method: str
    floor: int
    size: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class StreamBlock:
    """Bytes ``offset`` to ``offset + len(data)`` of call ``call_id``'s arguments."""

    call_id: int
    offset: int
    data: memoryview


def is_stream(data: bytes) -> bool:
    """Whether an application message from a client is part of a streamed call."""
    return bool(data) and data[0] == STREAM_MARK


def _app_frame(data_len: int) -> bytes:
    """The bytes of an ``AppMessage`` frame before its data: the length prefix and the
    msgpack array ``[TAG_APP, data]`` up to the data (``data`` as bin32, whatever its size:
    a decoder takes any width)."""
    return _FRAME.pack(1 + 1 + 5 + data_len, 0x92, TAG_APP, 0xC6, data_len)


def start_frame(call_id: int, wire_shard: Any, method: str, floor: int, size: int, digest: bytes) -> bytes:
    """The whole frame that starts a streamed call (``wire_shard``: the shard as a call's
    fields carry it)."""
    body = bytes((STREAM_MARK, KIND_START)) + msgpack.packb(
        [call_id, list(wire_shard), method, floor, size, digest], use_bin_type=True
    )
    return _app_frame(len(body)) + body


def block_frame(call_id: int, offset: int, block: memoryview) -> tuple[bytes, memoryview]:
    """A block's frame as two parts to write in order: its header, then the block itself."""
    head = _BLOCK.pack(STREAM_MARK, KIND_BLOCK, call_id, offset)
    return _app_frame(len(head) + len(block)) + head, block


def parse_stream(data: bytes) -> StreamStart | StreamBlock:
    """A stream message's data (``is_stream``) read; ``WireError`` if it is not one."""
    kind = _kind(data)
    if kind == KIND_BLOCK:
        if len(data) < _BLOCK.size:
            raise WireError(f"a stream block of {len(data)} bytes is shorter than its header")
        _, _, call_id, offset = _BLOCK.unpack_from(data, 0)
        return StreamBlock(call_id, offset, memoryview(data)[_BLOCK.size :])
    if kind != KIND_START:
        raise WireError(f"unknown stream message kind {kind}")
    fields = _fields(data, "a stream start")
    if type(fields) is not list or len(fields) != 6:
        raise WireError("a stream start must be [call_id, shard, method, floor, size, digest]")
    return _start(fields)


def _kind(data: bytes) -> int:
    """The kind of a stream message (the byte after its mark); ``WireError`` if it has none."""
    if len(data) < 2 or data[0] != STREAM_MARK:
        raise WireError("not a stream message")
    return data[1]


def _fields(data: bytes, what: str) -> Any:
    """The msgpack value after a start's mark and kind (its fields, if it is well formed)."""
    try:
        return msgpack.unpackb(memoryview(data)[2:], raw=False)
    except Exception as exc:
        raise WireError(f"{what} that is not msgpack ({type(exc).__name__})") from None


def _start(fields: list[Any]) -> StreamStart:
    """A start's first six fields, checked: a client's start, or the one a relay carries."""
    call_id, shard, method, floor, size, digest = fields[:6]
    ints = (call_id, floor, size)
    if any(type(v) is not int or v < 0 for v in ints) or call_id == 0:
        raise WireError("a stream start's call id, floor and size must be integers >= 0 (call id > 0)")
    if type(method) is not str or not method:
        raise WireError("a stream start must name its method")
    if type(digest) is not bytes or len(digest) != DIGEST_SIZE:
        raise WireError(f"a stream start's digest must be {DIGEST_SIZE} bytes")
    return StreamStart(call_id, shard_id(shard, "stream start.shard"), method, floor, size, digest)


# ---------------------------------------------------------------------- relayed between members
# A contact that holds no replica of a streamed call's shard forwards it to a member that does,
# as it arrives, in messages of the same mark between the two members' own connections
# (``node.stream_relay`` sends them, ``node.relayed_streams`` takes them). The start carries what
# the contact derived of the client (its session and whose bytes the call uses); blocks and
# aborts name the call by the client's session and call number, since one contact relays the
# calls of many clients.
KIND_RELAY_START: Final = 3
KIND_RELAY_BLOCK: Final = 4
KIND_RELAY_ABORT: Final = 5
_RELAY = struct.Struct(">BBQQQ")  # mark, kind, origin, call id, offset (an abort: offset 0)


@dataclass(frozen=True, slots=True)
class RelayStart:
    """A client's streamed call, relayed: its start as the client sent it, the session the
    contact derived from the client's identity, and ``budget``: whose bytes it uses (the
    client's identity, or its host without TLS), so the member bounds it per client too."""

    start: StreamStart
    origin: int
    session_ns: int
    owner: int
    budget: str


@dataclass(frozen=True, slots=True)
class RelayBlock:
    """Bytes ``offset`` to ``offset + len(data)`` of a relayed call's arguments."""

    origin: int
    call_id: int
    offset: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class RelayAbort:
    """The contact dropped a relayed call before its last byte (its client went away, or the
    call was refused there): the member frees what it holds of it."""

    origin: int
    call_id: int


def relay_start_data(start: StreamStart, origin: int, session_ns: int, owner: int, budget: str) -> bytes:
    """The data of the message that starts relaying ``start`` to a member."""
    s = start
    fields = [s.call_id, list(s.shard), s.method, s.floor, s.size, s.digest, origin, session_ns, owner, budget]
    return bytes((STREAM_MARK, KIND_RELAY_START)) + msgpack.packb(fields, use_bin_type=True)


def relay_block_data(origin: int, call_id: int, offset: int, block: memoryview) -> bytes:
    """The data of one relayed block (its header and its bytes, joined: one copy, which the
    member link's frame needs anyway)."""
    return b"".join((_RELAY.pack(STREAM_MARK, KIND_RELAY_BLOCK, origin, call_id, offset), block))


def relay_abort_data(origin: int, call_id: int) -> bytes:
    """The data that tells a member to free what it holds of a relayed call (its last block
    never went: the contact dropped the call)."""
    return _RELAY.pack(STREAM_MARK, KIND_RELAY_ABORT, origin, call_id, 0)


def relay_block_key(data: bytes) -> tuple[int, int] | None:
    """``(origin, call id)`` of a relayed block's data, None for any other message: so a
    contact finds its queued copies of a relay's blocks without parsing them."""
    if len(data) < _RELAY.size or data[0] != STREAM_MARK or data[1] != KIND_RELAY_BLOCK:
        return None
    _, _, origin, call_id, _ = _RELAY.unpack_from(data, 0)
    return origin, call_id


def parse_relay(data: bytes) -> RelayStart | RelayBlock | RelayAbort:
    """A relayed stream message's data read; ``WireError`` if it is not one."""
    kind = _kind(data)
    if kind in (KIND_RELAY_BLOCK, KIND_RELAY_ABORT):
        if len(data) < _RELAY.size:
            raise WireError(f"a relayed stream message of {len(data)} bytes is shorter than its header")
        _, _, origin, call_id, offset = _RELAY.unpack_from(data, 0)
        if kind == KIND_RELAY_ABORT:
            return RelayAbort(origin, call_id)
        return RelayBlock(origin, call_id, offset, memoryview(data)[_RELAY.size :])
    if kind != KIND_RELAY_START:
        raise WireError(f"unknown relayed stream message kind {kind}")
    fields = _fields(data, "a relayed stream start")
    if type(fields) is not list or len(fields) != 10:
        raise WireError("a relayed stream start must have 10 fields")
    origin, session_ns, owner, budget = fields[6:]
    if any(type(v) is not int or v < 0 for v in (origin, session_ns, owner)) or not origin:
        raise WireError("a relayed stream start's origin, session and owner must be integers >= 0 (origin > 0)")
    if type(budget) is not str or not budget:
        raise WireError("a relayed stream start must say whose bytes it uses")
    return RelayStart(_start(fields), origin, session_ns, owner, budget)
