"""What each read consistency level costs: P2P reads of the persistent KV example through a
``Client`` on a 3-node local cluster, with the shard idle and while a writer keeps it busy.

- ``local``: the chosen replica's state, at once;
- ``stable``: waits until every replica has delivered what the chosen one applied (holding its
  ordered calls meanwhile; an idle shard is moved along by an empty multicast);
- ``linearizable``: the read is multicast in the shard's order and answered where it lands;
- ``at_version``: the persistent fields as of a version on disk at every replica.

Rows: reads/s with many reads outstanding, latency one at a time, and the writer's rate in
the same run (what the reads cost the writes).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.ours import one_at_a_time, pipelined, single_calls, system_name
from bench.persistence import DISK, _cluster, _err, load_example
from bench.procs import Procs
from bench.registry import Context, Row, experiment
from bench.stats import percentile

LEVELS = ("local", "stable", "linearizable", "at_version")
KEYS = 1000
WRITE_WINDOW = 100  # the busy writer's outstanding puts


def plot_reads(results: dict[str, list[Row]], out: Path) -> list[Path]:
    rows = [r for r in results.get("reads", []) if "error" not in r]
    if not rows:
        return []
    plt = report._plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    loads = sorted({r["load"] for r in rows}, key=lambda x: x != "idle")
    levels = [lv for lv in LEVELS if any(r["level"] == lv for r in rows)]

    def series(key: str) -> dict[str, list[float]]:
        return {
            load: [
                next((r[key] for r in rows if r["level"] == lv and r["load"] == load), float("nan")) for lv in levels
            ]
            for load in loads
        }

    report._bars(axes[0], levels, series("reads_per_s"))
    axes[0].set_title("reads/s, many outstanding (3 replicas)")
    axes[0].legend(fontsize=8)
    report._bars(axes[1], levels, series("p50_ms"))
    axes[1].set_title("one read at a time: p50 latency (ms)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = out / "read_levels.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


@experiment(
    "reads",
    "P2P read consistency levels through a Client (persistent KV, 3 replicas, 100 B values)",
    columns=[
        ("level", "consistency", ""),
        ("load", "shard", ""),
        ("reads_per_s", "reads/s", ",.0f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("client_cpu", "client CPU", ".0%"),
        ("writes_per_s", "writer's puts/s", ",.0f"),
    ],
    plot=plot_reads,
)
def reads(ctx: Context) -> list[Row]:
    import derecho_actors as da

    pkv = load_example("persistent_kv")
    cls = pkv.PersistentKV
    layout = da.Layout({cls: da.ShardPolicy(min_nodes=3, max_nodes=3)})
    value = b"v" * 100
    workdir = tempfile.mkdtemp(prefix="derecho-bench-reads-", dir=str(DISK))
    rows: list[Row] = []
    base: Row = {"system": system_name()}
    try:
        with Procs(Path(workdir)) as procs, _cluster(3, cls, layout, workdir) as cluster:
            for node, proc in cluster.procs.items():
                procs.adopt(f"node-{node}", proc)
            h = cluster.handle(cls)
            last = None
            for i in range(KEYS):
                last = h.put(f"key-{i}", value)
            assert last is not None
            last.get(timeout=60)
            version = last.persisted(timeout=60)
            options: dict[str, dict[str, Any]] = {
                "local": {},
                "stable": {"consistency": "stable"},
                "linearizable": {"consistency": "linearizable"},
                "at_version": {"at_version": version},
            }
            for load in ("idle", "busy"):
                stop = threading.Event()
                written = [0]
                writer = threading.Thread(target=_writer, args=(h, value, stop, written), daemon=True)
                if load == "busy":
                    writer.start()
                try:
                    for level in LEVELS:
                        kw = options[level]

                        def read(i: int, _v: bytes, kw: dict[str, Any] = kw) -> Any:
                            return h.get(f"key-{i % KEYS}", **kw)

                        row: Row = {**base, "level": level, "load": load, "case": f"{level}, {load}"}
                        try:
                            w0, t0 = written[0], time.perf_counter()
                            lat = one_at_a_time(read, single_calls(ctx) // 2, value)
                            rate, cpu = pipelined(read, ctx.pick(5_000, 20_000), 200, value)
                            row.update(
                                p50_ms=percentile(lat, 50), p99_ms=percentile(lat, 99), reads_per_s=rate, client_cpu=cpu
                            )
                            if load == "busy":
                                row["writes_per_s"] = (written[0] - w0) / (time.perf_counter() - t0)
                        except Exception as exc:
                            row.update(_err(exc))
                            ctx.note(f"{level} ({load}): {row['error']}")
                        rows.append(row)
                        ctx.say(
                            f"  {level:12} {load}: "
                            + (
                                f"{row['reads_per_s']:,.0f} reads/s, p50 {row['p50_ms']:.2f} ms"
                                if "error" not in row
                                else row["error"]
                            )
                        )
                finally:
                    stop.set()
                    if writer.is_alive():
                        writer.join(60)
    except Exception as exc:
        rows.append({**base, "level": "-", "load": "-", "case": "cluster", **_err(exc)})
        ctx.note(f"reads: {rows[-1]['error']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    local = {r["load"]: r for r in rows if r.get("level") == "local" and "reads_per_s" in r}
    for r in rows:
        ref = local.get(r.get("load"))
        if ref and "reads_per_s" in r and r is not ref:
            ctx.note(
                f"{r['level']} ({r['load']}): {r['reads_per_s'] / ref['reads_per_s']:.0%} of local reads/s, "
                f"p50 {r['p50_ms']:.2f} ms vs {ref['p50_ms']:.2f} ms"
            )
    return rows


def _writer(h: Any, value: bytes, stop: threading.Event, written: list[int]) -> None:
    """Puts with a bounded number outstanding until ``stop``: the shard stays busy."""
    pending: list[Any] = []
    i = 0
    while not stop.is_set():
        pending.append(h.put(f"key-{i % KEYS}", value))
        i += 1
        if len(pending) >= WRITE_WINDOW:
            pending.pop(0).get(timeout=60)
            written[0] += 1
    for r in pending:
        r.get(timeout=60)
