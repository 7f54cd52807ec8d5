"""Where a streamed call's bytes go in the multicast payload of that one call.

A contact (or the member a call is relayed to) writes a streamed call's blocks straight into
a buffer laid out as ``wire.codec.encode_ordered`` would encode the call, so the payload is
multicast without another copy; the layout lives here, apart from the nodes that use it.
"""

from __future__ import annotations

import struct

import msgpack

__all__ = ["NOW_AT", "payload_layout", "payload_parts", "stamp"]

NOW_AT = 2
"""Where the sender's clock goes in the payload: after ``[`` (0x92) and uint64's 0xCF."""


def payload_parts(
    caller: int, call_id: int, method: str, size: int, tail: tuple[int, int, int, int]
) -> tuple[bytes, bytes]:
    """The bytes before and after ``size`` bytes of arguments in the multicast payload
    ``wire.codec.encode_ordered`` makes of one call,
    ``[now, [[caller, call_id, method, args, origin, session_ns, floor, owner]]]``. ``now`` is
    written at ``NOW_AT`` as a full uint64 (msgpack readers take any width) once the call goes."""
    head = b"\x92\xcf" + bytes(8) + b"\x91\x98" + msgpack.packb(caller) + msgpack.packb(call_id)
    head += msgpack.packb(method) + b"\xc6" + size.to_bytes(4, "big")
    return head, b"".join(msgpack.packb(v) for v in tail)


def payload_layout(
    caller: int, call_id: int, method: str, size: int, tail: tuple[int, int, int, int]
) -> tuple[bytearray, int]:
    """``payload_parts`` as one buffer with room for the arguments, and where they start."""
    head, suffix = payload_parts(caller, call_id, method, size, tail)
    buffer = bytearray(len(head) + size + len(suffix))
    buffer[: len(head)] = head
    buffer[len(head) + size :] = suffix
    return buffer, len(head)


def stamp(payload: bytearray, now_ns: int) -> None:
    """Write the sender's clock into a payload made by ``payload_layout``."""
    struct.pack_into(">Q", payload, NOW_AT, now_ns)
