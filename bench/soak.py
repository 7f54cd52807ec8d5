"""Soak: does a node grow while honest clients use the group for a long time?

Issue 19 found nodes that grew for good with ordinary use: every closed client connection
kept ~286 kB in the router, every ``kv_store.py put`` invocation grew a node. A test can show
one such leak; only a long run shows there is none left. This runs a 3-node TLS group
(``local_cluster``, the KV example, whose puts emit watch events) for ``--minutes`` (10 by
default) with:

- honest clients churning connections: each opens a ``Client``, makes a few puts over a
  bounded set of keys (so the replicated state itself stops growing early) and closes it;
- a watcher following the shard (``client.watch``), as a dashboard would;
- a scraper of every node's ``/metrics`` (TLS with a client certificate: ``metrics_tls``);

and samples every node's RSS, open file descriptors and threads every ``--sample`` seconds.
After the warm-up it fits a least-squares line to each series and reports the slope (per
minute, and what it would add in an hour): flat is what we want. The verdict counts a series as
growing when the line rises by more than 5 MB (RSS) or 5 descriptors over the measured span.

Prints a table, writes ``soak.json`` and draws ``soak.png`` (matplotlib, ``pip install -e
'.[bench]'``) into ``--out``. Not a test: it takes minutes and its numbers depend on the
machine. ``python -m bench.soak --minutes 1`` checks that it works.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import logging
import platform
import re
import shutil
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.persistence import DISK, load_example
from bench.procs import ROOT, Procs

log = logging.getLogger("bench.soak")

KEYS = 200  # distinct keys the churners write: the state stops growing once all are written
VALUE = b"v" * 100
GROWTH_MB = 5.0  # fitted RSS rise over the measured span that counts as growing
GROWTH_FDS = 5.0


@dataclass
class Counters:
    """What the load did, shared by its threads (each adds under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    connections: int = 0
    puts: int = 0
    put_errors: int = 0
    events: int = 0
    watch_errors: int = 0
    scrapes: int = 0
    scrape_errors: int = 0
    scrape_max_ms: float = 0.0
    first_errors: list[str] = field(default_factory=list)

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, what: str, exc: BaseException) -> None:
        with self.lock:
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{what}: {type(exc).__name__}: {exc}"[:300])

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self) if f.name != "lock"}


# ----------------------------------------------------------------------------- sampling
def proc_sample(pid: int) -> tuple[float, int, int] | None:
    """(RSS in MB, open descriptors, threads) of ``pid``; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (FileNotFoundError, ProcessLookupError):
        return None
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return rss_kb / 1024, fds, threads


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0.0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# ----------------------------------------------------------------------------- the load
def churner(cluster: Any, cls: type, k: int, puts: int, stop: threading.Event, c: Counters) -> None:
    """Open a client, make ``puts`` puts, close it; again, until ``stop``."""
    i = k * 7919
    while not stop.is_set():
        try:
            with cluster.new_client() as client:
                c.add(connections=1)
                h = client.handle(cls)
                for _ in range(puts):
                    h.put(f"key-{i % KEYS}", VALUE).get(timeout=30)
                    i += 1
                    c.add(puts=1)
        except Exception as exc:  # the soak reports errors, it does not stop at one
            c.add(put_errors=1)
            c.error(f"churner {k}", exc)
            stop.wait(1.0)


def watcher(cluster: Any, cls: type, stop: threading.Event, c: Counters) -> None:
    """Follow the shard's events for the whole run (one long-lived watch)."""
    while not stop.is_set():
        try:
            with cluster.new_client() as client:
                w = client.watch(cls, hold=1.0)
                while not stop.is_set():
                    if w.next(timeout=1.0) is not None:
                        c.add(events=1)
        except Exception as exc:
            c.add(watch_errors=1)
            c.error("watcher", exc)
            stop.wait(1.0)


def scraper(addresses: list[str], ctx: ssl.SSLContext, period: float, stop: threading.Event, c: Counters) -> None:
    """GET /metrics from every node every ``period`` seconds, as Prometheus would."""
    while not stop.is_set():
        for address in addresses:
            host, port = address.rsplit(":", 1)
            t = time.perf_counter()
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
            try:
                conn.request("GET", "/metrics")
                res = conn.getresponse()
                body = res.read()
                if res.status != 200 or b"derecho_up 1.0" not in body:
                    raise RuntimeError(f"{address}: HTTP {res.status}, up={b'derecho_up 1.0' in body}")
                ms = (time.perf_counter() - t) * 1000
                with c.lock:
                    c.scrapes += 1
                    c.scrape_max_ms = max(c.scrape_max_ms, ms)
            except Exception as exc:
                c.add(scrape_errors=1)
                c.error(f"scrape {address}", exc)
            finally:
                conn.close()
        stop.wait(period)


