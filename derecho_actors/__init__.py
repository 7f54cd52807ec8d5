"""derecho-actors: Derecho-style state machine replication for Python.

    import derecho_actors as da

    @da.replicated
    class Counter:
        def __init__(self):
            self.n = 0

        @da.ordered
        def add(self, k: int) -> int:
            self.n += k
            return self.n

        @da.p2p
        def read(self) -> int:
            return self.n

    with da.Group(types=[Counter], overrides={"node.id": "1"}) as group:
        print(group.handle(Counter).add(5).get(timeout=5))   # {1: 5}

Ordered methods run on every replica of a shard in one total order, so they must be
deterministic. P2P methods run on one replica and must not change state.
"""

from derecho_actors._client import Client
from derecho_actors._cluster import local_cluster
from derecho_actors._decorators import ordered, p2p, replicated
from derecho_actors._events import WatchEvent, emit
from derecho_actors._group import Group, Handle, Layout
from derecho_actors._persistent import Persistent, at_time, at_version, current_version, persisted_version
from derecho_actors._results import QueryResults
from derecho_actors._sim_api import SimCall, sim_workload, simulate
from derecho_actors._watch import Watch
from derecho_actors.exceptions import ShardAwaitingLog, ShardStateLost
from runtime.core.layout import ShardPolicy
from runtime.core.versions import format_version, parse_version, version_parts
from runtime.errors import (
    ClientLimit,
    ConfigError,
    DerechoError,
    DivergenceError,
    EmitError,
    GroupClosed,
    LayoutError,
    LogCorrupted,
    LogError,
    LogSignatureError,
    NestedCallError,
    NotPersistedYet,
    NotPersistent,
    NotRegistered,
    P2PMutationError,
    PayloadTooLarge,
    ReadOptionError,
    Refused,
    RemoteError,
    ReplicaLost,
    RestartError,
    SerializationError,
    SessionExpired,
    SessionLimit,
    ShardUnavailable,
    StateTransferError,
    TimeoutError,
    UnknownMethod,
    VersionLost,
    WatchHistoryLost,
    WireError,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientLimit",
    "ConfigError",
    "DerechoError",
    "DivergenceError",
    "EmitError",
    "Group",
    "GroupClosed",
    "Handle",
    "Layout",
    "LayoutError",
    "LogCorrupted",
    "LogError",
    "LogSignatureError",
    "NestedCallError",
    "NotPersistedYet",
    "NotPersistent",
    "NotRegistered",
    "P2PMutationError",
    "Persistent",
    "RestartError",
    "StateTransferError",
    "at_time",
    "at_version",
    "current_version",
    "format_version",
    "parse_version",
    "persisted_version",
    "version_parts",
    "PayloadTooLarge",
    "QueryResults",
    "RemoteError",
    "ReadOptionError",
    "Refused",
    "ReplicaLost",
    "SessionExpired",
    "SessionLimit",
    "ShardUnavailable",
    "SerializationError",
    "ShardPolicy",
    "ShardAwaitingLog",
    "ShardStateLost",
    "SimCall",
    "TimeoutError",
    "UnknownMethod",
    "VersionLost",
    "Watch",
    "WatchEvent",
    "WatchHistoryLost",
    "WireError",
    "__version__",
    "emit",
    "ordered",
    "local_cluster",
    "p2p",
    "replicated",
    "sim_workload",
    "simulate",
]
