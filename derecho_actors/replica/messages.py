"""What a replica is told: the typed messages its runner hands it, one at a time.

Kept apart from :class:`~derecho_actors.replica.replica.Replica` so the node's modules that
build these messages (hosting, transfer, frontiers, stable reads) depend on plain data, not on
the replica's logic. Every message here is read on the replica's actor thread (or inline in the
simulator), never on the node's loop after it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derecho_actors.model.reads import ReadOptions
from derecho_actors.replica.events import WatchExpire, WatchPoll
from derecho_actors.wire.messages import ChunkKind

DeliveredCall = tuple[int, int, str, bytes, int, int, int, int, int]
"""``(caller, call_id, method, args, origin, session_ns, floor, owner, timestamp_ns)``
(``wire.codec.OrderedCall``)"""


@dataclass(frozen=True, slots=True)
class OrderedBatch:
    """Calls delivered in view ``vid``, in order; ``replicas`` will each answer them.
    ``frontier``: the shard's delivered count in the view after this batch
    (``Delivery.frontier``), which stable reads compare with what every member delivered;
    -1 if the host does not say."""

    vid: int
    replicas: tuple[int, ...]
    calls: list[DeliveredCall]
    frontier: int = -1


@dataclass(frozen=True, slots=True)
class ViewBoundary:
    """Between the last delivery of view ``vid - 1`` and the first of ``vid``, at every replica:
    run ``on_view``; ``snapshot``: write the state for the view's new members."""

    vid: int
    members: tuple[int, ...]
    snapshot: bool


@dataclass(frozen=True, slots=True)
class P2PRequest:
    """A P2P call to run here. With ``read`` options (``replica.reads``): a stable read carries
    the node's latest ``mark`` (what every member delivered), its number ``seq`` and the
    shard's ``StableReads`` to tell when it stops waiting."""

    vid: int
    caller: int
    call_id: int
    method: str
    args: bytes
    origin: int
    read: ReadOptions | None = None
    mark: tuple[int, int] = (-1, 0)
    seq: int = 0
    stable: Any = None


@dataclass(frozen=True, slots=True)
class StableMark:
    """Every member of the shard has delivered view ``vid``'s messages below ``index``;
    stable reads numbered up to ``expire_upto`` that still wait have waited too long."""

    vid: int
    index: int
    expire_upto: int = 0


@dataclass(frozen=True, slots=True)
class StatePart:
    """One chunk of a state transfer to this replica, from node ``source`` for view ``vid``."""

    seq: int
    part: ChunkKind
    data: bytes
    final: bool
    reset: bool
    source: int
    vid: int


@dataclass(frozen=True, slots=True)
class FrontierMoved:
    """Every replica of the shard has persisted up to ``version``: reads of the past and
    watches of a persistent type may go that far."""

    version: int


@dataclass(frozen=True, slots=True)
class PeerMark:
    """Node ``node`` signed its log at ``version``: compare with ours once ours is on disk."""

    node: int
    version: int
    signature: bytes
    public_key: bytes


ReplicaMessage = (
    OrderedBatch
    | ViewBoundary
    | P2PRequest
    | StatePart
    | FrontierMoved
    | PeerMark
    | StableMark
    | WatchPoll
    | WatchExpire
)
