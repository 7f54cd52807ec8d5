"""One node's part of an object's schedule, in the terms the transfer engine needs.

The schedules (:mod:`runtime.core.rdmc_schedule`) answer per step; the engine runs without
steps (each send goes as soon as its block is held and its link has credit), so it needs the
schedule folded per node: for each downstream node, the blocks it owes it in step order; for
each block, the one node it is to come from. Every member derives the same plan from the
descriptor alone, which is what lets a receiver refuse a block from a node the schedule does
not name for it, with no message saying who will send what.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.core.rdmc_descriptor import ObjectDescriptor
from runtime.core.rdmc_schedule import ScheduleKind, schedule_for

__all__ = ["NO_SENDER", "NodePlan", "node_plan"]

NO_SENDER = -1
"""``expected_from`` for a block no node sends this one (the sender's own blocks)."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    """``sends``: per downstream node, the blocks this node sends it, in schedule order.
    ``expected_from``: per block, the node it arrives from (``NO_SENDER`` at the sender)."""

    rank: int
    sends: Mapping[int, tuple[int, ...]]
    expected_from: tuple[int, ...]

    def expected_counts(self) -> dict[int, int]:
        """Per upstream node, how many blocks it sends this one."""
        return dict(Counter(p for p in self.expected_from if p != NO_SENDER))


@functools.lru_cache(maxsize=256)
def _rank_plan(
    kind: ScheduleKind, n: int, blocks: int, rank: int
) -> tuple[tuple[tuple[int, tuple[int, ...]], ...], tuple[int, ...]]:
    """The plan in ranks: ((receiver rank, blocks in order), ...) and the sender rank per block.

    Shared by every object of the same shape (kind, members, blocks): a shard moving many
    objects of one size computes it once per node."""
    schedule = schedule_for(kind)
    sends: dict[int, list[int]] = {}
    expected = [NO_SENDER] * blocks
    for step in range(schedule.steps(n, blocks)):
        out = schedule.send(rank, n, blocks, step)
        if out is not None:
            sends.setdefault(out.receiver, []).append(out.block)
        got = schedule.receive(rank, n, blocks, step)
        if got is not None:
            expected[got.block] = got.sender
    return tuple((r, tuple(bs)) for r, bs in sends.items()), tuple(expected)


def node_plan(descriptor: ObjectDescriptor, rank: int) -> NodePlan:
    """The plan of the member at ``rank`` for this object, in node ids."""
    members = descriptor.members
    sends, expected = _rank_plan(descriptor.kind, len(members), descriptor.blocks, rank)
    return NodePlan(
        rank=rank,
        sends={members[r]: bs for r, bs in sends},
        expected_from=tuple(NO_SENDER if r == NO_SENDER else members[r] for r in expected),
    )
