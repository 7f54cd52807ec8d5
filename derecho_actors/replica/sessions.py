"""Exactly-once for retried calls: the per-origin session table every replica keeps.

A caller that may send an ordered call twice (a ``Client`` failing over to another contact, a
member retrying through a new relay) numbers its calls within a *session*: the origin id (for
a client, derived by the contact from its authenticated identity and session number, so
nobody can use another's) and the session's start time. Every replica keeps, per origin, the
highest call number applied and the replies of calls the caller may still ask for again; a
retried call that was applied gets its first reply back instead of running twice.

The table is part of the replicated state: it changes only with delivered calls, and its
clock is the timestamps those calls carry (the sender's wall clock, made monotonic here), so
every replica holds the same table and gives the same verdicts. For the same reason the
*owner* of a session (a digest of the client identity that opened it, see :func:`owner_of`)
travels in the ordered call, stamped by the contact from the certificate it checked: no
replica consults its own view of who is connected. It is bounded four ways:

- replies kept per session: only calls at or above the caller's *floor* (its oldest call still
  waiting for an answer, sent with every call), at most ``window`` of them and at most
  ``REPLY_BYTES`` bytes of them (the newest is always kept): a retry of a call whose reply was
  dropped is answered "applied, reply no longer kept", never applied again;
- sessions idle longer than ``ttl`` expire. A call of an unknown origin whose session started
  more than ``ttl`` ago may be the retry of a call applied before its session expired, so it
  is refused (``SessionExpired``: outcome unknown), never applied a second time;
- at most ``max_per_owner`` live sessions per owner: a new session beyond that ends the
  owner's least recently used session, so one identity opening sessions in a loop churns only
  its own sessions while every other caller still gets sessions, and honest short-lived
  clients (one CLI run, one session) never lock their certificate out. The owner's *eviction
  floor* (the latest start among its ended sessions) then refuses any unknown session of that
  owner started at or before it (``EVICTED``: it may be the retry of a call applied in an ended
  session, so its outcome is unknown), exactly as ``ttl`` does for expired ones;
- at most ``max_sessions`` sessions in all; a new session beyond that is refused (not applied,
  safe to retry later) rather than evicting a live one, which could make a retry apply twice.

Owner 0 means "no identity" (calls without TLS, a member's own calls, sessions replayed from
a log, which does not record owners): such sessions count against ``max_sessions`` only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from derecho_actors.model.decorators import TypeSpec


class Kind(str, Enum):
    """Verdicts on one call."""

    NEW = "new"  # run it
    DUPLICATE = "duplicate"  # answer with the kept reply
    FORGOTTEN = "forgotten"  # applied already, but its reply is no longer kept
    EXPIRED = "expired"  # refused: its session expired, outcome unknown
    FULL = "full"  # refused: the table holds max_sessions sessions (not applied)
    EVICTED = "evicted"  # refused: its session was ended for a newer one of its owner, outcome unknown


NEW, DUPLICATE, FORGOTTEN, EXPIRED, FULL, EVICTED = (
    Kind.NEW,
    Kind.DUPLICATE,
    Kind.FORGOTTEN,
    Kind.EXPIRED,
    Kind.FULL,
    Kind.EVICTED,
)

DEFAULT_TTL_NS = 3600 * 10**9
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_MAX_PER_OWNER = 64
DEFAULT_WINDOW = 4096
REPLY_BYTES = 256 * 1024
"""Bytes of replies one session keeps at most (besides its newest reply). Part of the
algorithm, not of a node's config: every replica must drop the same replies."""


