"""What the results of replicas that agree share rather than copy, for ``QueryResults``: a
client gets hundreds of answers per frame, and every object made per call is one more for the
garbage collector to walk while the call is in flight."""

from __future__ import annotations

import functools

SHAREABLE = frozenset({int, float, bool, str, bytes, type(None), complex})
"""Types of a decoded answer that replicas agreeing on it may share as one object (nothing in
them can change); any other is decoded once per replica, as if each had sent its own."""


@functools.lru_cache(maxsize=64)
def replica_set(nodes: tuple[int, ...]) -> frozenset[int]:
    """A view's replicas as a set, made once and shared by its calls (never changed in place):
    one object less per call in flight for the garbage collector to walk."""
    return frozenset(nodes)
