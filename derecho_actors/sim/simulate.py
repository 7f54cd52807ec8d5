"""Users' replicated classes in the deterministic simulator.

Each run hosts the real actor layer (``Group``: routing, replicas, state transfer, persistence,
exactly-once sessions) on simulated nodes (``runtime.sim.app_node.SimNodeHandle``) of a
``SimCluster`` in app mode, with replicas run inline (``InlineRunner``) and their logs written
in place to a scratch folder, so a whole group lives in this one thread in virtual time. The
seed picks the group (3-5 nodes, 1-2 shards per type, protocol timings, link delays), the
clients (several per run: most of them the shipped ``ClientSession`` over the simulated network,
failing over between contacts, some pipelining; the others members' handles; see ``clients``)
and the faults (the protocol simulator's ``FaultInjector``: crashes, partitions,
joins, leaves, a node's crash and restart, and for persistent types a total restart decided by
the restart planner that ships, from reports the nodes' real data directories support).

Checks of every run:

- **state digests**: after every ordered batch a replica applies, a digest of its state is
  kept under (shard, view, calls of the view so far); two replicas with different digests at
  the same point have diverged (a non-deterministic ordered method, a P2P method that changed
  state, a bug);
- **replies**: the replicas' replies to one ordered call are identical;
- **no call forgotten**: no call a client still waits for is answered ``ReplyForgotten``
  ("applied already, reply no longer kept"; matched by type) (outside a total restart): a later call of its session was ordered first,
  and it may never have run (streaming clients keep calls unanswered while views change a
  shard's members under contacts outside it; see ``clients``);
- **history**: with a workload model (register, append, counter), what the clients observed is
  linearizable (``runtime.sim.history``); a call whose outcome the client never learned (its
  node crashed) may or may not have taken effect, and one a client sent again after a failover
  must take effect once;
- **final state**: once the group is quiet, every replica of a shard holds the same state;
- **liveness**: every call is answered (or its caller died, or its session gave up), and the
  group ends quiet;
- **the protocol's invariants** (``runtime.sim.invariants``) on the same run's trace;
- no node cut another off (every input here is honest) and no replica failed.

``--seed S`` replays a run exactly: every choice comes from RNGs seeded by the seed, and the
wall clock of the replicas is virtual.

This module is the simulator's front: ``da.simulate`` and the ``--app`` host that
``python -m runtime.sim`` loads (entry point ``derecho.sim_hosts``). The run itself is in
``app_run``, its seed's choices in ``params``, the watched replicas in ``watch``, the
application checks in ``checks``, the results in ``results`` and the replay line in ``replay``;
the names they define are importable from here too.
"""

from __future__ import annotations

import importlib
import time
from typing import Iterable

from derecho_actors.model.decorators import spec_of
from derecho_actors.sim.app_run import AppRun
from derecho_actors.sim.params import APP_FAULT_MODES, AppParams, choose_app_params
from derecho_actors.sim.replay import ReplayTarget, replay_target
from derecho_actors.sim.results import AppRunResult, SimReport
from runtime.errors import ConfigError

__all__ = [
    "APP_FAULT_MODES",
    "AppParams",
    "AppRun",
    "AppRunResult",
    "ReplayTarget",
    "SimReport",
    "choose_app_params",
    "cli_main",
    "load_target",
    "replay_target",
    "run_many",
    "simulate",
]


def run_many(
    classes: list[type],
    seeds: Iterable[int],
    faults: str,
    members: int | None,
    calls: int | None,
    verbose: bool,
    stop_at_first: bool,
    target: str = "",
) -> SimReport:
    results = []
    for seed in seeds:
        result = AppRun(classes, seed, faults, members, calls, verbose, target).run()
        results.append(result)
        if stop_at_first and not result.ok:
            break
    return SimReport(results)


def load_target(target: str) -> list[type]:
    """``module:Class[,Class...]`` -> the classes (importing the module registers its
    workloads)."""
    module_name, _, names = target.partition(":")
    if not module_name or not names:
        raise ConfigError(f"--app {target!r}: write module:Class (for example examples.kv_store:KV)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {target!r}: cannot import {module_name}: {exc}") from None
    classes = []
    for name in names.split(","):
        cls = getattr(module, name.strip(), None)
        if cls is None or spec_of(cls) is None:
            raise ConfigError(f"--app {target!r}: {module_name} has no @replicated class {name.strip()!r}")
        classes.append(cls)
    return classes


def _one(args: tuple[str, int, str, int | None, int | None, bool]) -> AppRunResult:
    target, seed, faults, members, calls, verbose = args
    return AppRun(load_target(target), seed, faults, members, calls, verbose, target).run()


def cli_main(
    target: str,
    seeds: list[int],
    faults: str,
    members: int | None,
    calls: int | None,
    verbose: bool,
    keep_going: bool,
    jobs: int,
) -> int:
    """``python -m runtime.sim --app module:Class``: run and report, as the protocol
    simulator does (transcripts and failures on standard output, a summary on standard
    error)."""
    import sys
    from concurrent.futures import ProcessPoolExecutor

    load_target(target)  # a bad target fails here, once, with a clear message
    started = time.perf_counter()
    work = [(target, s, faults, members, calls, verbose) for s in seeds]
    results: list[AppRunResult] = []
    failed = 0
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 and len(work) > 1 else None
    try:
        stream = pool.map(_one, work, chunksize=2) if pool is not None else map(_one, work)
        for r in stream:
            results.append(r)
            if verbose:
                print("\n".join(r.transcript))
            if not r.ok:
                failed += 1
                print(f"FAIL {r.params.describe()}")
                for v in r.violations[:5]:
                    print(f"  {v}")
                print(f"  replay: {r.replay()}")
                if not keep_going:
                    break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    real = time.perf_counter() - started
    report = SimReport(results)
    status = "ok" if failed == 0 else f"{failed} FAILED"
    print(
        f"sim --app {target}: {len(results)} runs {status} (faults: {faults}); "
        + report.describe().splitlines()[-1].split("; ", 1)[1]
        + f"; real {real:.1f}s",
        file=sys.stderr,
    )
    return 0 if failed == 0 else 1


def simulate(
    *classes: type,
    seeds: int | Iterable[int] = 100,
    faults: str = "all",
    members: int | None = None,
    calls: int | None = None,
    verbose: bool = False,
    stop_at_first: bool = True,
) -> SimReport:
    """Run ``classes`` (``@replicated``, each with its registered or generic workload) in
    simulated groups for each seed and check every run; returns a ``SimReport`` (``ok``,
    ``failures`` with a replay command each, ``describe()``).

    ``seeds``: a count (seeds 0..n-1) or the seeds themselves; ``faults``: "none", "crash",
    "partition", "join", "restart" or "all"; ``members``: nodes per run (default: the seed
    picks 3-5); ``calls``: calls per run (default: the seed picks); ``verbose``: keep each
    run's transcript.
    """
    return run_many(
        list(classes),
        range(seeds) if isinstance(seeds, int) else list(seeds),
        faults,
        members,
        calls,
        verbose,
        stop_at_first,
    )
