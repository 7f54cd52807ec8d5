"""Large objects between real node processes on loopback (issue 22): throughput, memory, loop.

``python -m bench.objects --size 100000000 --count 5 [--senders 1] [--schedule chain]
[--insecure]`` starts a shard of ``--nodes`` processes (the real node driver, TLS on unless
``--insecure``), has the first ``--senders`` of them multicast ``--count`` payloads of
``--size`` bytes each (above ``rdmc.threshold_bytes`` they go as objects by the block
pipeline; at or below it, e.g. 1 MB, as ordinary messages), and reports per node:

* the bytes it delivered over the time from the first sender's start to its last delivery
  (MB/s per receiver: the figure the issue's targets are in);
* its peak RSS (``VmHWM``: this process's own high-water mark; ``ru_maxrss`` would not do, it
  survives ``execve`` and so starts at the RSS of the parent that forked the node, a pytest
  worker of 700 MiB in CI) and its RSS when the group formed (after the sender built its
  payload): the difference is what moving the objects cost in memory;
* the loop's worst lateness: a 10 ms timer on the node's loop, how late it ran at most (a
  whole-object pass on the loop would show here as a stall of that pass's length);
* with ``--digest``, a BLAKE3 digest of every delivered payload, computed in a thread (the
  parent checks they agree across members). That check is the bench's work, not the node's:
  its thread's CPU time is reported apart (``check_cpu_s``) and left out of the node's CPU per
  MB. It was blake2b, 1.67 ms/MB here: more than the node's own cost per MB, on the same two
  cores, so it held the throughput of the rows that digest down; BLAKE3 costs 0.18.

A sender builds one payload (a byte pattern, distinct per node) before the group forms and
submits that same buffer ``--count`` times, as an application that replicates its model
weights would hold them once; each receiver gets its own buffer per object.

``bench/run.py --only objects`` runs the matrix (sizes 10 MB, 100 MB, 1 GB; one sender and
all; TLS on and off; the three schedules at 100 MB; 1 MB messages for comparison), prints the
table, writes the rows to results.json and draws ``objects.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from blake3 import blake3

from bench import security as _security
from bench.procs import _die_with_parent, child_env, free_ports, wait_for_nodes
from bench.registry import Context, Row, experiment

MB = 1_000_000
TICK = 0.01  # the lateness probe's period (s)
BASE_SETTINGS = {
    "timeouts.suspicion_ms": "3000",
    "node.log_level": "WARNING",
    "rdmc.enabled": "true",  # and the default limits (4 GiB: all senders of 1 GB fit at once)
}


# ------------------------------------------------------------------------------ node side
def _rss_kib() -> int:
    """This process's resident set now (KiB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError):
        return 0


