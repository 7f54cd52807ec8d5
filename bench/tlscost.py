"""What TLS costs: the same workloads with TLS on and off, in the same run.

Three workloads, each measured like the experiment it comes from:

* ``multicast_100B``: ordered multicast of 100 B messages, 3 members all sending
  (``bench.ourgroup.run_group``); the slowest member's delivered msgs/s.
* ``actor_put``: ``KV.put`` (examples/kv_store.py, 100 B values) through a ``Client``,
  pipelined, one shard of 3 (``bench.ours.kv_cluster_run``); calls/s, every replica answered.
* ``multicast_1MB``: ordered multicast of 1 MB messages, 3 members all sending; the slowest
  member's delivered MB/s (each receiver gets every message).

Every run starts a fresh cluster (TLS on: a throwaway CA in its work folder), on TCP unless the
run names a transport (``run.py --transport``): with TLS on, members on one host would
otherwise pick shared memory (``node.transport = auto`` needs the authenticated control
connection), and "on vs off" would compare the rings with TCP, not TLS with plaintext. The runs of a
workload alternate between the modes in the order on, off, off, on, on, off, ... so that a slow
drift of the shared machine's load falls on both alike; each mode reports the median of its
runs (1 each with ``--quick``, 3 each in the full run). ``ratio`` is TLS on / TLS off. The
target is a ratio of at least 80% for the 100 B multicast and for actor puts.

CPU: for multicast, each member's CPU time over the load (share of a core, and microseconds
per message it delivered, sending included), averaged over the members; for actor puts the
same for the three node processes (from /proc) per call, and the client's own share.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import report, security
from bench.ourgroup import run_group
from bench.ours import VALUE_SIZE, kv_cluster_run, load_kv_example, nodes_cpu, pipelined
from bench.registry import Context, Row, experiment
from bench.transports import forced_transport

TARGET = 0.80  # TLS on >= 80% of the plaintext throughput (100 B multicast, actor puts)
ACTOR_WINDOW = 1000  # outstanding calls in the actor runs (one level, the same for both modes)


@dataclass
class Workload:
    key: str
    label: str
    unit: str
    target: bool  # whether the 80% target applies
    run: Callable[[bool], Row]  # run(tls) -> {"value": throughput in unit, cpu fields...}


def _multicast(size: int, per_sender: int, unit: str) -> Callable[[bool], Row]:
    def run(tls: bool) -> Row:
        g = run_group(3, 3, per_sender, size, tls=tls)
        s = g.summary()
        return {
            "value": s["MB_per_s"] if unit == "MB/s" else s["msgs_per_s"],
            "msgs_per_s": s["msgs_per_s"],
            "MB_per_s": s["MB_per_s"],
            "cpu": s["cpu"],
            "cpu_max": s["cpu_max"],
            "cpu_us_per_msg": s["cpu_us_per_msg"],
            "messages": 3 * per_sender,
            "run_s": g.wall,
        }

    return run


def _actor(calls: int, window: int) -> Callable[[bool], Row]:
    import derecho_actors as da

    kvmod = load_kv_example()
    layout = da.Layout({kvmod.KV: da.ShardPolicy(shards=1, min_nodes=3, max_nodes=3)})
    value = b"v" * VALUE_SIZE

    def measure(put: Any, cluster: Any) -> Row:
        cpu0, t0 = nodes_cpu(cluster), time.perf_counter()
        rate, client_cpu = pipelined(put, calls, window, value)
        wall = time.perf_counter() - t0
        node_cpu = nodes_cpu(cluster) - cpu0
        n = len(cluster.procs)
        return {
            "value": rate,
            "writes_per_s": rate,
            "cpu": node_cpu / wall / n,
            "cpu_us_per_msg": node_cpu / n / calls * 1e6,
            "client_cpu": client_cpu,
            "client_us_per_call": client_cpu * wall / calls * 1e6,
            "messages": calls,
            "window": window,
            "run_s": wall,
        }

    def run(tls: bool) -> Row:
        row = kv_cluster_run(kvmod, 3, layout, 1, measure, value, tls=tls)
        if "error" in row:
            raise RuntimeError(row["error"])
        return row

    return run


def _fmt(v: float) -> str:
    return "–" if not isinstance(v, (int, float)) or math.isnan(v) else (f"{v:,.1f}" if v < 100 else f"{v:,.0f}")


def plot_tls(results: dict[str, list[Row]], out: Path) -> list[Path]:
    rows = [
        r for r in results.get("tls", []) if isinstance(r.get("value"), (int, float)) and not math.isnan(r["value"])
    ]
    keys = list(dict.fromkeys(r["workload"] for r in rows))
    pairs = {k: {r["tls"]: r for r in rows if r["workload"] == k} for k in keys}
    keys = [k for k in keys if True in pairs[k] and False in pairs[k]]
    if not keys:
        return []
    plt = report._plt()
    fig = plt.figure(figsize=(14, 4.8))
    grid = fig.add_gridspec(1, 1 + len(keys), width_ratios=[1.7] + [1] * len(keys))
    ax = fig.add_subplot(grid[0])
    ratios = [pairs[k][True]["value"] / pairs[k][False]["value"] for k in keys]
    targeted = [bool(pairs[k][True].get("target")) for k in keys]
    colors = ["tab:green" if t and r >= TARGET else "tab:red" if t else "tab:grey" for r, t in zip(ratios, targeted)]
    labels = [pairs[k][True]["case"].replace(", ", "\n", 1) for k in keys]
    bars = ax.bar(range(len(keys)), [r * 100 for r in ratios], color=colors, width=0.6)
    for b, r, t in zip(bars, ratios, targeted):
        y = b.get_height() if abs(b.get_height() - TARGET * 100) > 6 else max(b.get_height(), TARGET * 100) + 1.5
        ax.annotate(
            f"{r:.0%}" + ("" if t else "\n(no target)"),
            (b.get_x() + b.get_width() / 2, y),
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
        )
    ax.axhline(TARGET * 100, color="tab:red", linestyle="--", linewidth=1.2, label=f"target: {TARGET:.0%} of plaintext")
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, max(115, max(ratios) * 100 * 1.2))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("throughput, TLS on / TLS off (%)")
    ax.set_title("TLS on relative to off (median of runs)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)
    for i, k in enumerate(keys):
        a = fig.add_subplot(grid[1 + i])
        on, off = pairs[k][True], pairs[k][False]
        report._bars(a, ["TLS on", "TLS off"], {on["unit"]: [on["value"], off["value"]]})
        for patch, color in zip(a.patches, ("tab:orange", "tab:blue")):
            patch.set_color(color)
        for j, r in enumerate((on, off)):  # every run as a dot: the spread behind the median
            vals = [x for x in r.get("runs", []) if isinstance(x, (int, float))]
            a.plot([j] * len(vals), vals, "k.", markersize=4)
        a.set_title(on["case"], fontsize=9)
        a.set_ylabel(on["unit"])
    fig.suptitle("What TLS costs (same run, runs alternating on/off)")
    fig.tight_layout()
    path = out / "tls_cost.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


@experiment(
    "tls",
    "TLS on vs off, same run (100 B multicast, actor puts, 1 MB multicast; 3 members)",
    columns=[
        ("case", "workload", ""),
        ("tls_label", "TLS", ""),
        ("shown", "throughput (median)", ""),
        ("runs_shown", "runs", ""),
        ("ratio", "on/off", ".0%"),
        ("target_met", f"≥{TARGET:.0%}", ""),
        ("cpu", "CPU/member", ".0%"),
        ("cpu_us_per_msg", "CPU µs/msg", ",.1f"),
    ],
    plot=plot_tls,
)
def tls(ctx: Context) -> list[Row]:
    reps = ctx.pick(1, 3)
    calls = ctx.pick(25_000, 60_000)
    workloads = [
        Workload(
            "multicast_100B",
            "100 B multicast, 3/3 send",
            "msgs/s",
            True,
            _multicast(100, ctx.pick(100_000, 250_000), "msgs/s"),
        ),
        Workload("actor_put", f"KV.put, {ACTOR_WINDOW} outstanding", "calls/s", True, _actor(calls, ACTOR_WINDOW)),
        Workload(
            "multicast_1MB",
            "1 MB multicast, 3/3 send",
            "MB/s",
            False,
            _multicast(1_000_000, ctx.pick(100, 300), "MB/s"),
        ),
    ]
    # on, off, off, on, on, off, ...: a linear drift of the machine's load cancels out in pairs.
    order = [m for i in range(reps) for m in ((True, False) if i % 2 == 0 else (False, True))]
    rows: list[Row] = []
    for w in workloads:
        runs: dict[bool, list[Row]] = {True: [], False: []}
        for mode in order:
            try:
                with forced_transport(security.transport() or "tcp"):
                    r = w.run(mode)
            except Exception as exc:
                r = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
            runs[mode].append(r)
            ctx.say(
                f"  {w.key} TLS {'on ' if mode else 'off'}: "
                + (f"failed: {r['error']}" if "error" in r else f"{_fmt(r['value'])} {w.unit}")
            )
        pair: dict[bool, Row] = {}
        for mode in (True, False):
            ok = [r for r in runs[mode] if "error" not in r and not math.isnan(r.get("value", math.nan))]
            row: Row = {
                "workload": w.key,
                "case": w.label,
                "tls": mode,
                "tls_label": "on" if mode else "off",
                "unit": w.unit,
                "target": w.target,
                "runs": [r.get("value") for r in ok],
                "runs_shown": " / ".join(_fmt(r["value"]) for r in ok),
                "run_details": runs[mode],
            }
            if ok:
                for key in (
                    "value",
                    "msgs_per_s",
                    "MB_per_s",
                    "writes_per_s",
                    "cpu",
                    "cpu_max",
                    "cpu_us_per_msg",
                    "client_cpu",
                    "client_us_per_call",
                ):
                    vals = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
                    if vals:
                        row[key] = statistics.median(vals)
                row["messages"] = ok[0].get("messages")
                row["shown"] = f"{_fmt(row['value'])} {w.unit}"
            else:
                row["error"] = next((r["error"] for r in runs[mode] if "error" in r), "no run completed")
                ctx.note(f"{w.label}, TLS {row['tls_label']}: {row['error']}")
            pair[mode] = row
        on, off = pair[True], pair[False]
        if "value" in on and "value" in off and off["value"]:
            ratio = on["value"] / off["value"]
            on["ratio"] = ratio  # on the TLS-on row only (the table shows it once per workload)
            if "cpu_us_per_msg" in on and "cpu_us_per_msg" in off and off["cpu_us_per_msg"]:
                on["cpu_ratio"] = on["cpu_us_per_msg"] / off["cpu_us_per_msg"]
            met = ratio >= TARGET
            on["target_met"] = ("yes" if met else "NO") if w.target else "(none)"
            ctx.note(
                f"{w.label}: TLS on {_fmt(on['value'])} vs off {_fmt(off['value'])} {w.unit} = {ratio:.0%}"
                + (f" ({'meets' if met else 'misses'} the {TARGET:.0%} target)" if w.target else "")
                + (f"; CPU per message x{on['cpu_ratio']:.2f}" if "cpu_ratio" in on else "")
            )
        rows += [on, off]
    return rows
