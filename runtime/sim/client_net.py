"""Clients' connections to simulated nodes: what the real driver (``runtime/drivers/tcp.py``,
``node.py``) does for a client, over the simulated network.

A simulated client (the actor layer's ``ClientSession``, driven by ``derecho_actors.sim``)
dials a node; bytes travel the ``SimNetwork`` between the node and one endpoint,
``CLIENT_HOST`` (every client runs on one host, which a partition leaves on the majority's
side), so link delays, partitions and stalls apply to them as to the nodes' own frames. The
node's side does what the driver does: answers the client's Hello with a Welcome (the node's
limits) and its pings with pongs; hands its calls to the app (``AppHooks.on_client_app``), or,
while the node is in no view, says Goodbye and closes; tells the app when the connection
closes (``on_client_closed``); writes the app's replies (``SimNodeHandle.reply_client``). A
node that crashes or stops resets its clients' connections (its kernel does); a stalled node
accepts nothing, reads nothing, answers nothing, until it resumes.

TCP is modelled by how it fails: a frame lost to a partition breaks its connection (nothing
after it arrives, on either side), as a TCP connection that cannot deliver some bytes delivers
none of the later ones; the client learns of it by the silence, the node at once. A client's
own close reaches the node after one link delay even across a cut (a real node would find
out from its idle timeout; the run does not wait for that).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from runtime.node_api import session_origin
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage, Goodbye, GoodbyeKind, Hello, Ping, Pong, Welcome

if TYPE_CHECKING:
    from runtime.sim.cluster import SimCluster

CLIENT_HOST = 0
"""The network endpoint of every simulated client (no node has id 0)."""

CLIENT_FRAME_SLACK = 64 << 10  # a client's frame may exceed the message limit by this much (as the driver allows)


class LinkState(Enum):
    DIALING = "dialing"
    OPEN = "open"
    FAILED = "failed"  # the dial did not complete (refused, timed out)
    CLOSED = "closed"  # ended, by either side or a lost frame


class NodeConn:
    """A client's connection as the node's app sees it (``runtime.node_api.ClientConn``)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.origin = 0  # from the Hello: derived from the identity (none here) and the session
        self.incarnation: int | None = None
        self.closed = False
        self.identity = None  # no TLS in the simulator: limits count per connection
        self.address = f"client:{link.id}"

    def close(self) -> None:
        self.link.net.node_closes(self.link)


@dataclass(eq=False)
class Link:
    """One connection between a client and a node (the client's handle on it: ``send``,
    ``close``; its callbacks: ``on_data(link, bytes)``, ``on_closed(link, why)``)."""

    net: SimClientNet
    id: int
    node: int
    on_dialed: Callable[[Link, str], None]
    on_data: Callable[[Link, bytes], None]
    on_closed: Callable[[Link, str], None]
    state: LinkState = LinkState.DIALING
    life: int = -1  # the node's incarnation that accepted it
    conn: NodeConn | None = None
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    node_done: bool = False  # the node's side has closed (or lost) it
    client_done: bool = False  # the client's side has closed it

    def send(self, data: bytes) -> None:
        self.net.client_sends(self, data)

    def close(self) -> None:
        self.net.client_closes(self)


def node_of(address: str) -> int:
    """The node id of a simulated node's address (``sim:<id>``)."""
    return int(address.rpartition(":")[2])


