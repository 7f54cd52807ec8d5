"""The simulator over a range of seeds, its determinism and its command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import runtime.sim.runner as runner
from runtime.sim.__main__ import main
from runtime.sim.invariants import Violation
from runtime.sim.runner import choose_params, run_seed

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("first", range(0, 20, 5))
def test_seed_range_passes_without_faults(first: int) -> None:
    for seed in range(first, first + 5):
        result = run_seed(seed)
        assert result.ok, f"seed {seed}: {result.violations[:3]}"
        assert result.sent > 0 and result.views == 0


@pytest.mark.parametrize("faults", ["crash", "partition", "join", "restart", "all"])
def test_seed_range_passes_with_faults(faults: str) -> None:
    changes = 0
    for seed in range(100, 106):
        result = run_seed(seed, faults=faults)
        assert result.ok, f"seed {seed} --faults {faults}: {result.violations[:3]}"
        changes += result.views
    assert changes > 0, "faults must cause view changes"


@pytest.mark.parametrize("members", [1, 2, 3, 7])
def test_fixed_member_counts(members: int) -> None:
    result = run_seed(5, members=members, messages=500, faults="crash")
    assert result.ok, result.violations[:3]
    assert len(result.params.members) == members


def test_parameters_cover_the_stress_cases() -> None:
    params = [choose_params(s) for s in range(300)]
    assert {len(p.members) for p in params} == set(range(3, 8))
    assert min(p.config.multicast.window_size for p in params) == 1
    assert any(p.config.multicast.null_interval == 0 for p in params)
    assert any(p.slow_links for p in params)
    assert {p.shards for p in params} == {1, 2}


def test_idle_senders_force_null_messages() -> None:
    results = [run_seed(s) for s in range(10)]
    assert sum(r.nulls for r in results) > 0


def test_same_seed_same_transcript() -> None:
    a = run_seed(3, faults="all", verbose=True)
    b = run_seed(3, faults="all", verbose=True)
    assert a.transcript == b.transcript and len(a.transcript) > 10


def test_cli_replay_prints_identical_output_twice() -> None:
    cmd = [sys.executable, "-m", "runtime.sim", "--seed", "7", "--faults", "all", "--verbose"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.count("\n") > 10
    assert "1 runs ok" in first.stderr


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
