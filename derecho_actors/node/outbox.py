"""The multicast outbox: ordered calls this node multicasts, queued per shard during a loop turn
and sent at its end in as few multicast messages as the size limit allows (one message is one
slot, one stability step and one upcall at every replica, however many calls it carries).

Every ordered call leaves through here: this node's own, those it relays for members and
clients, and linearizable reads. A call is checked against the size limit before it is queued,
so none is dropped later for being too large. Runs on the node's loop.
"""

from __future__ import annotations

from collections import OrderedDict
from operator import itemgetter
from typing import Final

from derecho_actors.node.call_limits import CallLimits
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.call_views import MIN_VIEW_BYTES
from runtime.core.layout import ShardId
from runtime.errors import PayloadTooLarge
from runtime.node_api import NodeHandle

MAX_SENT: Final = 512
"""Payloads :class:`SentBatches` keeps the calls of, at most (the oldest go first): more than
a shard's window of own messages in flight, so all but those lost in a view change are used."""
MAX_SENT_BYTES: Final = 16 << 20
"""... and bytes at most, counted as :data:`CALL_BYTES` per call kept besides the payload's own:
payloads never delivered here (a shard whose replica does not run on this node, a wedged
view) cannot hold more than about this."""
CALL_BYTES: Final = 256
"""What one kept call costs in memory besides its share of the payload: its tuple and the
objects not shared with the other calls (~210 bytes measured for 2,000-call payloads of small
calls: the payload bytes alone were a fifth of what such entries held)."""

_ARGS: Final = itemgetter(3)


