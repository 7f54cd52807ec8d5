"""Stalls in the simulator: every node stopped together, one stopped while the others go on, or a
majority stopped while a minority runs on.

A stalled node runs nothing and loses nothing (``SimCluster.pause``); the core must tell its
own stall from its peers' silence (``NodeCore._advance``).
"""

from __future__ import annotations

import random
from concurrent.futures import Future

import pytest

from runtime.sim.faults import FaultEvent, FaultInjector
from runtime.sim.runner import RunResult, run_seed
from tests.sim import pool

pytestmark = pytest.mark.timeout(300)

KINDS = ("stall-all", "stall-one", "stall-majority")
SEEDS = range(6)


def only(kind: str, at: float = 0.1) -> object:
    """A fault plan with one ``kind`` fault at virtual time ``at``, whatever the mode."""

    def plan(rng: random.Random, mode: str, start: float, end: float) -> list[FaultEvent]:
        return [FaultEvent(at, kind)]

    return staticmethod(plan)


def run_with_only(kind: str, seed: int) -> RunResult:
    """``seed`` in stall mode with one ``kind`` fault as its plan. Run in a worker process: the
    plan is replaced there, for this run only."""
    usual = FaultInjector.__dict__["plan"]
    FaultInjector.plan = only(kind)  # type: ignore[method-assign,assignment]
    try:
        return run_seed(seed, faults="stall", verbose=True)
    finally:
        FaultInjector.plan = usual  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def stalled() -> dict[tuple[str, int], Future[RunResult]]:
    """Every (kind, seed) run of the one-stall tests, started at once on the workers."""
    return {(kind, seed): pool.call(run_with_only, kind, seed) for kind in KINDS for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_every_node_stalled_together_resumes_in_the_same_view(
    seed: int, stalled: dict[tuple[str, int], Future[RunResult]]
) -> None:
    result = stalled[("stall-all", seed)].result()
    assert result.ok, f"seed {seed}: {result.violations[:3]}"
    assert any("every node stalls" in line for line in result.transcript)
    assert result.views == 0, f"seed {seed}: a stall of every node changed the view {result.views} times"
    assert not any(" stops: " in line for line in result.transcript), "a node stopped after a stall of all"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_stalled_alone_is_removed_then_rejoins(
    seed: int, stalled: dict[tuple[str, int], Future[RunResult]]
) -> None:
    result = stalled[("stall-one", seed)].result()
    assert result.ok, f"seed {seed}: {result.violations[:3]}"
    text = "\n".join(result.transcript)
    assert "stalls alone" in text
    assert "rejoins after its stall" in text, "the stalled node never came back as a new member"
    assert result.views >= 2, "removed, then added again: two view changes at least"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_majority_stalled_while_a_minority_ran_on_goes_on_without_it(
    seed: int, stalled: dict[tuple[str, int], Future[RunResult]]
) -> None:
    result = stalled[("stall-majority", seed)].result()
    assert result.ok, f"seed {seed}: {result.violations[:3]}"
    text = "\n".join(result.transcript)
    assert "fault: all but" in text
    assert "rejoins after its stall" in text, "the minority never came back as new members"


def test_stall_faults_mix_with_the_others() -> None:
    stalls = 0
    for seed, result in zip(range(200, 215), pool.run_seeds(range(200, 215), faults="all", verbose=True)):
        assert result.ok, f"seed {seed} --faults all: {result.violations[:3]}"
        stalls += sum("fault: every node stalls" in line or "stalls alone" in line for line in result.transcript)
    assert stalls > 0, "--faults all never drew a stall in 15 seeds"
