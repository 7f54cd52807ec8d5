"""Change events on the wire: positions, the events themselves, and a watch's poll and its
answer, as callers and replicas exchange them (see ``replica.events`` for the replica's side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from derecho_actors.wire.packing import packb
from runtime.errors import WireError

WATCH_POLL = "__watch__"
"""The internal P2P method a replica answers with the events after a position."""

LAST = (1 << 31) - 1
"""An index past every event of a version: ``(v, LAST)`` is "after everything of version v"."""

Position = tuple[int, int]
BEGINNING: Position = (-1, LAST)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event: ``value`` as emitted by the call at ``version`` (its ``index``-th event)."""

    version: int
    index: int
    value: Any

    @property
    def position(self) -> Position:
        return (self.version, self.index)


# ------------------------------------------------------------------ polls
@dataclass(frozen=True, slots=True)
class PollArgs:
    """A watch's request: events after ``cursor`` (None: from now on), at most
    ``max_events``, waiting up to ``hold`` seconds for some to come."""

    watch_id: int
    cursor: Position | None
    max_events: int
    hold: float


def encode_poll(p: PollArgs) -> bytes:
    cursor = None if p.cursor is None else list(p.cursor)
    return msgpack.packb([p.watch_id, cursor, p.max_events, p.hold])


def decode_poll(data: bytes) -> PollArgs:
    try:
        watch_id, cursor, max_events, hold = msgpack.unpackb(data, raw=False)
        pos = None if cursor is None else (int(cursor[0]), int(cursor[1]))
        return PollArgs(int(watch_id), pos, max(1, min(int(max_events), 100_000)), max(0.0, min(float(hold), 60.0)))
    except Exception as exc:
        raise WireError(f"a malformed watch request ({type(exc).__name__}: {exc})") from None


def encode_answer(cursor: Position, events: list[tuple[int, int, bytes]]) -> bytes:
    """The reply: the position to ask from next, and the events."""
    return packb([list(cursor), [list(e) for e in events]])


def decode_answer(data: bytes) -> tuple[Position, list[tuple[int, int, bytes]]]:
    cursor, events = msgpack.unpackb(data, raw=False)
    return (int(cursor[0]), int(cursor[1])), [(int(v), int(i), bytes(p)) for v, i, p in events]
