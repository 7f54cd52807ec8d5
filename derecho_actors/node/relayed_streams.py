"""Clients' streamed calls relayed to this member by their contact (``stream_relay``), taken as if
the client had streamed them here: the blocks written into one buffer laid out as the call's
multicast payload (``wire.stream_payload.payload_parts``, with the contact as the caller the replicas
answer, as for any call a member relays), the client's BLAKE3 digest checked at the last byte,
then the call multicast in its place in the shard's order: after the calls this node was handed
before it (the outbox is flushed first), as one object through the members' block path.

Bounds: the client's limits apply here too, per client identity (as the contact names it) and
node-wide (``limits.client_stream_bytes``, ``client_max_streams``,
``client_streams_total_bytes``), from the start until the call is handed to the object path
(which bounds the objects it holds); a relay silent for twice ``limits.client_stream_stall_ms``
is dropped. A relay refused (a limit, no replica of the shard here, a bad digest) is answered to
the contact as a refusal of the client's call at once (the contact frees its bytes and tells the
client), never dropped in silence; one whose contact leaves the view is dropped (the client sends
it again through its next contact). Runs on the node's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from blake3 import blake3

from derecho_actors.node.outbox import Outbox
from derecho_actors.node.stream_bounds import StreamBytes, stream_bound
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import encode
from derecho_actors.wire.replies import ReplyTo
from derecho_actors.wire.stream_payload import payload_parts, stamp
from derecho_actors.wire.streams import RelayAbort, RelayBlock, RelayStart, parse_relay
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import ClientLimit, DerechoError, ShardUnavailable, WireError
from runtime.node_api import NodeHandle

log = logging.getLogger("derecho.clients")

__all__ = ["RelayedStreams"]

_moved = "the member it was relayed to holds no replica of its shard now (the view moved); call again"


@dataclass(slots=True, eq=False)
class _In:
    """One call relayed to this member, from its start until its last byte (or its drop)."""

    sender: int
    msg: RelayStart
    buffer: bytearray
    base: int
    suffix: bytes
    received: int
    hasher: Any
    heard: float


class RelayedStreams:
    """The calls relayed to this member by contacts, keyed ``(contact, origin, call id)``: a
    contact's relay is its own (two contacts relaying one client's call are two relays)."""

    def __init__(
        self,
        node: NodeHandle,
        view: Callable[[], View | None],
        holds: Callable[[ShardId], bool],
        outbox: Outbox,
        limits: LimitsSection,
        held: StreamBytes | None = None,
    ) -> None:
        """``holds(shard)``: whether this node holds a replica of ``shard``; ``held``: the bytes
        the node holds for streamed calls (shared with ``client_streams``: the bounds are per
        node and per identity, whichever way a call comes)."""
        self.node = node
        self.view = view
        self.holds = holds
        self.outbox = outbox
        self.limits = limits
        self.streams: dict[tuple[int, int, int], _In] = {}  # (contact, origin, call id) -> relay
        self.held = held if held is not None else StreamBytes()
        self.total = 0  # of it, bytes of the calls relayed here (status, tests)
        self.delivered = 0  # relayed calls multicast (status, tests)
        self.refused = 0
        self._sweeping = False

    def on_data(self, sender: int, data: bytes) -> None:
        """A relayed stream message from member ``sender``."""
        try:
            msg = parse_relay(data)
        except WireError as exc:
            log.warning("dropped a bad relayed stream message from node %s: %s", sender, exc)
            return
        if type(msg) is RelayBlock:
            self._block(sender, msg)
        elif type(msg) is RelayStart:
            self._start(sender, msg)
        elif type(msg) is RelayAbort:
            stream = self.streams.pop((sender, msg.origin, msg.call_id), None)
            if stream is not None:
                self._drop(stream)

    def _start(self, sender: int, msg: RelayStart) -> None:
        start = msg.start
        key = (sender, msg.origin, start.call_id)
        if (old := self.streams.pop(key, None)) is not None:  # sent again (a failover): anew
            self._drop(old)
        refusal = self._why_not(msg)
        if refusal is not None:
            self._refuse(sender, msg, refusal)
            return
        head, suffix = payload_parts(
            sender, start.call_id, start.method, start.size, (msg.origin, msg.session_ns, start.floor, msg.owner)
        )
        self.streams[key] = _In(sender, msg, bytearray(head), len(head), suffix, 0, blake3(), self.node.monotonic())
        self.held.hold(msg.budget, start.size)
        self.total += start.size
        if not self._sweeping:
            self._sweeping = True
            self.node.call_later(self._stall / 4, self._sweep)

    def _why_not(self, msg: RelayStart) -> DerechoError | None:
        start = msg.start
        view = self.view()
        # A shard not held here yet is no reason at the start: the contact may have installed
        # the view that makes this node a member before this node did (it relays again when a
        # member leaves). Whether this node holds it is decided at the last byte.
        if view is None:
            return ShardUnavailable(f"call {start.call_id} was not run: {_moved}")
        if (size := _codec.call_size(start.method, b"") + start.size) > self.outbox.limits.ordered:
            return self.outbox.refusal(f"call {start.call_id} (not run)", size, start.size)
        mine = sum(1 for s in self.streams.values() if s.msg.budget == msg.budget)
        held = self.held
        return stream_bound(self.node.node_id, self.limits, start, mine, held.held.get(msg.budget, 0), held.total)

    def _block(self, sender: int, block: RelayBlock) -> None:
        key = (sender, block.origin, block.call_id)
        stream = self.streams.get(key)
        if stream is None:  # refused or dropped: the rest of it goes nowhere
            return
        start, n = stream.msg.start, len(block.data)
        if block.offset != stream.received or stream.received + n > start.size:
            log.warning(
                "node %s relayed call %d's bytes %d-%d where byte %d of %d was due; refused",
                sender,
                start.call_id,
                block.offset,
                block.offset + n,
                stream.received,
                start.size,
            )
            self._fail(key, stream, WireError(f"call {start.call_id}: relayed out of order; the call was not run"))
            return
        stream.buffer += block.data
        stream.hasher.update(block.data)
        stream.received += n
        stream.heard = self.node.monotonic()
        if stream.received < start.size:
            return
        del self.streams[key]
        if stream.hasher.digest() != start.digest:
            self._fail(
                key,
                stream,
                WireError(
                    f"call {start.call_id}: the {start.size} bytes relayed to node {self.node.node_id} do not match "
                    "the digest the client sent; the call was not run: send it again"
                ),
            )
            return
        self._drop(stream)  # handed to the object path, which holds it from here
        payload = stream.buffer
        payload += stream.suffix
        if self.view() is None or not self.holds(start.shard):  # the view moved meanwhile
            self._refuse(sender, stream.msg, ShardUnavailable(f"call {start.call_id} was not run: {_moved}"))
            return
        self.outbox.flush()  # calls the contact relayed before this one go first
        stamp(payload, self.node.wall_ns())
        self.delivered += 1
        # The object path takes a bytearray as its own (runtime.drivers.object_digests): no copy.
        self.node.send_ordered(start.shard, [payload])  # type: ignore[list-item]

    def _fail(self, key: tuple[int, int, int], stream: _In, error: DerechoError) -> None:
        self.streams.pop(key, None)
        self._drop(stream)
        self._refuse(stream.sender, stream.msg, error)

    def _refuse(self, sender: int, msg: RelayStart, error: DerechoError) -> None:
        self.refused += 1
        view = self.view()
        to = ReplyTo(sender, msg.start.call_id, view.vid if view is not None else 0, msg.origin)
        self.node.send_app(sender, encode(to.refused(self.node.node_id, error)))

    def _drop(self, stream: _In) -> None:
        size = stream.msg.start.size
        self.held.release(stream.msg.budget, size)
        self.total -= size

    def on_view(self, view: View) -> None:
        """Relays from contacts that left are dropped: their clients send the calls again."""
        members = set(view.members)
        for key in [k for k in self.streams if k[0] not in members]:
            self._drop(self.streams.pop(key))

    @property
    def _stall(self) -> float:
        return 2 * self.limits.client_stream_stall_ms / 1000

    def _sweep(self) -> None:
        now, stall = self.node.monotonic(), self._stall
        for key, stream in [(k, s) for k, s in self.streams.items() if now - s.heard > stall]:
            log.warning("a call relayed by node %s sent nothing for %.1f s; dropped", stream.sender, now - stream.heard)
            self._fail(
                key,
                stream,
                ClientLimit(
                    f"refused by node {self.node.node_id}: call {stream.msg.start.call_id} relayed to it sent nothing "
                    f"for {stall:.1f} s (twice limits.client_stream_stall_ms); it was dropped, not run: send it again"
                ),
            )
        self._sweeping = bool(self.streams)
        if self._sweeping:
            self.node.call_later(stall / 4, self._sweep)

    def status(self) -> dict[str, int]:
        """Relays in progress here and their bytes, delivered and refused (``status``)."""
        return {
            "relayed_in": len(self.streams),
            "relayed_in_bytes": self.total,
            "relayed_delivered": self.delivered,
            "relayed_refused": self.refused,
        }
