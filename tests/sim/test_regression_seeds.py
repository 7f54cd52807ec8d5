"""Simulator seeds that once failed, kept as tests of what broke them.

Both stalled (a liveness violation) under a change that evaluated the core's predicates once
per flush instead of once per frame, with large objects limited to 2 in flight per node: the
order stopped behind objects that never completed. That change was withdrawn; these seeds
guard the next attempt."""

from __future__ import annotations

import pytest

from runtime.sim.runner import run_seed

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("seed, faults", [(298, "none"), (161, "all")])
def test_seed_that_stalled_with_evaluation_per_flush(seed: int, faults: str) -> None:
    result = run_seed(seed, faults=faults)
    assert result.ok, result.violations


def test_joiner_started_during_a_majority_stall_gets_in() -> None:
    """Seed 196, every fault: a node joins while all but the leader stall; the leader, left
    alone, takes the join request and then stops (no majority). The joiner's contacts were
    the members not stalled (the leader alone), so it never got in: the stalled members are
    now its later contacts (``runtime.sim.faults``). The run reached that state once the
    deferral of null receipts changed the logs the stall's minority is chosen by."""
    result = run_seed(196, faults="all")
    assert result.ok, result.violations


def test_three_senders_objects_with_room_for_two_at_a_node() -> None:
    """Seed 161 without faults draws ``max_objects`` 2 for 3 senders: admitted on arrival,
    nodes that opened different pairs of objects waited on each other for ever (with
    ``_real_top`` never lowered, the run stopped at virtual 30 s). Objects are now admitted
    in the shard's total order when the senders' quotas exceed a node's room."""
    result = run_seed(161, faults="none")
    assert result.ok, result.violations
