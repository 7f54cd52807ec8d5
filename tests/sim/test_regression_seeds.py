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
