"""The simulator runs users' replicated classes (``da.simulate``, ``python -m runtime.sim
--app``): clean examples pass under every fault, planted bugs are caught by the check meant
for them, a seed replays exactly."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.sim.simulate import SimReport
from examples.counter_lock import Counter, Locks
from examples.kv_store import KV
from examples.persistent_kv import PersistentKV
from tests.sim import planted_bugs as bugs

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]


def kinds(report: SimReport) -> set[str]:
    return {v.invariant for r in report.failures for v in r.violations}


@pytest.mark.parametrize(
    "classes, faults, seeds",
    [((KV,), "all", 6), ((Counter, Locks), "all", 6), ((PersistentKV,), "restart", 4), ((KV,), "none", 2)],
)
def test_examples_pass_every_check(classes: tuple[type, ...], faults: str, seeds: int) -> None:
    report = da.simulate(*classes, seeds=seeds, faults=faults, stop_at_first=False)
    assert report.ok, report.describe()
    assert sum(r.calls for r in report.results) > 0 and sum(r.digests for r in report.results) > 0


@pytest.mark.parametrize(
    "cls, expected",
    [
        (bugs.Clock, {"replies-differ", "state-diverged"}),  # a non-deterministic ordered method
        (bugs.Shuffle, {"state-diverged"}),  # same replies, different states: digests only
        (bugs.Hits, {"state-diverged", "final-state-differs"}),  # a @p2p method that changes state
        (bugs.StaleKV, {"not-linearizable"}),  # a stale read
        (bugs.LossyKV, {"not-linearizable"}),  # a lost write
    ],
)
def test_planted_bugs_are_caught(cls: type, expected: set[str]) -> None:
    report = da.simulate(cls, seeds=3, faults="none")
    assert not report.ok, f"{cls.__name__}: the planted bug went unnoticed"
    found = kinds(report)
    assert found & expected, f"{cls.__name__}: caught as {found}, expected one of {expected}"
    assert f"--app tests.sim.planted_bugs:{cls.__name__}" in report.failures[0].replay()


def test_the_simulated_clients_are_client_sessions_that_fail_over_in_their_session() -> None:
    """Most simulated clients run the shipped ClientSession over the simulated network: their
    contacts crash under them, they fail over and send their unanswered calls again in the
    same session, and every check (the history's above all: a call applied twice is not
    linearizable) still passes."""
    report = da.simulate(KV, seeds=12, faults="crash", stop_at_first=False)
    assert report.ok, report.describe()
    assert sum(r.failovers for r in report.results) > 0 and sum(r.resent for r in report.results) > 0, report.describe()


def test_a_client_that_resends_outside_its_session_is_caught() -> None:
    """The planted client bug (``ResendOutsideSession``): after a failover the unanswered calls
    go again under a new session number, so replicas cannot tell a resent append from a new
    one, and one the lost contact had already multicast is applied twice."""
    # Which seeds catch it moves whenever the wire's messages change; 40 leave room.
    report = da.simulate(bugs.Journal, seeds=40, faults="crash")
    assert not report.ok, f"the planted client bug went unnoticed: {report.describe()}"
    assert "not-linearizable" in kinds(report), report.describe()
    assert "--app tests.sim.planted_bugs:Journal" in report.failures[0].replay()
    seed = report.failures[0].params.seed
    fixed = da.simulate(CorrectJournal, seeds=[seed], faults="crash")  # the same calls, the shipped session
    assert fixed.ok and fixed.results[0].resent > 0, fixed.describe()


def test_a_workload_session_must_be_a_client_session() -> None:
    with pytest.raises(da.ConfigError, match="subclass of ClientSession"):
        da.sim_workload(KV, session=object)  # type: ignore[arg-type]


def test_history_check_names_the_stale_read() -> None:
    report = da.simulate(bugs.StaleKV, seeds=1, faults="none")
    problem = next(v.detail for v in report.failures[0].violations if v.invariant == "not-linearizable")
    assert "StaleKV (register)" in problem and "is not linearizable" in problem and "written by client" in problem


def test_local_reads_under_partitions_are_not_linearizable() -> None:
    """A correct class read with consistency="local": some seed partitions the group while a
    cut-off replica answers reads, and the history check says so."""
    report = da.simulate(bugs.LocalReadCounter, seeds=range(120), faults="partition", members=3)
    assert "not-linearizable" in kinds(report), report.describe()


def test_a_seed_replays_exactly() -> None:
    one = da.simulate(KV, seeds=[7], faults="all", verbose=True).results[0]
    two = da.simulate(KV, seeds=[7], faults="all", verbose=True).results[0]
    assert (one.calls, one.answered, one.unknown, one.digests, one.views, one.steps, one.virtual_time) == (
        two.calls,
        two.answered,
        two.unknown,
        two.digests,
        two.views,
        two.steps,
        two.virtual_time,
    )
    assert one.transcript == two.transcript and one.transcript


def test_a_class_without_a_workload_gets_generic_calls() -> None:
    @da.replicated
    class Tally:
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        @da.ordered
        def hit(self, name: str, n: int) -> int:
            self.counts[name] = self.counts.get(name, 0) + n
            return self.counts[name]

        @da.p2p
        def get(self, name: str) -> int:
            return self.counts.get(name, 0)

    report = da.simulate(Tally, seeds=2, faults="crash")
    assert report.ok, report.describe()
    assert sum(r.calls for r in report.results) > 0


def test_a_class_the_simulator_cannot_call_is_told_to_register_a_workload() -> None:
    @da.replicated
    class Opaque:
        @da.ordered
        def take(self, thing: object) -> None:
            pass

    with pytest.raises(da.ConfigError, match="sim_workload"):
        da.simulate(Opaque, seeds=1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.sim", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


def test_cli_runs_an_app_and_reports_a_planted_bug_with_its_replay() -> None:
    good = _cli("--app", "examples.kv_store:KV", "--seeds", "3", "--faults", "crash")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "3 runs ok" in good.stderr  # the summary line, as for the protocol's runs
    bad = _cli("--app", "tests.sim.planted_bugs:Hits", "--seeds", "2", "--faults", "none")
    assert bad.returncode != 0
    assert "python -m runtime.sim --app tests.sim.planted_bugs:Hits --seed" in bad.stdout + bad.stderr


def test_cli_refuses_an_unknown_app_clearly() -> None:
    out = _cli("--app", "examples.kv_store:Nope", "--seeds", "1")
    assert out.returncode != 0
    assert "Nope" in out.stdout + out.stderr and "Traceback" not in out.stderr


@da.replicated
class CorrectJournal(bugs.Journal):
    """``planted_bugs.Journal`` and its calls, with the shipped ClientSession."""


da.sim_workload(CorrectJournal, model="append")(bugs.journal_calls)


# ------------------------------------------------------------------ replay lines that replay
@da.replicated
class SelfCountingTally:
    """A planted bug with its workload registered here, in a test module: ``read`` (a @p2p
    method) changes the state."""

    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self, k: int) -> int:
        self.n += k
        return self.n

    @da.p2p
    def read(self) -> int:
        self.n += 1  # the planted bug
        return self.n


@da.sim_workload(SelfCountingTally)
def self_counting_calls(rng: random.Random) -> da.SimCall:
    return da.SimCall("add", (1,)) if rng.random() < 0.6 else da.SimCall("read")


def test_the_replay_line_of_a_workload_registered_in_a_test_module_replays_the_run() -> None:
    """Members and calls given to ``simulate`` are part of the run: a replay line without them
    runs another group (the seed then picks them) and may pass."""
    failure = da.simulate(SelfCountingTally, seeds=[2], faults="none", members=4, calls=60).failures[0]
    line = failure.replay()
    assert "--app tests.sim.test_app_sim:SelfCountingTally" in line and "--members 4 --calls 60" in line, line
    cwd, _, command = line.rpartition(" && ")
    args = command.split()
    assert args[:3] == ["python", "-m", "runtime.sim"], line
    out = subprocess.run(
        [sys.executable, *args[1:]],
        cwd=cwd.removeprefix("cd ") or ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"FAIL {failure.params.describe()}" in out.stdout, out.stdout[-2000:]
    for violation in failure.violations[:5]:
        assert str(violation) in out.stdout, (str(violation), out.stdout[-3000:])


def test_a_class_no_module_can_import_gets_a_simulate_call_that_replays() -> None:
    @da.replicated
    class Leaky:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @da.ordered
        def put(self, key: str) -> int:
            self.seen.append(key)
            return len(self.seen)

        @da.p2p
        def peek(self, key: str) -> int:
            self.seen.append(key)  # the planted bug: a @p2p method that changes state
            return len(self.seen)

    failure = da.simulate(Leaky, seeds=1, faults="none", members=3).failures[0]
    line = failure.replay()
    call, _, why = line.partition("  (")
    assert call == "da.simulate(Leaky, seeds=[0], faults='none', members=3, verbose=True)", line
    assert "defined inside a function" in why
    again = eval(call, {"da": da, "Leaky": Leaky}).failures[0]  # noqa: S307 - our own line
    assert again.params.describe() == failure.params.describe()
    assert [str(v) for v in again.violations] == [str(v) for v in failure.violations]
