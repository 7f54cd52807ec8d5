"""What simulated runs of users' classes report: one run's counts, violations and transcript
(``AppRunResult``), and many runs' summary (``SimReport``, what ``da.simulate`` returns).

These are the values a user's test holds and a worker process sends back, so they carry data
only: plain dataclasses that pickle, with no reference to the run's cluster or scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from derecho_actors.sim.params import AppParams
from derecho_actors.sim.replay import ReplayTarget, replay_command
from runtime.sim.invariants import Violation


@dataclass(slots=True)
class AppRunResult:
    params: AppParams
    target: str | ReplayTarget
    violations: list[Violation]
    calls: int = 0
    answered: int = 0
    unknown: int = 0
    digests: int = 0
    views: int = 0
    node_restarts: int = 0
    total_restarts: int = 0
    virtual_time: float = 0.0
    steps: int = 0
    real_time: float = 0.0
    transcript: list[str] = field(default_factory=list)
    failovers: int = 0  # clients' connections after their first (a contact lost, or turning them away)
    resent: int = 0  # calls the clients sent again after a failover

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay(self) -> str:
        """A command that runs this very run again (same seed, faults, members and calls, and
        the same workload), or, when no module can be imported to give the classes, the
        ``da.simulate`` call that does, with the reason."""
        return replay_command(self.target, self.params)


@dataclass(slots=True)
class SimReport:
    results: list[AppRunResult]

    @property
    def failures(self) -> list[AppRunResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        lines = []
        for r in self.failures:
            lines.append(f"FAIL {r.params.describe()}")
            lines.extend(f"  {v}" for v in r.violations[:5])
            lines.append(f"  replay: {r.replay()}")
        calls = sum(r.calls for r in self.results)
        unknown = sum(r.unknown for r in self.results)
        lines.append(
            f"{len(self.results)} runs, {len(self.failures)} failed; {calls} calls ({unknown} with unknown outcome), "
            f"{sum(r.digests for r in self.results)} state digests compared, "
            f"{sum(r.node_restarts for r in self.results)} node restarts, "
            f"{sum(r.total_restarts for r in self.results)} total restarts, "
            f"{sum(r.failovers for r in self.results)} client failovers "
            f"({sum(r.resent for r in self.results)} calls resent)"
        )
        return "\n".join(lines)
