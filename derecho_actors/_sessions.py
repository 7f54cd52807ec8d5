"""Exactly-once for retried calls: the per-origin session table every replica keeps.

A caller that may send an ordered call twice (a ``Client`` failing over to another contact, a
member retrying through a new relay) numbers its calls within a *session*: the origin id (for
a client, derived by the contact from its authenticated identity and session number, so
nobody can use another's) and the session's start time. Every replica keeps, per origin, the
highest call number applied and the replies of calls the caller may still ask for again; a
retried call that was applied gets its first reply back instead of running twice.

The table is part of the replicated state: it changes only with delivered calls, and its
clock is the timestamps those calls carry (the sender's wall clock, made monotonic here), so
every replica holds the same table and gives the same verdicts. It is bounded three ways:

- replies kept per session: only calls at or above the caller's *floor* (its oldest call still
  waiting for an answer, sent with every call) and at most ``window`` of them;
- sessions idle longer than ``ttl`` expire. A call of an unknown origin whose session started
  more than ``ttl`` ago may be the retry of a call applied before its session expired, so it
  is refused (``SessionExpired``: outcome unknown), never applied a second time;
- at most ``max_sessions`` sessions; a new session beyond that is refused (not applied, safe
  to retry later) rather than evicting a live one, which could make a retry apply twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NEW, DUPLICATE, FORGOTTEN, EXPIRED, FULL = "new", "duplicate", "forgotten", "expired", "full"
"""Verdicts on one call: run it; answer with the kept reply; applied but its reply is no
longer kept; refused (its session expired: outcome unknown); refused (table full: not
applied)."""

DEFAULT_TTL_NS = 3600 * 10**9
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_WINDOW = 4096


@dataclass(slots=True)
class Session:
    last: int  # highest call number applied
    seen_ns: int  # table clock when the session last applied a call
    replies: dict[int, tuple[bool, bytes]] = field(default_factory=dict)
    low: int = 0  # no kept reply below this call number (pruning walks it up, never down)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str
    reply: tuple[bool, bytes] | None = None


class SessionTable:
    def __init__(
        self,
        ttl_ns: int = DEFAULT_TTL_NS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.ttl_ns = ttl_ns
        self.max_sessions = max_sessions
        self.window = window
        self.sessions: dict[int, Session] = {}
        self.clock_ns = 0
        self._next_sweep_ns = 0

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
        horizon = self.clock_ns - self.ttl_ns
        for origin in [o for o, s in self.sessions.items() if s.seen_ns < horizon]:
            del self.sessions[origin]

    def check(self, origin: int, call_id: int, session_ns: int) -> Verdict:
        """What to do with call ``call_id`` of ``origin``, whose session started at
        ``session_ns`` (the caller's clock)."""
        horizon = self.clock_ns - self.ttl_ns
        s = self.sessions.get(origin)
        if s is not None:
            if s.seen_ns >= horizon:
                if call_id > s.last:
                    return Verdict(NEW)
                kept = s.replies.get(call_id)
                return Verdict(DUPLICATE, kept) if kept is not None else Verdict(FORGOTTEN)
            del self.sessions[origin]  # expired
        if min(session_ns, self.clock_ns) < horizon:
            return Verdict(EXPIRED)
        if len(self.sessions) >= self.max_sessions:
            self._sweep()  # count only live sessions, the same at every replica
            if len(self.sessions) >= self.max_sessions:
                return Verdict(FULL)
        return Verdict(NEW)

    def applied(self, origin: int, call_id: int, reply: tuple[bool, bytes], floor: int) -> None:
        """Call ``call_id`` of ``origin`` ran and answered ``reply``; the caller still waits
        for nothing below ``floor``."""
        s = self.sessions.get(origin)
        if s is None:
            s = self.sessions[origin] = Session(call_id, self.clock_ns)
        s.last = max(s.last, call_id)
        s.seen_ns = self.clock_ns
        replies = s.replies
        replies[call_id] = reply
        low = max(floor, call_id - self.window + 1)
        if s.low < low:  # drop replies below the new low: each call number is passed once
            if low - s.low > len(replies):
                for old in [c for c in replies if c < low]:
                    del replies[old]
            else:
                for old in range(s.low, low):
                    replies.pop(old, None)
            s.low = low

    def replayed(self, origin: int, call_id: int, ts_ns: int) -> None:
        """A call read back from the log at start-up: its number counts, its reply is gone."""
        self.tick(ts_ns)
        s = self.sessions.get(origin)
        if s is None:
            self.sessions[origin] = Session(call_id, self.clock_ns)
        else:
            s.last = max(s.last, call_id)
            s.seen_ns = self.clock_ns

    # ------------------------------------------------------------ state transfer
    def to_state(self) -> dict[str, Any]:
        return {
            "clock": self.clock_ns,
            "sessions": [
                [origin, s.last, s.seen_ns, [[c, ok, v] for c, (ok, v) in s.replies.items()]]
                for origin, s in self.sessions.items()
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.clock_ns = int(state["clock"])
        self._next_sweep_ns = 0
        self.sessions = {
            int(origin): Session(
                int(last),
                int(seen),
                {int(c): (bool(ok), bytes(v)) for c, ok, v in replies},
                min((int(c) for c, _ok, _v in replies), default=0),
            )
            for origin, last, seen, replies in state["sessions"]
        }
