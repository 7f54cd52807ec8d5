"""One seeded simulation run: pick parameters from the seed, run, check, report.

Every choice a run makes comes from ``random.Random(seed)``, so a seed *is* the run: the
replay command printed with a violation reproduces it exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from runtime.core.smc import MulticastConfig
from runtime.sim.cluster import SimCluster
from runtime.sim.invariants import Violation, check_trace
from runtime.sim.network import LinkProfile, SimNetwork
from runtime.sim.scheduler import Scheduler
from runtime.sim.workload import make_plan

SEND_SPAN = 0.05  # virtual seconds over which the workload issues its sends
SMALL_WINDOW_MESSAGES = 800  # message cap of runs whose seed picked a window under 8
MAX_STEPS = 5_000_000  # steps after which a run counts as livelocked
DEADLINE = 120.0  # virtual seconds after which undelivered messages count as a liveness failure


@dataclass(frozen=True, slots=True)
class RunParams:
    seed: int
    members: tuple[int, ...]
    messages: int
    config: MulticastConfig
    link: LinkProfile
    slow_links: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        c = self.config
        return (
            f"seed={self.seed} members={len(self.members)} messages~{self.messages} "
            f"window={c.window_size} batch={c.max_batch} null_interval={c.null_interval * 1e3:.2f}ms "
            f"link={self.link.base * 1e6:.0f}+{self.link.jitter * 1e6:.0f}us slow_links={list(self.slow_links)}"
        )


@dataclass(slots=True)
class RunResult:
    params: RunParams
    violations: list[Violation]
    delivered: int  # messages delivered, summed over members
    sent: int
    nulls: int
    frames: int
    virtual_time: float
    steps: int
    transcript: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def choose_params(seed: int, members: int | None = None, messages: int | None = None) -> RunParams:
    rng = random.Random(f"params-{seed}")
    n = members if members is not None else rng.randint(3, 7)
    ids = tuple(sorted(rng.sample(range(1, 100), n)))
    # Tiny windows and batches are the stress cases; they are rarer because each costs a
    # round trip (or a frame) per message and would dominate the run time of a seed range.
    window = rng.choice((1, 3, 16, 16, 64, 64, 256, 1000, 1000))
    config = MulticastConfig(
        window_size=window,
        null_interval=rng.choice((0.0, 0.0002, 0.001, 0.003)),
        max_batch=rng.choice((7, 100, 100, 1000, 1000)),
    )
    link = LinkProfile(base=rng.choice((10e-6, 50e-6, 200e-6)), jitter=rng.choice((0.0, 100e-6, 1e-3)))
    slow: list[tuple[int, int]] = []
    if rng.random() < 0.4 and n >= 2:
        a, b = rng.sample(ids, 2)
        slow.append((a, b))
    count = messages if messages is not None else rng.randint(2000, 5000)
    if messages is None and window < 8:
        # A window under 8 costs a full round of pushes per few messages: keep such runs short.
        count = min(count, SMALL_WINDOW_MESSAGES)
    return RunParams(seed, ids, count, config, link, tuple(slow))


def run_seed(
    seed: int,
    members: int | None = None,
    messages: int | None = None,
    verbose: bool = False,
    corrupt: Callable[[SimCluster], None] | None = None,
) -> RunResult:
    """Run one seed to quiescence and check it. ``corrupt`` lets tests tamper with the trace."""
    params = choose_params(seed, members, messages)
    rng = random.Random(f"run-{seed}")
    sched = Scheduler()
    net = SimNetwork(sched, rng, params.link)
    for a, b in params.slow_links:
        net.links[(a, b)] = LinkProfile(params.link.base * 20, params.link.jitter * 20 + 1e-3)
    transcript: list[str] = []
    log = transcript.append if verbose else None
    cluster = SimCluster(params.members, params.config, sched, net, rng, log=log)
    plan = make_plan(rng, params.members, params.messages, SEND_SPAN)
    if verbose:
        transcript.append(params.describe())
        transcript.append("styles: " + ", ".join(f"{m}={plan.style[m]}" for m in params.members))
    for burst in plan.bursts:
        sched.at(burst.at, cluster.app_send, burst.node, burst.count)
    crash: str | None = None
    try:
        drained = sched.run(DEADLINE, MAX_STEPS)
    except Exception as exc:  # a core bug: report it with the seed instead of a traceback
        drained, crash = True, f"{type(exc).__name__}: {exc} (at virtual {sched.now:.6f}s, step {sched.steps})"
    if corrupt is not None:
        corrupt(cluster)
    violations = check_trace(cluster.trace, expect_complete=crash is None)
    if crash is not None:
        violations.insert(0, Violation("core-crash", None, crash))
    for node, sender, reason in cluster.rejections[:3]:
        violations.append(Violation("rejected-honest-input", node, f"from node {sender}: {reason}"))
    if not drained or cluster.pending_app_messages():
        violations.append(
            Violation(
                "liveness", None,
                f"still busy at virtual {sched.now:.3f}s after {sched.steps} steps: {sched.pending()} events queued, "
                f"{cluster.pending_app_messages()} app messages not accepted by send",
            )
        )
    delivered = sum(len(v) for v in cluster.trace.delivered.values())
    sent = sum(len(v) for v in cluster.trace.sent.values())
    result = RunResult(
        params, violations, delivered, sent, cluster.nulls_sent(), net.frames, sched.now, sched.steps,
        transcript,
    )
    if verbose:
        transcript.append(
            f"result: sent={sent} delivered={delivered} nulls={result.nulls} frames={net.frames} "
            f"steps={sched.steps} virtual={sched.now:.6f}s violations={len(violations)}"
        )
    return result


def replay_command(params: RunParams, explicit: bool) -> str:
    cmd = f"python -m runtime.sim --seed {params.seed}"
    if explicit:
        cmd += f" --members {len(params.members)} --messages {params.messages}"
    return cmd + " --verbose"
