"""``Answers``: what a client's contact answered, matched to the results it feeds.

``ClientSession`` matches the answers to the calls waiting for them (its pending table, under
its driver's lock); feeding them to their ``QueryResults`` (through its producer side,
``ResultsFeed``: decoding every value, comparing the replicas' answers) is most of a client's
work per call, and needs no lock, so the driver does it outside, while callers go on issuing. Three kinds of news come from a contact, each a
dataclass below: one replica's answers, the answers all replicas agreed on (merged by the
contact), and members that left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from derecho_actors.caller.results_feed import ResultsFeed

add_agreed_all = ResultsFeed.add_agreed_all


@dataclass(slots=True)
class ReplicaAnswers:
    """Replica ``node``'s answers to calls delivered in view ``vid`` (answered by ``replicas``):
    ``(call id, results, ok, value, version)`` each."""

    node: int
    replicas: tuple[int, ...]
    vid: int
    matched: Sequence[tuple[int, ResultsFeed, bool, bytes, int]]


@dataclass(slots=True)
class MergedAnswers:
    """Answers every replica in ``answered`` gave alike (``()``: all of ``replicas``), as the
    contact's ``AnswerBatch`` had them, ``(call id, ok, value, version, answered)`` each
    (``wire.replies.client_answers``: one tuple per answer, as msgpack made it), and the
    results each feeds (None: a call not waiting, answered already). Side by side, no pair
    made per answer: hundreds come per frame, and every object made counts towards the
    garbage collector's next pass."""

    replicas: tuple[int, ...]
    vid: int
    entries: Sequence[Sequence[Any]]
    results: Sequence[ResultsFeed | None]


@dataclass(slots=True)
class Departed:
    """Members that left the group in view ``vid``: the calls ``(call id, results)`` waiting
    for their answers will not get them."""

    nodes: set[int]
    why: str
    vid: int
    calls: Sequence[tuple[int, ResultsFeed]]


Answer = Union[ReplicaAnswers, MergedAnswers, Departed]


class Answers:
    """Answers from the contact, in the order they came, each with the results it feeds.
    ``deliver`` runs on any thread without the driver's lock (``ResultsFeed`` is thread-safe):
    decoding answers is most of a client's work per call, and callers keep issuing meanwhile."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Answer]) -> None:
        self._items = items

    def deliver(self) -> list[int]:
        """Feed every answer to its results; the calls now complete."""
        done = []
        for item in self._items:
            t = type(item)
            if t is MergedAnswers:
                merged: MergedAnswers = item  # type: ignore[assignment]
                done += add_agreed_all(merged.entries, merged.results, merged.replicas, merged.vid)
            elif t is ReplicaAnswers:
                one: ReplicaAnswers = item  # type: ignore[assignment]
                node, replicas, vid = one.node, one.replicas, one.vid
                for call_id, results, ok, value, version in one.matched:
                    results.add_reply(node, replicas, ok, value, version, vid)
                    if results.done():
                        done.append(call_id)
            else:
                left: Departed = item  # type: ignore[assignment]
                for call_id, results in left.calls:
                    results.mark_left(left.nodes, left.why, left.vid)
                    if results.done():
                        done.append(call_id)
        return done
