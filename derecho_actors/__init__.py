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

from typing import TYPE_CHECKING

from derecho_actors.caller.client import Client
from derecho_actors.caller.handles import Handle
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.watch import Watch
from derecho_actors.exceptions import ResultTooLarge, ShardAwaitingLog, ShardStateLost
from derecho_actors.model.context import emit
from derecho_actors.model.decorators import ordered, p2p, replicated
from derecho_actors.model.fields import Persistent, at_time, at_version, current_version, persisted_version
from derecho_actors.model.layout import Layout
from derecho_actors.node.group import Group
from derecho_actors.sim.api import SimCall, sim_workload
from derecho_actors.wire.events import WatchEvent
from runtime.core.layout import ShardPolicy
from runtime.core.versions import format_version, parse_version, version_parts
from runtime.errors import (
    CallTimeout,
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
    PersistenceError,
    ProtocolError,
    ReadOptionError,
    Refused,
    RemoteError,
    ReplicaLost,
    ReplyForgotten,
    RestartError,
    SerializationError,
    SessionExpired,
    SessionLimit,
    ShardUnavailable,
    StateTransferError,
    TimeoutError,  # noqa: F401 - the old name of CallTimeout: da.TimeoutError, kept out of __all__
    Unavailable,
    UnknownMethod,
    UsageError,
    VersionLost,
    WatchHistoryLost,
    WireError,
)

if TYPE_CHECKING:  # imported on first use (see _LAZY below); typed as the real ones
    from derecho_actors.sim.simulate import simulate
    from derecho_actors.tools.cluster import local_cluster

__version__ = "0.1.0"

# Imported on first use, not with the package: a node process (a total restart waits for
# every node's imports) needs neither the simulator nor the local cluster tool, and together
# they are about a sixth of the package's import time. ``da.simulate`` and ``da.local_cluster`` work
# as before; ``from derecho_actors import simulate`` too (PEP 562).
_LAZY = {
    "simulate": ("derecho_actors.sim.simulate", "simulate"),
    "local_cluster": ("derecho_actors.tools.cluster", "local_cluster"),
}


def __getattr__(name: str) -> object:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'derecho_actors' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "ReplyForgotten",
    "ReadOptionError",
    "Refused",
    "ReplicaLost",
    "SessionExpired",
    "SessionLimit",
    "ShardUnavailable",
    "SerializationError",
    "ShardPolicy",
    "ShardAwaitingLog",
    "ResultTooLarge",
    "ShardStateLost",
    "SimCall",
    "CallTimeout",
    "Unavailable",
    "UsageError",
    "PersistenceError",
    "ProtocolError",
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
