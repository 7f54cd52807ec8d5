"""Run the benchmarks: ``python bench/run.py [--quick] [--out DIR] [--only NAME,...]``.

Every experiment runs real processes on 127.0.0.1 (ports chosen at run time) and stops them
whatever happens. The results go to DIR (default ``bench/results/``): ``results.json`` (the
machine, every row, notes) and PNG plots; a table per experiment is printed at the end.

Our nodes run with mutual TLS (a throwaway CA in each run's work folder); ``--insecure`` runs
every experiment without it, for comparison. The ``tls`` experiment measures both in one run.

To add an experiment, write a function ``fn(ctx) -> list[dict]`` in a module under ``bench/``,
decorate it with ``@experiment(name, title, columns=..., plot=...)`` from ``bench.registry``,
and import that module in ``MODULES`` below. Experiments run in registration order.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/run.py`` puts bench/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from bench import baseline, report, security  # noqa: E402
from bench.registry import EXPERIMENTS, Context  # noqa: E402

# Modules that register experiments, in running order: ceilings first (the plots draw them),
# then ours, then the peers (their ratios need ours).
MODULES = [
    "bench.ceilings",
    "bench.ours",
    "bench.baseline",
    "bench.peers.pysyncobj_peer",
    "bench.peers.etcd_peer",
    "bench.persistence",
    "bench.tlscost",
    "bench.objects",
    "bench.transports",
    "bench.readlevels",
    "bench.watches",
]


def _on_signal(signum: int, frame: Any) -> None:
    # Turn SIGTERM/SIGHUP into an exception, so every ``with Procs`` block kills its children.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    for module in MODULES:
        importlib.import_module(module)
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer sizes and messages (about 5-6 minutes)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where results.json and the plots go")
    p.add_argument("--only", default="", metavar="NAME,...", help=f"run only these: {', '.join(EXPERIMENTS)}")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run our nodes without TLS (security.insecure) to compare; the default is mutual TLS "
        "with a throwaway CA per run (the tls experiment runs both modes either way)",
    )
    p.add_argument(
        "--transport",
        choices=("tcp", "shm", "auto", "rdma"),
        default="",
        help="node.transport of every group (default: the nodes' own default, auto: shared memory "
        "between processes on this host); run once with tcp and once with shm to compare "
        "(rdma: on a host with an RDMA device and python3-pyverbs only)",
    )
    p.add_argument(
        "--baseline-rev",
        default=os.environ.get("BENCH_BASELINE_REV") or baseline.ISSUE_START,
        metavar="REV",
        help="the commit actor_baseline measures in a temporary git worktree (env BENCH_BASELINE_REV; "
        f"default {baseline.ISSUE_START}, where the throughput issue started)",
    )
    p.add_argument(
        "--baseline-bench",
        choices=baseline.BENCH_MODES,
        default="current",
        help="actor_baseline: measure the old commit with this checkout's bench/ (current, the default: "
        "same code, CPU columns; falls back to own if it fails) or with the old tree's own bench/",
    )
    a = p.parse_args(argv)
    baseline.configure(rev=a.baseline_rev, bench=a.baseline_bench)
    if a.list:
        for name, exp in EXPERIMENTS.items():
            print(f"{name:16} {exp.title}")
        return 0
    chosen = [n.strip() for n in a.only.split(",") if n.strip()] or list(EXPERIMENTS)
    unknown = [n for n in chosen if n not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    selected = [exp for name, exp in EXPERIMENTS.items() if name in chosen]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    security.set_insecure(a.insecure)
    security.set_transport(a.transport)
    if a.transport:
        os.environ["DERECHO_TRANSPORT"] = a.transport  # local_cluster's nodes too
    ctx = Context(quick=a.quick, out=out)
    machine = report.machine_info()
    ctx.say(
        f"derecho-actors bench ({'quick' if a.quick else 'full'}, {security.mode_label()}): "
        f"{', '.join(e.name for e in selected)}; "
        f"{machine['cores']} cores, Python {machine['python']}; results to {out}"
    )
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    loads: dict[str, list[float]] = {}
    t_start = time.monotonic()
    interrupted = False
    try:
        for exp in selected:
            ctx.current = exp.name
            ctx.say(f"{exp.name}: {exp.title}")
            loads[exp.name] = list(os.getloadavg())  # others' work on the machine shows up here
            t0 = time.monotonic()
            try:
                ctx.results[exp.name] = exp.fn(ctx)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                errors[exp.name] = f"{type(exc).__name__}: {exc}"
                ctx.results.setdefault(exp.name, [])
                ctx.say(f"  {exp.name} failed: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            timings[exp.name] = time.monotonic() - t0
            ctx.say(f"  {exp.name} took {timings[exp.name]:.1f} s")
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = True
        ctx.say(f"interrupted ({type(exc).__name__}); writing what was measured so far")
    total = time.monotonic() - t_start

    report.add_peer_ratios(ctx.results)
    report.add_baseline_ratios(ctx.results)
    plots, problems = report.make_plots(selected, ctx.results, out)
    for prob in problems:
        ctx.say(f"  {prob}")
    doc = {
        "machine": machine,
        "mode": "quick" if a.quick else "full",
        "tls": security.use_tls(),
        "transport": security.transport() or "default",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "wall_seconds": total,
        "interrupted": interrupted,
        "experiments": {
            exp.name: {
                "title": exp.title,
                "seconds": timings.get(exp.name),
                "load_avg_before": loads.get(exp.name),
                "rows": ctx.results.get(exp.name, []),
                "notes": ctx.notes.get(exp.name, []),
                **({"error": errors[exp.name]} if exp.name in errors else {}),
            }
            for exp in selected
            if exp.name in ctx.results or exp.name in errors
        },
        "plots": [p.name for p in plots],
    }
    report.write_json(out / "results.json", doc)
    print()
    report.print_tables(selected, ctx.results, ctx.notes, errors)
    print(
        f"\nresults: {out / 'results.json'}; plots: {', '.join(p.name for p in plots) or 'none'}; "
        f"wall time {total:.0f} s"
    )
    if interrupted:
        return 130
    return 1 if errors or any("error" in r for rows in ctx.results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