class SimClientNet:
    """The clients' side of the simulated network, and the nodes' client service."""

    def __init__(self, cluster: SimCluster, dial_timeout: float = 0.05) -> None:
        self.cluster = cluster
        self.dial_timeout = dial_timeout
        self.links: dict[int, list[Link]] = {}  # node id -> its links
        self._ids = itertools.count(1)
        self.frames = 0

    # ------------------------------------------------------------------ the client's side
    def dial(
        self,
        node: int,
        on_dialed: Callable[[Link, str], None],
        on_data: Callable[[Link, bytes], None],
        on_closed: Callable[[Link, str], None],
    ) -> Link:
        """Connect to ``node``: ``on_dialed(link, "")`` once up, ``on_dialed(link, why)`` if
        refused (no process there) or timed out (cut off, or stalled in the handshake)."""
        link = Link(self, next(self._ids), node, on_dialed, on_data, on_closed)
        sched = self.cluster.sched
        sched.at(sched.now + self.dial_timeout, self._dial_timed_out, link)
        self.cluster.net.send(CLIENT_HOST, node, self._syn, link)
        return link

    def client_sends(self, link: Link, data: bytes) -> None:
        if link.state is LinkState.OPEN and not link.client_done:
            self.frames += 1
            self.cluster.net.send(CLIENT_HOST, link.node, self._to_node, (link, data), self._lost)

    def client_closes(self, link: Link) -> None:
        if link.client_done:
            return
        link.client_done = True
        if link.state is LinkState.DIALING:
            link.state = LinkState.FAILED
        elif link.state is LinkState.OPEN:
            link.state = LinkState.CLOSED
        sched = self.cluster.sched
        sched.at(sched.now + self._delay(), self._node_hears_close, link)

    def _dial_timed_out(self, link: Link) -> None:
        if link.state is LinkState.DIALING:
            link.state = LinkState.FAILED
            link.on_dialed(link, "timed out")

    def _syn_ack(self, src: int, link: Link) -> None:
        if link.state is LinkState.DIALING:
            link.state = LinkState.OPEN
            link.on_dialed(link, "")
        elif not link.client_done:  # the client gave up on it meanwhile
            self.client_closes(link)

    def _refused(self, src: int, link: Link) -> None:
        if link.state is LinkState.DIALING:
            link.state = LinkState.FAILED
            link.on_dialed(link, "Connection refused")

    def _to_client(self, src: int, item: tuple[Link, bytes]) -> None:
        link, data = item
        if link.state is LinkState.OPEN and not link.client_done:
            link.on_data(link, data)

    def _reset(self, src: int, item: tuple[Link, str]) -> None:
        link, why = item
        if link.state is LinkState.OPEN and not link.client_done:
            link.state = LinkState.CLOSED
            link.on_closed(link, why)

    # ------------------------------------------------------------------ the node's side
    def _alive(self, link: Link) -> bool:
        node = self.cluster.nodes.get(link.node)
        return node is not None and node.alive and node.life == link.life and not link.node_done

    def _syn(self, src: int, link: Link) -> None:
        cluster = self.cluster
        node = cluster.nodes.get(link.node)
        if node is None or not node.alive:  # no process listens: the kernel refuses
            cluster.net.send(link.node, CLIENT_HOST, self._refused, link)
            return
        if cluster.held(link.node, self._syn, (src, link)):  # a stalled process does no handshake
            return
        link.life = node.life
        link.conn = NodeConn(link)
        self.links.setdefault(link.node, []).append(link)
        cluster.net.send(link.node, CLIENT_HOST, self._syn_ack, link, self._lost)

    def _to_node(self, src: int, item: tuple[Link, bytes]) -> None:
        link, data = item
        if not self._alive(link) or self.cluster.held(link.node, self._to_node, (src, item)):
            return
        conn = link.conn
        assert conn is not None
        for msg in link.decoder.feed(data):
            if link.node_done:
                return
            t = type(msg)
            if t is Hello:
                conn.origin = session_origin("", msg.node_id)  # type: ignore[union-attr]
                conn.incarnation = msg.incarnation  # type: ignore[union-attr]
                self._write(link, frame(self._welcome(link.node)))
            elif t is Ping:
                self._write(link, frame(Pong(msg.nonce)))  # type: ignore[union-attr]
            elif t is AppMessage:
                self._app_message(link, msg.data)  # type: ignore[union-attr]
        if link.decoder.broken:
            self.node_closes(link)

    def _app_message(self, link: Link, data: bytes) -> None:
        cluster = self.cluster
        app = cluster.apps.get(link.node)
        node = cluster.nodes[link.node]
        hooks = app.hooks if app is not None and app.life == link.life else None
        if node.core.view is None or hooks is None or hooks.on_client_app is None:
            why = f"node {link.node} is joining the group and not in a view yet; call another member"
            if hooks is not None and hooks.on_client_app is None:
                why = "this node hosts no replicated types; it answers status requests only"
            self._write(link, frame(Goodbye(why, GoodbyeKind.CLOSED)))  # not final: the client fails over
            self.node_closes(link)
            return
        hooks.on_client_app(link.conn, data)

    def _welcome(self, node_id: int) -> Welcome:
        app = self.cluster.apps.get(node_id)
        config = app.config if app is not None else None
        size = config.multicast.max_message_size if config is not None else 1 << 20
        idle = config.security.client_idle_timeout_ms if config is not None else 30_000
        return Welcome(size, size + CLIENT_FRAME_SLACK, idle)

    def reply(self, conn: NodeConn, messages: tuple[bytes, ...]) -> bool:
        """The app's messages to a client (``NodeHandle.reply_client``), in one write; whether
        the connection still takes writes."""
        link = conn.link
        if not self._alive(link):
            return False
        self._write(link, b"".join(frame(AppMessage(m)) for m in messages))
        return True

    def _write(self, link: Link, data: bytes) -> None:
        self.frames += 1
        self.cluster.net.send(link.node, CLIENT_HOST, self._to_client, (link, data), self._lost)

    def node_closes(self, link: Link) -> None:
        """The node closes the connection (a Goodbye, a client cut off): the app hears of it
        as the driver tells it, from the loop; the client reads the end of the stream."""
        if link.node_done:
            return
        self._forget(link)
        self.cluster.net.send(link.node, CLIENT_HOST, self._reset, (link, "closed by the contact"), self._lost)

    def node_ended(self, node_id: int) -> None:
        """The node's process is gone (crashed, stopped): its kernel resets every connection;
        its app is gone too and hears nothing."""
        for link in self.links.pop(node_id, []):
            if not link.node_done:
                link.node_done = True
                if link.conn is not None:
                    link.conn.closed = True
                self.cluster.net.send(node_id, CLIENT_HOST, self._reset, (link, "connection reset"), self._lost)

    def _node_hears_close(self, link: Link) -> None:
        if self._alive(link):
            if self.cluster.held(link.node, self._node_hears_close, (link,)):
                return
            self._forget(link)

    def _forget(self, link: Link) -> None:
        """The node's side of ``link`` is closed: tell the app (on its loop, as the driver does)."""
        link.node_done = True
        conn = link.conn
        links = self.links.get(link.node)
        if links is not None and link in links:
            links.remove(link)
        if conn is None or conn.closed:
            return
        conn.closed = True
        app = self.cluster.apps.get(link.node)
        if app is not None and app.life == link.life and app.hooks.on_client_closed is not None:
            app.call_soon(app.hooks.on_client_closed, conn)

    def _lost(self, item: Any) -> None:
        """A frame of a connection fell to a cut: the connection is broken, both ways."""
        link = item[0] if isinstance(item, tuple) else item
        if link.state is LinkState.OPEN:
            link.state = LinkState.CLOSED  # the client hears nothing more: its liveness check fails over
        if self._alive(link):
            self._forget(link)

    def _delay(self) -> float:
        net = self.cluster.net
        return net.default.base + net.rng.random() * net.default.jitter
