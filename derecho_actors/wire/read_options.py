"""Read options on the wire: they travel in front of a call's encoded arguments, marked by the
byte 0xC1, which neither msgpack nor pickle ever starts with, so a call without options
carries and costs nothing."""

from __future__ import annotations

import msgpack

from derecho_actors.model.reads import LINEARIZABLE, LOCAL, STABLE, ReadOptions
from runtime.errors import WireError

_CODE = {LOCAL: 0, STABLE: 1, LINEARIZABLE: 2}
_LEVEL = {code: level for level, code in _CODE.items()}

OPTIONS_MARK = 0xC1
"""First byte of a call's arguments that carry read options (never the first byte of msgpack
or pickle data)."""

READ_IN_ORDER = -1
"""The ``session_ns`` of a linearizable read multicast in the order (never a real session's,
which is a time): replicas skip it, except the one its ``floor`` names, which runs it."""


def encode_read(read: ReadOptions, args: bytes) -> bytes:
    """``args`` with ``read`` in front of them."""
    body = msgpack.packb([_CODE[read.level], read.at_version, read.at_time])
    return bytes((OPTIONS_MARK, len(body))) + body + args


def split_read(args: bytes) -> tuple[ReadOptions | None, bytes]:
    """The read options in front of a call's arguments (None if it has none) and the
    arguments themselves; ``WireError`` for options :func:`encode_read` could not have made."""
    if not args or args[0] != OPTIONS_MARK:
        return None, args
    try:
        n = args[1]
        code, version, time_ns = msgpack.unpackb(args[2 : 2 + n], raw=False)
    except Exception as exc:
        raise WireError(f"malformed read options: {type(exc).__name__}") from None
    level = _LEVEL.get(code) if type(code) is int else None
    if (
        level is None
        or not (version is None or (type(version) is int and version >= 0))
        or not (time_ns is None or type(time_ns) is int)
        or (version is not None and time_ns is not None)
        or (level != LOCAL and (version is not None or time_ns is not None))
    ):
        raise WireError(f"malformed read options {[code, version, time_ns]!r:.80}")
    return ReadOptions(level, version, time_ns), args[2 + n :]
