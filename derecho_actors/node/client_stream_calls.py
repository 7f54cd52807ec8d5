"""How a client's streamed call (``client_streams``) is taken by the client proxy: checked at
its start as any call of its client (``ClientProxy.check``) and again when whole, then
multicast by this node when it holds a replica of the shard (its buffer as it is: no copy), else
relayed in one frame to a member that does, as ``ClientProxy.take_call`` relays any call.
Runs on the node's loop.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, cast

from derecho_actors.node.call_stats import CallStats
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_streams import ClientStreams, stamp
from derecho_actors.node.client_table import ClientState, ClientTable, Proxied
from derecho_actors.node.outbox import Outbox
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Call, ReplyTo
from derecho_actors.wire.streams import StreamStart
from runtime.config import LimitsSection
from runtime.core.view import View
from runtime.errors import ClientLimit, DerechoError
from runtime.node_api import ClientConn, NodeHandle

__all__ = ["proxy_streams"]


def proxy_streams(proxy: ClientProxy, limits: LimitsSection) -> ClientStreams:
    """The streams of ``proxy``'s clients: checked, delivered and refused as its calls are."""
    glue = _ProxyGlue(proxy)
    return ClientStreams(proxy.node, limits, glue.admit, glue.deliver, glue.refuse, glue.tail)


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

    def check(self, client: ClientState, msg: Call, view: View) -> tuple[str, Sequence[int], DerechoError | None]: ...

    def take_call(self, conn: ClientConn, msg: Call) -> None: ...

    def take_calls(self, conn: ClientConn, calls: Sequence[Call]) -> None: ...


class _ProxyGlue:
    """What a streamed call needs of the client proxy: checked at its start as any call of
    its client (``ClientProxy.check``), multicast whole by this node when it holds a replica of
    the shard (its payload as it is: no copy), else relayed in one frame to a member that does."""

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
        label, members, refusal = proxy.check(client, self._call(start), view)
        if refusal is None and proxy.node_id not in members and size > outbox.limits.framed:
            refusal = outbox.refusal(
                f"call {start.call_id} (not run; node {proxy.node_id} holds no replica of {start.shard} and would relay "
                f"it to one of {list(members)} in one frame: give the client a contact among them)",
                size,
                start.size,
                framed=True,
            )
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
        if proxy.node_id not in view.layout.members_of(start.shard):  # relayed, in one frame
            args = bytes(memoryview(payload)[base : base + start.size])
            proxy.take_call(conn, self._call(start, args))
            return
        client = proxy.table.state(conn)
        proxy.table.add(client, (conn.origin, start.call_id), Proxied(client, start.method, proxy.node.wall_ns()))
        stamp(payload, proxy.node.wall_ns())
        proxy.outbox.flush()  # what this client sent before goes first
        # The object path takes a bytearray as its own (runtime.drivers.object_digests): no copy.
        proxy.node.send_ordered(start.shard, [cast(bytes, payload)])

    def refuse(self, conn: ClientConn, call_id: int, error: DerechoError) -> None:
        view = self.proxy.view()
        to = ReplyTo(self.proxy.node_id, call_id, view.vid if view is not None else 0, conn.origin)
        self.proxy.out.refuse(conn, to, error)

    def tail(self, conn: ClientConn) -> tuple[int, int, int]:
        return conn.origin, conn.incarnation or 0, self.proxy.table.state(conn).owner
