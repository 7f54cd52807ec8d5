"""TCP transport on asyncio, with mutual TLS: one outgoing connection per peer for what this
node sends, the peer's own connection for what it receives, so each direction is one FIFO byte
stream.

Who is on the other end. With TLS (the default), every connection starts with a TLS 1.3
handshake in which both sides present a certificate of the cluster's CA: a node certificate
names exactly one node id, a client certificate one client name (``runtime.security``). The
dialler then sends a ``Hello``; a member's Hello must name the node id its certificate proves
(and one on ``allowed_members``, if set), a client's must come with a client (or node)
certificate. From then on every frame on that connection is handed to the node driver under
the proven id: a frame cannot claim another sender, and the driver closes a connection whose
frames try (``disconnect``). Outgoing connections check the other way: the process at a
member's address must prove that member's id, so a wrong address (from a confused or lying
peer) leads nowhere. Without TLS (``security.insecure``) the Hello's word is all there is.

Limits against anyone who can connect: the handshake and Hello must finish within
``handshake_timeout``; at most ``max_unauthenticated`` connections may be in that phase, at
most ``max_unauthenticated_per_address`` of them from one host. A newcomer is never refused for
a full pool: the oldest half-open connection of its own host gives way if that host is at its
cap, else the oldest of the host holding the most, hosts of the view's other members last (so a
few addresses reopening sockets that never start TLS cannot lock out a new client, a member
restarting with this node as its contact, or a member's dial). A frame before the Hello may be 64 KiB, a client's frame ``client_max_frame``;
bytes held for partly received frames (and clients' frames waiting for their turn), over all
connections, stay under ``receive_budget`` (a client or unauthenticated connection that would
pass it is closed, a member's is paused until the others drain); a client connection silent for
``client_idle_timeout`` is closed with a Goodbye saying so. A refused party gets one Goodbye
line naming its own problem, never this cluster's name, members or leader. Warnings about
peers are rate-limited (``runtime.drivers.ratelimit``).

Frames are length-prefixed msgpack (``runtime.wire.codec``); a malformed frame is logged and
dropped, a stream that cannot be re-synchronised (absurd length prefix) is closed. Nothing a
peer sends can raise out of this module.

Back-pressure: the protocol's windows bound what is in flight, so the kernel buffers and the
small per-peer queue stay bounded; a peer that stops reading past ``max_backlog`` bytes is
cut off and reported lost (the core then suspects it), never buffered without limit.

Members first, fairness among clients. Members' frames are handled as they arrive: heartbeats,
SST rows and views never wait behind client work. A client's bytes are kept undecoded on its
connection and handled at most ``frames_per_turn`` frames per loop turn; what is left waits
there (one read's worth at most, as its reading is paused meanwhile) and is handled on later
turns, round-robin among the clients with work waiting, while all client work in one turn is
held to about ``CLIENT_WORK_PER_TURN`` seconds. So 20,000 status requests in one write cost the
loop a few milliseconds per turn, not seconds. A client whose replies pass the transport's
high-water mark (it does not read them) has its reading paused until they drain, so it can
queue no more work; one whose unread replies pass ``client_max_backlog`` is cut off with a
warning naming it. A closing connection that does not drain within ``CLOSE_GRACE`` seconds is
aborted, so a peer that never reads cannot keep a closed connection (and its buffers) alive.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from runtime.drivers.ratelimit import RateLimitedLog
from runtime.drivers.tls_stream import TlsStream
from runtime.drivers.transport import (
    BlockDestination,
    ClientClosedHandler,
    ClientHandler,
    ContactProblem,
    FramesHandler,
    PeerLostHandler,
    RowPush,
)
from runtime.errors import ConfigError, WireError
from runtime.node_api import session_origin
from runtime.security.identity import Identity, IdentityError
from runtime.security.kernel_tls import kernel_tls
from runtime.security.revocation import RevocationList
from runtime.security.tls import peer_identity
from runtime.wire.codec import FrameDecoder, decode, frame, welcome_frame
from runtime.wire.control import (
    COMPATIBLE_PROTOCOLS,
    MEMBER_PROTOCOLS,
    PROTOCOL_VERSION,
    Goodbye,
    GoodbyeKind,
    Hello,
    Ping,
    Pong,
    Welcome,
)

log = logging.getLogger("derecho.tcp")

MAX_CONTACTS_KEPT = 256  # contact addresses whose proven node id is remembered
HELLO_MAX_FRAME = 64 << 10  # what an unauthenticated speaker may send in one frame
# Seconds of client work (frames of all clients together) per loop turn; past it, clients'
# frames wait for the next turn. Keeps the loop turning for members' heartbeats whatever the
# clients send; one connection's batch (``frames_per_turn``) may run over it.
CLIENT_WORK_PER_TURN = 0.01
CLOSE_GRACE = 2.0  # seconds a closed connection may take to drain before it is aborted
# A client still holding frames after this many turns of ``frames_per_turn`` sent far more in
# one go than any honest client batches (calls travel in one frame per turn): say who it is.
SLOW_WARN_TURNS = 16
READ_SCRATCH = 256 * 1024  # bytes per read into the scratch buffer (asyncio's own read size)
# A member's read of tiny frames (more than FLOOD_FRAMES, under TINY_FRAME bytes each on
# average) is a flood: honest members batch (a read holds a few pushes of hundreds of bytes or
# more). That connection then reads SMALL_READ bytes per loop turn until a read holds
# ordinary frames again. A node certificate's 8 connections of 10-byte frames made 200k frames
# per turn and stalled the loop past the suspicion timeout.
FLOOD_FRAMES = 512
TINY_FRAME = 48
SMALL_READ = 16 * 1024

# Bytes a member connection may hold unsent (in asyncio's buffer, not yet taken by the kernel)
# for the next large-object block to be written; more blocks wait in the driver's queue and are
# written as the connection drains (resume_writing). 0: a block is written only onto an empty
# buffer, so the kernel takes it straight from the object (``send`` of a view of it) and only
# what its socket buffer cannot take at once is copied into asyncio's; with blocks written while
# up to 1 MiB waited, nearly every block was copied there whole first (measured: see
# _pump_blocks). A heartbeat or an SST push written meanwhile waits behind at most one block
# and the kernel's buffer, never behind every block of every object in flight.
BLOCK_WRITE_LIMIT = 0
# A block is written in slices of at most this many bytes, the next one once the connection has
# taken the last (asyncio 3.11 copies whatever the kernel does not take at once into its own
# buffer: with 4 MiB blocks that was most of every block beyond the socket's buffer, over TLS
# the whole ciphertext's tail). Frames sent to the peer while a block is part written wait
# behind that block (``_Peer.behind``), so the stream stays whole; they wait behind at most
# one block, as before.
BLOCK_SLICE = 256 << 10
_HEADER = struct.Struct(">I")  # a frame's length prefix


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f'address "{address}" is not "host:port"')
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class TransportSecurity:
    """TLS contexts (both None: insecure mode) and the limits on what a connection may cost."""

    server_context: ssl.SSLContext | None = None
    client_context: ssl.SSLContext | None = None
    allowed_members: frozenset[int] = frozenset()
    handshake_timeout: float = 5.0
    max_unauthenticated: int = 64
    receive_budget: int = 256 << 20
    client_idle_timeout: float = 300.0
    client_max_frame: int = (1 << 20) + (64 << 10)
    max_unauthenticated_per_address: int = 8  # half-open connections from one host
    frames_per_turn: int = 64  # frames of one client connection handled per loop turn
    client_max_backlog: int = 8 << 20  # unread replies to one client before it is cut off
    max_clients: int = 4096  # client connections open at once (limits.client_connections)
    max_clients_per_identity: int = 64  # of one identity (limits.client_connections_per_identity)
    revocation: RevocationList | None = None  # revoked certificates, checked at every Hello

    @property
    def tls(self) -> bool:
        return self.server_context is not None


@dataclass(slots=True)
class _Peer:
    """What this node sends to one peer: its connection and what waits for it."""

    node_id: int
    conn: _Connection | None = None
    queued: list[bytes] = field(default_factory=list)
    queued_bytes: int = 0
    connecting: bool = False
    failures: int = 0
    # Blocks of large objects waiting for room on the connection (prefix and header, bytes).
    blocks: deque[tuple[bytes, memoryview]] = field(default_factory=deque)
    # The connection on which the first block of ``blocks`` is part written (its rest is
    # there), and the frames sent meanwhile, which go right after that block.
    partial: _Connection | None = None
    behind: list[bytes] = field(default_factory=list)
    repump: bool = False  # a pump of its blocks is scheduled for the next loop turn


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, tcp: TcpTransport, peer: _Peer | None, contact: str | None = None) -> None:
        self.tcp = tcp
        self.peer = peer  # set for outgoing connections to members
        self.contact = contact  # set for outgoing connections to a contact address
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(tcp.max_frame)  # lowered for clients once they say hello
        self.speaker: int | None = None  # node id (member) or session number (client) from the Hello
        self.role: str | None = None
        self.identity: Identity | None = None  # proven by the TLS handshake
        self.origin = 0  # a client's exactly-once origin (derived from identity and session)
        self.address = "?"
        self.closed = False
        self.stale = False  # replaced by a newer process of the same node: close quietly
        self.doomed = False  # its node left the view: this connection belongs to the past
        self.incarnation: int | None = None
        self.upgrading = False
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._pre = bytearray()  # the first frame, while it arrives
        self.paused = False
        self.held = 0  # bytes of partly received frames counted in the transport's budget
        self.last_heard = 0.0
        self._hello_timer: asyncio.TimerHandle | None = None
        self.host = "?"  # the address without the port: what per-address limits count
        self.accepted_at = 0.0
        self.pending_auth = False  # counted among the unauthenticated (half-open) connections
        # A client's bytes not handled yet (whole frames waiting for a later turn, then a
        # partial one); at most one read's worth, as its reading is paused while frames wait.
        self.inbox: bytes | bytearray = b""
        self.inbox_pos = 0
        self.queued = False  # waiting in the transport's round of clients with frames to handle
        self.counted_as: str | None = None  # the identity whose client connections count this one
        # Bytes per socket read (0: the usual): SMALL_READ while its reads are floods of tiny
        # frames (the TLS layer reads it too).
        self.read_limit = 0
        self.feeding_early = False  # bytes that came before the handshake ended are being handled
        self.turns_queued = 0  # loop turns it has waited in that round, this time
        self.warned_slow = False  # its "slowing" warning is logged once per connection
        self.write_blocked = False  # its unread replies passed the high-water mark
        self.reading_paused = False  # what we last told the transport
        self._linger: asyncio.TimerHandle | None = None
        # Ours to a member, from our Hello until the peer's: what we wrote on it (see _connection_lost).
        self.unanswered: list[bytes] | None = None
        self._into_block = False  # the last buffer given to asyncio was a block's place

    @property
    def outgoing(self) -> bool:
        return self.peer is not None or self.contact is not None

    @property
    def authenticated(self) -> bool:
        return self.speaker is not None or self.outgoing

    # ------------------------------------------------------------ asyncio side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tcp = self.tcp
        peername = transport.get_extra_info("peername")
        self.address = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        self.host = str(peername[0]) if isinstance(peername, tuple) else self.address
        tcp.all_connections.add(self)
        self.last_heard = self.accepted_at = time.monotonic()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.outgoing:
            if not isinstance(transport, TlsStream):  # plain TCP; over TLS, _open calls it after the handshake
                self.outgoing_ready()
            return
        tcp._admit(self)
        loop = asyncio.get_running_loop()
        self._hello_timer = loop.call_later(tcp.security.handshake_timeout, self._no_hello)
        if isinstance(transport, TlsStream):
            self.upgrading = True
            tcp._spawn(self._upgrade(transport))

    def outgoing_ready(self) -> None:
        """Our connection to a member or contact is up (over TLS: its handshake is done):
        check whom it reached, then say hello."""
        tcp = self.tcp
        if tcp.security.tls and not self._check_server():
            return
        if self.transport is not None:
            self.transport.write(frame(Hello(tcp.node_id, tcp.cluster, "member", tcp.incarnation, PROTOCOL_VERSION)))
            self.unanswered = [] if self.peer is not None else None  # kept until the peer's Hello

    async def _upgrade(self, tls: TlsStream) -> None:
        """The TLS handshake on an accepted connection (the count of unauthenticated
        connections was checked before it began, so a flood of handshakes cannot pile up)."""
        tcp = self.tcp
        try:
            await tls.handshake
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            if not self.closed:  # not dropped or timed out by us (that was reported already)
                tcp.warn("handshake", self.address, "TLS handshake with %s failed: %s", self.address, _reason(exc))
            self._teardown()
            return
        except asyncio.CancelledError:
            self._teardown()
            raise
        if self.closed:
            self._teardown()
            return
        self.upgrading = False
        try:
            self.identity = peer_identity(tls.get_extra_info("ssl_object"))
        except IdentityError as exc:
            tcp.warn("identity", self.address, "refusing %s: %s", self.address, exc)
            self._refuse(f"refused: {exc}")
            return
        early, self._early, self._early_bytes = b"".join(self._early), [], 0
        # Handled a piece per loop turn: a flood sent before the handshake ended is read
        # slowly, like one sent after (reading stays paused meanwhile).
        self.feeding_early = True  # reading stays paused until the last piece (no bytes overtake them)
        for at in range(0, len(early), SMALL_READ):
            if self.closed:
                break
            if at:
                await asyncio.sleep(0)
            self.data_received(early[at : at + SMALL_READ])
        self.feeding_early = False
        self._update_reading()  # reading paused while the handshake ended: resumed unless held

    def _check_server(self) -> bool:
        """Outgoing over TLS: the other end must be a node, and the one we meant to reach."""
        tcp = self.tcp
        try:
            identity = peer_identity(self.transport.get_extra_info("ssl_object"))  # type: ignore[union-attr]
        except IdentityError as exc:
            problem = str(exc)
        else:
            self.identity = identity
            if identity.role != "node":
                problem = f"it presented {identity.describe()}'s certificate, not a node's"
            elif self.peer is not None and identity.node_id != self.peer.node_id:
                problem = f"it presented the certificate of {identity.describe()}"
            else:
                revocation = tcp.security.revocation
                revoked = None
                if revocation is not None:
                    revoked = revocation.refusal(self.transport.get_extra_info("ssl_object"))  # type: ignore[union-attr]
                if revoked is None:
                    if self.contact is not None and identity.node_id is not None:
                        tcp.remember_contact(self.contact, identity.node_id)
                    return True
                problem = revoked  # a retired node still listening, or one at a contact address
        target = f"node {self.peer.node_id} at {self.address}" if self.peer is not None else f"contact {self.contact}"
        tcp.warn("server", self.address, "not talking to %s: %s", target, problem)
        tcp.refusals.append(f"{target}: {problem}")
        self.close()
        return False

    def _no_hello(self) -> None:
        if self.speaker is None and not self.closed:
            self.tcp.warn(
                "hello",
                self.address,
                "closing a connection from %s: no %shello within %.1f s",
                self.address,
                "TLS handshake and " if self.tcp.security.tls else "",
                self.tcp.security.handshake_timeout,
            )
            self.close()
            self._teardown()

    # ------------------------------------------------------------ reading into buffers
    # asyncio reads a BufferedProtocol with ``recv_into`` (plain TCP) or a TLS read into a
    # buffer (``SSLObject.read(n, buffer)``). While a member's block body arrives, the buffer we
    # give is the rest of that block's place in its object: the kernel or the TLS layer writes
    # the bytes there, with no bytes object per read, no join of TLS records and no copy by the
    # decoder (measured: ~2 copies of every block byte fewer). Everything else is read into
    # the transport's one scratch buffer and handled before the call returns.
    def get_buffer(self, sizehint: int) -> memoryview:
        room = None if self.upgrading or self.closed else self.decoder.block_room()
        if room is not None:
            self._into_block = True
            return room
        self._into_block = False
        return self.tcp.scratch[: self.read_limit] if self.read_limit else self.tcp.scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_block:
            self._into_block = False
            if self.closed:
                return
            self.last_heard = time.monotonic()
            if self.speaker is not None:
                self.tcp.bytes_in[self.speaker] = self.tcp.bytes_in.get(self.speaker, 0) + nbytes
            self._frames_in(self.decoder.block_filled(nbytes))
            return
        view = self.tcp.scratch[:nbytes]
        if self.role == "member" and not self.upgrading:
            self.data_received(view)  # the decoder copies what it keeps of the scratch
        else:
            self.data_received(bytes(view))  # hellos, clients and TLS upgrades keep their bytes

    def data_received(self, data: bytes | memoryview) -> None:
        if self.upgrading:
            # Decrypted bytes can arrive before _upgrade() has run on the handshake's end and we
            # know the peer's identity (a member starts sending right after its hello): keep
            # them until then. Only a peer whose certificate the handshake accepted gets here,
            # and it may buffer no more than one frame's worth.
            self._early.append(bytes(data))
            self._early_bytes += len(data)
            if self._early_bytes > self.tcp.max_frame:
                self.close()
            elif self._early_bytes >= SMALL_READ and not self.reading_paused and self.transport is not None:
                # No more until we know who speaks: a flood sent into this window was all
                # handled in the turn the handshake ended (up to a frame's 64 MiB at once).
                self.reading_paused = True
                self.transport.pause_reading()
            return
        tcp = self.tcp
        self.last_heard = time.monotonic()
        if self.role == "member" and self.speaker is not None:
            tcp.bytes_in[self.speaker] = tcp.bytes_in.get(self.speaker, 0) + len(data)
        if self.speaker is None and not self.outgoing:
            data = self._take_hello(bytes(data))
            if not data:
                return
        if self.role == "client" and not self.outgoing:
            self._client_data(bytes(data))
            return
        try:
            items = self.decoder.feed(data)
        except Exception:  # the decoder must never raise; if it does, drop the stream
            log.exception("frame decoder failed on data from %s", self._where())
            self.close()
            return
        flooding = len(items) > FLOOD_FRAMES and len(data) < TINY_FRAME * len(items)
        if flooding != bool(self.read_limit):
            self.read_limit = SMALL_READ if flooding else 0
            if flooding:
                tcp.warn(
                    "member-flood",
                    self.address,
                    "%s sent %s frames in %s bytes: reading it slowly",
                    self._where(),
                    len(items),
                    len(data),
                )
        self._frames_in(items)

    def _frames_in(self, items: list[Any]) -> None:
        """What the decoder made of a member's (or our dialled peer's) bytes: act on it."""
        tcp = self.tcp
        self._account()
        good = self._good_frames(items)
        if good and not self.closed:
            if self.outgoing:
                # Peers answer on their own connections; here come only their Hello (which
                # process we reached) and a Goodbye if they refuse us.
                for item in good:
                    if isinstance(item, Goodbye):
                        log.error("%s refused us: %s", self._where(), item.reason)
                        tcp.refusals.append(item.reason)
                        self.unanswered = None  # refused: its end is a loss, not a dial to retry
                    elif isinstance(item, Hello) and self.incarnation is None and item.role == "member":
                        self.incarnation = item.incarnation
                        self.unanswered = None
                        if self.peer is not None and item.node_id == self.peer.node_id:
                            tcp._met(item.node_id, item.incarnation)
                            tcp._pump_blocks(self.peer)
                return
            tcp.on_frames(self.speaker, good)  # type: ignore[arg-type]

    # ------------------------------------------------------------ a client's frames
    def _client_data(self, data: bytes) -> None:
        """Bytes from a client: kept undecoded in the inbox, then at most ``frames_per_turn``
        frames handled now (if this turn's client budget allows) and the rest on later turns,
        with reading paused meanwhile. Decoding lazily keeps a waiting read at its wire size
        (6 bytes per status request) instead of ~90 bytes per decoded frame object."""
        if self.closed:  # closing: what it still sends is not worth handling
            return
        tcp = self.tcp
        if self.inbox_pos >= len(self.inbox):
            self.inbox, self.inbox_pos = data, 0
        else:
            if isinstance(self.inbox, bytes) or self.inbox_pos:
                self.inbox = bytearray(memoryview(self.inbox)[self.inbox_pos :])
                self.inbox_pos = 0
            self.inbox += data
        if not self.queued and tcp._client_budget_left():
            self._serve(tcp.security.frames_per_turn)
        if not self.closed and not self.queued and self._has_frame():
            tcp._enqueue(self)
        self._account()

    def _has_frame(self) -> bool:
        """Whether the inbox holds a whole frame (or a bad length prefix: also work to do,
        which ends with the connection closed)."""
        avail = len(self.inbox) - self.inbox_pos
        if avail < 4:
            return False
        (size,) = _HEADER.unpack_from(self.inbox, self.inbox_pos)
        return size == 0 or size > self.decoder.max_frame or avail >= 4 + size

    def _serve(self, budget: int) -> None:
        """Decode and handle up to ``budget`` whole frames from the inbox, in order; the time
        taken counts against this loop turn's client budget."""
        buf, pos = self.inbox, self.inbox_pos
        end, off, n = len(buf), pos, 0
        max_frame = self.decoder.max_frame
        while n < budget and end - off >= 4:
            (size,) = _HEADER.unpack_from(buf, off)
            if size == 0 or size > max_frame:
                off = end  # the decoder sees the bad prefix too, turns broken, and we close
                break
            if off + 4 + size > end:
                break
            off += 4 + size
            n += 1
        if off == pos:
            return
        chunk = buf[pos:off]  # the whole read itself when it is served at once (no copy)
        if off == end:
            self.inbox, self.inbox_pos = b"", 0
        elif isinstance(buf, bytearray) and off > (1 << 16) and 2 * off > end:
            del buf[:off]  # compact now and then, not at every turn
            self.inbox_pos = 0
        else:
            self.inbox_pos = off
        started = time.perf_counter()
        try:
            items = self.decoder.feed(chunk)
        except Exception:  # the decoder must never raise; if it does, drop the stream
            log.exception("frame decoder failed on data from %s", self._where())
            self.close()
            return
        try:
            self._handle_client(items)
        finally:
            self.tcp._spend(time.perf_counter() - started)

    def _good_frames(self, items: list[Any]) -> list[Any]:
        """The decoded frames of ``items``; bad ones are counted and warned about, and a
        stream that cannot be re-synchronised is closed."""
        tcp = self.tcp
        good = []
        for item in items:
            if isinstance(item, Exception):
                tcp.bad_frames += 1
                tcp.warn("bad-frame", self.address, "dropped a bad frame from %s: %s", self._where(), item)
                continue
            good.append(item)
        if self.decoder.broken:
            tcp.warn("stream", self.address, "closing the stream from %s: it cannot be re-synchronised", self._where())
            self.close()
        return good

    def _handle_client(self, items: list[Any]) -> None:
        tcp = self.tcp
        good = self._good_frames(items)
        for item in good:
            if self.closed:
                break
            if type(item) is Ping:
                self.send(frame(Pong(item.nonce)))
                continue
            try:
                tcp.on_client(self, item)
            except Exception:  # a bug serving one client must not take the node down
                log.exception("serving %s failed; closing its connection", self._where())
                self.close()

    def _update_reading(self) -> None:
        """Pause reading while any reason holds (the receive budget, frames waiting for a
        later turn, unread replies past the high-water mark); resume when none does."""
        want = self.paused or self.queued or self.write_blocked or self.feeding_early
        if want == self.reading_paused or self.closed or self.upgrading or self.transport is None:
            return
        self.reading_paused = want
        if want:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _take_hello(self, data: bytes) -> bytes:
        """Before the hello: gather the first frame alone (at most ``HELLO_MAX_FRAME`` bytes,
        whoever is speaking), act on it, and return what followed it (or b"")."""
        pre = self._pre
        pre += data
        if len(pre) < 4:
            return b""
        size = int.from_bytes(pre[:4], "big")
        if not 0 < size <= HELLO_MAX_FRAME:
            self.tcp.warn(
                "hello", self.address, "closing a connection from %s: its first frame is not a hello", self.address
            )
            self._refuse("refused: the first frame must be a hello")
            return b""
        if len(pre) < 4 + size:
            return b""
        try:
            msg = decode(bytes(pre[4 : 4 + size]))
        except WireError as exc:
            self.tcp.warn("hello", self.address, "closing a connection from %s: bad hello (%s)", self.address, exc)
            self._refuse("refused: the first frame must be a hello")
            return b""
        rest = bytes(pre[4 + size :])
        self._pre = bytearray()
        if not self._hello(msg):
            return b""
        return rest

    def _account(self) -> None:
        """Keep the transport's count of received bytes not handled yet (partial frames, and a
        client's frames waiting for a later turn); act if it is over budget."""
        if self.closed:
            return
        tcp = self.tcp
        held = self.decoder.buffered + len(self.inbox) - self.inbox_pos
        tcp.held_total += held - self.held
        self.held = held
        if tcp.held_total <= tcp.security.receive_budget:
            if tcp.paused:
                tcp._resume_paused()
            return
        if held:
            tcp._over_budget(self)

    @property
    def trusted(self) -> bool:
        """A connection of a member of the current view (or ours to one): paused when over the
        receive budget, never dropped for it. Anyone else (a client, a node outside the view,
        a connection still in its hello) is dropped first."""
        return self.outgoing or (self.role == "member" and self.speaker in self.tcp.view_members)

    def _hello(self, item: Any) -> bool:
        tcp = self.tcp
        if not isinstance(item, Hello) or item.role not in ("member", "client"):
            tcp.warn("hello", self.address, "closing a connection from %s that did not open with hello", self.address)
            self._refuse("refused: the first frame must be a hello")
            return False
        if item.cluster != tcp.cluster:
            tcp.warn("cluster", self.address, "refusing %s: it names another cluster", self.address)
            self._refuse("refused: wrong cluster name")
            return False
        accepted = MEMBER_PROTOCOLS if item.role == "member" else COMPATIBLE_PROTOCOLS
        if item.protocol not in accepted:
            why = (
                f"it speaks wire protocol {item.protocol}, this node speaks {PROTOCOL_VERSION} (accepts "
                f"{', '.join(map(str, sorted(accepted)))} from a {item.role}): run compatible releases "
                "(see Versions and upgrades)"
            )
            tcp.warn("protocol", self.address, "refusing %s (%s %s): %s", self.address, item.role, item.node_id, why)
            self._refuse(f"refused: wire protocol {item.protocol} is not compatible with {PROTOCOL_VERSION}")
            return False
        problem = self._check_identity(item)
        if problem is not None:
            tcp.warn("identity", self.address, "refusing %s: %s", self.address, problem)
            self._refuse(f"refused: {problem}")
            return False
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._leave_half_open()
        self.speaker, self.role = item.node_id, item.role
        if item.role == "member":
            self.decoder.max_frame = tcp.max_frame
            sink = tcp.block_sink
            if sink is not None:  # this member's blocks are read straight into their objects
                node = item.node_id
                self.decoder.sink = lambda oid, block, length: sink(node, oid, block, length)
            self.incarnation = item.incarnation
            tcp._met(item.node_id, item.incarnation)
            tcp.incoming.setdefault(item.node_id, set()).add(self)
            # Say who answers, so the dialler can tell this process from a later one.
            self.send(frame(Hello(tcp.node_id, tcp.cluster, "member", tcp.incarnation, PROTOCOL_VERSION)))
        else:
            self.decoder.max_frame = tcp.security.client_max_frame
            who = self.identity.name if self.identity is not None else ""
            counted_as = who or f"host {self.host}"  # the identity its limits count (a host without TLS)
            full = tcp.client_room(counted_as)
            if full is not None:
                log.info("closed a connection of %s: %s", self._where(), full)
                self.send(frame(Goodbye(f"not serving more clients now: {full}", GoodbyeKind.CLOSED)))
                self.close()
                return False
            self.origin = session_origin(who, item.node_id)
            self.incarnation = item.incarnation  # the client's session start (ns)
            tcp.clients.add(self)
            self.counted_as = counted_as
            tcp.clients_of[counted_as] = tcp.clients_of.get(counted_as, 0) + 1
            if tcp.client_welcome is not None:
                self.send(tcp.welcome_frame(item.protocol))
        return True

    def _check_identity(self, hello: Hello) -> str | None:
        """Why this Hello may not speak for the identity the handshake proved (None: fine)."""
        tcp = self.tcp
        ident = self.identity
        if tcp.security.revocation is not None and self.transport is not None:
            revoked = tcp.security.revocation.refusal(self.transport.get_extra_info("ssl_object"))
            if revoked is not None:
                return revoked
        if hello.role == "member":
            if tcp.security.tls:
                if ident is None or ident.role != "node":
                    return f"a {ident.describe() if ident else 'connection without'} certificate cannot act as a member"
                if ident.node_id != hello.node_id:
                    return f"the certificate names node {ident.node_id}, the hello claims node {hello.node_id}"
            allowed = tcp.security.allowed_members
            if allowed and hello.node_id not in allowed:
                return f"node {hello.node_id} is not on this cluster's allowed_members list"
            return None
        if tcp.security.tls and ident is None:
            return "no certificate"
        return None

    def _refuse(self, reason: str) -> None:
        """Final: this peer is not accepted as it is (its certificate, cluster, protocol); the
        kind tells a client to stop rather than fail over and try again."""
        self.send(frame(Goodbye(reason, GoodbyeKind.REFUSED)))
        self.close()
        self._teardown()

    def _teardown(self) -> None:
        """Undo this connection's place in the transport's counts (idempotent)."""
        tcp = self.tcp
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._leave_half_open()
        tcp.paused.discard(self)
        tcp._unqueue(self)
        self._release()
        tcp.clients.discard(self)
        if self.counted_as is not None:
            left = tcp.clients_of.pop(self.counted_as) - 1
            if left:
                tcp.clients_of[self.counted_as] = left
            self.counted_as = None
        tcp.all_connections.discard(self)
        if self.transport is not None and self.upgrading:
            self.transport.abort()

    def _leave_half_open(self) -> None:
        """No longer counted among the unauthenticated connections (it said hello, or it
        ended); idempotent."""
        if not self.pending_auth:
            return
        self.pending_auth = False
        tcp = self.tcp
        tcp.unauthenticated -= 1
        mine = tcp.half_open.get(self.host)
        if mine is not None:
            mine.pop(self, None)
            if not mine:
                del tcp.half_open[self.host]

    def drop(self) -> None:
        """End a half-open connection at once, to make room for a newer one (reported by the
        caller): no Goodbye, no handshake warning, nothing kept."""
        self.closed = True
        self._leave_half_open()
        if self.transport is not None:
            self.transport.abort()
        self._teardown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.inbox, self.inbox_pos = b"", 0
        self._teardown()
        self.tcp._connection_lost(self)

    def eof_received(self) -> bool | None:
        """The other end finished sending (or TLS's close_notify came): the transport closes
        itself now. A client's frames still waiting in the inbox are not handled, and nothing
        more is written to it (asyncio's TLS transport would only drop it, warning about each
        write). Members' connections are left to ``connection_lost``, as before."""
        if self.role != "client" or self.outgoing:
            return None
        self.closed = True
        self._release()
        self.inbox, self.inbox_pos = b"", 0
        self.tcp._unqueue(self)
        return None

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark. A client's reading is paused
        until it drains (it can queue no more work meanwhile); a member's traffic is bounded
        by the protocol's windows and the ``max_backlog`` check in ``TcpTransport.send``."""
        if self.role == "client" and not self.outgoing and not self.closed:
            self.write_blocked = True
            self._update_reading()
            self._over_backlog(0)  # one large write (a turn's replies) may pass the limit at once

    def resume_writing(self) -> None:
        if self.write_blocked:
            self.write_blocked = False
            self._update_reading()
        if self.peer is not None and self.peer.blocks:
            self.tcp._pump_blocks(self.peer)

    # ----------------------------------------------------------------- ours
    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed and not self.upgrading:
            if self.write_blocked and self._over_backlog(len(data)):
                return  # cut off rather than buffer it: a client that is behind gets no more
            self.transport.write(data)
            if self.write_blocked:
                self._over_backlog(0)

    def _over_backlog(self, more: int) -> bool:
        """A client whose unread replies (with ``more`` about to be added) pass
        ``client_max_backlog`` is cut off: it does not read them, and keeping them would let
        it grow the node without bound. Returns whether it was."""
        assert self.transport is not None
        if self.closed:  # cut off (or closing) already: nothing more is written to it
            return True
        size = self.buffered() + more
        limit = self.tcp.security.client_max_backlog
        if size <= limit:
            return False
        self.tcp.cut_off += 1
        self.tcp.warn(
            "backlog",
            self.address,
            "cutting off %s: %d bytes of replies would wait unread (client_max_backlog_bytes %d)",
            self._where(),
            size,
            limit,
        )
        self.transport.write(frame(Goodbye(f"cut off: {size} bytes of replies unread (limit {limit}); read replies")))
        self.close()  # aborted after CLOSE_GRACE if it still does not read
        return True

    def buffered(self) -> int:
        """Bytes written and not taken by the kernel yet (under TLS: all of them, as
        ``TlsStream`` encrypts at once into the socket's transport, which counts them)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self._release()
            self.inbox, self.inbox_pos = b"", 0
            self.tcp._unqueue(self)
            self.transport.close()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the loop (shutting down): nothing to wait for
                return
            self._linger = loop.call_later(CLOSE_GRACE, self._abort_lingering)

    def _abort_lingering(self) -> None:
        """Closed ``CLOSE_GRACE`` s ago and still not gone: the other end does not read what
        was left to send (or does not answer TLS's close). Its buffers are not worth keeping."""
        self._linger = None
        if self.transport is not None:
            self.transport.abort()

    def _release(self) -> None:
        """What this connection held of a partial frame no longer counts in the budget."""
        tcp = self.tcp
        if self.held:
            tcp.held_total -= self.held
            self.held = 0
            if tcp.paused and tcp.held_total <= tcp.security.receive_budget:
                tcp._resume_paused()

    def retire(self) -> None:
        """Close without reporting a loss: the process at the other end is gone for good."""
        self.stale = True
        self.close()

    def _where(self) -> str:
        if self.peer is not None:
            return f"node {self.peer.node_id} ({self.address})"
        if self.role == "member":
            return f"node {self.speaker} ({self.address})"
        if self.role == "client":
            who = f" {self.identity.describe()}" if self.identity is not None else ""
            return f"client{who} ({self.address})"
        return self.address


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _answered(exc: BaseException) -> bool:
    """Whether a failed connection attempt reached a listening process (it accepted the TCP
    connection, then the handshake failed or was cut: the node is up but busy or refusing)
    rather than nothing listening there or no route to it."""
    if isinstance(exc, (ssl.SSLError, asyncio.TimeoutError, ConnectionResetError, ConnectionAbortedError, EOFError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


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
        security: TransportSecurity | None = None,
        client_welcome: Welcome | None = None,
        incarnation: int | None = None,
        on_client_closed: ClientClosedHandler | None = None,
    ) -> None:
        """``client_welcome``: what every accepted client is told first (its limits);
        ``on_client_closed``: told once when a client connection ends."""
        self.node_id = node_id
        self.listen = listen
        self.cluster = cluster
        self.on_frames = on_frames
        self.on_peer_lost = on_peer_lost
        self.on_client = on_client
        self.on_client_closed = on_client_closed
        self.max_frame = max_frame
        self.max_backlog = max_backlog
        self.security = security or TransportSecurity()
        self.client_welcome = client_welcome
        # Its frame per client protocol (a client of an older release reads fewer fields).
        self._welcome_frames: dict[int, bytes] = {}
        self.addresses: dict[int, str] = {}
        self.peers: dict[int, _Peer] = {}
        self.incoming: dict[int, set[_Connection]] = {}
        self.contacts: dict[str, _Connection] = {}
        self.contact_nodes: dict[str, int] = {}  # contact address -> node id its certificate proved
        self.contact_problems: dict[str, ContactProblem] = {}  # why the last try of a contact failed
        self.clients: set[_Connection] = set()
        self.clients_of: dict[str, int] = {}  # client connections per identity (or host, insecure)
        self.contact_reached = False
        self.refusals: list[str] = []
        self.incarnation = incarnation if incarnation is not None else time.time_ns()
        self.incarnations: dict[int, int] = {}
        self.all_connections: set[_Connection] = set()  # clients' too, so close() ends them
        self.bad_frames = 0
        self.bytes_out: dict[int, int] = {}  # per peer node: bytes of frames sent (before TLS)
        self.bytes_in: dict[int, int] = {}  # per peer node: bytes received on its connections
        self.unauthenticated = 0  # accepted connections without a hello yet
        self.half_open: dict[str, dict[_Connection, None]] = {}  # by host: those, oldest first
        self.dropped_half_open = 0  # half-open connections dropped to make room for newer ones
        self.cut_off = 0  # clients cut off for not reading their replies
        self._ring: deque[_Connection] = deque()  # clients with frames waiting for a later turn
        self._drain_handle: asyncio.Handle | None = None
        self._turn_spent = 0.0  # seconds of client work in this loop turn
        self._turn_handle: asyncio.Handle | None = None
        self.held_total = 0  # bytes of partial frames held, all connections
        self.paused: set[_Connection] = set()
        self.view_members: set[int] = set()  # ids of the current view (the node driver keeps it)
        self.warnings = RateLimitedLog(log)
        self._server: asyncio.base_events.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_timer: asyncio.TimerHandle | None = None
        # (sender node, object, block, length) -> where a member's block goes (set by the
        # node driver; None: members' block frames are refused as bad frames).
        self.block_sink: BlockDestination | None = None
        # Where every connection's reads land unless a block's place takes them (see
        # _Connection.get_buffer): one buffer, as asyncio reads one connection at a time and
        # each read is handled (what is kept, copied) before the next.
        self.scratch = memoryview(bytearray(READ_SCRATCH))

    async def start(self) -> None:
        host, port = split_address(self.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._accepted, host, port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"node.listen: cannot listen on {self.listen}: {exc.strerror or exc}") from None
        if self.security.tls:  # issue 22: kernel TLS is said absent, with why, once the node is up
            log.info("node %s: %s", self.node_id, kernel_tls().describe())
        self._schedule_idle_sweep()

    def _accepted(self) -> asyncio.BaseProtocol:
        """The protocol of an accepted socket: the connection, under TLS inside a ``TlsStream``
        whose handshake starts at once (the connection is counted among the unauthenticated
        ones first, in its ``connection_made``). The stream's own timeout is a backstop:
        ``_no_hello`` ends a connection without a Hello at ``handshake_timeout``."""
        conn = _Connection(self, None)
        ctx = self.security.server_context
        if ctx is None:
            return conn
        return TlsStream(conn, ctx, server_side=True, handshake_timeout=2 * self.security.handshake_timeout)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def warn(self, kind: str, address: str, msg: str, *args: Any) -> None:
        """A rate-limited warning about a peer (``address`` is host:port; limits go per host)."""
        self.warnings.warning((kind, address.rpartition(":")[0]), msg, *args)

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

    def peer_public_key(self, node_id: int) -> bytes | None:
        for conn in self.incoming.get(node_id, ()):
            if conn.identity is not None:
                return conn.identity.public_key
        return None

    def client_count(self) -> int:
        return len(self.clients)

    def welcome_frame(self, protocol: int) -> bytes:
        """The Welcome frame for a client of wire ``protocol`` (made once per protocol)."""
        made = self._welcome_frames.get(protocol)
        if made is None:
            assert self.client_welcome is not None
            made = self._welcome_frames[protocol] = welcome_frame(self.client_welcome, protocol)
        return made

    def client_room(self, identity: str) -> str | None:
        """Why another client connection of ``identity`` may not open now (None: it may). A
        client certificate could open connections until the node ran out of descriptors
        (new clients and status then failed) or, each holding its backlog of unread replies,
        of memory (22 MB per connection measured): both are bounded here."""
        sec = self.security
        if len(self.clients) >= sec.max_clients:
            return f"{len(self.clients)} client connections are open (limits.client_connections)"
        if self.clients_of.get(identity, 0) >= sec.max_clients_per_identity:
            return (
                f"{identity} has {sec.max_clients_per_identity} connections open here "
                "(limits.client_connections_per_identity): share a Client among threads, or raise the limit"
            )
        return None

    def traffic(self) -> dict[int, tuple[int, int]]:
        """Per peer node: (bytes sent, bytes received) since this node started."""
        return {n: (self.bytes_out.get(n, 0), self.bytes_in.get(n, 0)) for n in {*self.bytes_out, *self.bytes_in}}

    def disconnect(self, node_id: int, reason: str) -> None:
        """Close every connection from ``node_id``: it sent frames its identity does not allow
        (claiming another sender). The loss is reported like any other, so the core suspects
        the node and the next view leaves it out."""
        conns = self.incoming.get(node_id, set())
        if conns:
            where = ", ".join(sorted(c.address for c in conns))
            self.warn(
                "forged",
                where.split(", ")[0],
                "closing the connections of node %s (from %s): %s",
                node_id,
                where,
                reason,
            )
        for conn in list(conns):
            conn.close()

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
        self.bytes_out[node_id] = self.bytes_out.get(node_id, 0) + len(data)
        if peer.partial is not None and self._behind_block(peer, data):
            return
        if peer.conn is not None and not peer.conn.closed:
            if peer.conn.buffered() > self.max_backlog:
                log.warning("node %s stopped reading (%d bytes waiting): cutting it off", node_id, peer.conn.buffered())
                peer.conn.close()
                return
            peer.conn.send(data)
            if peer.conn.unanswered is not None:
                peer.conn.unanswered.append(data)
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

    def write_rows(self, node_id: int, data: bytes, pushes: Sequence[RowPush]) -> None:
        """SST pushes over TCP are frames, behind ``data``, in one write (see ``Transport``)."""
        if pushes:
            data = b"".join([data, *(p.frame() for p in pushes)])
        if data:
            self.send(node_id, data)

    def send_block(self, node_id: int, head: bytes, data: memoryview) -> None:
        """Queue one block frame (``head``: prefix and header; ``data``: the block, a view of
        the object, never copied here) for ``node_id``; written with ``writelines`` while the
        connection holds less than ``BLOCK_WRITE_LIMIT`` unsent."""
        if self._closing:
            return
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self.peers[node_id] = _Peer(node_id)
        self.bytes_out[node_id] = self.bytes_out.get(node_id, 0) + len(head) + len(data)
        peer.blocks.append((head, data))
        if peer.conn is None and not peer.connecting:
            peer.connecting = True
            self._spawn(self._connect(peer))
        self._pump_blocks(peer)

    def _behind_block(self, peer: _Peer, data: bytes) -> bool:
        """A frame for ``peer`` while a block is part written: keep it for after that block
        (True), unless that block's connection is gone (then its rest is dropped, as the
        connection's unsent bytes are, and the frames kept go first on the current one)."""
        partial = peer.partial
        if partial is not None and partial is peer.conn and not partial.closed:
            if partial.buffered() + sum(map(len, peer.behind)) > self.max_backlog:
                log.warning(
                    "node %s stopped reading (%d bytes waiting): cutting it off", peer.node_id, partial.buffered()
                )
                partial.close()
                return True
            peer.behind.append(data)
            return True
        self._drop_partial(peer)
        return False

    def _drop_partial(self, peer: _Peer) -> None:
        """The connection a block was part written on is gone: drop the block's rest (the
        receiver never gets it whole, as with bytes the connection held unsent) and send the
        frames held behind it on the current connection, or queue them for the next."""
        if peer.partial is None:
            return
        peer.partial = None
        if peer.blocks:
            peer.blocks.popleft()
        behind, peer.behind = peer.behind, []
        for frame_bytes in behind:
            self.send(peer.node_id, frame_bytes)

    def _pump_blocks(self, peer: _Peer, again: bool = False) -> None:
        if again:
            peer.repump = False
        conn = peer.conn
        if peer.partial is not None and peer.partial is not conn:
            self._drop_partial(peer)
        if conn is None or conn.closed or conn.upgrading or conn.transport is None or conn.unanswered is not None:
            return  # they wait for the connection and its peer's Hello (which pumps them)
        if peer.partial is not None and peer.partial.closed:
            self._drop_partial(peer)
            return
        transport, blocks = conn.transport, peer.blocks
        plain = not isinstance(transport, TlsStream)
        while blocks and conn.buffered() <= BLOCK_WRITE_LIMIT:
            head, data = blocks[0]
            if len(data) > BLOCK_SLICE:
                blocks[0] = (b"", data[BLOCK_SLICE:])
                data = data[:BLOCK_SLICE]
                peer.partial = conn
            else:
                blocks.popleft()
                peer.partial = None
            if plain:  # asyncio's writelines joins its parts (a copy of the slice) before sending
                if head:
                    transport.write(head)
                transport.write(data)
            else:  # TlsStream encrypts each part where it is
                transport.writelines((head, data) if head else (data,))
            if peer.partial is None and peer.behind:
                behind, peer.behind = peer.behind, []
                conn.send(b"".join(behind))
        if blocks and not peer.repump and not again:
            # A write held by TlsStream until the read being handled ends, then taken whole by
            # the kernel, never pauses the connection, so no resume_writing would come: look
            # again next turn (a connection that is full is resumed when it drains).
            peer.repump = True
            asyncio.get_running_loop().call_soon(self._pump_blocks, peer, True)

    async def _open(self, factory: Any, address: str) -> _Connection:
        """A connection to ``address``, its TLS handshake done (raises if it failed) and its
        Hello sent, unless the other end is not whom we meant (then it is closed)."""
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        ctx = self.security.client_context
        if ctx is None:
            _, plain = await loop.create_connection(factory, host, port)
            return plain
        timeout = self.security.handshake_timeout
        _, stream = await loop.create_connection(
            lambda: TlsStream(factory(), ctx, server_side=False, server_hostname=host, handshake_timeout=timeout),
            host,
            port,
        )
        conn: _Connection = stream.app
        try:
            await stream.handshake
        except BaseException:
            stream.abort()
            conn._teardown()
            raise
        conn.outgoing_ready()
        return conn

    async def _connect(self, peer: _Peer) -> None:
        try:
            while not self._closing and peer.node_id in self.peers:
                address = self.addresses.get(peer.node_id)
                if address is None:
                    log.warning("no address known for node %s; dropping what is queued for it", peer.node_id)
                    peer.queued.clear()
                    peer.queued_bytes = 0
                    return
                try:
                    conn = await self._open(lambda: _Connection(self, peer), address)
                except (OSError, ConfigError, ssl.SSLError, asyncio.TimeoutError) as exc:
                    peer.failures += 1
                    if peer.failures in (1, 10) or peer.failures % 100 == 0:
                        log.info("cannot reach node %s at %s (%s); retrying", peer.node_id, address, _reason(exc))
                    await asyncio.sleep(min(0.5, 0.02 * peer.failures))
                    continue
                if conn.closed:  # the other end is not the node we meant (see _check_server)
                    peer.failures += 1
                    await asyncio.sleep(min(1.0, 0.1 * peer.failures))
                    continue
                peer.failures = 0
                peer.conn = conn
                if conn.transport is not None:  # resume_writing once blocks drain below the limit
                    conn.transport.set_write_buffer_limits(high=BLOCK_WRITE_LIMIT, low=BLOCK_WRITE_LIMIT)
                if peer.queued:
                    data = b"".join(peer.queued)
                    conn.send(data)
                    if conn.unanswered is not None:
                        conn.unanswered.append(data)
                    peer.queued.clear()
                    peer.queued_bytes = 0
                self._pump_blocks(peer)
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
        try:
            conn = await self._open(lambda: _Connection(self, None, contact=address), address)
        except (OSError, ConfigError, ssl.SSLError, asyncio.TimeoutError) as exc:
            log.info("contact %s unreachable: %s", address, _reason(exc))
            if len(self.contact_problems) < 256 or address in self.contact_problems:
                self.contact_problems[address] = ContactProblem(_answered(exc), _reason(exc))
            return
        if conn.closed:
            return
        self.contact_problems.pop(address, None)
        self.contact_reached = True
        self.contacts[address] = conn
        conn.send(data)

    def contact_node(self, address: str) -> int | None:
        """The node id whose certificate our connection to contact ``address`` proved (None:
        not reached yet, or no TLS). How a node that is not a member yet tells the node it
        asked from any other holder of a node certificate (``runtime.drivers.leader_word``)."""
        return self.contact_nodes.get(address)

    def remember_contact(self, address: str, node_id: int) -> None:
        """Contact ``address`` proved ``node_id``: kept past the connection's end (a contact's
        connection may close before its answer arrives on another), the oldest of
        ``MAX_CONTACTS_KEPT`` forgotten first."""
        nodes = self.contact_nodes
        nodes.pop(address, None)
        nodes[address] = node_id
        while len(nodes) > MAX_CONTACTS_KEPT:
            del nodes[next(iter(nodes))]

    def reply(self, handle: Any, data: bytes) -> bool:
        if isinstance(handle, _Connection):
            handle.send(data)
            return not handle.closed
        return False

    def backlog(self, node_id: int) -> int:
        peer = self.peers.get(node_id)
        if peer is None:
            return 0
        behind = sum(map(len, peer.behind)) if peer.behind else 0
        return peer.queued_bytes + behind + (peer.conn.buffered() if peer.conn is not None else 0)

    def forget(self, node_id: int) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is not None:
            peer.blocks.clear()
            peer.partial = None
            peer.behind.clear()
        if peer is not None and peer.conn is not None:
            peer.conn.close()
        for conn in self.incoming.pop(node_id, set()):
            conn.close()

    # ------------------------------------------------------------------ limits
    def _over_budget(self, conn: _Connection) -> None:
        """Partial frames held, all connections together, passed the receive budget (because
        of ``conn``). Drop untrusted holders, largest first, until it fits; if members alone
        fill it, pause ``conn`` until the others drain (TCP then slows its sender)."""
        budget = self.security.receive_budget
        victims = sorted(
            (c for c in self.all_connections if c.held and not c.closed and not c.trusted), key=lambda c: -c.held
        )
        for victim in victims:
            if self.held_total <= budget:
                break
            self.warn(
                "budget",
                victim.address,
                "closing %s: what it sent and was not handled yet (%d bytes) would pass the receive budget (%d bytes)",
                victim._where(),
                victim.held,
                budget,
            )
            victim.close()
        if self.held_total > budget and conn.trusted and not conn.closed and not conn.paused and conn.transport:
            conn.paused = True
            conn._update_reading()
            self.paused.add(conn)
            self.warn(
                "budget",
                conn.address,
                "pausing %s: %d bytes of partial frames held, budget %d",
                conn._where(),
                self.held_total,
                budget,
            )

    def _resume_paused(self) -> None:
        for conn in list(self.paused):
            if self.held_total > self.security.receive_budget:
                return
            self.paused.discard(conn)
            conn.paused = False
            conn._update_reading()

    def _admit(self, conn: _Connection) -> None:
        """Count an accepted connection among the unauthenticated ones. A newcomer is never
        refused: if its host is at ``max_unauthenticated_per_address``, that host's oldest
        half-open connection gives way; if the pool is at ``max_unauthenticated``, the oldest
        of the host holding the most does. A host reopening sockets that never start TLS then
        only churns its own places, and a new client from elsewhere always gets its handshake."""
        sec = self.security
        mine = self.half_open.get(conn.host)
        if mine is not None and len(mine) >= sec.max_unauthenticated_per_address:
            self._drop_oldest(conn.host, "per-address")
        elif self.unauthenticated >= sec.max_unauthenticated and self.half_open:
            # Hosts of the view's other members give way last: a member's dial in its handshake
            # must not be starved past its suspicion timeout by handshakes from elsewhere.
            others = self.view_members - {self.node_id}
            members = {a.rpartition(":")[0].strip("[]") for n, a in self.addresses.items() if n in others}
            hosts = [h for h in self.half_open if h not in members] or list(self.half_open)
            crowded = max(hosts, key=lambda h: (len(self.half_open[h]), -next(iter(self.half_open[h])).accepted_at))
            self._drop_oldest(crowded, "pool")
        conn.pending_auth = True
        self.unauthenticated += 1
        self.half_open.setdefault(conn.host, {})[conn] = None

    def _drop_oldest(self, host: str, why: str) -> None:
        conns = self.half_open[host]
        victim = next(iter(conns))
        self.dropped_half_open += 1
        self.warn(
            "busy",
            victim.address,
            "dropping the oldest half-open connection from %s (%s limit): %d connections are already in their "
            "handshake, %d of them from %s (at most %d per address, %d in all)",
            host,
            why,
            self.unauthenticated,
            len(conns),
            host,
            self.security.max_unauthenticated_per_address,
            self.security.max_unauthenticated,
        )
        victim.drop()

    # ------------------------------------------------------------ clients' turns
    def _client_budget_left(self) -> bool:
        return self._turn_spent < CLIENT_WORK_PER_TURN

    def _spend(self, seconds: float) -> None:
        """Count client work in this loop turn; the count starts again next turn (a callback
        scheduled now runs at the start of the next one, before its I/O callbacks)."""
        self._turn_spent += seconds
        if self._turn_handle is None:
            self._turn_handle = asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._turn_spent = 0.0
        self._turn_handle = None

    def _enqueue(self, conn: _Connection) -> None:
        """``conn`` has frames left for later turns: pause its reading and put it in the round."""
        conn.queued = True
        conn.turns_queued = 0
        self._ring.append(conn)
        conn._update_reading()
        if self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _unqueue(self, conn: _Connection) -> None:
        if conn.queued:
            conn.queued = False
            try:
                self._ring.remove(conn)
            except ValueError:  # being served by _drain right now
                pass

    def _drain(self) -> None:
        """One loop turn of waiting client work: each queued connection in turn handles up to
        ``frames_per_turn`` frames, until this turn's client budget is spent (at least one is
        served, so the round always moves); those with frames left go to the back of the
        round. A connection whose inbox is drained resumes reading."""
        self._drain_handle = None
        ring = self._ring
        per_turn = self.security.frames_per_turn
        served = 0
        for _ in range(len(ring)):
            if served and not self._client_budget_left():
                break
            conn = ring.popleft()
            served += 1
            if not conn.closed:
                conn._serve(per_turn)
            if conn.closed:
                conn.queued = False
                continue
            if conn._has_frame():
                ring.append(conn)
                conn.turns_queued += 1
                if conn.turns_queued >= SLOW_WARN_TURNS and not conn.warned_slow:
                    conn.warned_slow = True
                    self.warn(
                        "slow",
                        conn.address,
                        "slowing %s: it sent more than %d frames at once; handling %d per loop turn, "
                        "its reading paused until they are done",
                        conn._where(),
                        SLOW_WARN_TURNS * per_turn,
                        per_turn,
                    )
            else:
                conn.queued = False
                conn._update_reading()
            conn._account()
        if ring and self._drain_handle is None:
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _schedule_idle_sweep(self) -> None:
        if self._closing:
            return
        every = max(0.05, min(5.0, self.security.client_idle_timeout / 4))
        self._idle_timer = asyncio.get_running_loop().call_later(every, self._sweep_idle)

    def _sweep_idle(self) -> None:
        limit = self.security.client_idle_timeout
        now = time.monotonic()
        for conn in list(self.clients):
            if now - conn.last_heard > limit and not conn.closed:
                log.info("closing %s: idle for %.0f s", conn._where(), now - conn.last_heard)
                conn.send(frame(Goodbye(f"idle: no frame for {limit:g} s; reconnect when you have calls")))
                conn.close()
        self._schedule_idle_sweep()

    # ------------------------------------------------------------------ losses
    def _connection_lost(self, conn: _Connection) -> None:
        if conn.role == "client" and self.on_client_closed is not None:
            try:
                self.on_client_closed(conn)
            except Exception:  # forgetting a client must not take the node down
                log.exception("forgetting %s failed", conn._where())
        if self._closing or conn.stale or conn.doomed:
            if conn.peer is not None and conn.peer.conn is conn:
                conn.peer.conn = None
            return
        if conn.peer is not None:
            peer = conn.peer
            if peer.conn is conn:
                peer.conn = None
            if conn.unanswered is not None and self.peers.get(peer.node_id) is peer:
                # It ended before the peer answered our Hello: a dial its full handshake pool
                # dropped, not a lost peer (which took none of these frames: a node answers a
                # Hello before it handles what follows). They go first on the next connection.
                peer.queued[:0] = conn.unanswered
                peer.queued_bytes += sum(map(len, conn.unanswered))
                if not peer.connecting:
                    peer.connecting = True
                    self._spawn(self._connect(peer))
                return
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
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for handle in (self._drain_handle, self._turn_handle):
            if handle is not None:
                handle.cancel()
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
