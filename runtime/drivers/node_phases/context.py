"""What every phase of one running node shares: made once, when the node's loop runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.config import NodeConfig
from runtime.core.layout import ShardId
from runtime.drivers.app_queue import AppQueue
from runtime.drivers.client_door import ClientDoor
from runtime.drivers.leader_word import LeaderWord
from runtime.drivers.node_io import NodeIO
from runtime.drivers.node_phases.phase import NodePhase
from runtime.drivers.restart import SavedState
from runtime.node_api import AppHooks


@dataclass(slots=True)
class NodeCounters:
    """What the node counts from its start, for status and metrics."""

    delivered_total: dict[ShardId, int] = field(default_factory=dict)  # per shard: messages delivered
    views_installed: int = 0


@dataclass(frozen=True, slots=True)
class NodeContext:
    """The node's config and collaborators, and what a phase may ask of the node: to make
    another phase current (``enter``), to stop (``stop``; ``notify_stop`` tells the app why at
    once; ``fatal``: it cannot start, exit code 2)."""

    node_id: int
    config: NodeConfig
    hooks: AppHooks
    io: NodeIO
    leader_word: LeaderWord  # whose leader frames a node that is not a member yet takes
    queue: AppQueue
    counters: NodeCounters
    clients: ClientDoor
    saved: SavedState | None  # what the data folder held (a restarting node's last view and logs)
    accept_loss: bool  # the operator's --accept-loss
    rejoin_reason: str | None  # why the group removed this node, when it joins again
    busy_contact_wait: float  # how long a joiner waits for contacts that answer but are busy
    # Frames that came before the core (a restarting node's peers may install the restart
    # view and push their rows first): the core takes them in order once it exists.
    early: list[tuple[int, Any]]
    enter: Callable[[NodePhase], None]
    stop: Callable[[str], None]
    notify_stop: Callable[[str], None]
    fatal: Callable[[BaseException], None]
