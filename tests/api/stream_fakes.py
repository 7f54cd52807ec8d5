"""What the in-process tests of clients' streamed calls share (a contact's ``ClientStreams``, a
member's ``RelayedStreams``, the relays between them): a client connection, a node with a
clock the test moves, the messages a client sends for one streamed call as a contact reads them,
and a contact's streams wired to callbacks. No sockets, no threads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from blake3 import blake3

from derecho_actors.node.client_streams import Admit, ClientStreams, Deliver, Refuse
from derecho_actors.node.stream_bounds import CallerSession
from derecho_actors.wire.streams import block_frame, start_frame
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.wire.codec import FrameDecoder
from runtime.wire.control import AppMessage

__all__ = ["ORIGIN", "SHARD", "Conn", "Ident", "Node", "block_messages", "contact_streams", "start_message"]

SHARD = ShardId("Blobs", 0, 0)
ORIGIN = 1234567


@dataclass
class Ident:
    """A client's identity, as a TLS connection names it."""

    name: str

    def describe(self) -> str:
        return f"client {self.name!r}"


@dataclass(eq=False)
class Conn:
    """A client's connection to its contact (``runtime.node_api.ClientConn``)."""

    origin: int = ORIGIN
    identity: Ident | None = None
    incarnation: int | None = 7
    closed: bool = False
    address: str = "127.0.0.1:5000"

    def close(self) -> None:
        self.closed = True


@dataclass
class Node:
    """What the streams use of a ``NodeHandle``: a clock the test moves (``advance`` runs the
    timers due), and what the node multicast (``ordered``) and sent to members (``app``)."""

    node_id: int = 1
    now: float = 10.0
    timers: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    ordered: list[tuple[ShardId, bytes]] = field(default_factory=list)
    app: list[tuple[int, bytes]] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return 1_800_000_000_000_000_000

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append((self.now + delay, fn))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, fn in due:
            fn()

    def send_ordered(self, shard: ShardId, payloads: list[bytes]) -> None:
        self.ordered.extend((shard, bytes(p)) for p in payloads)

    def send_app(self, node: int, data: bytes) -> None:
        self.app.append((node, data))


def _read(wire: bytes) -> list[bytes]:
    """The data of the application messages in ``wire``, read by a frame decoder as a contact
    reads a client's bytes."""
    out = []
    for item in FrameDecoder(1 << 20).feed(wire):
        assert isinstance(item, AppMessage)
        out.append(item.data)
    return out


def start_message(call_id: int, data: bytes) -> bytes:
    """The start a client sends for a call of ``Blobs.put`` whose arguments are ``data``."""
    [message] = _read(start_frame(call_id, ("Blobs", 0, 0), "put", 1, len(data), blake3(data).digest()))
    return message


def block_messages(
    call_id: int, data: bytes, begin: int = 0, end: int | None = None, block: int = 1000, corrupt: int = -1
) -> list[bytes]:
    """The blocks a client sends of ``data`` from byte ``begin`` to ``end`` (the last), ``block``
    bytes each; the one at byte ``corrupt`` has a bit flipped (the digest is of the true bytes)."""
    wire = bytearray()
    for off in range(begin, len(data) if end is None else end, block):
        chunk = bytearray(data[off : off + block])
        if off == corrupt:
            chunk[0] ^= 1
        head, view = block_frame(call_id, off, memoryview(bytes(chunk)))
        wire += head + view
    return _read(bytes(wire))


def contact_streams(
    node: Node,
    deliver: Deliver,
    refuse: Refuse,
    admit: Admit = lambda conn, start: None,
    **limits: Any,
) -> ClientStreams:
    """A contact's ``ClientStreams`` on ``node`` under ``limits`` (``LimitsSection`` fields),
    every session's calls carrying ``(origin, 5, 9)``."""
    return ClientStreams(
        node,  # type: ignore[arg-type]
        LimitsSection(**limits),
        admit,
        deliver,
        refuse,
        lambda conn: CallerSession(conn.origin, 5, 9),
    )
