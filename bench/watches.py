"""What watches cost and how fast changes reach them: the KV example (whose puts emit an event
each) on a 3-node local cluster, a writer ``Client`` pipelining puts, and 0, 1 or 10 watcher
``Client``s following the shard (``client.watch``).

Rows: the writer's puts/s with that many watchers (in the same run: what watching costs the
writes), the events/s the slowest watcher received, and how long after the last put's answer
the last event reached every watcher; then one put at a time: the put's p50 and how long after
the call began its event reached the watcher. etcd's watch is the natural peer; it is not run
here (no etcd on this machine when this was written: `bench/peers/etcd_peer.py` runs etcd's
puts only).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.ours import pipelined, single_calls, system_name
from bench.persistence import DISK, _cluster, _err, load_example
from bench.procs import Procs
from bench.registry import Context, Row, experiment
from bench.stats import percentile

WINDOW = 200  # the writer's outstanding puts


def plot_watches(results: dict[str, list[Row]], out: Path) -> list[Path]:
    rows = [r for r in results.get("watches", []) if "error" not in r and r.get("mode") == "pipelined"]
    if not rows:
        return []
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [str(r["watchers"]) for r in rows]
    report._bars(
        ax,
        labels,
        {
            "writer's puts/s": [r["puts_per_s"] for r in rows],
            "events/s, slowest watcher": [r.get("events_per_s", float("nan")) for r in rows],
        },
    )
    ax.set_xlabel("watchers")
    ax.set_title("KV puts that emit, 3 replicas: writes and watch events")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "watches.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


@experiment(
    "watches",
    "Watches: puts/s with 0, 1, 10 watchers; events/s; delay from put to watcher (KV example, 3 replicas)",
    columns=[
        ("mode", "mode", ""),
        ("watchers", "watchers", ""),
        ("puts_per_s", "puts/s", ",.0f"),
        ("events_per_s", "events/s (slowest)", ",.0f"),
        ("tail_ms", "last event after last answer, ms", ",.1f"),
        ("put_p50_ms", "put p50 ms", ".2f"),
        ("event_p50_ms", "event p50 ms", ".2f"),
        ("event_p99_ms", "event p99 ms", ".2f"),
    ],
    plot=plot_watches,
)
def watches(ctx: Context) -> list[Row]:
    import derecho_actors as da

    kvmod = load_example("kv_store")
    cls = kvmod.KV
    layout = da.Layout({cls: da.ShardPolicy(min_nodes=3, max_nodes=3)})
    value = b"v" * 100
    n = ctx.pick(10_000, 40_000)
    workdir = tempfile.mkdtemp(prefix="derecho-bench-watches-", dir=str(DISK))
    rows: list[Row] = []
    base: Row = {"system": system_name()}
    try:
        with Procs(Path(workdir)) as procs, _cluster(3, cls, layout, workdir) as cluster:
            for node, proc in cluster.procs.items():
                procs.adopt(f"node-{node}", proc)
            writer = cluster.new_client()
            h = writer.handle(cls)
            h.put("warm", value).get(timeout=60)
            for count in (0, 1, 10):
                row: Row = {**base, "mode": "pipelined", "watchers": count, "case": f"{count} watchers"}
                try:
                    row.update(_pipelined_with_watchers(cluster, cls, h, value, n, count))
                except Exception as exc:
                    row.update(_err(exc))
                    ctx.note(f"{count} watchers: {row['error']}")
                rows.append(row)
                ctx.say(
                    f"  {count:2} watchers: "
                    + (f"{row['puts_per_s']:,.0f} puts/s" if "error" not in row else row["error"])
                )
            row = {**base, "mode": "one at a time", "watchers": 1, "case": "one at a time"}
            try:
                row.update(_one_at_a_time(cluster, cls, h, value, single_calls(ctx)))
            except Exception as exc:
                row.update(_err(exc))
            rows.append(row)
            writer.close()
    except Exception as exc:
        rows.append({**base, "mode": "-", "watchers": "-", "case": "cluster", **_err(exc)})
        ctx.note(f"watches: {rows[-1]['error']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    none = next((r for r in rows if r.get("watchers") == 0 and "puts_per_s" in r), None)
    for r in rows:
        if none is not None and r is not none and r.get("mode") == "pipelined" and "puts_per_s" in r:
            ctx.note(f"{r['watchers']} watchers: writes at {r['puts_per_s'] / none['puts_per_s']:.0%} of no watcher")
    return rows


def _pipelined_with_watchers(cluster: Any, cls: type, h: Any, value: bytes, n: int, count: int) -> Row:
    clients = [cluster.new_client() for _ in range(count)]
    try:
        streams = [c.watch(cls, hold=1.0) for c in clients]
        for w in streams:
            assert w.next(timeout=2.0) is None  # positioned at "now"
        got = [0] * count
        last_seen = [0.0] * count
        done = threading.Event()

        def follow(k: int) -> None:
            w = streams[k]
            while got[k] < n and not done.is_set():
                if w.next(timeout=1.0) is not None:
                    got[k] += 1
                    last_seen[k] = time.perf_counter()

        threads = [threading.Thread(target=follow, args=(k,), daemon=True) for k in range(count)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        rate, _cpu = pipelined(lambda i, v: h.put(f"key-{i % 1000}", v), n, WINDOW, value)
        t1 = time.perf_counter()
        deadline = time.monotonic() + 120
        while min(got, default=n) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        for t in threads:
            t.join(5)
        out: Row = {"puts_per_s": rate}
        if count:
            if min(got) < n:
                raise RuntimeError(f"a watcher received {min(got)} of {n} events")
            out["events_per_s"] = n / (max(last_seen) - t0)
            out["tail_ms"] = max(0.0, (max(last_seen) - t1) * 1000)
        return out
    finally:
        for c in clients:
            c.close()


def _one_at_a_time(cluster: Any, cls: type, h: Any, value: bytes, n: int) -> Row:
    with cluster.new_client() as c:
        w = c.watch(cls, hold=5.0)
        assert w.next(timeout=2.0) is None
        puts, events = [], []
        for i in range(n):
            t = time.perf_counter()
            h.put(f"one-{i}", value).get(timeout=30)
            puts.append((time.perf_counter() - t) * 1000)
            ev = w.next(timeout=30)
            if ev is None:
                raise RuntimeError(f"no event for put {i}")
            events.append((time.perf_counter() - t) * 1000)
        puts, events = puts[n // 10 :], events[n // 10 :]
        return {
            "put_p50_ms": percentile(puts, 50),
            "event_p50_ms": percentile(events, 50),
            "event_p99_ms": percentile(events, 99),
        }