def metrics_address(workdir: Path, node: int, timeout: float = 30.0) -> str:
    """The metrics endpoint a node bound (port 0 in the config), from its log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (workdir / f"node-{node}.log").read_text(errors="replace")
        m = re.search(r"metrics and health on https://(\S+) \(", text)
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"node {node} logged no metrics address within {timeout} s")


# ----------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    import derecho_actors as da
    from derecho_actors.tools.cluster import CLIENT_NAME
    from runtime.drivers.dial import client_credentials

    kv = load_example("kv_store").KV
    layout = da.Layout({kv: da.ShardPolicy(min_nodes=3, max_nodes=3)})
    workdir = Path(tempfile.mkdtemp(prefix="derecho-soak-", dir=str(DISK)))
    overrides = {"node.metrics": "127.0.0.1:0", "security.metrics_tls": "true"}
    duration = args.minutes * 60
    warmup = args.warmup * 60 if args.warmup is not None else min(120.0, duration / 3)
    samples: dict[int, list[tuple[float, float, int, int]]] = {}
    counters = Counters()
    stop = threading.Event()
    try:
        with Procs(workdir) as procs, da.local_cluster(3, [kv], layout, workdir=str(workdir), overrides=overrides) as c:
            for node, proc in c.procs.items():
                procs.adopt(f"node-{node}", proc)
            addresses = [metrics_address(workdir, n) for n in sorted(c.procs)]
            ctx = client_credentials(c.certs_dir, CLIENT_NAME).client_context()
            threads = [
                threading.Thread(target=churner, args=(c, kv, k, args.puts_per_connection, stop, counters), daemon=True)
                for k in range(args.churners)
            ]
            threads.append(threading.Thread(target=watcher, args=(c, kv, stop, counters), daemon=True))
            threads.append(
                threading.Thread(target=scraper, args=(addresses, ctx, args.scrape, stop, counters), daemon=True)
            )
            t0 = time.monotonic()
            for t in threads:
                t.start()
            next_print = t0
            while (now := time.monotonic()) - t0 < duration:
                for node, proc in c.procs.items():
                    got = proc_sample(proc.pid)
                    if got is None:
                        raise RuntimeError(f"node {node} exited with {proc.poll()} during the soak (logs: {workdir})")
                    samples.setdefault(node, []).append((now - t0, *got))
                if now >= next_print:
                    last = {n: s[-1] for n, s in samples.items()}
                    log.info(
                        "%4.0f s: %s; %d connections, %d puts, %d events, %d scrapes, %d errors",
                        now - t0,
                        ", ".join(f"node {n} {v[1]:.0f} MB {v[2]} fds" for n, v in sorted(last.items())),
                        counters.connections,
                        counters.puts,
                        counters.events,
                        counters.scrapes,
                        counters.put_errors + counters.watch_errors + counters.scrape_errors,
                    )
                    next_print = now + 30
                time.sleep(max(0.0, args.sample - (time.monotonic() - now)))
            stop.set()
            for t in threads:
                t.join(15)
            status = {n: c.status(n) for n in sorted(c.procs)}
            members = sorted(m for m, _ in status[1].get("members", []))
    finally:
        stop.set()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return summarize(args, samples, counters, warmup, duration, members, str(workdir))


def summarize(
    args: argparse.Namespace,
    samples: dict[int, list[tuple[float, float, int, int]]],
    counters: Counters,
    warmup: float,
    duration: float,
    members: list[int],
    workdir: str,
) -> dict[str, Any]:
    nodes = []
    for node, series in sorted(samples.items()):
        after = [s for s in series if s[0] >= warmup] or series
        span_min = (after[-1][0] - after[0][0]) / 60 if len(after) > 1 else 0.0
        rss_slope = slope([(t / 60, rss) for t, rss, _, _ in after])
        fd_slope = slope([(t / 60, float(fds)) for t, _, fds, _ in after])
        nodes.append(
            {
                "node": node,
                "rss_start_mb": series[0][1],
                "rss_after_warmup_mb": after[0][1],
                "rss_end_mb": series[-1][1],
                "rss_max_mb": max(s[1] for s in series),
                "rss_slope_mb_per_min": rss_slope,
                "fds_after_warmup": after[0][2],
                "fds_end": series[-1][2],
                "fds_max": max(s[2] for s in series),
                "fds_slope_per_min": fd_slope,
                "threads_end": series[-1][3],
                "threads_max": max(s[3] for s in series),
                "measured_minutes": span_min,
                "rss_growing": rss_slope * span_min > GROWTH_MB,
                "fds_growing": fd_slope * span_min > GROWTH_FDS,
            }
        )
    return {
        "experiment": "soak",
        "minutes": args.minutes,
        "warmup_s": warmup,
        "duration_s": duration,
        "sample_s": args.sample,
        "churners": args.churners,
        "puts_per_connection": args.puts_per_connection,
        "keys": KEYS,
        "value_bytes": len(VALUE),
        "tls": True,
        "metrics_tls": True,
        "members_at_end": members,
        "load": counters.as_dict(),
        "nodes": nodes,
        "samples": {str(n): s for n, s in samples.items()},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cores": _cores()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "workdir": workdir,
        "flat": not any(n["rss_growing"] or n["fds_growing"] for n in nodes),
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- output
def print_table(result: dict[str, Any]) -> None:
    load = result["load"]
    print(
        f"\nsoak: {result['minutes']} min, 3 nodes (TLS, metrics over TLS), warm-up {result['warmup_s']:.0f} s, "
        f"a sample every {result['sample_s']} s"
    )
    print(
        f"load: {load['connections']} client connections opened and closed, {load['puts']} puts, "
        f"{load['events']} watch events, {load['scrapes']} scrapes (slowest {load['scrape_max_ms']:.0f} ms); "
        f"errors: puts {load['put_errors']}, watch {load['watch_errors']}, scrapes {load['scrape_errors']}"
    )
    header = (
        f"{'node':>4} {'RSS MB start':>12} {'after warm-up':>13} {'end':>7} {'slope MB/min':>12} {'MB/h':>7} "
        f"{'fds after':>9} {'end':>5} {'fds/min':>8} {'threads':>7}"
    )
    print(header)
    print("-" * len(header))
    for n in result["nodes"]:
        print(
            f"{n['node']:>4} {n['rss_start_mb']:>12.1f} {n['rss_after_warmup_mb']:>13.1f} {n['rss_end_mb']:>7.1f} "
            f"{n['rss_slope_mb_per_min']:>+12.3f} {n['rss_slope_mb_per_min'] * 60:>+7.1f} "
            f"{n['fds_after_warmup']:>9} {n['fds_end']:>5} {n['fds_slope_per_min']:>+8.2f} {n['threads_max']:>7}"
        )
    verdict = "flat" if result["flat"] else "GROWING"
    errors = load["put_errors"] + load["watch_errors"] + load["scrape_errors"]
    if errors:
        verdict += f", but with {errors} load errors (a load that failed proves little about growth)"
    print(
        f"verdict: {verdict} (growing = the fitted line rises more than {GROWTH_MB:.0f} MB or {GROWTH_FDS:.0f} "
        "descriptors over the measured span); members at the end: "
        f"{result['members_at_end']}"
    )
    for line in load["first_errors"]:
        print(f"  error: {line}")


def plot(result: dict[str, Any], out: Path) -> Path | None:
    """RSS and open descriptors per node over time, the warm-up shaded; None (and why, on
    stderr) without matplotlib."""
    try:
        from bench import report

        plt = report._plt()
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return None
    fig, (ax_rss, ax_fds) = plt.subplots(1, 2, figsize=(12, 4.5))
    for node, series in sorted(result["samples"].items()):
        t = [s[0] / 60 for s in series]
        ax_rss.plot(t, [s[1] for s in series], label=f"node {node}")
        ax_fds.plot(t, [s[2] for s in series], label=f"node {node}")
    for ax in (ax_rss, ax_fds):
        ax.axvspan(0, result["warmup_s"] / 60, color="0.9", label="warm-up")
        ax.set_xlabel("minutes")
        ax.legend(fontsize=8)
    slopes = ", ".join(f"{n['node']}: {n['rss_slope_mb_per_min']:+.2f}" for n in result["nodes"])
    ax_rss.set_ylabel("RSS (MB)")
    ax_rss.set_title(f"RSS per node; slope after warm-up MB/min {slopes}", fontsize=9)
    ax_fds.set_ylabel("open file descriptors")
    ax_fds.set_title("open descriptors per node", fontsize=9)
    fig.suptitle(
        f"soak: {result['minutes']} min, {result['load']['connections']} client connections churned, "
        f"{result['load']['scrapes']} scrapes, 1 watcher",
        fontsize=10,
    )
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    p.add_argument("--warmup", type=float, help="minutes left out of the slopes (default: a third, at most 2)")
    p.add_argument("--sample", type=float, default=3.0, help="seconds between samples (default 3)")
    p.add_argument("--churners", type=int, default=3, help="clients opening and closing connections (default 3)")
    p.add_argument("--puts-per-connection", type=int, default=5, help="puts each connection makes (default 5)")
    p.add_argument("--scrape", type=float, default=1.0, help="seconds between scrapes of every node (default 1)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where soak.json and soak.png go")
    p.add_argument("--keep", action="store_true", help="keep the work folder (node logs)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.sample <= 0 or args.churners < 1 or args.puts_per_connection < 1:
        p.error("--minutes, --sample must be > 0; --churners, --puts-per-connection >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("derecho").setLevel(logging.WARNING)  # the clients' connect lines would drown the progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    path = out / "soak.json"
    path.write_text(json.dumps(result, indent=1))
    png = plot(result, out)
    print_table(result)
    print(f"\nresults: {path}{'; plot: ' + str(png) if png else ''}")
    errors = result["load"]["put_errors"] + result["load"]["watch_errors"] + result["load"]["scrape_errors"]
    return 0 if result["flat"] and errors == 0 and result["members_at_end"] == [1, 2, 3] else 1


if __name__ == "__main__":
    sys.exit(main())
