"""TCP against shared memory in one run (issue 23): the same workloads, one transport at a time.

Members on one host pick shared memory by default (``node.transport = auto``); across hosts
they use TCP with TLS. Which one a deployment gets decides its speed, so this experiment runs
each workload over both in the same minutes on the same machine, ``node.transport`` forced to
``tcp`` or ``shm`` (clients always reach their contact over TLS TCP), and reports the ratio.
TLS is on in both (the default across hosts, where TCP is what runs).

A full run alternates the two transports ``ROUNDS`` times per workload and reports medians
(a quick run: once each): on a shared 2-core machine one run of a workload swung by up to 2x
between neighbouring runs of the same transport, far more than the transports differ.

Workloads: 100 B ordered multicast with all three members sending and with one; ``KV.put``
through a ``Client`` (pipelined and one at a time); 100 MB objects from one sender and from all
three (the block pipeline). Every figure is the slowest member's, as in the experiments it
borrows from (``multicast_size``, ``actor``, ``objects``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import report, security
from bench.ourgroup import messages_for, run_group
from bench.registry import Context, Row, experiment

TRANSPORTS = ("tcp", "shm")
MB = 1 << 20
ROUNDS = 3  # runs per transport and workload in a full run (their median is reported)


@contextmanager
def forced_transport(kind: str) -> Iterator[None]:
    """Every group started inside gets ``node.transport = kind``: the bench's own node
    processes (``bench.security``) and ``local_cluster``'s (its environment variable)."""
    from derecho_actors.tools.cluster import TRANSPORT_ENV

    before_setting, before_env = security.transport(), os.environ.get(TRANSPORT_ENV)
    security.set_transport(kind)
    os.environ[TRANSPORT_ENV] = kind
    try:
        yield
    finally:
        security.set_transport(before_setting)
        if before_env is None:
            os.environ.pop(TRANSPORT_ENV, None)
        else:
            os.environ[TRANSPORT_ENV] = before_env


def _multicast(senders: int) -> Callable[[Context], Row]:
    def run(ctx: Context) -> Row:
        budget, lo, hi = ctx.pick((1_000_000_000, 400, 500_000), (3_000_000_000, 1000, 1_000_000))
        per_sender = messages_for(100, budget, lo, hi, senders)
        summary = run_group(3, senders, per_sender, 100).summary()
        return {"value": summary["msgs_per_s"], "cpu_us": summary.get("cpu_us_per_msg", math.nan)}

    return run


def _actor(mode: str) -> Callable[[Context], Row]:
    def run(ctx: Context) -> Row:
        import derecho_actors as da
        from bench.ours import (
            contact_node,
            cpu_per_call,
            cpu_snapshot,
            kv_cluster_run,
            load_kv_example,
            one_at_a_time,
            pipeline_calls,
            pipelined,
            single_calls,
        )
        from bench.stats import percentile

        kvmod = load_kv_example()
        layout = da.Layout({kvmod.KV: da.ShardPolicy(shards=1, min_nodes=3, max_nodes=3)})
        value = b"v" * 100
        calls = pipeline_calls(ctx, 1000) if mode == "pipelined" else single_calls(ctx)

        def body(put: Any, cluster: Any) -> Row:
            before = cpu_snapshot(cluster)
            if mode == "pipelined":
                out: Row = {"value": pipelined(put, calls, 1000, value)[0]}
            else:
                out = {"value": percentile(one_at_a_time(put, calls, value), 50)}
            cpu = cpu_per_call(before, cpu_snapshot(cluster), calls, contact_node(cluster))
            out["cpu_us"] = sum(v for k, v in cpu.items() if k in ("cpu_us_client", "cpu_us_contact"))
            out["cpu_us"] += cpu.get("cpu_us_replicas_mean", math.nan) * 2
            return out

        row = kv_cluster_run(kvmod, 3, layout, 1, body, value)
        if "error" in row:
            raise RuntimeError(row["error"])
        return row

    return run


def _objects(senders: int) -> Callable[[Context], Row]:
    def run(ctx: Context) -> Row:
        from bench.objects import run_objects

        done = run_objects(
            100 * MB, ctx.pick(2, 5), senders, tls=True, digest=True, settings={"node.transport": security.transport()}
        )
        if not done.digests_agree():
            raise RuntimeError("digests differ between members")
        # CPU per MB moved, summed over the members: on 2 cores shared by 3 nodes (and, on a
        # busy machine, by whatever else runs) it is what bounds the rate, and it holds still
        # when the rate does not.
        per_node = done.cpu_ms_per_mb()
        cpu_us = sum(per_node.values()) * 1000
        # Per node too (sender first): where the CPU goes decides which side a change must cut.
        nodes = [round(per_node[n], 3) for n in sorted(per_node)]
        return {
            "value": min(done.mb_per_s(n) for n in done.receivers()),
            "cpu_us": cpu_us,
            "cpu_ms_per_mb_nodes": nodes,
        }

    return run