def owner_of(identity: str) -> int:
    """The owner number of sessions opened by the client ``identity`` (its certificate's
    name): what the contact stamps on the client's ordered calls. Never 0 (0: no identity)."""
    digest = hashlib.blake2b(f"owner\0{identity}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & ((1 << 62) - 1)) | 1


def table_for(spec: TypeSpec) -> SessionTable:
    """An empty table for a replica of ``spec``, bounded as the type says."""
    return SessionTable(
        ttl_ns=int(spec.session_ttl * 1e9),
        max_sessions=spec.max_sessions,
        max_per_owner=spec.max_sessions_per_caller,
    )


@dataclass(slots=True)
class Session:
    last: int  # highest call number applied
    seen_ns: int  # table clock when the session last applied a call
    # Kept replies by call number, in increasing order (calls are applied in increasing order).
    replies: dict[int, tuple[bool, bytes]] = field(default_factory=dict)
    owner: int = 0  # the identity that opened it (owner_of), 0: none known
    reply_bytes: int = 0  # bytes of the kept replies' values
    start_ns: int = 0  # when the caller started the session (its clock); 0: not known
    # Every kept reply's call number is at least this: where dropping the old ones starts
    # looking (a hint, not state: 0 is always right, and no replica compares it).
    low: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reply: tuple[bool, bytes] | None = None


# Verdicts without a reply, made once: ``check`` runs for every ordered call of a session.
_RUN, _FORGOTTEN, _EXPIRED, _EVICTED, _FULL = (Verdict(k) for k in (NEW, FORGOTTEN, EXPIRED, EVICTED, FULL))


class SessionTable:
    def __init__(
        self,
        ttl_ns: int = DEFAULT_TTL_NS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        window: int = DEFAULT_WINDOW,
        max_per_owner: int = DEFAULT_MAX_PER_OWNER,
        reply_bytes: int = REPLY_BYTES,
    ) -> None:
        self.ttl_ns = ttl_ns
        self.max_sessions = max_sessions
        self.window = window
        self.max_per_owner = max_per_owner
        self.reply_bytes = reply_bytes
        self.sessions: dict[int, Session] = {}
        self.owned: dict[int, set[int]] = {}  # owner -> origins of its sessions (owner != 0)
        # owner -> latest start of its sessions ended to make room (see the module docstring)
        self.evicted_floor: dict[int, int] = {}
        self.clock_ns = 0
        self._next_sweep_ns = 0
        self._swept_at = -1  # clock of the last full sweep (nothing expired since if unchanged)

    def __len__(self) -> int:
        return len(self.sessions)

    def tick(self, ts_ns: int) -> None:
        """Advance the table's clock to a delivered call's timestamp (never backwards); now
        and then drop expired sessions to free memory. (Verdicts never depend on when that
        happens: an expired session counts as absent whether it is still here or not.)"""
        if ts_ns > self.clock_ns:
            self.clock_ns = ts_ns
        if self.clock_ns >= self._next_sweep_ns:
            self._next_sweep_ns = self.clock_ns + max(1, self.ttl_ns // 10)
            self._sweep()

    def _sweep(self) -> None:
        self._swept_at = self.clock_ns
        horizon = self.clock_ns - self.ttl_ns
        for origin in [o for o, s in self.sessions.items() if s.seen_ns < horizon]:
            self._remove(origin)
        for owner in [o for o, floor in self.evicted_floor.items() if floor < horizon]:
            del self.evicted_floor[owner]  # the ttl refuses sessions that old anyway

    def _remove(self, origin: int) -> None:
        s = self.sessions.pop(origin)
        if s.owner:
            mine = self.owned.get(s.owner)
            if mine is not None:
                mine.discard(origin)
                if not mine:
                    del self.owned[s.owner]

    def _own(self, s: Session, origin: int, owner: int) -> None:
        s.owner = owner
        self.owned.setdefault(owner, set()).add(origin)

    def check(self, origin: int, call_id: int, session_ns: int, owner: int = 0) -> Verdict:
        """What to do with call ``call_id`` of ``origin``, whose session started at
        ``session_ns`` (the caller's clock), opened by ``owner`` (0: no identity)."""
        horizon = self.clock_ns - self.ttl_ns
        s = self.sessions.get(origin)
        if s is not None:
            if s.seen_ns >= horizon:
                if call_id > s.last:
                    return _RUN
                kept = s.replies.get(call_id)
                return Verdict(DUPLICATE, kept) if kept is not None else _FORGOTTEN
            self._remove(origin)  # expired
        if min(session_ns, self.clock_ns) < horizon:
            return _EXPIRED
        if owner and session_ns <= self.evicted_floor.get(owner, -1):
            return _EVICTED
        evict = self._to_evict(owner, horizon) if owner else None
        if evict is None and len(self.sessions) >= self.max_sessions:
            if self._swept_at != self.clock_ns:  # else nothing expired since the last sweep
                self._sweep()  # count only live sessions, the same at every replica
            if len(self.sessions) >= self.max_sessions:
                return _FULL
        if evict is not None:
            # Only now that the call will run: end the owner's least recently used session and
            # refuse unknown sessions started before it from now on (a session whose start is
            # not known, replayed from an old state, raises the floor to the table's clock).
            start = self.sessions[evict].start_ns or self.clock_ns
            self._remove(evict)
            self.evicted_floor[owner] = max(self.evicted_floor.get(owner, -1), start)
        return _RUN

    def _to_evict(self, owner: int, horizon: int) -> int | None:
        """The session of ``owner`` to end for a new one, or None if it has room. Counts only
        the owner's live sessions (the same at every replica), looking at its own few sessions,
        never the whole table; ties by origin, so every replica picks the same one."""
        mine = self.owned.get(owner)
        if mine is None or len(mine) < self.max_per_owner:
            return None
        for o in [o for o in mine if self.sessions[o].seen_ns < horizon]:
            self._remove(o)
        mine = self.owned.get(owner)
        if mine is None or len(mine) < self.max_per_owner:
            return None
        return min(mine, key=lambda o: (self.sessions[o].seen_ns, o))

    def applied(
        self,
        origin: int,
        call_id: int,
        reply: tuple[bool, bytes],
        floor: int,
        owner: int = 0,
        session_ns: int = 0,
    ) -> None:
        """Call ``call_id`` of ``origin`` (whose session started at ``session_ns``) ran and
        answered ``reply``; the caller still waits for nothing below ``floor``."""
        s = self.sessions.get(origin)
        if s is None:
            s = self.sessions[origin] = Session(call_id, self.clock_ns, start_ns=session_ns)
            if owner:
                self._own(s, origin, owner)
        elif owner and not s.owner:  # a session replayed from the log: its owner shows now
            self._own(s, origin, owner)
        if not s.start_ns:
            s.start_ns = session_ns
        self.kept(s, call_id, reply, floor)

    def live(self, origin: int, call_id: int, owner: int) -> Session | None:
        """The common case, in one step: ``origin``'s session is here and live, ``call_id`` is
        new to it and the session has nothing to learn from the call (it knows its owner, if the
        call names one, and its start). Then :meth:`check` would say ``NEW`` and change nothing,
        and :meth:`kept` is all :meth:`applied` would do: this returns the session for it.
        None: anything else (call :meth:`check`, then :meth:`applied`)."""
        s = self.sessions.get(origin)
        if (
            s is not None
            and call_id > s.last
            and s.seen_ns >= self.clock_ns - self.ttl_ns
            and s.start_ns
            and (s.owner or not owner)
        ):
            return s
        return None

    def kept(self, s: Session, call_id: int, reply: tuple[bool, bytes], floor: int) -> None:
        """Call ``call_id`` of session ``s`` (in the table) ran and answered ``reply``; its
        caller waits for nothing below ``floor`` (the part of :meth:`applied` past finding the
        session)."""
        if call_id > s.last:
            s.last = call_id
        s.seen_ns = self.clock_ns
        replies = s.replies
        replies[call_id] = reply
        kept = s.reply_bytes + len(reply[1])
        low = call_id - self.window + 1
        if floor > low:
            low = floor
        # Drop from the oldest: every reply below the floor or the window, then the oldest while
        # over the byte bound (the newest stays). Each reply is dropped once: the work is what
        # was added. Those below ``low`` are looked up by number when few numbers can hold
        # them: finding the oldest by iterating the dict passes the slots of every reply
        # dropped since it was last resized (measured: ~800 instructions a call).
        start = s.low if s.low < call_id else call_id
        if low - start == 1:  # a pipelined caller's common step: one number leaves the window
            dropped = replies.pop(start, None)
            if dropped is not None:
                kept -= len(dropped[1])
            start = low
        elif low > start:
            if low - start <= len(replies):
                for number in range(start, low):
                    dropped = replies.pop(number, None)
                    if dropped is not None:
                        kept -= len(dropped[1])
            else:
                while replies:
                    oldest = next(iter(replies))
                    if oldest >= low:
                        break
                    kept -= len(replies.pop(oldest)[1])
            start = low
        s.low = start
        limit = self.reply_bytes
        while kept > limit and replies:
            oldest = next(iter(replies))
            if oldest == call_id:
                break
            kept -= len(replies.pop(oldest)[1])
        s.reply_bytes = kept

    def replayed(self, origin: int, call_id: int, ts_ns: int) -> None:
        """A call read back from the log at start-up: its number counts, its reply is gone."""
        self.tick(ts_ns)
        s = self.sessions.get(origin)
        if s is None:
            self.sessions[origin] = Session(call_id, self.clock_ns)
        else:
            s.last = max(s.last, call_id)
            s.seen_ns = self.clock_ns

    def replayed_batch(self, calls: list[tuple[int, int, int]]) -> None:
        """:meth:`replayed` for a batch of ``(origin, call_id, timestamp_ns)`` read back
        together (calls without an origin are not in the table)."""
        sessions = self.sessions
        for origin, call_id, ts_ns in calls:  # replayed(), inlined: a log may hold millions
            if not origin:
                continue
            if ts_ns > self.clock_ns or self.clock_ns >= self._next_sweep_ns:
                self.tick(ts_ns)
            s = sessions.get(origin)
            if s is None:
                sessions[origin] = Session(call_id, self.clock_ns)
            else:
                if call_id > s.last:
                    s.last = call_id
                s.seen_ns = self.clock_ns

    # ------------------------------------------------------------ state transfer
    def to_state(self) -> dict[str, Any]:
        """Plain data for a new replica. Owners go under their own key, so a replica of the
        release before (which knows none) still reads the rest."""
        return {
            "clock": self.clock_ns,
            "sessions": [
                [origin, s.last, s.seen_ns, [[c, ok, v] for c, (ok, v) in s.replies.items()]]
                for origin, s in self.sessions.items()
            ],
            "owners": [[origin, s.owner] for origin, s in self.sessions.items() if s.owner],
            "starts": [[origin, s.start_ns] for origin, s in self.sessions.items() if s.start_ns],
            "evicted_floor": [[owner, floor] for owner, floor in self.evicted_floor.items()],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.clock_ns = int(state["clock"])
        self._next_sweep_ns = 0
        self._swept_at = -1
        self.sessions = {}
        self.owned = {}
        self.evicted_floor = {int(owner): int(floor) for owner, floor in state.get("evicted_floor", ())}
        for origin, last, seen, replies in state["sessions"]:
            kept = dict(sorted((int(c), (bool(ok), bytes(v))) for c, ok, v in replies))
            self.sessions[int(origin)] = Session(
                int(last), int(seen), kept, reply_bytes=sum(len(v) for _ok, v in kept.values())
            )
        for origin, owner in state.get("owners", ()):
            s = self.sessions.get(int(origin))
            if s is not None and int(owner):
                self._own(s, int(origin), int(owner))
        for origin, start in state.get("starts", ()):
            s = self.sessions.get(int(origin))
            if s is not None:
                s.start_ns = int(start)
