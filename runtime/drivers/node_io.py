"""The event loop and the transport of a running node, in one object made when its loop runs.

Before ``NodeDriver.run`` there is neither; from then on both exist for as long as the node
does. So the phases of a node (``runtime.drivers.node_phases``) are given a ``NodeIO`` and never
ask whether the loop or the transport is there yet. It also keeps what the driver schedules
on that loop for the core: one flush of its output per loop turn (so frames to a peer leave in
one write; under load it lets the frames read in its turn go first, see ``FLUSH_DEFERRALS``),
and its next timer.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, TypeVar

from runtime.config import NodeConfig
from runtime.drivers.tcp import TcpTransport, TransportSecurity
from runtime.drivers.transport import (
    ClientClosedHandler,
    ClientHandler,
    FramesHandler,
    PeerLostHandler,
    Transport,
)
from runtime.wire.codec import frame
from runtime.wire.control import Welcome

T = TypeVar("T")

# How many times a flush lets callbacks that became ready in its loop turn run first (frames
# read from other peers in the same select, a timer). Their effects then leave in the same
# writes: under load, one ack per peer per turn instead of one per frame read, and fewer
# wake-ups of the peers. Bounded, so input arriving without pause cannot hold output back.
FLUSH_DEFERRALS = 1

# A loop whose last flush is older than this is idle (under load flushes follow each other
# turn after turn): a client's lone call then goes out at once (``flush_if_idle``), as there
# is nothing to gather it with: calls made one at a time are multicast in the turn that read
# them, not two turns later.
IDLE_S = 0.0002


def tcp_transport(
    config: NodeConfig,
    security: TransportSecurity,
    incarnation: int,
    on_frames: FramesHandler,
    on_peer_lost: PeerLostHandler,
    on_client: ClientHandler,
    on_client_closed: ClientClosedHandler,
) -> TcpTransport:
    """The TCP transport ``config`` asks for (not listening yet: ``await start()``), which hands
    what arrives to the given handlers; every client that connects is told its limits first."""
    return TcpTransport(
        config.node.id,
        config.node.listen,
        config.node.cluster,
        on_frames,
        on_peer_lost,
        on_client,
        max_frame=config.multicast.max_frame_bytes,
        security=security,
        incarnation=incarnation,
        on_client_closed=on_client_closed,
        client_welcome=Welcome(
            config.client_call_limit(),
            security.client_max_frame,
            config.security.client_idle_timeout_ms,
            config.limits.client_max_in_flight,
        ),
    )


class NodeIO:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: Transport,
        on_flush: Callable[[], None],
        on_tick: Callable[[], None],
    ) -> None:
        """``on_flush``: carry out what the core has ready; ``on_tick``: the core's timer fired."""
        self.loop = loop
        self.transport = transport
        self.stopped = asyncio.Event()  # set when the node is to stop: run() then closes everything
        self._on_flush = on_flush
        self._on_tick = on_tick
        self._flush_scheduled = False
        self._deferred = 0
        self._flushed_at = 0.0  # loop time at the end of the last flush
        self.idle_s = IDLE_S
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # The time the core asked for last (``wake_at``): its whole answer, the earliest of
        # everything it waits for, so a timer set for an earlier ask that fires before it
        # has nothing to do (see ``_wake``).
        self._wanted: float | None = None

    def now(self) -> float:
        return self.loop.time()

    def send_to_address(self, address: str, msg: Any) -> None:
        """``msg`` encoded, to whoever listens at ``address`` (a node not in a view with us)."""
        self.transport.send_to_address(address, frame(msg))

    def schedule_flush(self) -> None:
        """Flush once the callbacks of this loop turn have run (at most one flush is pending)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        if not self._flush_scheduled:
            return  # flush_now ran meanwhile (a timer): nothing is left for this one
        # asyncio's loop keeps the callbacks of the current turn in ``_ready`` (other loops,
        # uvloop's, do not expose it: they flush at once).
        ready = getattr(self.loop, "_ready", None)
        if ready and self._deferred < FLUSH_DEFERRALS:
            self._deferred += 1
            self.loop.call_soon(self._scheduled_flush)
            return
        self.flush_now()

    def flush_now(self) -> None:
        self._deferred = 0
        self._flush_scheduled = False
        self._on_flush()
        self._flushed_at = self.loop.time()

    def flush_if_idle(self) -> None:
        """Flush now if a flush is scheduled and the loop was idle (see ``IDLE_S``)."""
        if self._flush_scheduled and self.loop.time() - self._flushed_at >= self.idle_s:
            self.flush_now()

    def wake_at(self, at: float | None) -> None:
        """Fire ``on_tick`` at loop time ``at`` (None: no change).

        Each ask is the core's whole answer (``Ready.wakeup_at``: the earliest time anything
        in it is due), so the latest ask replaces the earlier ones. A timer already set for an
        earlier time is kept rather than moved (one timer handle per ask would cost more than
        the rare early wake-up); when it fires before the time asked last, it only re-arms."""
        if at is None:
            return
        self._wanted = at
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._timer_at = None
        wanted = self._wanted
        if wanted is not None and wanted > self.loop.time():
            # What this timer was set for went out with a flush since (a lazy row rode along
            # with a push, owed nulls with a send): the core's latest ask is later, and a tick
            # now would be a full step and flush that finds nothing due.
            self._timer_at = wanted
            self._timer = self.loop.call_at(wanted, self._wake)
            return
        self._on_tick()

    def answer(self, fn: Callable[[], T], timeout: float) -> T | None:
        """``fn()`` run on the loop, asked from another thread (the metrics server's); None if
        the loop does not answer within ``timeout``, or has closed."""
        loop = self.loop
        if loop.is_closed():
            return None
        box: list[T] = []
        done = threading.Event()

        def take() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop closed meanwhile
            return None
        return box[0] if done.wait(timeout) and box else None