def _peak_rss_kib() -> int:
    """This process's peak resident set (KiB): ``VmHWM``, the high-water mark of its own
    address space, which ``execve`` starts afresh (unlike ``ru_maxrss``, the fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def pattern(size: int, node_id: int) -> bytearray:
    """``size`` bytes of a pattern distinct per node, every page written (a zero buffer would
    be the kernel's shared zero page: neither resident nor a fair thing to move)."""
    unit = bytes((node_id * 7 + i) % 251 for i in range(251)) * 4177  # ~1 MB, not a power of 2
    out = bytearray(size)
    view = memoryview(out)
    for off in range(0, size, len(unit)):
        n = min(len(unit), size - off)
        view[off : off + n] = unit[:n]
    return out


class ObjectApp:
    """Sends ``count`` copies of one payload, measures deliveries, RSS and loop lateness."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.node_id = args.id
        self.nodes = args.nodes
        self.count = args.send
        self.expect = args.expect
        self.out = Path(args.out)
        self.data = pattern(args.size, args.id) if args.send else None
        self.driver: Any = None
        self.shard: Any = None
        self.go = False
        self.sent = 0
        self.delivered = 0
        self.bytes_in = 0
        self.t_go = 0
        self.t_first = 0
        self.rss_go = 0
        self.cpu_go = 0.0
        self.faults_go = 0
        self.late_max = 0.0
        self._due = 0.0
        self.written = False
        self.digests: list[tuple[int, int, str]] = []
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="bench-digest", initializer=self._digest_thread)
            if args.digest
            else None
        )
        self._digest_tid: int | None = None  # the check's thread, once it runs
        self._pending: list[Any] = []
        self.profile_path = args.profile
        self.profiler: Any = None

    def _digest_thread(self) -> None:
        self._digest_tid = threading.get_ident()

    def check_cpu(self) -> float:
        """CPU seconds the check's thread has used (it starts at the first delivery)."""
        if self._digest_tid is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._digest_tid))
        except (OSError, OverflowError):
            return 0.0

    def hooks(self) -> Any:
        from runtime.drivers.node import AppHooks

        return AppHooks(on_deliver=self.on_deliver, on_view=self.on_view, on_window_open=self.on_window_open)

    def on_view(self, view: Any) -> None:
        mine = view.my_shards(self.node_id)
        self.shard = mine[0] if mine else None
        if not self.go and view.n >= self.nodes and self.shard is not None:
            self.go = True
            self.t_go = time.time_ns()
            self.rss_go = _rss_kib()
            self.cpu_go = time.process_time()
            self.faults_go = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            self._due = time.monotonic() + TICK
            self.driver.loop.call_later(TICK, self._probe)
            if self.profile_path:  # the loop thread only, from the group's start to the last delivery
                import cProfile

                self.profiler = cProfile.Profile(time.thread_time)  # CPU time: the machine is shared
                self.profiler.enable()
        self._pump()

    def _probe(self) -> None:
        """How late this timer runs: the loop's worst stall while the run goes on."""
        now = time.monotonic()
        self.late_max = max(self.late_max, now - self._due)
        if not self.written:
            self._due = now + TICK
            self.driver.loop.call_later(TICK, self._probe)

    def on_window_open(self, shard: Any) -> None:
        self._pump()

    def _pump(self) -> None:
        if not self.go or self.shard is None or self.data is None:
            return
        while self.sent < self.count and self.driver.queued(self.shard) < 2:
            self.driver.send_ordered(self.shard, [self.data])
            self.sent += 1

    def on_deliver(self, d: Any) -> None:
        now = time.time_ns()
        for _, sender, k, payload in d.messages:
            if not self.t_first:
                self.t_first = now
            self.bytes_in += len(payload)
            if self._pool is not None:  # off the loop: a digest of a GiB takes seconds
                self._pending.append(self._pool.submit(_digest, sender, k, payload))
        self.delivered += len(d.messages)
        if self.delivered >= self.expect and not self.written:
            self.written = True
            if self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile_path)
            doc = {
                "node": self.node_id,
                "sent": self.sent,
                "delivered": self.delivered,
                "bytes": self.bytes_in,
                "t_go": self.t_go,
                "t_first": self.t_first,
                "t_done": now,
                "rss_go_kib": self.rss_go,
                "late_max_ms": self.late_max * 1000,
                "cpu_s": time.process_time() - self.cpu_go,  # every thread's, from go to done
                "check_cpu_s": self.check_cpu(),  # of which the bench's digest thread
                "reused": self._reused(),
                # page faults (minor: pages mapped, zero-filled or found) from go to done
                "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults_go,
                "tcp_out": self._tcp_out(),
                "in_place": self._in_place(),
            }
            if self._pool is not None:
                self._pool.submit(self._write, doc)
            else:
                self._write(doc)
        self._pump()

    def _reused(self) -> int:
        """Receive buffers the node's engine took from its pool of idle mappings (pages mapped
        already, no pre-faulting): how many of its objects skipped that kernel work."""
        core = self.driver.core
        return core.objects.engine.buffers.reused if core is not None and core.objects is not None else -1

    def _tcp_out(self) -> int:
        """Bytes this node sent its peers over TCP (the rest, if any, went through rings)."""
        transport = self.driver.transport
        tcp = getattr(transport, "tcp", transport)
        return sum(out for out, _ in tcp.traffic().values()) if tcp is not None else 0

    def _in_place(self) -> int:
        """Objects this node read in place from their sender's segment (shm_objects), -1: none
        can be (not the shared-memory transport)."""
        objects = getattr(self.driver.transport, "objects", None)
        return objects.adopted_total if objects is not None else -1

    def _write(self, doc: dict[str, Any]) -> None:
        doc["digests"] = [f.result() for f in self._pending]
        doc["rss_peak_kib"] = _peak_rss_kib()
        tmp = self.out.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(doc))
        os.replace(tmp, self.out)


