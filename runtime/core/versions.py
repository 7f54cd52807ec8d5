"""Versions of a persistent shard's state, ordered like delivery.

Derecho numbers each delivered update of a persistent subgroup with a 64-bit version made of
the view id and an index within the view. Here the index counts the application's updates
(ordered calls) delivered in the view, so one multicast message may carry many calls, each
its own version. Versions compare in delivery order across views (a later view has a larger
vid), so the persistence frontier, a minimum over members, is one integer; the core only
compares them.
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
    """``(vid, index within the view)`` of a version."""
    return version >> INDEX_BITS, version & ((1 << INDEX_BITS) - 1)


def format_version(version: int) -> str:
    if version < 0:
        return "none"
    vid, index = version_parts(version)
    return f"{vid}.{index}"


def parse_version(text: str) -> int:
    """The version ``format_version`` wrote as ``"vid.index"`` (a plain integer is taken as it
    is); ValueError says what was wrong."""
    vid, dot, index = text.strip().partition(".")
    try:
        if not dot:
            version = int(vid)
            if version < 0:
                raise ValueError
            return version
        return make_version(int(vid), int(index))
    except ValueError:
        raise ValueError(f"not a version: {text!r} (write it as VID.INDEX, e.g. 3.17)") from None
