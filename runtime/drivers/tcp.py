"""TCP transport on asyncio: one outgoing connection per peer for what this node sends, the
peer's own connection for what it receives, so each direction is one FIFO byte stream.

Every connection opens with a ``Hello`` naming the speaker; a member's frames are handed to
the node driver under that id, a client's (``status``) are answered on the same connection.
Frames are length-prefixed msgpack (``runtime.wire.codec``); a malformed frame is logged and
dropped, a stream that cannot be re-synchronised (absurd length prefix) or a speaker that
never says hello is closed. Nothing a peer sends can raise out of this module.

Back-pressure: the protocol's windows bound what is in flight, so the kernel buffers and the
small per-peer queue stay bounded; a peer that stops reading past ``max_backlog`` bytes is
cut off and reported lost (the core then suspects it), never buffered without limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ConfigError
from runtime.drivers.transport import ClientHandler, FramesHandler, PeerLostHandler
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import Goodbye, Hello

log = logging.getLogger("derecho.tcp")

HELLO_TIMEOUT = 5.0


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f'address "{address}" is not "host:port"')
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class _Peer:
    """What this node sends to one peer: its connection and what waits for it."""

    node_id: int
    conn: _Connection | None = None
    queued: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    connecting: bool = False
    failures: int = 0


class _Connection(asyncio.Protocol):
    def __init__(self, tcp: TcpTransport, peer: _Peer | None, contact: str | None = None) -> None:
        self.tcp = tcp
        self.peer = peer  # set for outgoing connections to members
        self.contact = contact  # set for outgoing connections to a contact address
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(tcp.max_frame)
        self.speaker: int | None = None  # node id from the Hello (incoming connections)
        self.role: str | None = None
        self.closed = False
        self.stale = False  # replaced by a newer process of the same node: close quietly
        self.doomed = False  # its node left the view: this connection belongs to the past
        self.incarnation: int | None = None
        self._hello_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tcp.all_connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.peer is not None or self.contact is not None:
            self.transport.write(frame(Hello(self.tcp.node_id, self.tcp.cluster, "member", self.tcp.incarnation)))
        else:
            loop = asyncio.get_running_loop()
            self._hello_timer = loop.call_later(HELLO_TIMEOUT, self._no_hello)

    def _no_hello(self) -> None:
        if self.speaker is None and not self.closed:
            log.warning("closing a connection that never said hello (%s)", self._where())
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            items = self.decoder.feed(data)
        except Exception:  # the decoder must never raise; if it does, drop the stream
            log.exception("frame decoder failed on data from %s", self._where())
            self.close()
            return
        good = []
        for item in items:
            if isinstance(item, Exception):
                self.tcp.bad_frames += 1
                log.warning("dropped a bad frame from %s: %s", self._where(), item)
                continue
            if self.speaker is None and self.peer is None and self.contact is None:
                if not self._hello(item):
                    return
                continue
            good.append(item)
        if self.decoder.broken:
            log.warning("closing the stream from %s: it cannot be re-synchronised", self._where())
            self.close()
        if good and not self.closed:
            if self.peer is not None or self.contact is not None:
                # Peers answer on their own connections; here come only their Hello (which
                # process we reached) and a Goodbye if they refuse us.
                for item in good:
                    if isinstance(item, Goodbye):
                        log.error("%s refused us: %s", self._where(), item.reason)
                        self.tcp.refusals.append(item.reason)
                    elif isinstance(item, Hello) and self.incarnation is None and item.role == "member":
                        self.incarnation = item.incarnation
                        if self.peer is not None and item.node_id == self.peer.node_id:
                            self.tcp._met(item.node_id, item.incarnation)
                return
            if self.role == "client":
                for item in good:
                    self.tcp.on_client(self, item)
            else:
                self.tcp.on_frames(self.speaker, good)  # type: ignore[arg-type]

    def _hello(self, item: Any) -> bool:
        if not isinstance(item, Hello) or item.role not in ("member", "client"):
            log.warning("closing a connection from %s that did not open with hello", self._where())
            self.close()
            return False
        if item.cluster != self.tcp.cluster:
            log.warning("refusing node %s of cluster %r (this is %r)", item.node_id, item.cluster, self.tcp.cluster)
            self.send(frame(Goodbye(f"this is cluster {self.tcp.cluster!r}, not {item.cluster!r}")))
            self.close()
            return False
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.speaker, self.role = item.node_id, item.role
        if item.role == "member":
            self.incarnation = item.incarnation
            self.tcp._met(item.node_id, item.incarnation)
            self.tcp.incoming.setdefault(item.node_id, set()).add(self)
            # Say who answers, so the dialler can tell this process from a later one.
            self.send(frame(Hello(self.tcp.node_id, self.tcp.cluster, "member", self.tcp.incarnation)))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tcp.all_connections.discard(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.tcp._connection_lost(self)

    def pause_writing(self) -> None:
        pass  # the peer's backlog check below decides; the protocol's windows bound the rest

    def resume_writing(self) -> None:
        pass

    # ----------------------------------------------------------------- ours
    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def retire(self) -> None:
        """Close without reporting a loss: the process at the other end is gone for good."""
        self.stale = True
        self.close()

    def _where(self) -> str:
        if self.peer is not None:
            return f"node {self.peer.node_id}"
        if self.speaker is not None:
            return f"node {self.speaker}"
        if self.transport is not None:
            return str(self.transport.get_extra_info("peername"))
        return "?"


class TcpTransport:
    """See the module docstring. Create it on the loop thread, then ``await start()``."""

    def __init__(
        self,
        node_id: int,
        listen: str,
        cluster: str,
        on_frames: FramesHandler,
        on_peer_lost: PeerLostHandler,
        on_client: ClientHandler,
        max_frame: int = 64 << 20,
        max_backlog: int = 256 << 20,
    ) -> None:
        self.node_id = node_id
        self.listen = listen
        self.cluster = cluster
        self.on_frames = on_frames
        self.on_peer_lost = on_peer_lost
        self.on_client = on_client
        self.max_frame = max_frame
        self.max_backlog = max_backlog
        self.addresses: dict[int, str] = {}
        self.peers: dict[int, _Peer] = {}
        self.incoming: dict[int, set[_Connection]] = {}
        self.contacts: dict[str, _Connection] = {}
        self.contact_reached = False
        self.refusals: list[str] = []
        self.incarnation = time.time_ns()
        self.incarnations: dict[int, int] = {}
        self.all_connections: set[_Connection] = set()  # clients' too, so close() ends them
        self.bad_frames = 0
        self._server: asyncio.base_events.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host, port = split_address(self.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self, None), host, port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"node.listen: cannot listen on {self.listen}: {exc.strerror or exc}") from None

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------------ sending
    def learn(self, node_id: int, address: str) -> None:
        old = self.addresses.get(node_id)
        if old != address:
            self.addresses[node_id] = address
            if old is not None:
                self._reset_outgoing(node_id)  # it moved: a new process

    def _met(self, node_id: int, incarnation: int) -> None:
        """A connection from ``node_id`` said hello: if it is a new process of that node, the
        connections of the old one are dead ends; retire them without reporting a loss."""
        known = self.incarnations.get(node_id)
        self.incarnations[node_id] = incarnation
        if known is not None and known != incarnation:
            log.info("node %s restarted: retiring connections to its previous process", node_id)
            conns = self.incoming.get(node_id, set())
            for conn in list(conns):
                if conn.incarnation != incarnation:
                    conn.retire()
                    conns.discard(conn)
            peer = self.peers.get(node_id)
            if peer is not None and peer.conn is not None and peer.conn.incarnation not in (None, incarnation):
                self._reset_outgoing(node_id)

    def doom(self, node_id: int) -> None:
        """``node_id`` left the view: its connections belong to that past process. Their end
        is not news, and if the id comes back, it is a new process they cannot reach."""
        peer = self.peers.get(node_id)
        if peer is not None and peer.conn is not None:
            peer.conn.doomed = True
        for conn in self.incoming.get(node_id, ()):
            conn.doomed = True

    def welcome(self, node_id: int) -> None:
        """``node_id`` joined the view: drop what is left of its previous process."""
        peer = self.peers.get(node_id)
        if peer is not None and peer.conn is not None and peer.conn.doomed:
            peer.conn.retire()
            peer.conn = None
        conns = self.incoming.get(node_id, set())
        for conn in [c for c in conns if c.doomed]:
            conn.retire()
            conns.discard(conn)

    def _reset_outgoing(self, node_id: int) -> None:
        peer = self.peers.get(node_id)
        if peer is not None and peer.conn is not None:
            peer.conn.retire()
            peer.conn = None

    def send(self, node_id: int, data: bytes) -> None:
        if self._closing:
            return
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self.peers[node_id] = _Peer(node_id)
        if peer.conn is not None and not peer.conn.closed:
            if peer.conn.buffered() > self.max_backlog:
                log.warning("node %s stopped reading (%d bytes waiting): cutting it off", node_id, peer.conn.buffered())
                peer.conn.close()
                return
            peer.conn.send(data)
            return
        peer.queued.append(data)
        peer.queued_bytes += len(data)
        if peer.queued_bytes > self.max_backlog:
            log.warning("dropping %d bytes queued for unreachable node %s", peer.queued_bytes, node_id)
            peer.queued.clear()
            peer.queued_bytes = 0
            self.on_peer_lost(node_id)
        if not peer.connecting:
            # Mark before the task runs: a second send in this loop turn must not open a
            # second connection (two streams to one peer would reorder its frames).
            peer.connecting = True
            self._spawn(self._connect(peer))

    async def _connect(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closing and peer.node_id in self.peers:
                address = self.addresses.get(peer.node_id)
                if address is None:
                    log.warning("no address known for node %s; dropping what is queued for it", peer.node_id)
                    peer.queued.clear()
                    peer.queued_bytes = 0
                    return
                try:
                    host, port = split_address(address)
                    _, conn = await loop.create_connection(lambda: _Connection(self, peer), host, port)
                except (OSError, ConfigError) as exc:
                    peer.failures += 1
                    if peer.failures in (1, 10) or peer.failures % 100 == 0:
                        log.info("cannot reach node %s at %s (%s); retrying", peer.node_id, address, exc)
                    await asyncio.sleep(min(0.5, 0.02 * peer.failures))
                    continue
                peer.failures = 0
                peer.conn = conn  # type: ignore[assignment]
                if peer.queued:
                    conn.send(b"".join(peer.queued))  # type: ignore[attr-defined]
                    peer.queued.clear()
                    peer.queued_bytes = 0
                return
        finally:
            peer.connecting = False

    def send_to_address(self, address: str, data: bytes) -> None:
        conn = self.contacts.get(address)
        if conn is not None and not conn.closed and conn.transport is not None:
            conn.send(data)
            return
        self._spawn(self._contact(address, data))

    async def _contact(self, address: str, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            host, port = split_address(address)
            _, conn = await loop.create_connection(lambda: _Connection(self, None, contact=address), host, port)
        except (OSError, ConfigError) as exc:
            log.info("contact %s unreachable: %s", address, exc)
            return
        self.contact_reached = True
        self.contacts[address] = conn  # type: ignore[assignment]
        conn.send(data)  # type: ignore[attr-defined]

    def reply(self, handle: Any, data: bytes) -> None:
        if isinstance(handle, _Connection):
            handle.send(data)

    def backlog(self, node_id: int) -> int:
        peer = self.peers.get(node_id)
        if peer is None:
            return 0
        return peer.queued_bytes + (peer.conn.buffered() if peer.conn is not None else 0)

    def forget(self, node_id: int) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is not None and peer.conn is not None:
            peer.conn.close()
        for conn in self.incoming.pop(node_id, set()):
            conn.close()

    # ------------------------------------------------------------------ losses
    def _connection_lost(self, conn: _Connection) -> None:
        if self._closing or conn.stale or conn.doomed:
            if conn.peer is not None and conn.peer.conn is conn:
                conn.peer.conn = None
            return
        if conn.peer is not None:
            peer = conn.peer
            if peer.conn is conn:
                peer.conn = None
            current = self.incarnations.get(peer.node_id)
            if self.peers.get(peer.node_id) is peer and conn.incarnation in (None, current):
                self.on_peer_lost(peer.node_id)
        elif conn.contact is not None:
            if self.contacts.get(conn.contact) is conn:
                del self.contacts[conn.contact]
        elif conn.speaker is not None and conn.role == "member":
            conns = self.incoming.get(conn.speaker)
            if conns is not None:
                conns.discard(conn)
            if conn.incarnation == self.incarnations.get(conn.speaker):
                self.on_peer_lost(conn.speaker)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for peer in self.peers.values():
            if peer.conn is not None:
                peer.conn.close()
        for conns in self.incoming.values():
            for conn in conns:
                conn.close()
        for conn in self.contacts.values():
            conn.close()
        for conn in list(self.all_connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)
