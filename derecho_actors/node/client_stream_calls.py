"""How a client's streamed call (``client_streams``) is taken by the client proxy: checked at
its start as any call of its client (``ClientProxy.check``) and again when whole, then
multicast by this node when it holds a replica of the shard (its buffer as it is: no copy), else
relayed block by block, as the blocks arrive, to a member that does (``stream_relay``; taken
there by ``relayed_streams``), to the member ``ClientProxy.take_call`` relays the client's
other calls to, so they keep their order. Runs on the node's loop.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, cast

from derecho_actors.node.answer_queue import AnswerQueue
from derecho_actors.node.call_stats import CallStats
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_streams import ClientStreams
from derecho_actors.node.client_table import ClientState, ClientTable, Proxied, Relay
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.relayed_streams import RelayedStreams
from derecho_actors.node.stream_bounds import CallerSession
from derecho_actors.node.stream_relay import StreamRelay, relay_target
from derecho_actors.node.unavailable import unavailable
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Call, ReplyTo, encode
from derecho_actors.wire.stream_payload import stamp
from derecho_actors.wire.streams import StreamStart
from runtime.config import LimitsSection
from runtime.core.view import View
from runtime.errors import ClientLimit, DerechoError, ShardUnavailable
from runtime.node_api import ClientConn, NodeHandle

__all__ = ["proxy_streams"]


def proxy_streams(proxy: ClientProxy, limits: LimitsSection) -> ClientStreams:
    """The streams of ``proxy``'s clients: checked, delivered and refused as its calls are;
    relayed to a member of their shard when this node holds no replica of it (``relay``), and
    those relayed here by other contacts (``relayed_in``, fed by ``dispatch``)."""
    glue = _ProxyGlue(proxy)
    streams = ClientStreams(proxy.node, limits, glue.admit, glue.deliver, glue.refuse, glue.tail)
    streams.relay = glue.relay = StreamRelay(proxy.to_members, glue.local, glue.lost, proxy.node_id)
    streams.relayed_in = RelayedStreams(proxy.node, proxy.view, proxy.host.holds, proxy.outbox, limits, streams.bytes)
    streams.begun = glue.begin
    streams.progress = glue.relay.progress
    streams.ended = glue.relay.drop
    streams.departed = glue.departed
    return streams


class ClientProxy(Protocol):
    """What a streamed call needs of ``client_proxy.ClientProxy`` (which holds the streams)."""

    node: NodeHandle
    node_id: int
    view: Callable[[], View | None]
    outbox: Outbox
    out: ClientOutbox
    table: ClientTable
    stats: CallStats
    streams: ClientStreams
    host: ReplicaHost
    to_members: AnswerQueue[int]

    def check(self, client: ClientState, msg: Call, view: View) -> tuple[str, Sequence[int], DerechoError | None]: ...

    def take_call(self, conn: ClientConn, msg: Call) -> None: ...

    def take_calls(self, conn: ClientConn, calls: Sequence[Call]) -> None: ...


class _ProxyGlue:
    """What a streamed call needs of the client proxy: checked at its start as any call of
    its client (``ClientProxy.check``), multicast whole by this node when it holds a replica of
    the shard (its payload as it is: no copy), else relayed to a member that does."""

    relay: StreamRelay

    def __init__(self, proxy: ClientProxy) -> None:
        self.proxy = proxy

    def _call(self, start: StreamStart, args: bytes = b"") -> Call:
        return Call(start.call_id, 0, start.shard, start.method, True, args, 0, 0, start.floor)

    def admit(self, conn: ClientConn, start: StreamStart) -> DerechoError | None:
        proxy = self.proxy
        view = proxy.view()
        if not conn.origin or view is None:
            return ClientLimit(f"node {proxy.node_id} is not in a view yet; call another member")
        outbox = proxy.outbox
        size = _codec.call_size(start.method, b"") + start.size
        if size > outbox.limits.ordered:
            return outbox.refusal(f"call {start.call_id} (not run)", size, start.size)
        client = proxy.table.state(conn)
        label, _members, refusal = proxy.check(client, self._call(start), view)
        if refusal is not None:
            proxy.stats.done(label, "refused", None)
        return refusal

    def deliver(self, conn: ClientConn, start: StreamStart, payload: bytearray, base: int) -> None:
        proxy = self.proxy
        # Calls this client sent before the stream's last block and still waiting for a loop
        # turn (``ClientTurns``) go first: replicas apply a session's calls in call order and
        # take an earlier call arriving after a later one as applied already, so it would be
        # lost. (At most twice limits.client_max_in_flight calls: beyond, the client is cut off.)
        client = proxy.table.state(conn)
        if client.inbox and not client.closed:
            queued = list(client.inbox)
            client.inbox.clear()
            proxy.take_calls(conn, queued)
        view = proxy.view()
        refusal = self.admit(conn, start)  # again: the view or the client's calls moved meanwhile
        if refusal is not None or view is None:
            proxy.streams.not_sent(conn, start.call_id)
            if refusal is not None:
                self.refuse(conn, start.call_id, refusal)
            return
        members = view.layout.members_of(start.shard)
        if self._relayed(conn.origin, start, members):  # its last block goes now, after the calls above
            # None of this buffer yet: it began while this node held a replica, or another
            # connection of the client streams the same call again meanwhile (it replaced ours).
            if not self.relay.finish(conn.origin, start.call_id, payload):
                self.begin(conn, start, payload, base, proxy.streams.sent[(conn.origin, start.call_id)].budget)
                self.relay.finish(conn.origin, start.call_id, payload)
            return
        self.relay.drop(conn.origin, start.call_id)  # began while this node held none: the member frees it
        client = proxy.table.state(conn)
        proxy.table.add(client, (conn.origin, start.call_id), Proxied(client, start.method, proxy.node.wall_ns()))
        stamp(payload, proxy.node.wall_ns())
        proxy.outbox.flush()  # what this client sent before goes first
        # The object path takes a bytearray as its own (runtime.drivers.object_digests): no copy.
        proxy.node.send_ordered(start.shard, [cast(bytes, payload)])

    def begin(self, conn: ClientConn, start: StreamStart, payload: bytearray, base: int, budget: str) -> bool:
        """A stream began: relay it as it arrives if this node holds no replica of its shard
        (the answers' route set up now, so a member's refusal reaches the client at once)."""
        proxy = self.proxy
        view = proxy.view()
        members = view.layout.members_of(start.shard) if view is not None else ()
        if not members or not self._relayed(conn.origin, start, members):
            return False
        key = (conn.origin, start.call_id)
        client = proxy.table.state(conn)
        if key not in client.calls:
            proxy.table.add(client, key, Proxied(client, start.method, proxy.node.wall_ns()))
        self.relay.begin(self._target(conn.origin, start, members), start, self.tail(conn), budget, payload, base)
        return True

    def _relayed(self, origin: int, start: StreamStart, members: Sequence[int]) -> bool:
        """Whether a streamed call goes to a member rather than multicast here: this node holds
        no replica of its shard, or another call of the session to the shard went to a member
        and is not answered yet (this node was promoted into the shard meanwhile: run here, the
        call could be ordered before that one, and that one taken as applied already)."""
        return self.proxy.node_id not in members or self._pinned(origin, start, members, start.call_id) is not None

    def _target(self, origin: int, start: StreamStart, members: Sequence[int]) -> int:
        """Where a new relay goes: where the session's unanswered calls to the shard went, if
        that is still a member (a view that added a member moves ``relay_target``, and calls of
        one session sent to two members can be ordered out of call order: one then lost)."""
        target = self._pinned(origin, start, members)
        return relay_target(members, origin) if target is None else target

    def _pinned(self, origin: int, start: StreamStart, members: Sequence[int], skip: int = 0) -> int | None:
        """The member of ``members`` the session's unanswered calls to the shard (but call
        ``skip``) went to: streamed ones, relayed in blocks, or small ones."""
        target = self.relay.pinned(origin, start.shard, members, skip)
        if target is not None:
            return target
        for (o, call_id), other in self.proxy.table.relays.items():
            call = other.call
            if (
                o == origin
                and call_id != skip
                and call.ordered
                and call.shard == start.shard
                and other.target in members
            ):
                return other.target
        return None

    def local(self, key: tuple[int, int], start: StreamStart, payload: bytearray) -> None:
        """A whole relayed call whose member left, now that this node holds a replica of its
        shard: multicast here (a copy: the buffer stays this node's until the answer)."""
        stamp(payload, self.proxy.node.wall_ns())
        self.proxy.outbox.flush()
        self.proxy.node.send_ordered(start.shard, [bytes(payload)])

    def departed(self, gone: set[int], view: View) -> None:
        """Relays of streamed calls whose member left go again, each session's in call order
        with its other calls relayed to a member that left (to the same shard): replicas take a
        session's earlier call arriving after a later one as applied already, so the client
        proxy's own retry (``ClientProxy.on_departed``, after this) must not send a later call
        first. Those sent here get their new member, so that retry passes them by."""
        relay, proxy = self.relay, self.proxy
        moved = relay.moved(gone)
        if not moved:
            return
        relays = proxy.table.relays
        shards = {k: relay.shard_of(k) for k in moved}  # before any is handled (and forgotten)
        for origin, shard in {(k[0], s) for k, s in shards.items()}:
            members = view.layout.members_of(shard)
            ours: list[tuple[int, tuple[int, int], Relay | None]] = [
                (k[1], k, None) for k in moved if k[0] == origin and shards[k] == shard
            ]  # only this shard's: each relay is handled once
            if members:  # else the client proxy refuses its calls (no member to send them to)
                ours += [
                    (k[1], k, r)
                    for k, r in relays.items()
                    if k[0] == origin and r.target in gone and r.call.ordered and r.call.shard == shard
                ]
            for _, key, other in sorted(ours, key=lambda t: t[0]):
                if other is None:
                    relay.resend(key, view)
                elif proxy.node_id in members:
                    del relays[key]
                    c = other.call
                    pending = _codec.PendingCall(
                        proxy.node_id, c.call_id, c.method, c.args, origin, c.session_ns, c.floor, c.owner
                    )
                    proxy.outbox.submit(shard, pending)
                else:
                    other.target = relay_target(members, origin)
                    proxy.to_members.offer(other.target, encode(other.call))

    def lost(self, key: tuple[int, int], start: StreamStart, view: View) -> None:
        """A whole relayed call whose member left and whose shard has no member now."""
        proxy = self.proxy
        for conn in list(proxy.table.clients):
            if conn.origin == key[0]:
                proxy.table.drop(key)
                proxy.streams.not_sent(conn, start.call_id)
                self.refuse(
                    conn,
                    start.call_id,
                    ShardUnavailable(
                        f"call {start.call_id} may or may not have been applied (the member it was relayed to left) "
                        f"and cannot be retried now: {unavailable(view, start.shard)}"
                    ),
                )

    def refuse(self, conn: ClientConn, call_id: int, error: DerechoError) -> None:
        self.proxy.table.drop((conn.origin, call_id))  # a relayed call's route, set up at its start
        view = self.proxy.view()
        to = ReplyTo(self.proxy.node_id, call_id, view.vid if view is not None else 0, conn.origin)
        self.proxy.out.refuse(conn, to, error)

    def tail(self, conn: ClientConn) -> CallerSession:
        return CallerSession(conn.origin, conn.incarnation or 0, self.proxy.table.state(conn).owner)
