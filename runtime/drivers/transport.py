"""The boundary between the node driver and a network.

A transport moves bytes between nodes named by id and reports what arrives. It knows nothing
of the protocol: the node driver hands it whole encoded frames and gets decoded frames back,
with one exception, Derecho's: SST pushes (``write_rows``), which a transport may carry as
one-sided writes into the peer's copy of the row instead of as frames. TCP carries them as
frames; shared memory (``runtime.drivers.shm_rows``) writes them into a mapping the peer reads;
either way the peer's driver gets the same ``ShardPush``/``GroupPush`` back, so neither the core
nor the node driver knows which transport ran.

Every callback runs on the event loop thread that owns the node's core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from runtime.core.messages import GroupPush, ShardPush
from runtime.core.rdmc_descriptor import ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.wire.codec import WireMessage, frame

FramesHandler = Callable[[int, list[WireMessage]], None]
"""``(sender node id, frames)``: decoded frames from one peer, in the order sent."""

PeerLostHandler = Callable[[int], None]
"""A connection to or from this node id broke."""

ClientHandler = Callable[[Any, WireMessage], None]
"""A frame from a client (not a member) with the handle to answer it on."""

ClientClosedHandler = Callable[[Any], None]
"""A client connection (the handle ``ClientHandler`` was given) closed, by either side."""

BlockDestination = Callable[[int, ObjectId, int, int], "memoryview | Refusal"]
"""``(sender node, object, block, length)`` -> where a member's block frame's bytes go (read
straight into the object's buffer), or why they are refused (read and discarded)."""


class RowPush:
    """One SST push of this node's core (a row delta, and for a shard the messages sent since
    the last push), as the driver hands it to the transport for each peer it goes to: encoded
    at most once whatever the number of peers, and ``cache`` holds what a transport prepared
    of it at the first peer for the others."""

    __slots__ = ("message", "cache", "_frame")

    def __init__(self, message: ShardPush | GroupPush) -> None:
        self.message = message
        self.cache: Any = None
        self._frame: bytes | None = None

    def frame(self) -> bytes:
        """The push as a frame (what TCP sends)."""
        data = self._frame
        if data is None:
            data = self._frame = frame(self.message)
        return data


@dataclass(frozen=True, slots=True)
class ContactProblem:
    """Why the last attempt to reach a contact address failed. ``answered``: a process
    accepted the connection and then the handshake failed or was cut (up, but busy or
    refusing us); False: nothing listens there, or no route. A joiner waits for the first
    (with backoff, until its join timeout) and gives up on the second."""

    answered: bool
    reason: str


class Transport(Protocol):
    """What the node driver uses of a network, and all it uses (``NodeDriver.transport`` is
    typed as this, so mypy holds the driver to it)."""

    contact_reached: bool  # a join contact answered (so a failed join is not "nobody there")
    refusals: list[str]  # why contacts refused this node, latest last
    contact_problems: dict[str, ContactProblem]  # per contact address: why its last try failed
    bad_frames: int  # frames dropped as malformed, for status
    view_members: set[int]  # ids of the current view (the driver keeps it up to date)
    block_sink: BlockDestination | None  # where members' blocks go (the node driver sets it)

    async def start(self) -> None:
        """Begin listening; raise ``ConfigError`` if the address cannot be bound."""

    def learn(self, node_id: int, address: str) -> None:
        """Where ``node_id`` listens (from a view or a join request)."""

    def send(self, node_id: int, data: bytes) -> None:
        """Queue encoded frames for ``node_id``; connect first if needed. Never blocks."""

    def write_rows(self, node_id: int, data: bytes, pushes: Sequence[RowPush]) -> None:
        """Send ``data`` (encoded frames, maybe empty), then the SST ``pushes`` to ``node_id``,
        in that order: Derecho's ``SST::put``, a one-sided write of this node's rows into the
        peer's copy. A transport that cannot write the peer's memory sends each push as its
        frame; one that can writes the row there and sends only the messages a push carries.
        The peer's driver gets the pushes as if they were frames, in an order that keeps what
        the core relies on (a push's messages before its row; a row's values together)."""

    def send_block(self, node_id: int, head: bytes, data: memoryview) -> None:
        """Queue a block frame for ``node_id`` (``head``: its prefix and header; ``data``: the
        block's bytes, a view that must stay valid until written). Never blocks; blocks wait
        in the driver while the connection holds a bounded amount unsent, so that control
        frames sent meanwhile are not stuck behind them."""

    def send_to_address(self, address: str, data: bytes) -> None:
        """Queue encoded frames for whoever listens at ``address`` (joining a group)."""

    def contact_node(self, address: str) -> int | None:
        """The node id proven at contact ``address`` by our connection to it (None: not
        reached yet, or no authentication)."""

    def reply(self, handle: Any, data: bytes) -> bool:
        """Answer a client on the connection its request came from. Returns whether the
        connection still takes writes (False: closed, or cut off by this write), so that a
        caller with more for it can stop making it."""

    def forget(self, node_id: int) -> None:
        """``node_id`` left the view: close its connections and drop what is queued for it."""

    def doom(self, node_id: int) -> None:
        """``node_id`` left the view: the end of its connections is not news from now on."""

    def welcome(self, node_id: int) -> None:
        """``node_id`` joined the view: drop what is left of a previous process with its id."""

    def disconnect(self, node_id: int, reason: str) -> None:
        """Close every connection from ``node_id`` (it lied about who sent a frame); reported
        as a lost peer like any other."""

    def warn(self, kind: str, address: str, msg: str, *args: Any) -> None:
        """Log a warning about a peer, rate-limited per ``kind``."""

    def peer_public_key(self, node_id: int) -> bytes | None:
        """The public key ``node_id`` proved on its connection to us (None: none yet, or no TLS)."""

    def client_count(self) -> int:
        """Clients connected now."""

    def traffic(self) -> dict[int, tuple[int, int]]:
        """Per peer node: (bytes sent, bytes received) since this node started."""

    def backlog(self, node_id: int) -> int:
        """Bytes queued for ``node_id`` and not yet taken by the kernel."""

    async def close(self) -> None:
        """Close every connection and stop listening."""
