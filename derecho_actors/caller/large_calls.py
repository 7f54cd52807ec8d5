"""A client's calls too large for one frame, streamed to its contact in blocks.

An ordered call whose arguments do not fit the contact's frame limit (its ``Welcome``) is not
put in a frame of calls: ``ClientSession`` hands it here. It goes as a start frame (its fields,
size and BLAKE3 digest, as objects' blocks are checked) and then blocks of its arguments, each a small header and a ``memoryview`` of
the caller's own bytes, so nothing is copied on this side (``wire.streams``). The contact
writes the blocks into one buffer, checks the digest and multicasts the call as one object
(``node.client_streams``); its replies come back as any call's.

Streams go one after the other, in call order, a window of blocks at a time (``parts``): the
socket asks for more once it has written what it took, so pings never wait behind more than a
window. Calls keep their order (the guide's promise: calls from one caller keep it): a call
made while a stream before it is still being written is held here (``StreamingSession``) and
written after that stream's last block, and a stream does not start before the calls made
ahead of it are written; the contact multicasts a streamed call when its last block arrives,
before it reads the next frame, so the order the contact takes calls in is the order they were
made. After a failover the same fence applies to the calls sent again. After a failover every unanswered stream starts again from its
first byte on the new contact, under the same call number (replicas apply it once, as any
resent call). A P2P call too large for one frame cannot be streamed (it runs at one replica,
not through the order): it is refused at the caller. Not thread-safe: the session's driver
serialises calls to it (under the ``Client``'s lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blake3 import blake3

from derecho_actors.caller.calls import Outbound, Request, outbound, outbound_size, request_size
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session import ClientSession
from derecho_actors.caller.session_events import Disconnect, Phase
from derecho_actors.wire.streams import block_frame, start_frame
from runtime.errors import PayloadTooLarge

__all__ = ["BLOCK_SIZE", "FRAME_SLACK", "CallStreams", "StreamingSession", "WINDOW"]

BLOCK_SIZE = 1 << 20
"""Bytes of arguments per block (at most the contact's frame limit less ``FRAME_SLACK``)."""
FRAME_SLACK = 8 << 10
"""Room a frame keeps beyond a call's arguments (its envelope, a block's header)."""
WINDOW = 4 << 20
"""Bytes of blocks handed to the socket at a time: what a ping may wait behind."""


@dataclass(slots=True)
class _Stream:
    call_id: int
    args: bytes
    start: bytes  # the start frame (made once: a failover sends it again as it is)
    sent: int = -1  # bytes of arguments handed to the socket on this connection (-1: not started)


@dataclass(slots=True)
class CallStreams:
    """The streamed calls of one session waiting for answers, in call order."""

    above: int = 1 << 62  # an ordered call's arguments above this stream (set by the Welcome)
    block: int = BLOCK_SIZE
    calls: dict[int, _Stream] = field(default_factory=dict)
    connected: bool = False

    def limit(self, max_frame: int) -> None:
        """The contact's frame limit (its ``Welcome``): larger calls stream."""
        self.above = max(1, max_frame - FRAME_SLACK - 1024)
        self.block = max(1, min(BLOCK_SIZE, max_frame - FRAME_SLACK))

    def wants(self, request: Request) -> bool:
        """Whether ``request`` streams (``PayloadTooLarge`` for a P2P call too large for a
        frame, which cannot)."""
        if len(request.args) <= self.above:
            return False
        if not request.ordered:
            raise PayloadTooLarge(
                f"{request.what} arguments encode to {len(request.args)} bytes; a P2P call travels in one frame, "
                f"at most {self.above} bytes here (multicast.max_message_size): send less per call, or make the "
                "method @ordered (large ordered calls stream in blocks)"
            )
        return True

    def add(self, request: Request, call: Outbound) -> None:
        """Stream call ``call`` (its wire fields) of ``request``; its digest is taken here."""
        call_id, wire_shard, method, floor = call[0], call[2], call[3], call[8]
        digest = blake3(request.args).digest()
        start = start_frame(call_id, wire_shard, method, floor, len(request.args), digest)
        self.calls[call_id] = _Stream(call_id, request.args, start, -1)

    def drop(self, call_ids: list[int]) -> None:
        """These calls are answered (or refused): stop streaming them."""
        for call_id in call_ids:
            self.calls.pop(call_id, None)

    def connect(self) -> int:
        """A new connection: every stream starts again from its first byte (how many)."""
        self.connected = True
        for s in self.calls.values():
            s.sent = -1
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()
        self.connected = False

    def first_unfinished(self) -> int | None:
        """The first call (in call order) whose stream still has bytes to hand to the socket on
        a connection (or has not started): calls made after it wait for it."""
        for s in self.calls.values():
            if s.sent < len(s.args):
                return s.call_id
        return None

    @property
    def ready(self) -> bool:
        """Whether some stream has bytes still to hand to the socket on this connection."""
        if not self.connected:
            return False
        return any(s.sent < len(s.args) for s in self.calls.values())

    def parts(self, barrier: int | None = None) -> list[bytes | memoryview]:
        """The next window of frames to write, in order (start frames and blocks' parts); no
        stream of a call made after call ``barrier`` starts (that call is written first)."""
        out: list[bytes | memoryview] = []
        if not self.connected:
            return out
        budget = WINDOW
        for s in self.calls.values():
            size = len(s.args)
            if s.sent >= size:
                continue
            if s.sent < 0:
                if barrier is not None and s.call_id > barrier:
                    break
                out.append(s.start)
                s.sent = 0
            view = memoryview(s.args)
            while s.sent < size and budget > 0:
                n = min(self.block, size - s.sent)
                out.extend(block_frame(s.call_id, s.sent, view[s.sent : s.sent + n]))
                s.sent += n
                budget -= n
            if budget <= 0:
                break
        return out


@dataclass(slots=True)
class _Held:
    """A call made while a stream before it is still being written, held until it is."""

    call: Outbound  # its wire fields
    size: int  # what it takes of a frame (``request_size``)


class StreamingSession(ClientSession):
    """A ``ClientSession`` that streams calls too large for one frame (``CallStreams``): what
    ``Client`` drives. A subclass, not more code in the session: the session's hot path (small
    calls) stays as it is but for one comparison of sizes here; the simulator, whose contacts
    take no stream, drives the plain session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = CallStreams()
        self._limited = 0  # the frame limit ``streams`` was told
        # Calls made after a stream still being written, held back until it is (in call order):
        # written before it they could be ordered before it. Only while a stream is open: every
        # path that empties ``streams.calls`` releases or drops them all.
        self._held: list[_Held] = []

    def _release(self) -> None:
        """Move the held calls made before the first unfinished stream (all when none is left)
        to the session's outbox, in order: they are written next."""
        if not self._held or self._holding:  # held calls before them go first (``resend``)
            return
        first = self.streams.first_unfinished()
        # Room on the connection (after a failover the contact's window may be smaller than
        # what waits): held calls go as answers free it. A stream restarting is one call that
        # goes regardless, so in flight may pass the window by the large calls waiting.
        room = self.window - (len(self.pending) - self._unsent())
        n = 0
        for held in self._held:
            if n >= room or (first is not None and held.call[0] > first):
                break
            self._outbox.append(held.call)
            self._outbox_size += held.size
            n += 1
        del self._held[:n]

    def call(self, request: Request) -> QueryResults:
        streams = self.streams
        if len(request.args) <= streams.above or not streams.wants(request):
            results = ClientSession.call(self, request)  # not ``super()``: no object made per call
            # With no stream open (the common case) nothing is held: one test of a dict, no more.
            if (
                streams.calls
                and self.phase is Phase.CONNECTED
                and (self._held or streams.first_unfinished() is not None)
            ):
                size = request_size(request)
                if self._holding:  # held by the session (no Welcome yet): behind the stream instead
                    call = self._resend.take_last()
                else:  # made after a stream still being written: after its last block
                    call = self._outbox.pop()
                    self._outbox_size -= size
                self._held.append(_Held(call, size))
            return results
        if self.error is not None:
            raise self.error
        call_id = next(self._ids)
        results = self._results(request, call_id)  # an ordered call: P2P ones never stream (``wants``)
        call = outbound(request, call_id, self._floor.advance(self.pending, call_id))
        self.pending[call_id] = results  # answered, failed and resent (as a stream) like any call
        streams.add(request, call)
        return results

    def has_output(self) -> bool:
        # ``ClientSession.has_output`` inlined: asked once or twice per call made.
        return bool(self._outbox or self._control) or (
            bool(self.streams.calls) and not self._holding and self.streams.ready
        )

    def stream_output(self) -> list[bytes | memoryview]:
        """The next window of streamed calls' frames, to write after ``output``'s; the driver
        asks again once it has written them (while ``has_output``)."""
        if self._holding:  # streams restart once the calls held before them are sent
            return []
        if not self.streams.calls:
            self._release()
            return []
        parts = self.streams.parts(self._held[0].call[0] if self._held else None)
        self._release()
        return parts

    def connected(self, now: float, address: str, peer: str = "") -> bytes:
        # Every stream starts again; the calls made after the first of them are sent again only
        # once it is written (held), not with the Hello ahead of it.
        later: dict[int, Outbound] = {}
        if self.streams.calls:
            first = next(iter(self.streams.calls))
            later = {call_id: w for call_id, w in self._wire.items() if call_id > first}
            for call_id in later:
                del self._wire[call_id]
        data = super().connected(now, address, peer)
        self._wire.update(later)
        self._held = [_Held(w, outbound_size(w)) for _, w in sorted(later.items())]
        restarted = self.streams.connect()
        if self.connections > 1:
            self.resent += restarted + len(later)
        return data

    def _unsent(self) -> int:
        # A stream counts once it started on this connection (``sent`` is -1 until then).
        return super()._unsent() + len(self._held) + sum(1 for s in self.streams.calls.values() if s.sent < 0)

    def connection_lost(self, now: float, why: str = "") -> None:
        super().connection_lost(now, why)
        self.streams.connected = False
        self._held = []  # pending still: sent again on the next connection

    def _close(self, error: Exception) -> None:
        super()._close(error)
        self.streams.clear()
        self._held = []

    def receive_data(self, now: float, data: bytes) -> Disconnect | None:
        ended = super().receive_data(now, data)
        if self.max_frame != self._limited:  # a Welcome: the contact's frame limit
            self._limited = self.max_frame
            self.streams.limit(self.max_frame)
        return ended

    def answered(self, call_ids: list[int]) -> None:
        streaming = bool(self.streams.calls)
        if streaming:  # before the session counts room: an answered stream is not unsent
            self.streams.drop(call_ids)
        super().answered(call_ids)
        if streaming or self._held:
            self._release()  # a stream refused or answered early no longer holds the calls after it
