"""Versions of a persistent shard's state: one per delivered message, ordered like delivery.

Derecho numbers each delivered update of a persistent subgroup with a 64-bit version made of
the view id and the message's global index in that view. Versions compare in delivery order
across views (a later view's messages have a larger vid), so the persistence frontier, a
minimum over members, is one integer. Null messages have no version; gaps are normal.
"""

from __future__ import annotations

INDEX_BITS = 40
"""A view may deliver up to 2**40 messages per shard (a year at 30k/s); vids take the rest."""

NO_VERSION = -1


def make_version(vid: int, index: int) -> int:
    if vid < 0 or not 0 <= index < (1 << INDEX_BITS):
        raise ValueError(f"no version for view {vid}, index {index}")
    return (vid << INDEX_BITS) | index


def version_parts(version: int) -> tuple[int, int]:
    """``(vid, global index)`` of a version."""
    return version >> INDEX_BITS, version & ((1 << INDEX_BITS) - 1)


def format_version(version: int) -> str:
    if version < 0:
        return "none"
    vid, index = version_parts(version)
    return f"{vid}.{index}"