def _digest(sender: int, k: int, payload: Any) -> tuple[int, int, str]:
    return sender, k, blake3(payload).hexdigest()


def node_main(args: argparse.Namespace) -> int:
    from runtime.config import load_config, parse_override
    from runtime.drivers.node import NodeDriver, run_loop

    overrides = dict(parse_override(text) for text in args.set)
    config = load_config(None, overrides, environ={})
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s node{config.node.id} %(levelname)s %(name)s: %(message)s",
    )
    app = ObjectApp(args)
    driver = NodeDriver(config, app.hooks())
    app.driver = driver
    reason = run_loop(driver.run(), tls=driver.security.tls)
    print(f"node stopped: {reason}", file=sys.stderr)
    return 3


# ---------------------------------------------------------------------------- parent side
@dataclass
class Run:
    """One cluster's results: per node, its result document."""

    size: int
    count: int
    senders: int
    schedule: str
    tls: bool
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def start_ns(self) -> int:
        return min(doc["t_go"] for doc in self.nodes.values())

    def mb_per_s(self, node: int) -> float:
        doc = self.nodes[node]
        return doc["bytes"] / MB / max(1e-9, (doc["t_done"] - self.start_ns) / 1e9)

    def receivers(self) -> list[int]:
        """Nodes that receive objects from others: every node but a lone sender."""
        return [n for n in self.nodes if self.senders == len(self.nodes) or n > self.senders]

    def rss_peak_mib(self) -> dict[int, float]:
        return {n: doc["rss_peak_kib"] / 1024 for n, doc in self.nodes.items()}

    def rss_growth_mib(self) -> dict[int, float]:
        """Peak RSS above the node's RSS when the group formed (its own payload built)."""
        return {n: (doc["rss_peak_kib"] - doc["rss_go_kib"]) / 1024 for n, doc in self.nodes.items()}

    def cpu_ms_per_mb(self) -> dict[int, float]:
        """Each node's CPU time (all its threads but the bench's digest check, from the group's
        start to its last delivery) per MB of object data it took part in moving: the cost that
        decides throughput when the machine's cores are shared (2 cores, 3 nodes)."""
        moved = self.size * self.count * self.senders / MB
        return {
            n: (doc.get("cpu_s", 0.0) - doc.get("check_cpu_s", 0.0)) * 1000 / moved for n, doc in self.nodes.items()
        }

    def check_cpu_ms_per_mb(self) -> dict[int, float]:
        """The bench's digest check per MB at each node, up to its last delivery."""
        moved = self.size * self.count * self.senders / MB
        return {n: doc.get("check_cpu_s", 0.0) * 1000 / moved for n, doc in self.nodes.items()}

    def digests_agree(self) -> bool:
        seen = [sorted(map(tuple, doc["digests"])) for doc in self.nodes.values()]
        return all(s == seen[0] for s in seen) and len(seen[0]) == self.count * self.senders


