"""Simulator seeds that once failed, kept as tests of what broke them."""

from __future__ import annotations

import pytest

from runtime.sim.runner import run_seed

pytestmark = pytest.mark.timeout(120)


def test_seed_298_taken_descriptors_reach_the_transfer_engine_at_once() -> None:
    """No faults; large objects with at most 2 in flight per node. When a taken push handed
    its object descriptors to the transfer engine only at the next evaluation, a peer's input
    for such an object could come first and be refused, and the objects (and the order behind
    them) stalled for good: a liveness violation. ``NodeCore.take`` now hands them over at once."""
    result = run_seed(298)
    assert result.ok, result.violations
