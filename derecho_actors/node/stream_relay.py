"""A client's streamed call relayed by its contact, which holds no replica of the call's shard, to
a member that does: block by block as the blocks arrive, never in one frame.

The contact keeps receiving the call into its one buffer (``client_streams``) and forwards each
block to the member (``relayed_streams`` there) through the queue of messages to members
(``answer_queue.member_queue``: paced by the member's link, in order with the client's other
calls relayed to that member). The last block is forwarded only once the call is whole and its
digest checked here, after the client's calls made before it (``client_stream_calls``): the
member multicasts the call when its last byte arrives, so it is ordered after them.

The contact keeps the buffer until a replica answers, as it does for a call it multicasts itself:
if the member leaves first, the call goes again, from its first byte, to another member (under
the same session and call number: applied once), and if this node has become a member of the
shard meanwhile it multicasts the call itself. A relay dropped before its last byte (the client
went away, a limit, a bad digest) tells the member to free what it holds. Runs on the node's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from derecho_actors.node.answer_queue import AnswerQueue
from derecho_actors.node.stream_bounds import CallerSession
from derecho_actors.wire.streams import (
    StreamStart,
    relay_abort_data,
    relay_block_data,
    relay_block_key,
    relay_start_data,
)
from runtime.core.layout import ShardId
from runtime.core.view import View

__all__ = ["RELAY_BLOCK", "StreamRelay", "relay_target"]

RELAY_BLOCK = 1 << 20
"""Bytes of arguments per relayed block: a client's block size, so each forwards as it came."""


def relay_target(members: Sequence[int], origin: int) -> int:
    """The member a client's calls to a shard are relayed to: one per client session, as its
    ordinary calls are (``ClientProxy.take_call``), so all its calls to the shard keep order."""
    return members[origin % len(members)]


@dataclass(slots=True, eq=False)
class _Relay:
    target: int
    start: StreamStart
    head: bytes  # the message that starts the relay (sent again to a new member)
    payload: bytearray  # the contact's buffer: the call's multicast payload as far as it came
    base: int  # where the arguments start in ``payload``
    budget: str  # whose bytes it uses (``stream_bounds.budget_of``)
    forwarded: int = 0  # bytes of arguments handed to the queue for ``target``
    whole: bool = False  # the last block has gone too


