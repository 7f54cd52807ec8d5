"""Total restart alone, repeated: where the time to the first persisted write goes.

``python bench/recovery_restart.py --versions 100000 --reps 5`` writes ``versions`` puts into
a 3-node persistent KV (TLS on, as ``bench/run.py --only recovery`` does), kills every node,
keeps a copy of their data folders, then ``reps`` times: puts the copy back, restarts all
three nodes and measures the time to the restart view, to the first persisted write, and the
CPU time the three node processes spent up to that write (less noisy than wall time on a
shared machine). ``--phases`` prints each node's log lines of the restart with their time
since the restart began, to see which phase the time goes to.

Restoring the same data before each repetition makes every restart replay the same logs, so
repetitions (and two code versions run one after the other: set ``PYTHONPATH`` to the other
tree) compare like with like.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ours import VALUE_SIZE  # noqa: E402
from bench.persistence import DISK, _cluster, compiled_like_an_install, load_example  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def log_offsets(workdir: Path, nodes: list[int]) -> dict[int, int]:
    return {n: (workdir / f"node-{n}.log").stat().st_size for n in nodes}


def phase_lines(workdir: Path, offsets: dict[int, int], t0: float) -> list[str]:
    """The nodes' log lines written since ``offsets``, each with its time since ``t0`` (s)."""
    out: list[tuple[float, str]] = []
    for n, off in offsets.items():
        with open(workdir / f"node-{n}.log", "rb") as f:
            f.seek(off)
            for raw in f.read().decode(errors="replace").splitlines():
                try:
                    stamp = datetime.datetime.strptime(raw[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                out.append((stamp - t0, raw[24:200]))
    return [f"{t:7.3f}  {line}" for t, line in sorted(out)]


def spy_on(out: str) -> None:
    """From now on, start node processes under ``py-spy record`` (3 s of raw stacks, every
    thread, one file per start in ``out``): where a restarting node spends its CPU."""
    import subprocess

    from derecho_actors.tools import cluster as cluster_mod

    spy = str(Path(sys.executable).parent / "py-spy")
    Path(out).mkdir(parents=True, exist_ok=True)
    real = subprocess.Popen
    count = [0]

    def popen(cmd: list[str], *a: Any, **kw: Any) -> Any:
        count[0] += 1
        node = next((c.split("=", 1)[1] for c in cmd if c.startswith("node.id=")), "x")
        dest = f"{out}/node{node}-{count[0]}.txt"
        cmd = [spy, "record", "-r", "400", "-d", "6", "--gil", "-f", "raw", "-o", dest, "--", *cmd]
        return real(cmd, *a, **kw)

    cluster_mod.subprocess.Popen = popen  # type: ignore[assignment,misc]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--phases", action="store_true", help="print the nodes' restart log lines with times")
    ap.add_argument("--keep", metavar="DIR", help="also copy the data folders (before the restarts) to DIR")
    ap.add_argument("--spy", metavar="DIR", help="run restarted nodes under py-spy (raw stacks, 3 s) into DIR")
    args = ap.parse_args()

    import derecho_actors as da

    bytecode = compiled_like_an_install()
    pkv = load_example("persistent_kv")
    workdir = Path(tempfile.mkdtemp(prefix="derecho-bench-restart-", dir=str(DISK)))
    snap = workdir / "snapshot"
    layout = da.Layout({pkv.PersistentKV: da.ShardPolicy(min_nodes=3, max_nodes=3)})
    results: list[dict[str, Any]] = []
    try:
        with _cluster(
            3, pkv.PersistentKV, layout, str(workdir), **{"persistence.restart_quorum_wait_ms": "100"}
        ) as cluster:
            nodes = sorted(cluster.procs)
            h = cluster.handle(pkv.PersistentKV)
            last = None
            for start in range(0, args.versions, 5000):
                batch = [
                    h.put(f"k{i % 1000}", b"v" * VALUE_SIZE) for i in range(start, min(args.versions, start + 5000))
                ]
                last = batch[-1]
            assert last is not None
            v = last.persisted(timeout=300)
            cluster.kill_all()
            for n in nodes:
                shutil.copytree(cluster.data_dir(n), snap / f"data-{n}")
            if args.keep:
                shutil.copytree(snap, args.keep, dirs_exist_ok=True)
            if args.spy:
                spy_on(args.spy)
            for rep in range(args.reps):
                cluster.kill_all()
                for n in nodes:
                    shutil.rmtree(cluster.data_dir(n))
                    shutil.copytree(snap / f"data-{n}", cluster.data_dir(n))
                offsets = log_offsets(workdir, nodes)
                wall0 = time.time()
                t0 = time.perf_counter()
                cluster.restart(timeout=300)
                to_view = time.perf_counter() - t0
                h = cluster.handle(pkv.PersistentKV)
                h.put("marker", b"1").persisted(timeout=120)
                to_write = time.perf_counter() - t0
                cpu = {n: cpu_seconds(cluster.procs[n].pid) for n in nodes}
                ok = h.get_at(f"k{(args.versions - 1) % 1000}", v, node=2).get(timeout=30)[2] == b"v" * VALUE_SIZE
                row = {"rep": rep, "to_view": to_view, "to_write": to_write, "cpu": cpu, "ok": ok}
                results.append(row)
                print(
                    f"rep {rep}: view {to_view:.3f} s, first persisted write {to_write:.3f} s, node CPU "
                    + " ".join(f"{n}:{c:.2f}" for n, c in cpu.items())
                    + f" s, last version readable {ok}",
                    flush=True,
                )
                if args.spy:
                    time.sleep(7)  # py-spy writes its stacks when its 6 s are up
                if args.phases:
                    print("\n".join(phase_lines(workdir, offsets, wall0)), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
    cpu_med = statistics.median(sum(r["cpu"].values()) for r in results)
    print(
        f"versions {args.versions:,} reps {len(results)} ({bytecode}): median view {med('to_view'):.3f} s, "
        f"first write {med('to_write'):.3f} s, CPU of the 3 nodes {cpu_med:.2f} s"
    )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
