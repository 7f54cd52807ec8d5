"""The simulator over a range of seeds, its determinism and its command line."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import Future

import pytest

import runtime.sim.runner as runner
from runtime.sim.__main__ import main
from runtime.sim.invariants import Violation
from runtime.sim.runner import RunResult, choose_params
from tests.sim import pool

pytestmark = pytest.mark.timeout(300)

FAULT_MODES = ["crash", "partition", "join", "restart", "all"]
MEMBER_COUNTS = [1, 2, 3, 7]
Runs = dict[tuple[int, str], Future[RunResult]]


@pytest.fixture(scope="module")
def runs() -> Runs:
    """The seed ranges this module checks, all started at once on the workers (``pool``):
    seeds 0-19 without faults, 100-105 under each fault mode. Each test reads the runs it
    checks; the idle-sender test reads seeds 0-9 rather than running them a second time."""
    work: Runs = {(seed, "none"): pool.submit(seed) for seed in range(20)}
    work.update(
        {(seed, faults): pool.submit(seed, faults=faults) for faults in FAULT_MODES for seed in range(100, 106)}
    )
    return work


@pytest.fixture(scope="module")
def member_runs() -> dict[int, Future[RunResult]]:
    """Seed 5 with each fixed member count, started at once on the workers."""
    return {m: pool.submit(5, members=m, messages=500, faults="crash") for m in MEMBER_COUNTS}


@pytest.mark.parametrize("first", range(0, 20, 5))
def test_seed_range_passes_without_faults(first: int, runs: Runs) -> None:
    for seed in range(first, first + 5):
        result = runs[(seed, "none")].result()
        assert result.ok, f"seed {seed}: {result.violations[:3]}"
        assert result.sent > 0 and result.views == 0


@pytest.mark.parametrize("faults", FAULT_MODES)
def test_seed_range_passes_with_faults(faults: str, runs: Runs) -> None:
    changes = 0
    for seed in range(100, 106):
        result = runs[(seed, faults)].result()
        assert result.ok, f"seed {seed} --faults {faults}: {result.violations[:3]}"
        changes += result.views
    assert changes > 0, "faults must cause view changes"


@pytest.mark.parametrize("members", MEMBER_COUNTS)
def test_fixed_member_counts(members: int, member_runs: dict[int, Future[RunResult]]) -> None:
    result = member_runs[members].result()
    assert result.ok, result.violations[:3]
    assert len(result.params.members) == members


def test_parameters_cover_the_stress_cases() -> None:
    params = [choose_params(s) for s in range(300)]
    assert {len(p.members) for p in params} == set(range(3, 8))
    assert min(p.config.multicast.window_size for p in params) == 1
    assert any(p.config.multicast.null_interval == 0 for p in params)
    assert any(p.slow_links for p in params)
    assert {p.shards for p in params} == {1, 2}


def test_idle_senders_force_null_messages(runs: Runs) -> None:
    results = [runs[(s, "none")].result() for s in range(10)]
    assert sum(r.nulls for r in results) > 0


def test_same_seed_same_transcript() -> None:
    a, b = pool.submit(3, faults="all", verbose=True), pool.submit(3, faults="all", verbose=True)
    assert a.result().transcript == b.result().transcript and len(a.result().transcript) > 10


def test_cli_replay_prints_identical_output_twice() -> None:
    """The two runs go side by side: separate processes either way, sharing nothing."""
    cmd = [sys.executable, "-m", "runtime.sim", "--seed", "7", "--faults", "all", "--verbose"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        (first, first_err), (second, _) = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:  # none is left behind, even after a timeout
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 0, first_err
    assert first == second and first.count("\n") > 10
    assert "1 runs ok" in first_err


def test_a_failing_seed_prints_replay_command_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def planted(trace):  # type: ignore[no-untyped-def]
        return [Violation("prefix-agreement", 1, "first divergence at delivery #0: planted")]

    monkeypatch.setattr(runner, "check_trace", planted)
    assert main(["--seeds", "3", "--first", "40"]) == 1
    out = capsys.readouterr()
    assert "FAIL seed=40" in out.out
    assert "replay: python -m runtime.sim --seed 40 --faults none --verbose" in out.out
    assert "1 FAILED" in out.err


def test_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["--members", "0"])
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
    with pytest.raises(SystemExit):
        main(["--faults", "meteor"])