class StreamRelay:
    """A contact's relays of its clients' streamed calls, one per ``(origin, call id)``, from
    the stream's start until a replica answers (its buffer is kept that long, so a member that
    leaves first gets the call again from its first byte)."""

    def __init__(
        self,
        to_members: AnswerQueue[int],
        local: Callable[[tuple[int, int], StreamStart, bytearray], None],
        lost: Callable[[tuple[int, int], StreamStart, View], None],
        node_id: int,
    ) -> None:
        """``to_members``: the contact's queue of messages to members; ``local(key, start,
        payload)``: multicast a whole call here (this node became a member of its shard);
        ``lost(key, start, view)``: the shard has no member left to relay a whole call to."""
        self.to_members = to_members
        self.local = local
        self.lost = lost
        self.node_id = node_id
        self.relays: dict[tuple[int, int], _Relay] = {}  # (origin, call id) -> its relay
        self.relayed = 0  # calls whose relay began (status, tests)
        self.resent = 0  # relays begun again at another member

    def begin(
        self,
        target: int,
        start: StreamStart,
        tail: CallerSession,
        budget: str,
        payload: bytearray,
        base: int,
    ) -> None:
        """Start relaying ``start`` (of the session ``tail`` = (origin, session_ns, owner)) to
        ``target``; ``payload``: the contact's buffer, the arguments from ``base``."""
        origin, session_ns, owner = tail
        head = relay_start_data(start, origin, session_ns, owner, budget)
        relay = _Relay(target, start, head, payload, base, budget)
        key = (origin, start.call_id)
        if (old := self.relays.get(key)) is not None and not old.whole:  # streamed again: anew
            self._unqueue(key, old)
            if old.target != target:  # the new start frees it there, else the abort does
                self.to_members.send(old.target, relay_abort_data(origin, start.call_id))
        self.relays[key] = relay
        self.relayed += 1
        self.to_members.send(target, head)

    def progress(self, origin: int, call_id: int, received: int, payload: bytearray) -> None:
        """``received`` bytes of the arguments are in ``payload``: forward those not forwarded.
        Only the relay of that very buffer: a client that reconnects streams the same call
        again on its new connection while the old one may still be draining here."""
        relay = self.relays.get((origin, call_id))
        if relay is not None and relay.payload is payload:
            self._forward(origin, relay, received)

    def finish(self, origin: int, call_id: int, payload: bytearray) -> bool:
        """The call is whole and checked here (in ``payload``): forward its last bytes (the
        member multicasts it on the last). False if no relay of that buffer runs (begin one)."""
        relay = self.relays.get((origin, call_id))
        if relay is None or relay.payload is not payload:
            return False
        self._forward(origin, relay, relay.start.size)
        relay.whole = True
        return True

    def pinned(self, origin: int, shard: ShardId, members: Sequence[int], skip: int = 0) -> int | None:
        """The member a relay of session ``origin`` to ``shard`` (but that of call ``skip``)
        still runs to, if it is one of ``members``: that session's next calls to the shard go
        there too. A relay keeps the member it began with, while ``relay_target`` moves when a
        view adds a member, and this node, promoted into the shard, would run the calls itself;
        replicas take a session's call arriving after a later one as applied already, so a
        streamed call and the call after it sent two ways could be lost."""
        for (o, call_id), relay in self.relays.items():
            if o == origin and call_id != skip and relay.start.shard == shard and relay.target in members:
                return relay.target
        return None

    def drop(self, origin: int, call_id: int) -> None:
        """The call's bytes are free here (answered, refused or dropped): forget its relay, and
        if its last block never went, take its blocks not yet written out of the queue to the
        member (else a client streaming and closing while the member's link is backed up piles
        up copies outside every bound) and tell the member to free what it holds of it."""
        relay = self.relays.pop((origin, call_id), None)
        if relay is not None and not relay.whole:
            self._unqueue((origin, call_id), relay)
            self.to_members.send(relay.target, relay_abort_data(origin, call_id))

    def _unqueue(self, key: tuple[int, int], relay: _Relay) -> None:
        """Take the blocks of ``relay`` (of call ``key``) still waiting for its member out of
        the queue: those after its start frame, if that is still queued. Blocks of the same
        call ahead of it are an earlier copy's, whole and relayed before (a failover back
        here): the member must still get them all, or that copy is never multicast."""
        queued = self.to_members.queued.get(relay.target)
        if not queued:
            return
        items = list(queued)
        first = next((i for i, m in enumerate(items) if m is relay.head), 0)
        tail = [m for m in items[first:] if not isinstance(m, bytes) or relay_block_key(m) != key]
        if len(tail) < len(items) - first:
            queued.clear()
            queued.extend(items[:first] + tail)

    def queued(self, budget: str | None = None) -> int:
        """Bytes of relayed blocks copied into the queue to members and not yet written there
        (of relays using ``budget``; of all, if None): held here as much as the buffers, so
        counted against the same bounds when a stream starts (``client_streams``)."""
        if not self.relays:
            return 0
        relays, n = self.relays, 0
        for queue in self.to_members.queued.values():
            for m in queue:
                if isinstance(m, bytes) and (key := relay_block_key(m)) is not None:
                    relay = relays.get(key)
                    if relay is not None and (budget is None or relay.budget == budget):
                        n += len(m)
        return n

    def _forward(self, origin: int, relay: _Relay, upto: int) -> None:
        view = memoryview(relay.payload)
        base, call_id = relay.base, relay.start.call_id
        offset = relay.forwarded
        while offset < upto:
            n = min(RELAY_BLOCK, upto - offset)
            data = relay_block_data(origin, call_id, offset, view[base + offset : base + offset + n])
            self.to_members.send(relay.target, data)
            offset += n
        relay.forwarded = offset

    def moved(self, gone: set[int]) -> list[tuple[int, int]]:
        """The relays (``(origin, call id)``) whose member left."""
        return [key for key, relay in self.relays.items() if relay.target in gone]

    def resend(self, key: tuple[int, int], view: View) -> None:
        """A relay whose member left: the call goes again, from its first byte, to a member of
        ``view`` (a call applied already is not applied again); or, if this node now holds a
        replica of the shard, a whole call is multicast here (one not yet whole is, when it
        is); a whole call whose shard has no member is ``lost``."""
        relay = self.relays[key]
        members = view.layout.members_of(relay.start.shard)
        if self.node_id in members or not members:
            del self.relays[key]
            if relay.whole:
                if members:
                    self.local(key, relay.start, relay.payload)
                else:
                    self.lost(key, relay.start, view)
            return
        relay.target = relay_target(members, key[0])
        self.resent += 1
        self.to_members.send(relay.target, relay.head)
        done, relay.forwarded = relay.forwarded, 0
        self._forward(key[0], relay, done)

    def shard_of(self, key: tuple[int, int]) -> ShardId:
        """The shard of relay ``key`` (the failover handles a session's calls shard by shard)."""
        return self.relays[key].start.shard

    def status(self) -> dict[str, int]:
        """Relays running, begun and begun again (``app.client_streams`` in ``status``)."""
        return {"relaying": len(self.relays), "relayed": self.relayed, "relays_resent": self.resent}
