"""Change events of a shard: what ``da.emit`` records and what watches read.

An ordered method may call ``da.emit(value)``. Ordered calls run at every replica in one
order, so every replica records the same events at the same positions: an event's position is
``(version, index)``, the version of the call that emitted it (``runtime.core.versions``) and
its rank among that call's events. A watcher therefore reads the same stream from whichever
replica answers, and resumes after a failover from the last position it saw, neither skipping
nor repeating an event.

Each replica keeps the last ``watch_history`` events in memory (:class:`EventLog`), carried to
new replicas with the rest of the object's state. Everything after the log's ``floor`` is
there; a watcher asking from before it is told so (``WatchHistoryLost``), as etcd answers a
watch from a compacted revision, instead of being handed a stream with a hole. Events are not
written to the persistent log: after a total restart a shard's history starts at the version
it restarted from.

What a replica may hand out (``bound``): an atomic type's events once the call is applied
(delivery already waited for every replica to hold it); a persistent type's only once the
version is persisted at every replica, so no watcher sees a change a total restart could undo.

A poll that finds nothing new is parked at the replica (:class:`WatchBoard`) until events come
or its hold time ends (the node sends ``WatchExpire``): a long poll, so an idle watch costs one
request per hold time and a change reaches its watchers within one batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import BEGINNING, LAST, PollArgs, Position, encode_answer
from runtime.core.versions import make_version
from runtime.errors import EmitError, WatchHistoryLost

REPLY_BYTES = 256 * 1024  # events per reply stop at about this many bytes (at least one goes)
MAX_EVENT_BYTES = 4 << 20
"""The largest event ``emit`` records. A watch answer carries at least one event whole: to a
member in one frame (``multicast.max_frame_bytes``, 64 MiB), to a client within the replies
its contact lets it have waiting (``client_max_backlog_bytes``, 8 MiB). A larger event took
the answering replica's connections (and the shard) down, or had the client cut off and
polling again for ever; refused at ``emit``, the same at every replica, it fails its call."""
MAX_LOG_BYTES = 64 << 20
"""Bytes of events one replica's log keeps at most, beside ``watch_history`` events: a count
alone let 10,000 events of 4 MiB hold 40 GiB per replica. The oldest go first, the same at
every replica (they record the same events), and a watcher behind the floor is told so."""
MAX_PARKED = 10_000  # polls one replica holds at once; beyond, the oldest is answered empty


class EventLog:
    """The last ``limit`` events of one replica, in order, and the position after which
    the log is complete (``floor``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: deque[tuple[int, int, bytes]] = deque()
        self.bytes = 0  # of the payloads in ``events``
        self.floor: Position = BEGINNING
        # Where the shard's state (and so its history) began: a shard new in a view, or an
        # atomic type after a total restart (which keeps no state), begins anew there.
        self.started: Position = BEGINNING

    def append(self, version: int, payload: bytes) -> None:
        events = self.events
        index = events[-1][1] + 1 if events and events[-1][0] == version else 0
        events.append((version, index, payload))
        self.bytes += len(payload)
        if len(events) > self.limit or self.bytes > MAX_LOG_BYTES:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest events beyond ``limit`` events or ``MAX_LOG_BYTES``."""
        events = self.events
        while events and (len(events) > self.limit or self.bytes > MAX_LOG_BYTES):
            v, i, payload = events.popleft()
            self.bytes -= len(payload)
            self.floor = (v, i)

    def began_at(self, vid: int) -> None:
        """The shard's state starts empty in view ``vid``: positions before it belong to no
        state this replica continues."""
        if vid > 0:
            self.started = (make_version(vid, 0) - 1, LAST)

    def restarted_at(self, version: int) -> None:
        """This replica rebuilt its state from its own log up to ``version``: events up to
        there are unknown here."""
        self.events.clear()
        self.bytes = 0
        self.floor = max(self.floor, (version, LAST))

    def after(self, cursor: Position, bound: int, max_events: int) -> list[tuple[int, int, bytes]]:
        """Events after ``cursor`` whose version is at most ``bound``, oldest first."""
        events = self.events
        if not events or (events[-1][0], events[-1][1]) <= cursor:
            return []
        # Watchers are usually near the end: search back from it.
        start = len(events)
        while start > 0 and (events[start - 1][0], events[start - 1][1]) > cursor:
            start -= 1
        out: list[tuple[int, int, bytes]] = []
        size = 0
        for k in range(start, len(events)):
            e = events[k]
            if e[0] > bound or len(out) >= max_events or (out and size + len(e[2]) > REPLY_BYTES):
                break
            out.append(e)
            size += len(e[2])
        return out

    def to_state(self) -> dict[str, Any]:
        return {"floor": list(self.floor), "started": list(self.started), "events": [list(e) for e in self.events]}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.events.clear()
        self.bytes = 0
        if state is None:  # a sender from before watches: nothing known before now
            self.floor = (1 << 62, LAST)
            return
        self.floor = (int(state["floor"][0]), int(state["floor"][1]))
        started = state.get("started", list(BEGINNING))
        self.started = (int(started[0]), int(started[1]))
        for v, i, payload in state["events"][-self.limit :]:
            self.events.append((int(v), int(i), bytes(payload)))
            self.bytes += len(payload)
        self._trim()


class EventSink:
    """What ``emit`` writes to while one replica runs an ordered call."""

    __slots__ = ("log", "serializer", "version", "added", "_pack")

    def __init__(self, log: EventLog, serializer: str) -> None:
        self.log = log
        self.serializer = serializer
        self.version = -1
        self.added = 0
        self._pack = _codec.result_encoder(serializer)  # encode_result, chosen once

    def emit(self, value: Any) -> None:
        try:
            payload = self._pack(value)
        except (TypeError, ValueError, OverflowError):  # not plain data: encode_result raises why
            payload = _codec.encode_result(value, self.serializer)
        if len(payload) > MAX_EVENT_BYTES:
            raise EmitError(
                f"da.emit: this event encodes to {len(payload)} bytes, over the {MAX_EVENT_BYTES}-byte limit for one "
                "event (a watch delivers each whole, in one answer): emit what changed (a key, a version, a small "
                "summary) and let watchers read the value with a call"
            )
        self.log.append(self.version, payload)
        self.added += 1


@dataclass(frozen=True, slots=True)
class WatchPoll:
    """A poll for this replica, from ``caller``'s call ``call_id`` (a P2P call)."""

    vid: int
    caller: int
    call_id: int
    origin: int
    args: PollArgs


class PollCall(NamedTuple):
    """Which call a parked poll answers: ``call_id`` of ``caller`` (for a client's poll,
    ``origin`` is its session)."""

    caller: int
    call_id: int
    origin: int


@dataclass(frozen=True, slots=True)
class WatchExpire:
    """The hold time of these polls has passed (or their client went away): answer those
    still parked, empty. One message for every poll due at once (the node's timer heap
    collects them), each found without a scan."""

    calls: tuple[PollCall, ...]


class WatchBoard:
    """Polls parked at one replica. ``answer`` returns ``(poll, payload)`` pairs to reply."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        # (caller, origin, watch id) -> the poll and its cursor; oldest first.
        self.parked: dict[tuple[int, int, int], tuple[WatchPoll, Position]] = {}
        self._by_call: dict[PollCall, tuple[int, int, int]] = {}  # the same polls, by call

    def _unpark(self, key: tuple[int, int, int]) -> tuple[WatchPoll, Position]:
        p, cursor = self.parked.pop(key)
        self._by_call.pop(PollCall(p.caller, p.call_id, p.origin), None)
        return p, cursor

    def poll(self, p: WatchPoll, bound: int) -> list[tuple[WatchPoll, bytes]]:
        log = self.log
        cursor = p.args.cursor if p.args.cursor is not None else (bound, LAST)
        if cursor < log.floor:
            raise WatchHistoryLost(
                f"the events after version {_show(cursor)} are no longer kept (this replica keeps those after "
                f"{_show(log.floor)}: the type's watch_history is {log.limit} events, at most {MAX_LOG_BYTES >> 20} MiB, and a shard "
                "restarted from its logs keeps none from before); read the state again and watch from its version"
            )
        if cursor != BEGINNING and cursor < log.started:
            raise WatchHistoryLost(
                f"the shard's state began anew after version {_show(cursor)} (a total restart of a type that keeps "
                "no state on disk, or a shard new in a later view): the changes you were following are gone with "
                "that state; read the state again and watch from now (since=None)"
            )
        events = log.after(cursor, bound, p.args.max_events)
        if events or p.args.hold <= 0:
            return [(p, encode_answer(self._next(cursor, events, bound), events))]
        out = []
        key = (p.caller, p.origin, p.args.watch_id)
        if key in self.parked:  # the watch asked again (its earlier poll timed out on its side)
            old, old_cursor = self._unpark(key)
            out.append((old, encode_answer(old_cursor, [])))
        if len(self.parked) >= MAX_PARKED:
            q, c = self._unpark(next(iter(self.parked)))
            out.append((q, encode_answer(c, [])))
        self.parked[key] = (p, cursor)
        self._by_call[PollCall(p.caller, p.call_id, p.origin)] = key
        return out

    def release(self, bound: int) -> list[tuple[WatchPoll, bytes]]:
        """Events up to ``bound`` may go out: answer the parked polls they concern."""
        events = self.log.events
        if not self.parked or not events:
            return []
        k = len(events) - 1
        while k >= 0 and events[k][0] > bound:  # events above the bound are the newest few
            k -= 1
        if k < 0:
            return []
        head = (events[k][0], events[k][1])
        out = []
        for key, (p, cursor) in list(self.parked.items()):
            if cursor < head:
                self._unpark(key)
                found = self.log.after(cursor, bound, p.args.max_events)
                out.append((p, encode_answer(self._next(cursor, found, bound), found)))
        return out

    def expire(self, e: WatchExpire, bound: int) -> list[tuple[WatchPoll, bytes]]:
        """Answer the polls ``e`` names that are still parked (others were answered already)."""
        out = []
        for call in e.calls:
            key = self._by_call.get(call)
            if key is not None:
                p, cursor = self._unpark(key)
                out.append((p, encode_answer(self._next(cursor, [], bound), [])))
        return out

    def clear(self) -> list[tuple[WatchPoll, bytes]]:
        """Answer every parked poll empty (the replica stops)."""
        out = [(p, encode_answer(c, [])) for p, c in self.parked.values()]
        self.parked.clear()
        self._by_call.clear()
        return out

    @staticmethod
    def _next(cursor: Position, events: list[tuple[int, int, bytes]], bound: int) -> Position:
        """Where the watch asks from next: after the last event sent; with none sent, after
        everything up to ``bound`` (nothing there was missed: none exist)."""
        if events:
            return (events[-1][0], events[-1][1])
        return max(cursor, (bound, LAST))


def _show(pos: Position) -> str:
    from runtime.core.versions import format_version

    if pos[0] < 0:
        return "none (the beginning)"
    return format_version(pos[0]) if pos[1] == LAST else f"{format_version(pos[0])} (event {pos[1]})"
