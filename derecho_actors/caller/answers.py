"""``Answers``: what a client's contact answered, matched to the results it feeds.

``ClientSession`` matches the answers to the calls waiting for them (its pending table, under
its driver's lock); feeding them to their ``QueryResults`` (decoding every value, comparing the
replicas' answers) is most of a client's work per call, and needs no lock, so the driver does
it outside, while callers go on issuing.
"""

from __future__ import annotations

from typing import Any


class Answers:
    """Answers from the contact, in the order they came, each with the results it feeds.
    ``deliver`` runs on any thread without the driver's lock (``QueryResults`` is thread-safe):
    decoding answers is most of a client's work per call, and callers keep issuing meanwhile."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[Any, ...]]) -> None:
        self._items = items

    def deliver(self) -> list[int]:
        """Feed every answer to its results; the calls now complete."""
        done = []
        for item in self._items:
            if item[0] is None:  # nodes left: (None, nodes, why, vid, [(call id, results)])
                _, gone, why, vid, calls = item
                for call_id, results in calls:
                    results.mark_left(gone, why, vid)
                    if results.done():
                        done.append(call_id)
                continue
            node, replicas, vid, entries = item  # (node, replicas, vid, [(call id, results, ok, value, version)])
            for call_id, results, ok, value, version in entries:
                results.add_reply(node, replicas, ok, value, version, vid)
                if results.done():
                    done.append(call_id)
        return done