# (case, unit, higher is better, workload)
WORKLOADS: list[tuple[str, str, bool, Callable[[Context], Row]]] = [
    ("100 B multicast, 3/3 send", "msgs/s", True, _multicast(3)),
    ("100 B multicast, 1/3 send", "msgs/s", True, _multicast(1)),
    ("KV.put via Client, pipelined (1000)", "calls/s", True, _actor("pipelined")),
    ("KV.put via Client, one at a time", "p50 ms", False, _actor("single")),
    ("100 MB objects, 1/3 send", "MB/s per receiver", True, _objects(1)),
    ("100 MB objects, 3/3 send", "MB/s per receiver", True, _objects(3)),
]


@experiment(
    "transports",
    "TCP (TLS on) against shared memory between the members, same workloads, same run",
    columns=[
        ("case", "case", ""),
        ("unit", "unit", ""),
        ("tcp", "TCP + TLS", ",.2f"),
        ("shm", "shared memory", ",.2f"),
        ("gain", "shm gain", ".2f"),
        ("cpu_us_tcp", "CPU µs/op TCP", ",.2f"),
        ("cpu_us_shm", "CPU µs/op shm", ",.2f"),
    ],
    plot=lambda results, out: plot_transports(results, out),
)
def transports(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    rounds = ctx.pick(1, ROUNDS)
    for case, unit, higher, workload in WORKLOADS:
        row: Row = {"case": case, "unit": unit}
        got: dict[str, list[Row]] = {kind: [] for kind in TRANSPORTS}
        for r in range(rounds):
            # tcp, shm, then shm, tcp, ...: each transport runs as often first as second
            for kind in TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]:
                t0 = time.monotonic()
                try:
                    with forced_transport(kind):
                        one = workload(ctx)
                except Exception as exc:  # one failed run must not lose the others
                    row["error"] = f"{kind}: {type(exc).__name__}: {str(exc)[:160]}"
                    ctx.say(f"  {case} over {kind}: failed: {exc}")
                    continue
                got[kind].append(one)
                nodes = one.get("cpu_ms_per_mb_nodes")
                per_node = f"; CPU ms/MB per node {' '.join(f'{v:.2f}' for v in nodes)}" if nodes else ""
                took = time.monotonic() - t0
                ctx.say(f"  {case} over {kind}: {one['value']:,.2f} {unit} ({took:.0f} s){per_node}")
        for kind, runs in got.items():
            if not runs:
                continue
            row[kind] = statistics.median(one["value"] for one in runs)
            row[f"cpu_us_{kind}"] = statistics.median(one["cpu_us"] for one in runs)
            row[f"runs_{kind}"] = [one["value"] for one in runs]
            nodes = [one["cpu_ms_per_mb_nodes"] for one in runs if "cpu_ms_per_mb_nodes" in one]
            if nodes:
                row[f"cpu_ms_per_mb_nodes_{kind}"] = [round(statistics.median(v), 3) for v in zip(*nodes)]
        if all(isinstance(row.get(k), float) and row[k] > 0 for k in TRANSPORTS):
            row["gain"] = row["shm"] / row["tcp"] if higher else row["tcp"] / row["shm"]
        rows.append(row)
    ctx.note(f"medians of {rounds} run(s) per transport, alternated (tcp, shm, shm, tcp, ...): single runs")
    ctx.note("of one workload swung by up to 2x on this shared machine, the CPU per op far less")
    ctx.note("gain: shared memory over TCP (for p50, TCP's latency over shared memory's); CPU µs per op: per")
    ctx.note("message per member (multicast), summed over client, contact and both replicas (actor), per MB")
    ctx.note("moved summed over the three members (objects; the app's digest of each delivered object included)")
    ctx.note(f"load average after: {os.getloadavg()[0]:.2f}")
    return rows


def plot_transports(results: dict[str, list[Row]], out: Path) -> list[Path]:
    rows = [r for r in results.get("transports", []) if isinstance(r.get("gain"), float)]
    if not rows:
        return []
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    ax.barh([r["case"] for r in rows], [r["gain"] for r in rows], color="steelblue")
    for y, r in enumerate(rows):
        ax.text(r["gain"], y, f" {r['gain']:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.axvline(1.5, color="firebrick", linestyle=":", linewidth=1, label="issue 23: 100 B target 1.5x")
    ax.axvline(3.0, color="darkorange", linestyle=":", linewidth=1, label="issue 23: 100 MB objects target 3x")
    ax.invert_yaxis()
    ax.set_xlabel("shared memory over TCP + TLS (same run; higher is better)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("derecho-actors transports: 3 members on one host")
    fig.tight_layout()
    path = out / "transports.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
