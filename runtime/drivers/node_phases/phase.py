"""What every phase of a node's life answers to, and the node before its loop runs.

A node is in one phase at a time: waiting for its core (while its transport starts, and after
a restart that ended without one), bootstrapping, restarting from its data folder, or a member
with a core (joining, then in views). ``NodeDriver`` hands each input to the current phase,
which holds what exists in it and nothing that does not: the member's core is never missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from runtime.core.layout import ShardId
from runtime.core.node_core import NodeCore
from runtime.core.status import CoreStatus
from runtime.wire.control import BootstrapHello, GroupRunning, RestartDecision, RestartHello

# Frames of nodes that restart or bootstrap, and the answers to them: taken in every phase.
RESTART_MESSAGES = (RestartHello, RestartDecision, GroupRunning, BootstrapHello)


@dataclass(frozen=True, slots=True)
class PhaseStatus:
    """A phase's part of the node's status: the core's (a node without a core says it is
    joining), and whether it restarts from its data folder or waits to bootstrap (and why)."""

    core: CoreStatus
    restarting: bool = False
    bootstrapping: str | None = None


class NodePhase(Protocol):
    @property
    def core(self) -> NodeCore | None:
        """The protocol core (a member's); None before the node has one."""

    def on_frames(self, sender: int, frames: list[Any]) -> None:
        """Frames from member connection ``sender`` (its id proven), in the order sent."""

    def on_peer_lost(self, node: int) -> None:
        """A connection to or from ``node`` broke."""

    def on_client(self, handle: Any, msg: Any) -> None:
        """A frame from a client connection."""

    def flush(self) -> None:
        """Carry out what the core has ready (once per loop turn with news)."""

    def tick(self) -> None:
        """The core's timer fired."""

    def send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """The app multicasts ``payloads`` in ``shard``: to the core, or queued until it takes them."""

    def offer(self, shard: ShardId) -> None:
        """Offer the core what of ``shard`` waits in the app queue."""

    def persisted(self, shard: ShardId, version: int) -> None:
        """The app's log of ``shard`` holds every version up to ``version``."""

    def leave(self) -> None:
        """Leave the group gracefully."""

    def cut_off(self, node: int, reason: str) -> None:
        """``node`` sent what its identity does not allow."""

    def status(self) -> PhaseStatus:
        """This phase's part of the node's status."""


class NotStarted:
    """The phase of a node whose loop has not run yet: no transport, so no input comes; its
    status says it is joining (as a node outside any view does)."""

    core: None = None

    def on_frames(self, sender: int, frames: list[Any]) -> None:
        pass

    def on_peer_lost(self, node: int) -> None:
        pass

    def on_client(self, handle: Any, msg: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        pass

    def offer(self, shard: ShardId) -> None:
        pass

    def persisted(self, shard: ShardId, version: int) -> None:
        pass

    def leave(self) -> None:
        pass

    def cut_off(self, node: int, reason: str) -> None:
        pass

    def status(self) -> PhaseStatus:
        return PhaseStatus(CoreStatus(joining=True))
