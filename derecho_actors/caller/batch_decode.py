"""The first pass of ``ResultsFeed.add_agreed_all`` (a client contact's batch of merged answers):
which answers can be recorded wholesale, and their values decoded, outside any lock.

Why apart: decoding is most of a client's work per answer and needs no lock, so callers go on
issuing meanwhile; a run of equal encoded values (``put``'s ``None``) is decoded once, and the
answers decoded to one object are what the second pass lets calls share."""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol, Sequence, cast

from derecho_actors.caller.sharing import SHAREABLE

SLOW = object()
"""An answer to record through ``add_agreed``: an error, from some replicas only, not decodable
here (each replica's error), or a value replicas may not share (decoded once per replica)."""

SKIP = object()
"""An answer to a call not waiting any more (no results to feed)."""


class Feed(Protocol):
    """What this pass reads of a call's ``ResultsFeed`` (named so, not imported: it imports this)."""

    _decode: Callable[[bytes], Any]
    _lock: threading.Lock


def decode_batch(
    entries: Sequence[Sequence[Any]], feeds: Sequence[Feed | None], replicas: tuple[int, ...]
) -> tuple[list[Any], threading.Lock | None]:
    """Per entry (``[call id, ok, value, version, answered]``, feeding the results beside it in
    ``feeds``): its decoded value, ``SLOW`` or ``SKIP``; and the lock of the first results with a
    decoded value (None: there is none)."""
    decoded: list[Any] = []
    whole = len(set(replicas)) == len(replicas)
    lock: threading.Lock | None = None
    raw_seen, decode_seen, value_seen = cast("tuple[bytes | None, Callable[[bytes], Any] | None, Any]", (None,) * 3)
    for entry, results in zip(entries, feeds):
        if results is None:
            decoded.append(SKIP)
            continue
        ok, raw, answered = entry[1], entry[2], entry[4]
        if not ok or not whole or (answered and answered != replicas):
            decoded.append(SLOW)
            continue
        decode = results._decode
        if raw == raw_seen and decode is decode_seen:
            decoded.append(value_seen)
            continue
        try:
            value = decode(raw)
        except Exception:  # add_agreed records it as each replica's error
            decoded.append(SLOW)
            continue
        if type(value) not in SHAREABLE:
            decoded.append(SLOW)
            continue
        raw_seen, decode_seen, value_seen = raw, decode, value
        decoded.append(value)
        if lock is None:
            lock = results._lock
    return decoded, lock
