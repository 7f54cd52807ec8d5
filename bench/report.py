"""Output of a bench run: rich tables on the terminal, ``results.json``, PNG plots (Agg)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable

from bench.procs import ROOT

Row = dict[str, Any]
Results = dict[str, list[Row]]


# ------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1e6, 1)
                break
        info["load_avg_at_start"] = os.getloadavg()
    except OSError:
        pass
    from runtime import build_info

    info["core_build"] = build_info.describe()  # compiled (mypyc) or pure Python
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=5,
            )
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ------------------------------------------------------------------------------ ratios
def add_peer_ratios(results: Results) -> list[Row]:
    """Each peer row gets ``ratio_writes`` / ``ratio_p50`` / ``ratio_p99``: peer / ours, against
    the actor API row of the same mode on the 3-node, 1-shard layout. Returns those rows."""
    ours = {r.get("mode"): r for r in results.get("actor", []) if r.get("nodes") == 3 and "error" not in r}
    out = []
    for name in ("pysyncobj", "etcd"):
        for row in results.get(name, []):
            ref = ours.get(row.get("mode"))
            for key, ratio in (("writes_per_s", "ratio_writes"), ("p50_ms", "ratio_p50"), ("p99_ms", "ratio_p99")):
                a, b = row.get(key), ref.get(key) if ref else None
                if (
                    isinstance(a, (int, float))
                    and isinstance(b, (int, float))
                    and b
                    and not math.isnan(a)
                    and not math.isnan(b)
                ):
                    row[ratio] = a / b
            out.append(row)
    return out


def _ratio(a: Any, b: Any) -> float | None:
    ok = lambda v: isinstance(v, (int, float)) and not math.isnan(v)  # noqa: E731
    return a / b if ok(a) and ok(b) and b else None


def cpu_us_total(row: Row) -> float | None:
    """CPU µs per call of every process: the client plus every node (None if not measured)."""
    nodes = row.get("cpu_us_nodes")
    if not isinstance(nodes, dict) or not isinstance(row.get("cpu_us_client"), (int, float)):
        return None
    return float(row["cpu_us_client"]) + sum(v for v in nodes.values() if isinstance(v, (int, float)))


def add_baseline_ratios(results: Results) -> list[Row]:
    """Each actor row with a baseline row of the same layout and mode (``actor_baseline``) gets
    ``baseline_writes_per_s`` ... and ``x_baseline_writes`` / ``x_baseline_p50`` /
    ``x_baseline_p99`` / ``x_baseline_cpu_us``: ours / baseline. Returns those rows."""
    base = {(r.get("layout"), r.get("mode")): r for r in results.get("actor_baseline", []) if "error" not in r}
    out = []
    for row in results.get("actor", []):
        ref = base.get((row.get("layout"), row.get("mode")))
        if ref is None or "error" in row:
            continue
        row["baseline_system"] = ref.get("system")
        for key, name in (("writes_per_s", "writes"), ("p50_ms", "p50"), ("p99_ms", "p99")):
            row[f"baseline_{key}"] = ref.get(key)
            if (x := _ratio(row.get(key), ref.get(key))) is not None:
                row[f"x_baseline_{name}"] = x
        row["cpu_us_total"], row["baseline_cpu_us_total"] = cpu_us_total(row), cpu_us_total(ref)
        if (x := _ratio(row["cpu_us_total"], row["baseline_cpu_us_total"])) is not None:
            row["x_baseline_cpu_us"] = x
        out.append(row)
    return out


# ------------------------------------------------------------------------------ tables
def _cell(row: Row, key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (list, tuple)) and fmt:  # e.g. one figure per node: "41 / 39"
        return " / ".join(_cell({"v": x}, "v", fmt) for x in v) or "–"
    if fmt.endswith("%") and isinstance(v, (int, float)):
        return format(v, fmt)
    try:
        return format(v, fmt) if fmt else str(v)
    except (TypeError, ValueError):
        return str(v)


def print_tables(
    experiments: Iterable[Any], results: Results, notes: dict[str, list[str]], errors: dict[str, str]
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    for exp in experiments:
        rows = results.get(exp.name)
        if rows is None and exp.name not in errors:
            continue
        table = Table(title=f"{exp.name}: {exp.title}", title_justify="left", show_lines=False)
        cols = exp.columns or [(k, k, "") for k in (rows[0].keys() if rows else [])]
        for _, header, fmt in cols:
            table.add_column(header, justify="left" if not fmt else "right")
        has_err = any("error" in r for r in rows or [])
        if has_err:
            table.add_column("error", overflow="fold", max_width=50)
        for r in rows or []:
            cells = [_cell(r, k, f) for k, _, f in cols]
            if has_err:
                cells.append(str(r.get("error", "")))
            table.add_row(*cells)
        console.print(table)
        if exp.name in errors:
            console.print(f"  [red]experiment failed:[/red] {errors[exp.name]}")
        for n in notes.get(exp.name, []):
            console.print(f"  note: {n}")
    peers = add_peer_ratios(results)
    if peers:
        table = Table(
            title="Peers vs derecho-actors actor API, 3 nodes, 100 B values: x ours = peer / ours "
            "(writes/s above 1: peer faster; latency below 1: peer faster)",
            title_justify="left",
        )
        for header in ("system", "case", "writes/s", "x ours", "p50 ms", "x ours", "p99 ms", "x ours"):
            table.add_column(header, justify="left" if header in ("system", "case") else "right")
        for r in peers:
            table.add_row(
                str(r.get("system")),
                str(r.get("case")),
                _cell(r, "writes_per_s", ",.0f"),
                _cell(r, "ratio_writes", ".2f"),
                _cell(r, "p50_ms", ".2f"),
                _cell(r, "ratio_p50", ".2f"),
                _cell(r, "p99_ms", ".2f"),
                _cell(r, "ratio_p99", ".2f"),
            )
        console.print(table)
    against = add_baseline_ratios(results)
    if against:
        table = Table(
            title=f"derecho-actors now vs before: {against[0].get('baseline_system')}, same run; x = now / before "
            "(writes/s above 1: now faster; latency and CPU below 1: now better; "
            "CPU µs/call: the client plus every node)",
            title_justify="left",
        )
        table.add_column("case", no_wrap=True)
        cols = [
            ("writes_per_s", "writes/s", ",.0f"),
            ("baseline_writes_per_s", "before", ",.0f"),
            ("x_baseline_writes", "x", ".2f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("baseline_p50_ms", "before", ".2f"),
            ("x_baseline_p50", "x", ".2f"),
            ("x_baseline_p99", "p99 x", ".2f"),
            ("cpu_us_total", "CPU µs/call", ",.0f"),
            ("baseline_cpu_us_total", "before", ",.0f"),
            ("x_baseline_cpu_us", "x", ".2f"),
        ]
        for _, header, _ in cols:
            table.add_column(header, justify="right")
        for r in against:
            mode = "pipelined" if r.get("mode") == "pipelined" else "one at a time"
            table.add_row(f"{mode}, {r.get('layout')}", *(_cell(r, k, f) for k, _, f in cols))
        console.print(table)


# ------------------------------------------------------------------------------ JSON
def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")


# ------------------------------------------------------------------------------ plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ceiling(results: Results, kind: str, key: str) -> float | None:
    for r in results.get("ceilings", []):
        if r.get("kind") == kind and isinstance(r.get(key), (int, float)):
            return float(r[key])
    return None


def _hline(ax: Any, y: float | None, label: str) -> None:
    if y:
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, xy=(0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="dimgrey", va="bottom")


def _ok(rows: list[Row], key: str) -> list[Row]:
    return [r for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]


def plot_multicast_size(results: Results, out: Path) -> list[Path]:
    rows = results.get("multicast_size", [])
    if not _ok(rows, "msgs_per_s"):
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = sorted(_ok([r for r in rows if r["mode"] == mode], "msgs_per_s"), key=lambda r: r["size"])
        if not sel:
            continue
        label = sel[0]["case"]
        axes[0].plot([r["size"] for r in sel], [r["msgs_per_s"] for r in sel], marker="o", label=label)
        axes[1].plot([r["size"] for r in sel], [r["MB_per_s"] for r in sel], marker="o", label=label)
    mp = ceiling(results, "msgpack", "msgs_per_s")
    _hline(axes[0], mp, f"ceiling: msgpack 1 hop, 100 B ({mp:,.0f}/s)" if mp else "")
    tcp = ceiling(results, "tcp", "MB_per_s")
    _hline(axes[1], tcp, f"ceiling: 1 TCP stream ({tcp / 1000:.1f} GB/s)" if tcp else "")
    for ax, ylabel in zip(axes, ("delivered msgs/s (slowest member)", "delivered MB/s (slowest member)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="senders/members", title_fontsize=8)
    fig.suptitle("derecho-actors ordered multicast: throughput vs message size")
    fig.tight_layout()
    path = out / "throughput_vs_size.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_shard_size(results: Results, out: Path) -> list[Path]:
    rows = sorted(_ok(results.get("shard_size", []), "msgs_per_s"), key=lambda r: r["members"])
    if not rows:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([r["members"] for r in rows], [r["msgs_per_s"] for r in rows], marker="o", label="all members send, 100 B")
    mp = ceiling(results, "msgpack", "msgs_per_s")
    _hline(ax, mp, f"ceiling: msgpack 1 hop, 100 B ({mp:,.0f}/s)" if mp else "")
    ax.set_xlabel("members in the shard")
    ax.set_ylabel("delivered msgs/s (slowest member)")
    ax.set_xticks([r["members"] for r in rows])
    ax.set_yscale("log")  # the ceiling is an order of magnitude above
    _plain_log_ticks(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("throughput vs shard size")
    fig.tight_layout()
    path = out / "throughput_vs_shard_size.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _plain_log_ticks(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], log: bool = False) -> None:
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, [v if v == v else 0 for v in values], width, label=name)
        for b, v in zip(bars, values):
            if v == v:
                ax.annotate(
                    f"{v:,.2f}" if v < 10 else f"{v:,.0f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    if log:
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    ax.grid(True, axis="y", alpha=0.3)


def plot_latency(results: Results, out: Path) -> list[Path]:
    rows = _ok(results.get("latency", []), "p50_ms")
    if not rows:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(
        ax,
        [r["case"].replace(": ", ":\n") for r in rows],
        {"p50": [r["p50_ms"] for r in rows], "p99": [r["p99_ms"] for r in rows]},
        log=True,
    )
    ax.set_ylabel("send -> delivery at every member (ms)")
    ax.set_title("multicast latency, 3 members, 100 B")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def plot_comparison(results: Results, out: Path) -> list[Path]:
    names = ("actor", "actor_baseline", "pysyncobj", "etcd")
    rows = [r for name in names for r in results.get(name, []) if "error" not in r]
    pipe = _ok([r for r in rows if r.get("mode") == "pipelined"], "writes_per_s")
    single = _ok([r for r in rows if r.get("mode") == "single"], "p50_ms")
    if not pipe and not single:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    label = lambda r: "\n".join(textwrap.wrap(f"{r['system']}, {r.get('layout', '3 nodes')}", 18))  # noqa: E731
    if pipe:
        _bars(axes[0], [label(r) for r in pipe], {"writes/s": [r["writes_per_s"] for r in pipe]})
    axes[0].set_title("pipelined replicated writes/s (100 B values)")
    axes[0].set_ylabel("writes/s")
    if single:
        _bars(
            axes[1],
            [label(r) for r in single],
            {"p50": [r["p50_ms"] for r in single], "p99": [r["p99_ms"] for r in single]},
        )
        axes[1].legend(fontsize=8)
    axes[1].set_title("one write at a time: latency (ms)")
    axes[1].set_ylabel("ms")
    fig.tight_layout()
    path = out / "actor_vs_peers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def make_plots(experiments: Iterable[Any], results: Results, out: Path) -> tuple[list[Path], list[str]]:
    paths, problems, seen = [], [], set()
    for exp in experiments:
        if exp.plot is None or exp.plot in seen or exp.name not in results:
            continue
        seen.add(exp.plot)
        try:
            paths += exp.plot(results, out)
        except Exception as exc:  # a plot must not lose the numbers
            problems.append(f"{exp.name} plot: {type(exc).__name__}: {exc}")
    return paths, problems
