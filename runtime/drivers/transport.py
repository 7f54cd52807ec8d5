"""The boundary between the node driver and a network.

A transport moves bytes between nodes named by id and reports what arrives. It knows nothing
of the protocol: the node driver hands it whole encoded frames and gets decoded frames back.
TCP (``runtime.drivers.tcp``) is the one built; a shared-memory transport for co-located
processes or an RDMA (pyverbs) one would implement this same interface, and neither the core
nor the node driver would change.

Every callback runs on the event loop thread that owns the node's core.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from runtime.wire.codec import WireMessage

FramesHandler = Callable[[int, list[WireMessage]], None]
"""``(sender node id, frames)``: decoded frames from one peer, in the order sent."""

PeerLostHandler = Callable[[int], None]
"""A connection to or from this node id broke."""

ClientHandler = Callable[[Any, WireMessage], None]
"""A frame from a client (not a member) with the handle to answer it on."""


class Transport(Protocol):
    async def start(self) -> None:
        """Begin listening; raise ``ConfigError`` if the address cannot be bound."""

    def learn(self, node_id: int, address: str) -> None:
        """Where ``node_id`` listens (from a view or a join request)."""

    def send(self, node_id: int, data: bytes) -> None:
        """Queue encoded frames for ``node_id``; connect first if needed. Never blocks."""

    def send_to_address(self, address: str, data: bytes) -> None:
        """Queue encoded frames for whoever listens at ``address`` (joining a group)."""

    def reply(self, handle: Any, data: bytes) -> None:
        """Answer a client on the connection its request came from."""

    def forget(self, node_id: int) -> None:
        """``node_id`` left the view: close its connections and drop what is queued for it."""

    def backlog(self, node_id: int) -> int:
        """Bytes queued for ``node_id`` and not yet taken by the kernel."""

    async def close(self) -> None:
        """Close every connection and stop listening."""
