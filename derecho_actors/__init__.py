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

from typing import TYPE_CHECKING, Any

from derecho_actors.exceptions import (
    ConfigError,
    DerechoError,
    GroupClosed,
    LayoutError,
    LogCorrupted,
    LogError,
    LogSignatureError,
    NestedCallError,
    NotPersistedYet,
    NotPersistent,
    NotRegistered,
    PayloadTooLarge,
    RemoteError,
    ReplicaLost,
    RestartError,
    SerializationError,
    StateTransferError,
    TimeoutError,
    UnknownMethod,
    WireError,
)

if TYPE_CHECKING:
    from derecho_actors._decorators import ordered, p2p, replicated
    from derecho_actors._client import Client
    from derecho_actors._cluster import local_cluster
    from derecho_actors._group import Group, Handle, Layout
    from derecho_actors._results import QueryResults
    from derecho_actors._persistent import Persistent, at_time, at_version, current_version, persisted_version
    from runtime.core.versions import format_version, version_parts
    from runtime.core.layout import ShardPolicy

__version__ = "0.1.0"

# The engine (``runtime``) imports ``derecho_actors.exceptions``, which runs this file; loading
# the group machinery lazily keeps the sans-I/O core free of drivers and threads.
_LAZY = {
    "ordered": "derecho_actors._decorators",
    "p2p": "derecho_actors._decorators",
    "replicated": "derecho_actors._decorators",
    "Client": "derecho_actors._client",
    "local_cluster": "derecho_actors._cluster",
    "Group": "derecho_actors._group",
    "Handle": "derecho_actors._group",
    "Layout": "derecho_actors._group",
    "QueryResults": "derecho_actors._results",
    "ShardPolicy": "runtime.core.layout",
    "Persistent": "derecho_actors._persistent",
    "at_version": "derecho_actors._persistent",
    "at_time": "derecho_actors._persistent",
    "current_version": "derecho_actors._persistent",
    "persisted_version": "derecho_actors._persistent",
    "format_version": "runtime.core.versions",
    "version_parts": "runtime.core.versions",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'derecho_actors' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "Client",
    "ConfigError",
    "DerechoError",
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
    "Persistent",
    "RestartError",
    "StateTransferError",
    "at_time",
    "at_version",
    "current_version",
    "format_version",
    "persisted_version",
    "version_parts",
    "PayloadTooLarge",
    "QueryResults",
    "RemoteError",
    "ReplicaLost",
    "SerializationError",
    "ShardPolicy",
    "TimeoutError",
    "UnknownMethod",
    "WireError",
    "__version__",
    "ordered",
    "local_cluster",
    "p2p",
    "replicated",
]