class SentBatches:
    """The calls of the multicast payloads this node sent, by payload, until it delivers them.

    A contact multicasts its clients' calls and then, as a replica, runs them: the core
    delivers its own messages as the very bytes objects it was given, so their calls are known
    without decoding the payload again (``msgpack`` and a check per call: ~1 µs a call of the
    contact's CPU, measured with cProfile). Found by identity (a payload kept here cannot be
    freed, so its ``id`` is not reused meanwhile); any other payload is decoded as always.
    Payloads large enough to be read as views (``call_views``) are not kept: decoded, their
    arguments are views, and so they stay."""

    def __init__(self, limit: int = MAX_SENT, max_bytes: int = MAX_SENT_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0  # of the payloads kept, and CALL_BYTES per call kept
        self._calls: OrderedDict[int, tuple[bytes, list[_codec.OrderedCall], int]] = OrderedDict()

    def sent(self, payload: bytes, calls: list[_codec.PendingCall], now: int) -> None:
        """``payload`` carries ``calls`` (as :func:`codec.encode_ordered` made it at ``now``).
        Kept only if decoding it would give back these calls exactly: arguments of type
        ``bytes`` (a view or a ``bytearray`` decodes as ``bytes``)."""
        if len(payload) >= MIN_VIEW_BYTES or set(map(type, map(_ARGS, calls))) != {bytes}:
            return
        stamp = (now,)
        weight = len(payload) + CALL_BYTES * len(calls)
        self._calls[id(payload)] = (payload, [c + stamp for c in calls], weight)
        self.bytes += weight
        while len(self._calls) > self.limit or self.bytes > self.max_bytes:  # the oldest, not delivered: forgotten
            self.bytes -= self._calls.popitem(last=False)[1][2]

    def decode(self, payload: bytes | memoryview) -> list[_codec.OrderedCall] | _codec.UndecodableBatch:
        """The calls of a delivered payload: as sent if this node sent it, else decoded."""
        kept = self._calls.pop(id(payload), None) if self._calls else None
        if kept is not None:
            self.bytes -= kept[2]
            if kept[0] is payload:  # (it is: a kept payload's id stays its own)
                return kept[1]
        return _codec.decode_ordered(payload)


class Outbox:
    def __init__(self, node: NodeHandle, limits: CallLimits) -> None:
        """``limits``: how large a call may be, by the way it travels."""
        self.node = node
        self.limits = limits
        self._queued: dict[ShardId, list[_codec.PendingCall]] = {}
        self._held = False  # the caller sends what it queues before its step ends (``hold``)
        self.sent = SentBatches()  # what it sent, for this node's replicas (``ReplicaHost.decode``)

    def too_large(self, method: str, args: bytes, framed: bool = False) -> int | None:
        """The size of a call too large to multicast (``framed``: to send in one frame to
        another node first), None if it fits."""
        size = _codec.call_size(method, args)
        limit = self.limits.framed if framed else self.limits.ordered
        return size if size > limit else None

    def max_args(self, method: str) -> int:
        """The most bytes of arguments a call of ``method`` may have to be multicast (as
        :meth:`too_large` decides: larger is too large), for a caller checking many calls of
        one method against the limit with one comparison each."""
        return self.limits.ordered - _codec.call_size(method, b"")

    def refusal(self, what: str, size: int, args: int, framed: bool = False) -> PayloadTooLarge:
        """The error for a call of ``size`` bytes (``args`` of them arguments) over its limit."""
        limits = self.limits
        limit, key = (limits.framed, limits.framed_key) if framed else (limits.ordered, limits.ordered_key)
        return PayloadTooLarge(
            f"{what}: the call takes {size} bytes (arguments {args}); the group's limit is {limit} ({key}): "
            f"{limits.advice(key)}"
        )

    def check_size(self, what: str, method: str, args: bytes, framed: bool = False) -> None:
        """Raise ``PayloadTooLarge`` (to the caller's thread) for a call that cannot be sent."""
        size = self.too_large(method, args, framed)
        if size is not None:
            raise self.refusal(what, size, len(args), framed)

    def check_p2p_size(self, what: str, method: str, args: bytes) -> None:
        """Raise ``PayloadTooLarge`` (to the caller's thread) for a P2P call too large for the
        one frame it travels in."""
        size = _codec.call_size(method, args)
        if size > self.limits.p2p:
            raise PayloadTooLarge(
                f"{what}: the P2P call takes {size} bytes (arguments {len(args)}); a P2P call travels in one "
                f"frame, at most {self.limits.p2p} bytes here (multicast.max_frame_bytes): send less per call, "
                "or make the method @ordered (large ordered calls go in blocks)"
            )

    def submit(self, shard: ShardId, call: _codec.PendingCall) -> None:
        """Queue an ordered call; everything queued in one loop turn goes out together."""
        queued = self._queued.get(shard)
        if queued is not None:
            queued.append(call)
            return
        self._queued[shard] = [call]
        if len(self._queued) == 1 and not self._held:
            self.node.call_later(0, self._flush)

    def submit_all(self, shard: ShardId, calls: list[_codec.PendingCall]) -> None:
        """Queue ordered calls in order, as many :meth:`submit` would (a client's frame of
        calls in one step)."""
        if not calls:
            return
        queued = self._queued.get(shard)
        if queued is not None:
            queued += calls
            return
        self._queued[shard] = list(calls)
        if len(self._queued) == 1 and not self._held:
            self.node.call_later(0, self._flush)

    def send_empty(self, shard: ShardId) -> None:
        """An empty multicast now: every replica delivers it and runs nothing, so every
        member's delivered count moves (what a stable read may wait for)."""
        self.node.send_ordered(shard, [_codec.empty_ordered(self.node.wall_ns())])

    def hold(self) -> None:
        """Queue without arming the turn's timer until :meth:`release`, which sends what was
        queued meanwhile. Why: a serial client's call is sent the moment its frame is read
        (``ClientTurns``), so the timer would fire a turn later with nothing to send: one timer
        handle and heap push and pop per call at the contact, for nothing."""
        self._held = True

    def release(self) -> None:
        """End :meth:`hold`: what was queued since goes out now."""
        self._held = False
        if self._queued:
            self._flush()

    def flush(self) -> None:
        """Send what is queued now (a caller that took a chunk of calls, so the next stage
        starts on them while it takes the next chunk); the turn's own flush then finds less."""
        if self._queued:
            self._flush()

    def _flush(self) -> None:
        if not self._queued:
            # The turn's timer after a lone call already sent by ``flush`` (a serial
            # client's every call): nothing to send, no clock to read.
            return
        out, self._queued = self._queued, {}
        now = self.node.wall_ns()
        for shard, calls in out.items():
            payloads = _codec.encode_ordered(calls, self.limits.batch, now)
            if len(payloads) == 1:  # the common case: one payload, these calls
                self.sent.sent(payloads[0], calls, now)
            self.node.send_ordered(shard, payloads)
