"""``python -m runtime.sim``: run seeded simulations of the protocol core and check them.

Standard output is a deterministic transcript (the same seed prints the same text every
time); the closing summary with wall-clock figures goes to standard error.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Generator

from runtime.sim.faults import FAULT_MODES, PERSISTENT_MODES
from runtime.sim.runner import RunResult, replay_command, run_seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="number of seeds to run (from --first)")
    p.add_argument("--first", type=int, default=0, help="first seed of a --seeds range")
    p.add_argument("--seed", type=int, help="run this one seed only")
    p.add_argument("--members", type=int, help="members per run (default: 3-7 chosen by the seed)")
    p.add_argument("--messages", type=int, help="messages per run (default: 2000-5000 by the seed)")
    p.add_argument(
        "--faults",
        choices=FAULT_MODES,
        default="none",
        help="faults to inject: crashes, partitions, joins/leaves, crash-and-restart with simulated disks "
        "(one node, or all nodes then a total restart), or all of them (default: none)",
    )
    p.add_argument(
        "--plain-restart-quorum",
        action="store_true",
        help="restart reports carry only the last view and log ends, not the accepted view id, recorded "
        "frontiers and unfinished transfers (shows the view id reuse and losses the planner then allows)",
    )
    p.add_argument(
        "--accept-loss",
        action="store_true",
        help="total restarts go ahead when logs lack persisted versions (as the node's --accept-loss)",
    )
    p.add_argument(
        "--app",
        metavar="MODULE:CLASS[,CLASS]",
        help="simulate these replicated classes (hosted by the installed actor layer, with their workloads) "
        "instead of the bare protocol; checks state digests, replies, the history and the protocol",
    )
    p.add_argument("--calls", type=int, help="--app: calls per run (default: 80-240 chosen by the seed)")
    p.add_argument("--verbose", action="store_true", help="print each run's transcript")
    p.add_argument("--keep-going", action="store_true", help="run all seeds even after a failure")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (results still print in seed order)")
    args = p.parse_args(argv)
    if args.members is not None and not 1 <= args.members <= 64:
        p.error("--members must be between 1 and 64")
    if args.messages is not None and args.messages < 0:
        p.error("--messages must not be negative")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if not 1 <= args.jobs <= 64:
        p.error("--jobs must be between 1 and 64")
    return args


def _results(args: argparse.Namespace, seeds: list[int]) -> Generator[RunResult, None, None]:
    """Run seeds, in this process or a pool; either way results come back in seed order."""
    run = partial(
        run_seed,
        members=args.members,
        messages=args.messages,
        faults=args.faults,
        verbose=args.verbose,
        plain_restart_quorum=args.plain_restart_quorum,
        accept_loss=args.accept_loss,
    )
    if args.jobs == 1 or len(seeds) == 1:
        yield from map(run, seeds)
        return
    pool = ProcessPoolExecutor(max_workers=args.jobs)
    try:
        # One seed per task: seeds differ in cost by ten times and more, and with several per task
        # the last tasks kept one worker busy long after the others had run out of work.
        yield from pool.map(run, seeds, chunksize=1)
    finally:  # a failure stops the range: drop the seeds not started yet
        pool.shutdown(wait=True, cancel_futures=True)


APP_HOSTS = "derecho.sim_hosts"
"""Entry point group of the packages that host applications in the simulator (``--app``)."""


def run_app(args: argparse.Namespace, seeds: list[int]) -> int:
    """Hand ``--app`` to the application host an installed package registered: the engine
    knows no application package by name."""
    from importlib.metadata import entry_points

    from runtime.errors import DerechoError

    hosts = entry_points(group=APP_HOSTS)
    if not hosts:
        print(
            f"--app needs a package that hosts applications (entry point group {APP_HOSTS!r}); "
            "install the project (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    host = sorted(hosts, key=lambda e: e.name)[0].load()
    try:
        return int(
            host(args.app, seeds, args.faults, args.members, args.calls, args.verbose, args.keep_going, args.jobs)
        )
    except DerechoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    if args.app:
        return run_app(args, list(seeds))
    explicit = args.members is not None or args.messages is not None
    started = time.perf_counter()
    runs = failures = delivered = nulls = views = 0
    node_restarts = total_restarts = checked = transfers = disk_errors = 0
    virtual = longest = 0.0
    results = _results(args, list(seeds))
    for result in results:
        runs += 1
        delivered += result.delivered
        nulls += result.nulls
        virtual += result.virtual_time
        views += result.views
        longest = max(longest, result.longest_change)
        node_restarts += result.node_restarts
        total_restarts += result.total_restarts
        checked += result.persisted_checked
        transfers += result.transfers
        disk_errors += result.disk_errors
        if args.verbose:
            print("\n".join(result.transcript))
        if not result.ok:
            failures += 1
            print(f"FAIL {result.params.describe()}")
            for v in result.violations[:5]:
                print(f"  {v}")
            print(f"  replay: {replay_command(result.params, explicit)}")
            if not args.keep_going:
                break
    results.close()
    real = time.perf_counter() - started
    status = "ok" if failures == 0 else f"{failures} FAILED"
    persistence = (
        f"{node_restarts} node restarts, {total_restarts} total restarts, {disk_errors} disk errors, "
        f"{transfers} state transfers, "
        f"{checked} persisted versions checked; "
        if args.faults in PERSISTENT_MODES
        else ""
    )
    print(
        f"sim: {runs} runs {status} (faults: {args.faults}); {delivered} messages delivered "
        f"({nulls} nulls sent); {views} view changes, longest {longest * 1e3:.1f}ms virtual; "
        f"{persistence}virtual {virtual:.3f}s, real {real:.2f}s ({runs / real:.1f} runs/s, "
        f"{delivered / real:,.0f} deliveries/s)",
        file=sys.stderr,
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
