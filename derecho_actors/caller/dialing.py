"""Which contact a client dials next, and how long it backs off: ``DialRounds``, the part of a
``ClientSession`` that lives between connections.

A round tries every contact in turn (starting where the last round stopped); after a round of
contacts that could not be reached, or of contacts that turned the client away (a goodbye
before any answer: not in a view), it waits (``backoff``: exponential, capped, jittered) before
the next. A round that has lasted ``retry_for`` seconds without a connection ends the session.
Pure: the time comes in as ``now``, the jitter from the session's ``rng`` (seeded in the
simulator).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from derecho_actors.caller.session_events import Dial, Wait
from runtime.errors import GroupClosed

log = logging.getLogger("derecho.client")

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def backoff(round_: int, rng: random.Random) -> float:
    """Seconds to wait after ``round_`` failed rounds over every contact: exponential, capped,
    with jitter so many clients do not reconnect in step."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(round_, 16))) * rng.uniform(0.5, 1.5)


@dataclass(slots=True)
class DialRounds:
    """The rounds of dials of one session: the next contact, the wait, when to give up."""

    contacts: list[str]
    retry_for: float  # how long a round may try before the session gives up
    rng: random.Random
    turn: int = 0  # dials so far: the next contact is ``contacts[turn % len(contacts)]``
    started: float | None = None  # when the current round began (None: connected, or none yet)
    failures: int = 0  # dials of this round that failed
    last_error: str = ""  # the last of them, for messages
    wait_until: float = 0.0  # no dial before this
    turned_away: int = 0  # contacts in a row that said goodbye before any answer
    turned_away_for: str = ""  # the last goodbye once every contact turned the client away

    def next(self, now: float) -> Dial | Wait | None:
        """The next dial, or how long to wait first; None once the round has tried for
        ``retry_for`` (give up: ``give_up``)."""
        if now < self.wait_until:
            return Wait(self.wait_until)
        if self.started is None:
            self.started, self.failures, self.last_error = now, 0, ""
        elif now >= self.started + self.retry_for:
            return None
        address = self.contacts[self.turn % len(self.contacts)]
        self.turn += 1
        return Dial(address)

    def failed(self, now: float, address: str, why: str) -> None:
        """``address`` could not be reached; after each round over every contact, back off."""
        self.failures += 1
        self.last_error = f"{address}: {why}"
        if self.failures == 1 or self.failures % 20 == 0:
            log.info("client cannot reach %s (%s); trying the next contact", address, why)
        rounds, rest = divmod(self.failures, len(self.contacts))
        if rest == 0:
            self.wait_until = now + backoff(rounds, self.rng)

    def connected(self) -> None:
        """A connection is up: the round is over."""
        self.started = None

    def ended(self, now: float, goodbye: str) -> None:
        """A connection ended; ``goodbye``: what the contact said closing it before it answered
        anything ("" if it answered, or said nothing). Once every contact in a row turned the
        client away so, back off before the next round."""
        if goodbye:
            self.turned_away += 1
            rounds, rest = divmod(self.turned_away, len(self.contacts))
            if rest == 0:
                self.turned_away_for = goodbye
                self.wait_until = now + backoff(rounds, self.rng)
        else:
            self.turned_away, self.turned_away_for = 0, ""

    def closed(self, now: float) -> None:
        """The user closed the client: say what the round was still trying, if anything."""
        if self.started is not None and self.last_error:
            log.info(
                "client stopped trying to reach the group after %.1f s: closed (last: %s)",
                now - self.started,
                self.last_error,
            )

    def give_up(self, now: float) -> GroupClosed:
        """The error that ends the session once a round tried for ``retry_for`` in vain."""
        assert self.started is not None
        if self.last_error:
            log.warning(
                "client gave up reaching the group after %.1f s (last: %s)", now - self.started, self.last_error
            )
        last = f" (last: {self.turned_away_for})" if self.turned_away_for else ""
        return GroupClosed(f"no member of the group reachable among {', '.join(self.contacts)}{last}")