def run_objects(
    size: int,
    count: int,
    senders: int = 1,
    nodes: int = 3,
    schedule: str = "binomial",
    tls: bool = True,
    digest: bool = False,
    settings: dict[str, str] | None = None,
    limit: float = 300.0,
    keep: bool = False,
    profile: str = "",
) -> Run:
    """One fresh cluster of ``nodes`` processes moving ``count`` payloads of ``size`` bytes
    from each of the first ``senders``; stops every process whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="derecho-objects-"))
    ports = dict(zip(range(1, nodes + 1), free_ports(nodes)))
    addr = {i: f"127.0.0.1:{p}" for i, p in ports.items()}
    cluster = f"obj-{uuid.uuid4().hex[:8]}"
    # TCP unless the run says otherwise (run.py --transport, or settings): this experiment is
    # the TCP data path with TLS on and off; members on one host would otherwise pick shared
    # memory whenever TLS is on (auto), and "TLS on" would measure the rings, not TLS. The
    # transports experiment compares shared memory.
    transport = {"node.transport": _security.transport() or "tcp"}
    sets = {
        **BASE_SETTINGS,
        **transport,
        "layout.default.min_nodes": str(nodes),
        "rdmc.schedule": schedule,
        **(settings or {}),
    }
    credentials = None
    if not tls:
        sets["security.insecure"] = "true"
    else:
        from runtime.drivers.dial import client_credentials
        from runtime.security.certs import ensure_cluster_certs

        certs = ensure_cluster_certs(workdir / "certs", range(1, nodes + 1), clients=("operator",), cluster=cluster)
        sets["security.certs_dir"] = str(certs)
        credentials = client_credentials(certs, "operator")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    expect = senders * count

    def start(i: int) -> None:
        mine = {
            **sets,
            "node.id": str(i),
            "node.listen": addr[i],
            "node.cluster": cluster,
            "node.data_dir": str(workdir / f"data-{i}"),
        }
        if i != 1:
            mine["node.contacts"] = addr[1]
        cmd = [sys.executable, "-m", "bench.objects", "node", "--id", str(i), "--nodes", str(nodes)]
        cmd += ["--send", str(count if i <= senders else 0), "--size", str(size), "--expect", str(expect)]
        cmd += ["--out", str(workdir / f"result-{i}.msgpack")]
        cmd += [x for k, v in mine.items() for x in ("--set", f"{k}={v}")]
        if digest:
            cmd.append("--digest")
        if profile:
            Path(profile).mkdir(parents=True, exist_ok=True)
            cmd += ["--profile", str(Path(profile) / f"node-{i}.prof")]
        log = open(workdir / f"node-{i}.log", "ab")
        procs[i] = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    run = Run(size, count, senders, schedule, tls)
    try:
        from runtime.drivers.status import fetch_status

        start(1)
        wait_for_nodes(lambda: "vid" in fetch_status(addr[1], cluster, 1.0, credentials), 60, procs, workdir)
        for i in range(2, nodes + 1):
            start(i)
        files = {i: workdir / f"result-{i}.msgpack" for i in ports}
        wait_for_nodes(lambda: all(f.exists() for f in files.values()), limit, procs, workdir)
        for i, f in files.items():
            run.nodes[i] = msgpack.unpackb(f.read_bytes(), strict_map_key=False)
        return run
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if keep:
            print(f"  logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def describe(run: Run) -> str:
    rates = [run.mb_per_s(n) for n in run.receivers()]
    return (
        f"{run.size / MB:g} MB x {run.count} from {run.senders}/{len(run.nodes)} ({run.schedule}, "
        f"TLS {'on' if run.tls else 'off'}): per receiver min {min(rates):,.0f} MB/s "
        f"[{' '.join(f'{r:,.0f}' for r in rates)}]; peak RSS MiB "
        + " ".join(f"{v:,.0f}" for v in run.rss_peak_mib().values())
        + " (growth "
        + " ".join(f"{v:,.0f}" for v in run.rss_growth_mib().values())
        + "); CPU ms/MB "
        + " ".join(f"{v:.2f}" for v in run.cpu_ms_per_mb().values())
        + (
            " (+ check " + " ".join(f"{v:.2f}" for v in run.check_cpu_ms_per_mb().values()) + ")"
            if any(run.check_cpu_ms_per_mb().values())
            else ""
        )
        + "; loop late max ms "
        + " ".join(f"{doc['late_max_ms']:.0f}" for doc in run.nodes.values())
        + "; buffers reused "
        + " ".join(str(doc.get("reused", "?")) for doc in run.nodes.values())
        + "; objects read in place "
        + " ".join(str(doc.get("in_place", "?")) for doc in run.nodes.values())
        + "; MB sent over TCP "
        + " ".join(f"{doc.get('tcp_out', 0) / MB:.0f}" for doc in run.nodes.values())
        + "; page faults per MB "
        + " ".join(
            f"{doc.get('minflt', 0) * MB / (run.size * run.count * run.senders):.0f}" for doc in run.nodes.values()
        )
    )


# ------------------------------------------------------------------------------ experiment
def _row(run: Run, case: str) -> Row:
    rates = [run.mb_per_s(n) for n in run.receivers()]
    growth = run.rss_growth_mib()
    return {
        "case": case,
        "size": run.size,
        "count": run.count,
        "senders": run.senders,
        "schedule": run.schedule,
        "tls": "on" if run.tls else "off",
        "MB_per_s": min(rates),
        "MB_per_s_nodes": rates,
        "rss_peak_mib": max(run.rss_peak_mib().values()),
        "rss_growth_mib": max(growth.values()),
        "rss_growth_x": max(growth.values()) * (1 << 20) / run.size,
        "late_max_ms": max(doc["late_max_ms"] for doc in run.nodes.values()),
        "cpu_ms_per_mb": max(run.cpu_ms_per_mb().values()),
        "check_cpu_ms_per_mb": max(run.check_cpu_ms_per_mb().values()),
    }


def matrix(quick: bool) -> list[tuple[int, int, int, str, bool]]:
    """(size, count, senders, schedule, tls) of every run, in running order."""
    sizes = [(10 * MB, 10 if quick else 20), (100 * MB, 2 if quick else 5), (1000 * MB, 1)]
    runs: list[tuple[int, int, int, str, bool]] = []
    for tls in (False, True):
        runs.append((MB, 100 if quick else 300, 3, "binomial", tls))  # 1 MB messages, not objects
        for size, count in sizes:
            for senders in (1, 3):
                runs.append((size, count, senders, "binomial", tls))
        for schedule in ("chain", "sequential"):
            runs.append((100 * MB, 2 if quick else 5, 1, schedule, tls))
    return runs


@experiment(
    "objects",
    "Large objects: a 3-member shard receiving 10 MB / 100 MB / 1 GB objects, TLS on and off",
    columns=[
        ("case", "case", ""),
        ("tls", "TLS", ""),
        ("MB_per_s", "MB/s per receiver (min)", ",.0f"),
        ("vs_tcp", "of 1 TCP stream", ".0%"),
        ("vs_1mb", "x 1 MB msgs", ".1f"),
        ("rss_peak_mib", "peak RSS MiB (max node)", ",.0f"),
        ("rss_growth_x", "RSS growth / object", ".2f"),
        ("late_max_ms", "loop late max ms", ".0f"),
        ("cpu_ms_per_mb", "CPU ms/MB (max node)", ".2f"),
    ],
    plot=lambda results, out: plot_objects(results, out),
)
def objects(ctx: Context) -> list[Row]:
    from bench import report

    rows: list[Row] = []
    tcp = report.ceiling(ctx.results, "tcp", "MB_per_s")
    # What three bare processes carry in this experiment's shape (bench.object_ceiling).
    bare = {
        "off": report.ceiling(ctx.results, "objects3", "MB_per_s"),
        "on": report.ceiling(ctx.results, "objects3_tls", "MB_per_s"),
    }
    one_mb: dict[str, float] = {}
    for size, count, senders, schedule, tls in matrix(ctx.quick):
        kind = "messages" if size <= MB else "objects"
        case = f"{size / MB:g} MB {kind}, {senders}/3 send" + ("" if schedule == "binomial" else f", {schedule}")
        try:
            run = run_objects(size, count, senders, schedule=schedule, tls=tls, digest=size > MB)
        except Exception as exc:  # one failed run must not lose the others
            rows.append({"case": case, "tls": "on" if tls else "off", "error": f"{type(exc).__name__}: {exc}"})
            ctx.say(f"  {case}: failed: {exc}")
            continue
        ctx.say(f"  {describe(run)}")
        row = _row(run, case)
        if size > MB and not run.digests_agree():
            row["error"] = "digests differ between members"
        if size == MB:
            one_mb[row["tls"]] = row["MB_per_s"]
        if tcp:
            row["vs_tcp"] = row["MB_per_s"] / tcp
        if bare.get(row["tls"]):
            row["vs_bare"] = row["MB_per_s"] / bare[row["tls"]]
        if one_mb.get(row["tls"]):
            row["vs_1mb"] = row["MB_per_s"] / one_mb[row["tls"]]
        rows.append(row)
    for mode in ("off", "on"):
        hit = [r for r in rows if r.get("tls") == mode and r.get("size") == 100 * MB and r.get("senders") == 1]
        hit = [r for r in hit if r.get("schedule") == "binomial"]
        if hit and tcp:
            r = hit[0]
            ctx.note(
                f"100 MB objects, 1/3 send, TLS {mode}: {r['MB_per_s']:,.0f} MB/s per receiver = "
                f"{r['MB_per_s'] / tcp:.0%} of one loopback TCP stream ({tcp:,.0f} MB/s)"
                + (f", {r['vs_1mb']:.1f}x the 1 MB-message rate" if "vs_1mb" in r else "")
                + (
                    f"; three bare processes in this shape carry {bare[mode]:,.0f} MB/s "
                    f"({bare[mode] / tcp:.0%} of the stream; this run {r['vs_bare']:.0%} of that)"
                    if bare.get(mode) and "vs_bare" in r
                    else ""
                )
            )
    ctx.note(f"load average before/after: {os.getloadavg()[0]:.2f} (the machine is shared)")
    return rows


def plot_objects(results: dict[str, list[Row]], out: Path) -> list[Path]:
    from bench import report

    rows = [r for r in results.get("objects", []) if isinstance(r.get("MB_per_s"), (int, float))]
    if not rows:
        return []
    plt = report._plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for tls, marker in (("off", "o"), ("on", "s")):
        for senders, style in ((1, "-"), (3, "--")):
            sel = sorted(
                [
                    r
                    for r in rows
                    if r["tls"] == tls and r["senders"] == senders and r["size"] > MB and r["schedule"] == "binomial"
                ],
                key=lambda r: r["size"],
            )
            if sel:
                label = f"objects, {senders}/3 send, TLS {tls}"
                axes[0].plot(
                    [r["size"] / MB for r in sel], [r["MB_per_s"] for r in sel], style, marker=marker, label=label
                )
                axes[1].plot(
                    [r["size"] / MB for r in sel], [r["rss_growth_x"] for r in sel], style, marker=marker, label=label
                )
        msgs = [r for r in rows if r["tls"] == tls and r["size"] == MB]
        if msgs:
            report._hline(axes[0], msgs[0]["MB_per_s"], f"1 MB messages, 3/3 send, TLS {tls}")
    tcp = report.ceiling(results, "tcp", "MB_per_s")
    report._hline(axes[0], tcp, f"ceiling: 1 TCP stream ({tcp / 1000:.1f} GB/s)" if tcp else "")
    for kind, tls in (("objects3", "off"), ("objects3_tls", "on")):
        bare = report.ceiling(results, kind, "MB_per_s")
        report._hline(
            axes[0], bare, f"ceiling: 3 bare processes, this shape, TLS {tls} ({bare:,.0f} MB/s)" if bare else ""
        )
    axes[0].set_ylabel("delivered MB/s per receiver (slowest)")
    axes[1].set_ylabel("peak RSS growth per node / object size")
    axes[1].set_title("runs of several objects hold several at once (and the app's digests)", fontsize=8)
    axes[1].axhline(2.5, color="firebrick", linestyle=":", linewidth=1)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("object size (MB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.suptitle("derecho-actors large objects (3 members, binomial pipeline)")
    fig.tight_layout()
    path = out / "objects.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "node":
        p = argparse.ArgumentParser(prog="bench.objects node")
        p.add_argument("--id", type=int, required=True)
        p.add_argument("--nodes", type=int, required=True)
        p.add_argument("--send", type=int, default=0)
        p.add_argument("--size", type=int, default=100 * MB)
        p.add_argument("--expect", type=int, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--digest", action="store_true")
        p.add_argument("--profile", default="")
        p.add_argument("--set", action="append", default=[])
        return node_main(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m bench.objects", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--size", type=int, default=100 * MB)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--schedule", default="binomial", choices=["binomial", "chain", "sequential"])
    p.add_argument("--insecure", action="store_true", help="nodes without TLS")
    p.add_argument("--digest", action="store_true", help="digest every delivered payload (in a thread)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--limit", type=float, default=300.0)
    p.add_argument("--keep", action="store_true", help="keep the work folder (node logs)")
    p.add_argument("--profile", default="", metavar="DIR", help="cProfile each node's loop into DIR/node-<id>.prof")
    a = p.parse_args(argv)
    run = run_objects(
        a.size,
        a.count,
        a.senders,
        a.nodes,
        a.schedule,
        not a.insecure,
        a.digest,
        dict(s.split("=", 1) for s in a.set),
        a.limit,
        a.keep,
        a.profile,
    )
    print(describe(run))
    if a.digest:
        print("digests agree" if run.digests_agree() else "DIGESTS DIFFER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
