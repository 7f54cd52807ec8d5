"""Clients' streamed calls at their contact: blocks written into one buffer, checked, then
multicast as one object.

A client's ordered call too large for one frame arrives as a start (fields, size, BLAKE3 digest)
and blocks in order (``wire.streams``, sent by ``caller.large_calls``). At the start the call
is checked as any call (``admit``) and against the bounds below; then one buffer is started,
laid out as the multicast payload of that one call (``payload_parts``: its head now, the blocks
appended as they come, its tail after the last), so the blocks land where the replicas will read
them and the whole call is never copied on this node. The buffer grows with what arrives, not
with what the start declares (one of the declared size, zero-filled, cost ~0.23 s of the loop
per 512 MiB and could be asked for again and again). Each block extends a running BLAKE3
hash; at the last the digest must match the start's, or the call is refused (a ``WireError``)
and never delivered. A whole call goes on (``deliver``) as the node's own large calls go: one
payload above the object threshold in the shard's order; when this node holds no replica of
the shard, the blocks are relayed as they come (``stream_relay``).

Bounds, per client identity (all its connections; without TLS, per client host), each refused at
the start with a ``ClientLimit`` that says what to do: bytes held for its streamed calls
(``limits.client_stream_bytes``: from the start until a replica answers, since the payload is
held here until it is delivered) and calls streaming at once (``limits.client_max_streams``);
node-wide, bytes held for every client (``limits.client_streams_total_bytes``). A stream that
sends nothing for ``limits.client_stream_stall_ms``, or that averages less than
``MIN_STREAM_RATE`` beyond that allowance (a trickle that would hold its bytes for ever), is
dropped and refused; one whose connection closes is dropped at once: either frees its buffer.
A start for a call already streaming on the same connection is a protocol error (a client
starts a call again only on a new connection): the connection is closed. Runs on the node's
loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from blake3 import blake3

from derecho_actors.node.client_table import describe
from derecho_actors.node.stream_bounds import CallerSession, StreamBytes, budget_of, stream_bound
from derecho_actors.wire.replies import ReplyEntry
from derecho_actors.wire.stream_payload import payload_parts
from derecho_actors.wire.streams import StreamBlock, StreamStart, parse_stream
from runtime.config import LimitsSection
from runtime.core.view import View
from runtime.errors import ClientLimit, DerechoError, WireError
from runtime.node_api import ClientConn, NodeHandle

if TYPE_CHECKING:
    from derecho_actors.node.relayed_streams import RelayedStreams
    from derecho_actors.node.stream_relay import StreamRelay

log = logging.getLogger("derecho.clients")

__all__ = ["MIN_STREAM_RATE", "ClientStreams", "Sent"]

MIN_STREAM_RATE = 1 << 20
"""Bytes per second a stream must average, after ``limits.client_stream_stall_ms`` of
allowance: a stream of ``size`` bytes is dropped once it has run ``stall + size / rate``."""
ANSWER_WAIT = 120.0
"""Seconds a delivered call's bytes count against its identity at most while no answer comes
(a shard lost meanwhile): then they are taken as gone."""

Admit = Callable[[ClientConn, StreamStart], DerechoError | None]
Deliver = Callable[[ClientConn, StreamStart, bytearray, int], None]
Refuse = Callable[[ClientConn, int, DerechoError], None]
Begun = Callable[[ClientConn, StreamStart, bytearray, int, str], bool]
Progress = Callable[[int, int, int, bytearray], None]
Ended = Callable[[int, int], None]


@dataclass(slots=True, eq=False)
class _Stream:
    conn: ClientConn
    who: str
    budget: str  # whose bytes it uses (``budget_of``: the identity, or the host without TLS)
    start: StreamStart
    buffer: bytearray  # the payload's head and the arguments received so far
    base: int  # where the arguments start in ``buffer``
    suffix: bytes  # the payload's tail, appended after the last block
    received: int
    hasher: Any
    heard: float
    started: float


class Sent(NamedTuple):
    """A whole call handed on (``deliver``) and not answered yet: its bytes stay counted
    against ``budget`` until an answer comes, or for ``ANSWER_WAIT`` after ``when``."""

    budget: str
    size: int  # bytes: this copy's, and an earlier copy's still unanswered (one call, streamed again)
    when: float


class ClientStreams:
    def __init__(
        self,
        node: NodeHandle,
        limits: LimitsSection,
        admit: Admit,
        deliver: Deliver,
        refuse: Refuse,
        tail: Callable[[ClientConn], CallerSession],
    ) -> None:
        """``admit(conn, start)``: why the call may not be taken (as any call; None: it may);
        ``deliver(conn, start, payload, base)``: the whole, checked call, to multicast (or
        relay); ``refuse(conn, call_id, error)``: tell the client; ``tail(conn)``: the
        session's ``(origin, session_ns, owner)`` its calls carry."""
        self.node = node
        self.limits = limits
        self.admit = admit
        self.deliver = deliver
        self.refuse = refuse
        self.tail = tail
        self.streams: dict[tuple[ClientConn, int], _Stream] = {}
        # Bytes held per budget: streams in progress, and calls delivered whose answer is to come;
        # shared with ``relayed_in`` (the calls relayed here), so the bounds are per node.
        self.bytes = StreamBytes()
        self.sent: dict[tuple[int, int], Sent] = {}  # (origin, call id) -> what it holds
        # Streams relayed as they arrive to a member of their shard (``stream_relay``), set by
        # ``client_stream_calls``: ``begun(conn, start, buffer, base, budget)`` says whether a
        # stream is relayed; ``progress(origin, call_id, received, buffer)`` after each block but the
        # last; ``ended(origin, call_id)`` once its bytes are free here (answered, refused,
        # dropped). In progress and relayed: (origin, call id) -> the stream's key.
        self.begun: Begun = lambda conn, start, buffer, base, budget: False
        self.progress: Progress = lambda origin, call_id, received, buffer: None
        self.ended: Ended = lambda origin, call_id: None
        self.relaying: dict[tuple[int, int], tuple[ClientConn, int]] = {}
        self.relay: StreamRelay | None = None  # this node's relays out, and those relayed to it
        self.relayed_in: RelayedStreams | None = None
        self.departed: Callable[[set[int], View], None] = lambda gone, view: None
        self.refused = 0  # streamed calls refused (status, tests)
        self.dropped_blocks = 0  # blocks of no stream in progress (one refused or abandoned)
        self._sweeping = False

    # ------------------------------------------------------------------ from the client
    def on_data(self, conn: ClientConn, data: bytes) -> None:
        """A stream message from a client's connection (``wire.streams.is_stream``)."""
        if getattr(conn, "closed", False):
            return
        try:
            msg = parse_stream(data)
        except WireError as exc:
            log.warning("closing the connection of %s: it sent a bad stream message: %s", describe(conn)[0], exc)
            conn.close()
            return
        if type(msg) is StreamBlock:
            self._block(conn, msg)
        else:
            self._start(conn, msg)  # type: ignore[arg-type]

    def _start(self, conn: ClientConn, start: StreamStart) -> None:
        key = (conn, start.call_id)
        if key in self.streams:  # a client starts a call again only on a new connection
            who = describe(conn)[0]
            log.warning("closing the connection of %s: it started call %d again while streaming it", who, start.call_id)
            conn.close()
            self.forget(conn)
            return
        refusal = self._bound(conn, start) or self.admit(conn, start)
        if refusal is not None:
            self.refused += 1
            self.refuse(conn, start.call_id, refusal)
            return
        who = describe(conn)[0]
        budget = budget_of(conn)
        origin, session_ns, owner = self.tail(conn)
        head, suffix = payload_parts(
            self.node.node_id, start.call_id, start.method, start.size, (origin, session_ns, start.floor, owner)
        )
        now = self.node.monotonic()
        self.streams[key] = _Stream(conn, who, budget, start, bytearray(head), len(head), suffix, 0, blake3(), now, now)
        self._hold(budget, start.size)
        stream = self.streams[key]
        if self.begun(conn, start, stream.buffer, stream.base, budget):
            self.relaying[(conn.origin, start.call_id)] = key
        if not self._sweeping:
            self._sweeping = True
            self.node.call_later(self._stall / 4, self._sweep)

    def _bound(self, conn: ClientConn, start: StreamStart) -> DerechoError | None:
        """Why this identity (or the node) may not stream this call now. A call streamed again
        by its session (a failover, back to this node) is one call, not two: its copy still
        streaming on another connection is dropped (the client gave that one up), and the bytes
        of its copy delivered already, held until an answer comes, are forgiven up to this
        copy's size (refused, the call would seem not run, though that copy runs at every
        replica): a call of more than half the bound can be streamed twice, not again and again."""
        budget = budget_of(conn)
        self._expire()
        origin, call_id = self.tail(conn).origin, start.call_id
        for old in [s for k, s in self.streams.items() if k[1] == call_id and k[0] is not conn]:
            if self.tail(old.conn).origin == origin:
                del self.streams[(old.conn, call_id)]
                self._drop(old)
        mine = sum(1 for s in self.streams.values() if s.budget == budget)
        held, total = self.bytes.held.get(budget, 0), self.bytes.total
        delivered = self.sent.get((origin, call_id))
        if delivered is not None and delivered.budget == budget:  # at most one copy's worth
            free = min(delivered.size, start.size)
            held, total = held - free, total - free
        if self.relay is not None and self.relay.relays:  # its copies queued to members, unwritten
            held, total = held + self.relay.queued(budget), total + self.relay.queued()
        return stream_bound(self.node.node_id, self.limits, start, mine, held, total)

    def _block(self, conn: ClientConn, block: StreamBlock) -> None:
        stream = self.streams.get((conn, block.call_id))
        if stream is None:  # refused or dropped: its blocks still on the way go nowhere
            self.dropped_blocks += 1
            return
        n, start = len(block.data), stream.start
        if block.offset != stream.received or stream.received + n > start.size:
            self._fail(
                stream,
                WireError(
                    f"call {start.call_id}: a block at byte {block.offset} ({n} bytes) where byte {stream.received} "
                    f"of {start.size} was due; the call was not run"
                ),
            )
            return
        stream.buffer += block.data  # grows in place (large buffers: the allocator remaps, no copy)
        stream.hasher.update(block.data)
        stream.received += n
        stream.heard = self.node.monotonic()
        if stream.received < start.size:
            if self.relaying and self.relaying.get((conn.origin, start.call_id)) == (conn, start.call_id):
                self.progress(conn.origin, start.call_id, stream.received, stream.buffer)
            return
        del self.streams[(conn, start.call_id)]
        stream.buffer += stream.suffix
        if stream.hasher.digest() != start.digest:
            log.warning("%s: streamed call %d refused: its bytes do not match their digest", stream.who, start.call_id)
            self._fail(
                stream,
                WireError(
                    f"call {start.call_id}: the {start.size} bytes received do not match the digest the client "
                    "sent (corrupted on the way); the call was not run: send it again"
                ),
            )
            return
        if self.relaying.get(k2 := (conn.origin, start.call_id)) == (conn, start.call_id):
            del self.relaying[k2]  # whole: ``deliver`` sends its last block
        # Held until a replica answers (the payload is this node's until it is delivered).
        # A copy delivered before (a failover back here) is still in the order, unanswered: its
        # bytes stay counted with this one's until the answer, so streaming one call again and
        # again cannot hold more than the bound allows (``_bound`` forgives one copy's worth).
        key2 = (self.tail(conn).origin, start.call_id)
        before, size = self.sent.get(key2), start.size
        if before is not None:
            if before.budget == stream.budget:
                size += before.size
            else:
                self._release(before.budget, before.size)
        self.sent[key2] = Sent(stream.budget, size, self.node.monotonic())
        self.deliver(conn, start, stream.buffer, stream.base)

    # ------------------------------------------------------------------ ends
    def replied(self, entries: list[ReplyEntry]) -> None:
        """Answers came (``ClientProxy.forward``): delivered calls' bytes are free."""
        sent, relaying = self.sent, self.relaying
        for e in entries:
            held = sent.pop((e[3], e[0]), None)
            if held is not None:
                self._release(held.budget, held.size)
                self.ended(e[3], e[0])
            elif relaying and (key := relaying.pop((e[3], e[0]), None)) is not None:
                # Refused by the member it was relayed to before its last byte came: the client
                # has its answer and stops sending; what arrived is freed now.
                stream = self.streams.pop(key, None)
                if stream is not None:
                    self.refused += 1
                    self._drop(stream)
                self.ended(e[3], e[0])

    def not_sent(self, conn: ClientConn, call_id: int) -> None:
        """A whole call ``deliver`` did not send (refused there): its bytes are free."""
        held = self.sent.pop((self.tail(conn).origin, call_id), None)
        if held is not None:
            self._release(held.budget, held.size)
            self.ended(conn.origin, call_id)

    def forget(self, conn: ClientConn) -> None:
        """The connection closed: its streams in progress are dropped, their buffers freed."""
        for key in [k for k in self.streams if k[0] is conn]:
            self._drop(self.streams.pop(key))

    def _fail(self, stream: _Stream, error: DerechoError) -> None:
        self.streams.pop((stream.conn, stream.start.call_id), None)
        self._drop(stream)
        self.refused += 1
        self.refuse(stream.conn, stream.start.call_id, error)

    def _drop(self, stream: _Stream) -> None:
        self._release(stream.budget, stream.start.size)
        stream.buffer = bytearray()
        origin, call_id = stream.conn.origin, stream.start.call_id
        if self.relaying.get((origin, call_id)) == (stream.conn, call_id):  # not a newer stream's
            del self.relaying[(origin, call_id)]
            self.ended(origin, call_id)

    @property
    def total(self) -> int:
        """Bytes held for streamed calls at this node (those relayed here too)."""
        return self.bytes.total

    @property
    def held(self) -> dict[str, int]:
        """Those bytes per budget (``stream_bounds.budget_of``)."""
        return self.bytes.held

    def _hold(self, budget: str, size: int) -> None:
        self.bytes.hold(budget, size)

    def _release(self, budget: str, size: int) -> None:
        self.bytes.release(budget, size)

    def _expire(self) -> None:
        """Delivered calls never answered within ``ANSWER_WAIT`` (a shard lost meanwhile): taken
        as gone, so their bytes count against no one for ever (few: one per call delivered)."""
        now = self.node.monotonic()
        for key, sent in list(self.sent.items()):
            if now - sent.when > ANSWER_WAIT:
                del self.sent[key]
                self._release(sent.budget, sent.size)
                self.ended(key[0], key[1])

    @property
    def _stall(self) -> float:
        return self.limits.client_stream_stall_ms / 1000

    def _sweep(self) -> None:
        """Streams silent for ``limits.client_stream_stall_ms``, or slower than
        ``MIN_STREAM_RATE`` beyond it, are dropped (and refused)."""
        now, stall = self.node.monotonic(), self._stall
        for stream in [s for s in self.streams.values() if now - s.started > stall + s.start.size / MIN_STREAM_RATE]:
            log.warning(
                "%s: streamed call %d sent %d of %d bytes in %.1f s, under %d bytes/s; dropped",
                stream.who,
                stream.start.call_id,
                stream.received,
                stream.start.size,
                now - stream.started,
                MIN_STREAM_RATE,
            )
            self._fail(
                stream,
                ClientLimit(
                    f"refused by node {self.node.node_id}: call {stream.start.call_id} streamed {stream.received} of "
                    f"{stream.start.size} bytes in {now - stream.started:.1f} s, slower than a large call may hold "
                    f"its bytes here ({MIN_STREAM_RATE} bytes/s after limits.client_stream_stall_ms); it was dropped, "
                    "not run: send it again over a faster link, or in smaller calls"
                ),
            )
        for stream in [s for s in self.streams.values() if now - s.heard > stall]:
            log.warning(
                "%s: streamed call %d sent nothing for %.1f s; dropped (limits.client_stream_stall_ms)",
                stream.who,
                stream.start.call_id,
                now - stream.heard,
            )
            self._fail(
                stream,
                ClientLimit(
                    f"refused by node {self.node.node_id}: call {stream.start.call_id} streamed nothing for "
                    f"{stall:.1f} s (limits.client_stream_stall_ms); it was dropped, not run: send it again"
                ),
            )
        self._sweeping = bool(self.streams)
        if self._sweeping:
            self.node.call_later(stall / 4, self._sweep)

    def on_view(self, gone: set[int], view: View) -> None:
        """A new view: relays to members that left go again (``departed``, before the client
        proxy sends its other relayed calls again); relays from them are dropped."""
        if gone:
            self.departed(gone, view)
        if self.relayed_in is not None:
            self.relayed_in.on_view(view)

    def status(self) -> dict[str, int]:
        """What is held for streamed calls now (it falls back to 0 when they end), and relayed."""
        out = {"streams": len(self.streams), "held_bytes": self.total, "waiting_answers": len(self.sent)}
        out["refused"] = self.refused
        for part in (self.relay, self.relayed_in):
            if part is not None:
                out.update(part.status())
        return out
