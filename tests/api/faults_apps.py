"""Replicated types for the fault tests (``test_faults.py``). They live in a module of their
own so node processes (which load them through ``local_cluster``'s cloudpickle spec) and helper
scripts import the same classes."""

from __future__ import annotations

import derecho_actors as da


@da.replicated
class Counter:
    """Counts ordered calls: the final count says whether each call applied exactly once."""

    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    @da.ordered
    def store(self, blob: bytes) -> int:
        return len(blob)

    @da.p2p
    def value(self) -> int:
        return self.n


@da.replicated
class Journal:
    """A persistent key-value log: every put is a version on disk at each replica."""

    entries = da.Persistent({})

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.entries[key] = value
        return da.current_version(self)

    @da.p2p
    def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    @da.p2p
    def count(self) -> int:
        return len(self.entries)
