"""``ClientSession``: a client's protocol as a state machine that owns no socket, no thread and
no clock (h11's manner).

Its driver feeds in what happened, each with the time it happened (``now``, in seconds of any
monotonic clock): calls issued (``call``), a dial's outcome (``connected``, ``dial_failed``,
``refuse``), bytes read (``receive_data``), a connection lost (``connection_lost``), the clock
(``tick``). It reads back what to do: bytes to write (``data_to_send``, or ``output`` to encode
outside a lock), answers to feed to their results (``answers``, then ``answered``), when to
tick next (``next_timer``), a connection to end (a ``Disconnect`` returned), and between
connections the next step (``next_step``): the contact to ``Dial``, how long to ``Wait``
(backing off with jitter, after a round of unreachable contacts or of contacts that turned the
client away), or ``Stop`` (refused, closed, or no contact reachable for ``retry_for``); which
contact and how long to wait are the rounds of dials' (``dialing.DialRounds``).

It keeps what outlives a connection: the calls waiting for answers and their ``QueryResults``,
the call numbers and the exactly-once session (the same on every contact: after a failover
the unanswered calls go again, in order, under the same numbers, and replicas apply each
once), the contact's limits. ``Client`` drives it from one socket thread; the simulator drives
the very same class over its simulated network, under its faults. Not thread-safe: the driver
serialises every call to it (``Client`` holds one lock).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from typing import Sequence

from derecho_actors.caller.answers import Answer, Answers
from derecho_actors.caller.calls import (
    DEFAULT_MAX_PAYLOAD,
    Floor,
    Outbound,
    Output,
    Request,
    encode_output,
    outbound,
    outbound_size,
    request_size,
)
from derecho_actors.caller.dialing import DialRounds
from derecho_actors.caller.resend import HeldCalls
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session_events import Dial, Disconnect, Phase, Step, Stop, Wait
from derecho_actors.caller.session_reading import AnswerReader
from runtime.errors import GroupClosed, Refused
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import PROTOCOL_VERSION, AppMessage, Goodbye, GoodbyeKind, Hello, Ping, Welcome

# The session's events are named here too: its drivers import them with it.
__all__ = ["ClientSession", "Dial", "Disconnect", "Phase", "Step", "Stop", "Wait", "encode_output"]

log = logging.getLogger("derecho.client")

_CONNECTED = Phase.CONNECTED  # a module global: an enum member looked up on its class costs ~3x more, per call

IDLE_PING = 10.0  # seconds between pings while no call waits, until a Welcome says otherwise


class ClientSession(AnswerReader):
    """One client's calls and its connections to the group's contacts, as a state machine."""

    def __init__(
        self,
        contacts: Sequence[str],
        cluster: str = "derecho",
        *,
        session_ns: int,
        retry_for: float = 30.0,
        liveness_timeout: float = 2.0,
        max_outstanding: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        """``session_ns``: when the session starts (wall clock, ns: replicas order a client's
        sessions by it); ``retry_for``: how long a round of dials may try before the session
        gives up; ``liveness_timeout``: a contact that sends nothing (not even a pong) for this
        long while calls wait is given up for another; ``max_outstanding``: calls the driver lets
        wait for answers at once (``window``: fewer if the contact's Welcome allows fewer);
        ``rng``: the jitter's (and the session number's) source, seeded in the simulator."""
        if not contacts:
            raise GroupClosed("a client needs at least one contact address")
        self.contacts = list(contacts)
        self.cluster = cluster
        self.liveness_timeout = liveness_timeout
        self.rng = rng or random.Random()
        # The contact derives the origin of our calls from our identity and this number; the
        # same on every contact, so a call resent after failover applies once.
        self.session = self.rng.getrandbits(62) | 1
        self.session_ns = session_ns
        self.phase = Phase.DISCONNECTED
        self.error: Exception | None = None  # why the session is closed
        self.refusal: Refused | None = None
        # Calls waiting for answers, in call order: results, and apart (no tuple each) wire fields.
        self.pending: dict[int, QueryResults] = {}
        self._wire: dict[int, Outbound] = {}
        self._why_waiting = self.why_waiting  # one bound method and lock for every call, not one each
        self._results_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._floor = Floor()
        self._outbox: list[Outbound] = []
        self._outbox_size = 0  # what the calls in the outbox take of a frame (calls_frame)
        self._answers: list[Answer] = []  # answers and departures received, for ``answers``
        self._control: list[bytes] = []  # frames of our own (pings)
        self._pings = itertools.count(1)
        self.max_message_size = DEFAULT_MAX_PAYLOAD  # the group's limit on a call's arguments
        self.max_frame = DEFAULT_MAX_PAYLOAD  # the contact's limit on a frame from us
        self._idle_ping = IDLE_PING  # a third of the contact's idle timeout, once it says
        self.max_outstanding = max(1, max_outstanding)
        # Calls the driver lets wait at once: ``max_outstanding``, or the contact's own limit
        # (``limits.client_max_in_flight``, its Welcome) if lower: beyond it the contact refuses
        # calls, and cuts off a client that keeps sending them.
        self.window = self.max_outstanding
        self.connected_to: str | None = None  # the contact of the current (or last) connection
        self.connections = 0  # connections made so far (more than one: the client failed over)
        self.resent = 0  # calls sent again after a failover
        self.welcomed = False  # the current contact accepted us (not refused for cluster or identity)
        # Calls not sent yet on this connection: until its Welcome, then past the window (``resend``).
        self._resend = HeldCalls()
        self._holding = False  # new calls go behind the held ones, not straight out
        # The current connection.
        self._decoder = FrameDecoder()
        self._peer = ""
        self._heard = self._ticked = self._pinged = 0.0
        self._answered = False  # the contact sent an answer (not only a goodbye)
        self._goodbye = ""  # why the contact closed the connection, if it said
        self._unavailable = ""  # why the group's shards cannot run, as the contact last said
        self._dials = DialRounds(self.contacts, retry_for, self.rng)  # between connections

    # ------------------------------------------------------------------ calls
    def call(self, request: Request) -> QueryResults:
        """Number a call, keep it until answered, and send it if connected (else with every
        other waiting call once connected). Raises the session's error once it is closed."""
        if self.error is not None:
            raise self.error
        call_id = next(self._ids)
        # ``_results``, inlined: one per call.
        results = QueryResults(
            request.what,
            request.decode,
            request.ordered,
            request.compare,
            self._why_waiting,
            None,
            call_id,
            "client call",
            self._results_lock,
        )
        # The contact fills in the session (origin) from our identity and answers on our connection
        # (a client is no member: no caller id). Wire fields made once: a failover resends them as they are.
        pending, floor = self.pending, self._floor.oldest  # it moves only once its call is answered
        floor = floor if floor in pending else self._floor.advance(pending, call_id)
        call = self._wire[call_id] = outbound(request, call_id, floor)
        pending[call_id] = results
        if self.phase is _CONNECTED:
            if self._holding:
                self._resend.hold(call)
                return results
            self._outbox.append(call)
            overhead = request.overhead  # ``request_size``, inlined
            self._outbox_size += len(request.args) + overhead if overhead >= 0 else request_size(request)
        return results

    def _results(self, request: Request, call_id: int) -> QueryResults:
        """Call ``call_id``'s results, made as every call of this session makes them (sharing
        one lock and one ``why_waiting``), whether it goes in a frame or streams."""
        # By position (``ResultsFeed``'s order): made once per call.
        return QueryResults(
            request.what,
            request.decode,
            request.ordered,
            request.compare,
            self._why_waiting,
            None,
            call_id,
            "client call",
            self._results_lock,
        )

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def has_output(self) -> bool:
        return bool(self._outbox or self._control)

    def data_to_send(self) -> bytes:
        """Frames to write now: our pings, then the calls queued since, in as few frames as the contact
        allows (one per driver's loop turn, however many calls: the cost is per call and system call)."""
        return encode_output(self.output())

    def output(self) -> Output:
        """``data_to_send`` to encode (``encode_output``, any thread: a driver encodes outside its lock)."""
        out = (self._control, self._outbox, self.max_frame, self._outbox_size)
        self._control, self._outbox, self._outbox_size = [], [], 0
        return out

    def why_waiting(self) -> str | None:
        """What is known to hold calls up, for the message of a ``CallTimeout``."""
        if self.refusal is not None:
            return str(self.refusal)
        turned_away_for = self._dials.turned_away_for
        turned = f"; the last contact said: {turned_away_for}" if turned_away_for else ""
        if self.phase is not Phase.CONNECTED:
            return f"no contact connected (trying {', '.join(self.contacts)}){turned}"
        if self._holding and not self.welcomed:
            return f"connected to {self._peer}; calls wait for its Welcome (its limit on calls in flight)"
        if self._holding:
            held = f"{len(self._resend)} calls wait for room: {self._peer} takes {self.window} in flight"
            return f"{held}; {self._unavailable}" if self._unavailable else held
        return self._unavailable or turned[2:] or None

    # ------------------------------------------------------------ between connections
    def next_step(self, now: float) -> Step:
        """What to do while not connected: dial the next contact, wait, or stop."""
        if self.error is not None:
            return Stop(self.error)
        step = self._dials.next(now)
        if step is None:
            error = self._dials.give_up(now)
            self._close(error)
            return Stop(error)
        if type(step) is Dial:
            self.phase = Phase.DIALING
        return step

    def dial_failed(self, now: float, address: str, why: str) -> None:
        """The contact could not be reached; after each round over every contact, back off."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.DISCONNECTED
        self._dials.failed(now, address, why)

    def connected(self, now: float, address: str, peer: str = "") -> bytes:
        """A connection to ``address`` is up (``peer``: how to name it in messages): the bytes
        to write first, our Hello. Every call still waiting goes once the contact's Welcome
        says its limit, in order, under the numbers they had (replicas remember, per session,
        what they applied and their replies), at most ``window`` at once (``resend``)."""
        self.phase = Phase.CONNECTED
        self.connected_to, self._peer = address, peer or address
        self.connections += 1
        self._decoder = FrameDecoder()
        self._heard = self._ticked = self._pinged = now
        self._answered, self._goodbye, self._unavailable, self.welcomed = False, "", "", False
        self._dials.connected()
        self._outbox, self._control, self._outbox_size = [], [], 0
        self._resend, self._holding = HeldCalls(self._wire.values()), True
        for results in self.pending.values():
            results.sending_again()
        if self.connections > 1:
            self.resent += len(self._resend)
        log.info("client connected to %s (%d calls to send once it says its limit)", address, len(self._resend))
        return frame(Hello(self.session, self.cluster, "client", self.session_ns, PROTOCOL_VERSION))

    def connection_lost(self, now: float, why: str = "") -> None:
        """The connection ended (closed, reset, broken; or ended by the session itself). A
        contact that said goodbye before answering turned us away (it is not in a view): once
        every contact did, back off before the next round."""
        if self.phase is not Phase.CONNECTED:
            return
        self.phase = Phase.DISCONNECTED
        self._outbox, self._control, self._outbox_size = [], [], 0
        self._resend, self._holding = HeldCalls(), False  # waiting still: sent on the next connection
        for results in self.pending.values():  # in flight on it: a copy may have been applied
            results.maybe_delivered()
        if why:
            log.info("connection to %s ended: %s", self._peer, why)
        self._dials.ended(now, "" if self._answered else self._goodbye)

    def refuse(self, refusal: Refused) -> None:
        """Final: the contact refused us (a certificate, another cluster): every call fails."""
        log.error("%s", refusal)
        self.refusal = refusal
        self._close(refusal)

    def close(self, now: float) -> None:
        """The user closed the client: every waiting call fails."""
        if self.error is not None:  # closed already
            return
        self._dials.closed(now)
        self._close(GroupClosed("the client was closed"))

    def broken(self, error: Exception) -> None:
        """The driver cannot go on (its thread failed): every waiting call fails with
        ``error``, and so does every later one, rather than wait for nothing."""
        if self.error is None:
            self._close(error)

    def _close(self, error: Exception) -> None:
        self.phase, self.error = Phase.CLOSED, error
        self._outbox, self._control, self._outbox_size = [], [], 0
        self._resend, self._holding = HeldCalls(), False
        pending, self.pending, self._wire = self.pending, {}, {}
        for results in pending.values():
            results.fail(error)

    # ------------------------------------------------------------------ a connection
    def next_timer(self) -> float | None:
        """When ``tick`` is due (None: not connected)."""
        if self.phase is not Phase.CONNECTED:
            return None
        return max(self._heard, self._ticked) + self._interval

    @property
    def _interval(self) -> float:
        return max(0.05, self.liveness_timeout / 4)

    def tick(self, now: float) -> Disconnect | None:
        """While calls wait, a contact that says nothing (not even a pong) for
        ``liveness_timeout`` is frozen or cut off: fail over. While idle, ping only to stay
        clear of the contact's idle timeout."""
        due = self.next_timer()
        if due is None or now < due:
            return None
        self._ticked = now
        busy = bool(self.pending)
        limit = self.liveness_timeout if busy else self.liveness_timeout + 2 * self._idle_ping
        if now - self._heard > limit:
            log.warning(
                "contact %s sent nothing for %.1f s (frozen or cut off): failing over", self._peer, now - self._heard
            )
            self.connection_lost(now)
            return Disconnect("the contact went silent")
        if busy or now - self._pinged >= self._idle_ping:
            self._pinged = now
            self._control.append(frame(Ping(next(self._pings))))
        return None

    def receive_data(self, now: float, data: bytes) -> Disconnect | None:
        """Bytes read from the contact: answers go to their calls' results."""
        if self.phase is not Phase.CONNECTED:
            return None
        self._heard = now
        for item in self._decoder.feed(data):
            t = type(item)
            if t is AppMessage:
                self._answered = True
                self._on_message(item.data)  # type: ignore[union-attr]
            elif t is Welcome:
                self.max_message_size = item.max_message_size  # type: ignore[union-attr]
                self.max_frame = item.max_frame  # type: ignore[union-attr]
                self._idle_ping = max(0.05, min(IDLE_PING, item.idle_timeout_ms / 3000))  # type: ignore[union-attr]
                advertised: int = item.max_in_flight  # type: ignore[union-attr]  # 0: an older node
                self.window = min(self.max_outstanding, advertised) if advertised > 0 else self.max_outstanding
                self.welcomed = True
                self._send_held()
            elif t is Goodbye:
                reason: str = item.reason  # type: ignore[union-attr,assignment]
                if item.kind is GoodbyeKind.REFUSED:  # type: ignore[union-attr]  # final: no other contact will do
                    self.refuse(Refused(f"{self._peer} {reason}"))
                    return Disconnect(reason)
                self._goodbye = reason
                log.info("contact %s closed the connection: %s", self._peer, reason)
                self.connection_lost(now)
                return Disconnect(reason)
        if self._decoder.broken:
            self.connection_lost(now, "its stream broke")
            return Disconnect("the contact's stream broke")
        return None

    def answers(self) -> Answers | None:
        """What the contact answered since the last time, matched to the results it feeds:
        ``deliver`` it (any thread, no lock needed), then pass what that returns to ``answered``."""
        if not self._answers:
            return None
        items, self._answers = self._answers, []
        return Answers(items)

    def answered(self, call_ids: list[int]) -> None:
        """These calls have every answer they wait for: forget them."""
        pending, wire = self.pending, self._wire
        for call_id in call_ids:
            pending.pop(call_id, None)
            wire.pop(call_id, None)
        if self._holding:
            self._resend.forget(call_ids)
            if self.welcomed:
                self._send_held()

    def _send_held(self) -> None:
        """Once welcomed: the oldest held calls, as many as the window has room for on this
        connection, to the outbox; new calls go straight out again once none is held."""
        held = self._resend
        room = self.window - (len(self.pending) - self._unsent())
        if room > 0 and held:
            calls = held.take(room)
            self._outbox.extend(calls)
            self._outbox_size += sum(map(outbound_size, calls))
        if not held:
            self._holding = False

    def _unsent(self) -> int:
        """Calls waiting that are not on this connection yet (none of them counts against the window)."""
        return len(self._resend)
