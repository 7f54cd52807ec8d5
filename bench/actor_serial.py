"""One ``Client`` calling ``KV.put`` one call at a time: latency and CPU per call per process.

Why a tool of its own: the serial call's cost is per loop turn and per wake-up, not per call
of work, and finding it needs the same cluster measured several times and profiled
(``--spy`` runs py-spy on every node process during the timed calls). Run it against another
checkout for an A/B in the same minute by putting that checkout first on ``PYTHONPATH`` (the
node processes inherit it)::

    python -m bench.actor_serial --calls 2000 --rounds 3
    PYTHONPATH=/tmp/old python -m bench.actor_serial --calls 2000 --rounds 3

Prints one JSON line per round: p50/p99 ms, CPU µs per call of the client, the contact and
each other node, context switches per call per node (each a wake-up or a hand-off between
threads: a count the machine's load inflates less than CPU time) and each node's CPU while
idle (TLS on, 3 nodes on loopback, the bench's defaults). ``--spy DIR --strace count|full``
straces the nodes instead of sampling them (system calls per call: loop turns, writes,
futexes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import security
from bench.ours import contact_node, cpu_per_call, cpu_snapshot, load_kv_example, one_at_a_time
from bench.stats import percentile


def switches(pid: int) -> int:
    """Context switches (voluntary and not) of every thread of process ``pid`` so far: a
    figure the machine's load does not inflate, unlike CPU time (each is a wake-up or a
    hand-off between threads)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def run(calls: int, spy: Path | None, value: bytes, strace: str = "", idle: float = 1.0) -> dict[str, Any]:
    """Start a 3-node cluster, warm it up, make ``calls`` serial puts and return the round's
    figures; with ``spy``, py-spy records every node process into ``spy/node-N.txt``."""
    import derecho_actors as da

    kvmod = load_kv_example()
    layout = da.Layout({kvmod.KV: da.ShardPolicy(shards=1, min_nodes=3, max_nodes=3)})
    workdir = tempfile.mkdtemp(prefix="derecho-serial-")
    spies: list[subprocess.Popen[bytes]] = []
    try:
        with da.local_cluster(
            nodes=3,
            types=[kvmod.KV],
            layout=layout,
            workdir=workdir,
            overrides={"timeouts.suspicion_ms": "3000"},
            **security.cluster_kwargs(None),
        ) as cluster:
            handle = cluster.handle(kvmod.KV, shard=0)

            def put(i: int, v: bytes) -> Any:
                return handle.put(f"key-{i}", v)

            for i in range(200):
                put(i, value).get(timeout=30)
            if spy is not None:
                spy.mkdir(parents=True, exist_ok=True)
                for node, proc in cluster.procs.items():
                    if strace:  # system calls counted per thread group (loop turns, writes, futexes)
                        args = [
                            "strace",
                            "-c" if strace != "full" else "-tt",
                            "-f",
                            "-o",
                            str(spy / f"strace-{node}.txt"),
                            "-p",
                            str(proc.pid),
                        ]
                    else:
                        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                        args = [exe, "record", "-r", "1000", "-f", "raw", "--gil", "-p", str(proc.pid)]
                        args += ["-o", str(spy / f"node-{node}.txt"), "--nonblocking"]
                    spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1.0)
            idle0 = cpu_snapshot(cluster)
            time.sleep(idle)
            idle1 = cpu_snapshot(cluster)
            before = cpu_snapshot(cluster)
            sw0 = {node: switches(proc.pid) for node, proc in cluster.procs.items()}
            lat = one_at_a_time(put, calls, value)
            after = cpu_snapshot(cluster)
            sw = {str(n): round((switches(p.pid) - sw0[n]) / calls, 2) for n, p in cluster.procs.items()}
            contact = contact_node(cluster)
            for p in spies:
                p.send_signal(2)
            for p in spies:
                p.wait(30)
            return {
                "p50_ms": round(percentile(lat, 50), 3),
                "p99_ms": round(percentile(lat, 99), 3),
                "switches_per_call": sw,
                # each node's CPU while no call ran (heartbeats, timers): part of every figure per call
                "idle_cpu_ms_per_s": {str(n): round((idle1[1][n] - idle0[1][n]) / idle * 1e3, 1) for n in idle0[1]},
                **{k: v for k, v in cpu_per_call(before, after, calls, contact).items() if k != "cpu_us_replicas_max"},
            }
    finally:
        for p in spies:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--spy", type=Path, default=None, help="py-spy raw profiles of the nodes into this folder")
    ap.add_argument(
        "--strace",
        default="",
        choices=["", "count", "full"],
        help="with --spy: strace the nodes (counts, or every call with times) instead of py-spy",
    )
    a = ap.parse_args()
    for _ in range(a.rounds):
        print(json.dumps(run(a.calls, a.spy, b"v" * 100, a.strace)), flush=True)


if __name__ == "__main__":
    main()
