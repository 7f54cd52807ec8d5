"""A repeatable measurement of ordered multicast between real node processes on loopback.

``python -m bench.multicast`` starts a shard of ``--nodes`` processes (the first founds
the group, the others join through it; the layout needs all of them, so nobody sends before
the whole shard is there), every one of them (or the first ``--senders``) multicasting
``--messages`` payloads of ``--size`` bytes, either as fast as the window allows or at
``--rate`` messages per second per sender. Each member makes one Python call per delivered
message (``--no-callback``: none), records a timeline of its deliveries and, with
``--latency``, the send-to-delivery time of every message (payloads start with the sender's
``time.time_ns()``; the processes share one machine, hence one clock). ``--app load`` runs
the built-in ``LoadApp`` instead (numbered payloads, a delivery log line per message).

Reported per run: the steady-state rate at each member (deliveries between 10% and 90% of
the total, divided by the time between those two moments; the line leads with the minimum
over members), each member's CPU share and deliveries per CPU second (the figure to compare
on a busy machine), the share of the run it was runnable but had no CPU (``no-cpu``) or had
nothing to do (``idle``: waiting for its peers), and p50/p99 latency of the steady part.
``--repeat K`` runs K fresh clusters.

Where the time goes: ``--breakdown`` prints each node's CPU time inside the driver's main
functions (thread CPU time, a few wrapped calls per batch, and the garbage collector);
``--profile DIR`` runs the nodes under cProfile from their first send to their last
delivery (``DIR/node-<id>.prof``; ``--profile-top N`` prints node 1's top entries);
``--spy DIR`` samples node 1 with py-spy if it is installed.

``python -m bench.multicast core`` measures the protocol alone: the cores of a shard
in one process, every frame through the wire codec, no sockets or event loop.

Each node is ``python -m bench.multicast node ...`` (the real node driver with the
measuring application); it writes its results when done and keeps serving the group until
the parent stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from bench.procs import wait_for_nodes

STAMP = struct.Struct("<q")
BASE_SETTINGS = {"timeouts.suspicion_ms": "3000", "node.log_level": "WARNING"}


# ------------------------------------------------------------------------------ node side
class PerfApp:
    """Sends, records deliveries, writes results once ``expect`` messages were delivered."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.node_id = args.id
        self.count = args.send
        self.size = args.size
        self.rate = args.rate
        self.batch = args.batch
        self.wait_members = args.nodes
        self.expect = args.expect
        self.out = Path(args.out)
        self.latency = args.latency
        self.per_message = not args.no_callback
        self.bytes_in = 0
        self.profile_path = args.profile
        self.profiler: Any = None
        self.pad = bytes(max(0, self.size - STAMP.size))
        self.driver: Any = None
        self.shard: Any = None
        self.go = False
        self.sent = 0
        self.delivered = 0
        self.t_go = 0
        self.cpu_go = 0.0
        self.sys_go = 0.0
        self.sched_go = (0.0, 0.0)
        self.timeline_t = array("q")
        self.timeline_n = array("q")
        self.lat = array("q")
        self.written = False
        self._t0 = 0.0
        self._gc_t = 0.0
        self.breakdown: Breakdown | None = None
        self.inner: Any = None  # --app load: the built-in LoadApp sends and logs; this one measures
        if args.app == "load":
            from derecho_actors.tools.load_app import LoadApp

            self.inner = LoadApp(
                self.node_id, self.count, self.size, self.out.with_suffix(".log"), wait_members=self.wait_members
            )
            self.count = 0

    def hooks(self) -> Any:
        from runtime.drivers.node import AppHooks

        return AppHooks(on_deliver=self.on_deliver, on_view=self.on_view, on_window_open=self.on_window_open)

    def _payloads(self, n: int) -> list[bytes]:
        """``n`` distinct payloads (as an application's would be), stamped with the submit time."""
        if self.size < STAMP.size:
            return [bytes(self.size) for _ in range(n)]
        stamp, pad = STAMP.pack(time.time_ns()), self.pad
        return [stamp + pad for _ in range(n)]

    def on_view(self, view: Any) -> None:
        if self.inner is not None:
            self.inner.on_view(view)
        mine = view.my_shards(self.node_id)
        self.shard = mine[0] if mine else None
        if not self.go and view.n >= self.wait_members and self.shard is not None:
            self.go = True
            self.t_go = time.time_ns()
            self.cpu_go = _cpu()
            self.sys_go = os.times().system
            self.sched_go = _schedstat()
            if self.breakdown is not None:
                self.breakdown.active = True
            if self.profile_path:
                import cProfile

                # Wall time (a CPU-time timer costs a system call per event here): time in
                # select()/epoll is the node waiting for its peers.
                self.profiler = cProfile.Profile()
                self.profiler.enable()
            if self.rate > 0:
                self._t0 = time.monotonic()
                self._pace()
        self._pump()

    def on_window_open(self, shard: Any) -> None:
        if self.inner is not None:
            self.inner.on_window_open(shard)
        self._pump()

    def _submit(self, n: int) -> None:
        self.driver.send_ordered(self.shard, self._payloads(n))
        self.sent += n

    def _pump(self) -> None:
        if self.rate > 0 or not self.go or self.shard is None or self.sent >= self.count:
            return
        while self.sent < self.count and self.driver.queued(self.shard) < self.batch:
            self._submit(min(self.batch, self.count - self.sent))

    def _pace(self) -> None:
        if self.shard is None or self.sent >= self.count:
            return
        due = min(self.count, int((time.monotonic() - self._t0) * self.rate) + 1) - self.sent
        if due > 0:
            self._submit(due)
        if self.sent < self.count:
            nxt = self._t0 + self.sent / self.rate
            self.driver.loop.call_later(max(0.0, nxt - time.monotonic()), self._pace)

    def consume(self, sender: int, payload: bytes) -> None:
        """What an application does at the least with each message: one Python call."""
        self.bytes_in += len(payload)

    def on_deliver(self, d: Any) -> None:
        now = time.time_ns()
        msgs = d.messages
        if self.latency:
            unpack = STAMP.unpack_from
            self.lat.extend([now - unpack(m[3])[0] for m in msgs])
        if self.inner is not None:
            self.inner.on_deliver(d)
        elif self.per_message:
            consume = self.consume
            for _, s, _, p in msgs:
                consume(s, p)
        self.delivered += len(msgs)
        self.timeline_t.append(now)
        self.timeline_n.append(self.delivered)
        if self.delivered >= self.expect and not self.written:
            self._write()
        self._pump()

    def _write(self) -> None:
        self.written = True
        t_done = time.time_ns()
        cpu = _cpu() - self.cpu_go
        sys_cpu = os.times().system - self.sys_go
        run, wait = (b - a for a, b in zip(self.sched_go, _schedstat()))
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile_path)
        if self.breakdown is not None:
            self.breakdown.active = False
            self.out.with_suffix(".breakdown").write_bytes(msgpack.packb(self.breakdown.report(cpu)))
        doc = {
            "node": self.node_id,
            "sent": self.sent,
            "delivered": self.delivered,
            "t_go": self.t_go,
            "t_done": t_done,
            "cpu": cpu,
            "sys": sys_cpu,
            "sched_run": run,
            "sched_wait": wait,
            "timeline_t": self.timeline_t.tobytes(),
            "timeline_n": self.timeline_n.tobytes(),
            "lat": self.lat.tobytes(),
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(doc))
        os.replace(tmp, self.out)


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of this thread, if known."""
    try:
        run, wait, _ = open("/proc/thread-self/schedstat").read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class Breakdown:
    """Thread CPU time spent inside a few named functions (inclusive), to see where a node's
    CPU goes without a profiler's per-call overhead: a handful of wrapped calls per batch."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.active = False

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr)
        clock = time.thread_time
        spent, calls = self.spent, self.calls
        spent[label] = 0.0
        calls[label] = 0
        me = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not me.active:
                return fn(*args, **kwargs)
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += clock() - t
                calls[label] += 1

        setattr(owner, attr, wrapper)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._gc_t = time.thread_time()
        else:
            label = f"gc generation {info['generation']}"
            self.spent[label] = self.spent.get(label, 0.0) + time.thread_time() - self._gc_t
            self.calls[label] = self.calls.get(label, 0) + 1

    def install(self) -> None:
        import gc

        from runtime.core import node_core, smc
        from runtime.drivers import node, tcp
        from runtime.drivers.node_phases import member
        from runtime.wire import codec

        gc.callbacks.append(self._gc)
        self.wrap(tcp._Connection, "data_received", "tcp.data_received (all input)")
        self.wrap(codec.FrameDecoder, "feed", "  codec FrameDecoder.feed")
        self.wrap(node.NodeDriver, "_on_frames", "  node._on_frames")
        self.wrap(node_core.NodeCore, "step", "    NodeCore.step")
        self.wrap(smc.ShardMulticast, "on_push", "      smc.on_push")
        self.wrap(smc.ShardMulticast, "_deliver_stable", "      smc._deliver_stable")
        self.wrap(node.NodeDriver, "_flush", "node._flush (all output)")
        self.wrap(node_core.NodeCore, "ready", "  NodeCore.ready")
        self.wrap(member, "frame", "  codec frame (encode)")
        self.wrap(tcp.TcpTransport, "send", "  tcp send")
        self.wrap(member.MemberPhase, "offer", "  MemberPhase.offer")
        self.wrap(node_core.NodeCore, "send", "    NodeCore.send")
        self.wrap(node.NodeDriver, "_tick", "node._tick")
        self.wrap(PerfApp, "on_deliver", "app on_deliver")

    def report(self, cpu: float) -> dict[str, Any]:
        return {"cpu": cpu, "spent": self.spent, "calls": self.calls}


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
    app = PerfApp(args)
    if args.breakdown:
        app.breakdown = Breakdown()
        app.breakdown.install()
    driver = NodeDriver(config, app.hooks())
    app.driver = driver
    if app.inner is not None:
        app.inner.driver = driver
    reason = run_loop(driver.run(), tls=driver.security.tls)
    print(f"node stopped: {reason}", file=sys.stderr)
    return 3


# ---------------------------------------------------------------------------- parent side
def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    node: int
    rate: float
    cpu: float  # share of one core from go to done
    per_cpu: float  # deliveries per CPU second of this member (robust to a busy machine)
    sys_share: float  # of that CPU time, the part spent in the kernel
    waiting: float  # share of the run this member was runnable but had no CPU (a busy machine)
    idle: float  # share of the run it had nothing to do (waiting for peers)
    lat_ms: list[float]


def steady_rate(times: list[float], counts: list[int], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Deliveries per second between the moments ``lo`` and ``hi`` of ``total`` were done."""
    t_lo = t_hi = None
    n_lo = n_hi = 0
    for t, n in zip(times, counts):
        if t_lo is None and n >= lo * total:
            t_lo, n_lo = t, n
        if n >= hi * total:
            t_hi, n_hi = t, n
            break
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return float("nan")
    return (n_hi - n_lo) / (t_hi - t_lo)


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def run_once(a: argparse.Namespace, run: int) -> list[Member]:
    n, senders = a.nodes, a.senders or a.nodes
    workdir = Path(tempfile.mkdtemp(prefix="derecho-perf-"))
    ports = dict(zip(range(1, n + 1), free_ports(n)))
    addr = {i: f"127.0.0.1:{p}" for i, p in ports.items()}
    cluster = f"perf-{uuid.uuid4().hex[:8]}"
    expect = senders * a.messages
    procs: dict[int, subprocess.Popen[bytes]] = {}
    settings = {**BASE_SETTINGS, "layout.default.min_nodes": str(n), **dict(s.split("=", 1) for s in a.set)}
    credentials = None
    if a.insecure:
        settings["security.insecure"] = "true"
    else:  # TLS, as in production: a throwaway CA in the work folder
        from runtime.drivers.dial import client_credentials
        from runtime.security.certs import ensure_cluster_certs

        certs = ensure_cluster_certs(workdir / "certs", range(1, n + 1), clients=("operator",), cluster=cluster)
        settings["security.certs_dir"] = str(certs)
        credentials = client_credentials(certs, "operator")
    env = {**os.environ}
    if a.uvloop:
        env["DERECHO_UVLOOP"] = "1"

    def start(i: int) -> None:
        sets = {
            **settings,
            "node.id": str(i),
            "node.listen": addr[i],
            "node.cluster": cluster,
            "node.data_dir": str(workdir / f"data-{i}"),
        }
        if i != 1:
            sets["node.contacts"] = addr[1]
        cmd = [
            sys.executable,
            "-m",
            "bench.multicast",
            "node",
            "--id",
            str(i),
            "--nodes",
            str(n),
            "--send",
            str(a.messages if i <= senders else 0),
            "--size",
            str(a.size),
            "--rate",
            str(a.rate),
            "--batch",
            str(a.batch),
            "--expect",
            str(expect),
            "--out",
            str(workdir / f"result-{i}.msgpack"),
        ]
        cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
        cmd += ["--app", a.app]
        if a.latency:
            cmd.append("--latency")
        if a.breakdown:
            cmd.append("--breakdown")
        if a.no_callback:
            cmd.append("--no-callback")
        if a.profile:
            Path(a.profile).mkdir(parents=True, exist_ok=True)
            cmd += ["--profile", str(Path(a.profile) / f"node-{i}.prof")]
        log = open(workdir / f"node-{i}.log", "ab")
        procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    try:
        from runtime.drivers.status import fetch_status

        start(1)
        wait_for_nodes(lambda: "vid" in fetch_status(addr[1], cluster, 1.0, credentials), 30, procs, workdir)
        spy = None
        if a.spy:
            Path(a.spy).mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(procs[1].pid),
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--output",
                    str(Path(a.spy) / "node-1.txt"),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for i in range(2, n + 1):
            start(i)
        files = {i: workdir / f"result-{i}.msgpack" for i in ports}
        wait_for_nodes(lambda: all(f.exists() for f in files.values()), a.limit, procs, workdir)
        if spy is not None:
            os.killpg(procs[1].pid, signal.SIGKILL)
            spy.wait(30)
        members = []
        for i, f in files.items():
            doc = msgpack.unpackb(f.read_bytes())
            tt, tn, lat = array("q"), array("q"), array("q")
            tt.frombytes(doc["timeline_t"])
            tn.frombytes(doc["timeline_n"])
            lat.frombytes(doc["lat"])
            rate = steady_rate([t / 1e9 for t in tt], list(tn), expect)
            span = max(1e-9, (doc["t_done"] - doc["t_go"]) / 1e9)  # seconds from go to done
            steady = [x / 1e6 for x in lat[int(0.1 * len(lat)) : int(0.9 * len(lat))]]
            bd = f.with_suffix(".breakdown")
            if bd.exists():
                rep = msgpack.unpackb(bd.read_bytes())
                print(f"  node {i}: {rep['cpu']:.2f} CPU s for {expect} deliveries; inclusive thread CPU per function:")
                for label, t in rep["spent"].items():
                    c = rep["calls"][label]
                    print(
                        f"    {label:<34} {t:6.3f} s {100 * t / rep['cpu']:5.1f}%  {c:>7} calls"
                        f"  {1e9 * t / expect:6.0f} ns/delivery"
                    )
            waiting = doc["sched_wait"] / span
            idle = max(0.0, 1 - (doc["sched_run"] + doc["sched_wait"]) / span)
            cpu_s = max(1e-9, doc["cpu"])
            members.append(
                Member(i, rate, doc["cpu"] / span, expect / cpu_s, doc["sys"] / cpu_s, waiting, idle, steady)
            )
        return members
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if a.keep:
            print(f"  logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parent_main(a: argparse.Namespace) -> int:
    senders = a.senders or a.nodes
    mode = f"{a.rate:g} msgs/s per sender" if a.rate > 0 else "as fast as the window allows"
    print(f"{a.nodes} nodes, {senders} senders x {a.messages} messages of {a.size} B, {mode}")
    mins = []
    for run in range(a.repeat):
        members = run_once(a, run)
        rates = [m.rate for m in members]
        lat = [x for m in members for x in m.lat_ms]
        line = (
            f"run {run + 1}: min {min(rates):>10,.0f} msgs/s  per member "
            + " ".join(f"{r:,.0f}" for r in rates)
            + "  cpu "
            + " ".join(f"{m.cpu:.2f}" for m in members)
            + "  per cpu-s "
            + " ".join(f"{m.per_cpu / 1000:,.0f}k" for m in members)
            + "  sys "
            + " ".join(f"{m.sys_share:.0%}" for m in members)
            + "  no-cpu "
            + " ".join(f"{m.waiting:.0%}" for m in members)
            + "  idle "
            + " ".join(f"{m.idle:.0%}" for m in members)
        )
        if lat:
            line += f"  p50 {percentile(lat, 50):.2f} ms  p99 {percentile(lat, 99):.2f} ms"
        print(line, flush=True)
        mins.append(min(rates))
    if len(mins) > 1:
        print(
            f"min-over-members rate: median {statistics.median(mins):,.0f}  best {max(mins):,.0f}  "
            f"worst {min(mins):,.0f} msgs/s"
        )
    if a.spy:
        spy_summary(Path(a.spy) / "node-1.txt", a.profile_top or 30)
    if a.profile and a.profile_top:
        import pstats

        for sort in ("tottime", "cumulative"):
            print(f"--- node 1 profile by {sort}")
            pstats.Stats(str(Path(a.profile) / "node-1.prof")).sort_stats(sort).print_stats(a.profile_top)
    return 0


# ------------------------------------------------------------------------ in-process core
def core_main(a: argparse.Namespace) -> int:
    """The protocol's CPU cost without sockets or an event loop: ``--nodes`` cores in one
    process, every frame encoded and decoded by the wire codec, served in turns the way the
    driver serves them (offer what the window takes, take what arrived, one ``ready()``).
    Reports deliveries per CPU second at each member (all members share one CPU here, so
    the figure is the total work of the shard divided by members)."""
    from runtime.core.events import MessageArrived, Tick
    from runtime.core.layout import LayoutPolicy, ShardPolicy, compute_layout
    from runtime.core.node_core import CoreConfig, NodeCore
    from runtime.core.smc import MulticastConfig
    from runtime.core.view import View
    from runtime.wire.codec import FrameDecoder, frame

    n = a.nodes
    senders = a.senders or n
    ids = list(range(1, n + 1))
    policy = LayoutPolicy.of({"perf": ShardPolicy(min_nodes=n)})
    view = View(0, tuple(ids), tuple(f"n{i}" for i in ids), compute_layout(policy, tuple(ids)))
    config = CoreConfig(MulticastConfig(window_size=a.window, max_batch=a.max_batch))
    best = 0.0
    for run in range(a.repeat):
        clock = time.monotonic
        cores = {i: NodeCore(i, f"n{i}", policy, config, clock(), view=view) for i in ids}
        shard = next(iter(cores[1].shards))
        decoders = {(s, d): FrameDecoder() for s in ids for d in ids if s != d}
        wires: dict[tuple[int, int], list[bytes]] = {k: [] for k in decoders}
        queue = {i: [] for i in ids}
        sent = dict.fromkeys(ids, 0)
        delivered = dict.fromkeys(ids, 0)
        body = bytes(a.size)
        expect = senders * a.messages
        for i in ids:
            cores[i].ready()
        t0, c0 = time.perf_counter(), time.process_time()
        turns = nbytes = 0
        while min(delivered.values()) < expect:
            turns += 1
            for i in ids:
                core = cores[i]
                now = clock()
                if i <= senders and sent[i] < a.messages and len(queue[i]) < a.batch:
                    k = min(a.batch, a.messages - sent[i])
                    queue[i].extend([body] * k)
                    sent[i] += k
                if queue[i]:
                    taken = core.send(shard, queue[i], now)
                    del queue[i][:taken]
                for s in ids:
                    if s != i and wires[s, i]:
                        data = b"".join(wires[s, i])
                        wires[s, i].clear()
                        for msg in decoders[s, i].feed(data):
                            core.step(MessageArrived(now, s, msg))
                ready = core.ready()
                if ready.wakeup_at is not None and ready.wakeup_at <= now:
                    core.step(Tick(now))
                for o in ready.outgoing:
                    data = frame(o.message)
                    for d in o.to:
                        wires[i, d].append(data)
                for dl in ready.deliveries:
                    for _, _s, _, p in dl.messages:  # what an app does at the least: look at each
                        nbytes += len(p)
                    delivered[i] += len(dl.messages)
        cpu = time.process_time() - c0
        wall = time.perf_counter() - t0
        per = expect / cpu * n  # every member's deliveries, per CPU second of one member
        best = max(best, per)
        print(
            f"run {run + 1}: {n} cores, {senders} senders x {a.messages}: {cpu:.2f} CPU s, {wall:.2f} s, "
            f"{turns} turns; {per:,.0f} deliveries per CPU s per member",
            flush=True,
        )
    if a.profile:
        import cProfile
        import pstats

        a.profile, a.repeat = "", 1
        prof = cProfile.Profile()
        prof.runcall(core_main, a)
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile_top or 25)
    return 0


def spy_summary(path: Path, top: int) -> None:
    """Self and inclusive samples per function from py-spy's collapsed stacks (CPU only:
    py-spy leaves idle samples out)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    print(f"--- node 1, py-spy: {total} CPU samples; self% / inclusive%")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * c / total:6.1f}% {100 * incl[f] / total:6.1f}%  {f}")
    print("--- inclusive")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * own.get(f, 0) / total:6.1f}% {100 * c / total:6.1f}%  {f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "core":
        p = argparse.ArgumentParser(prog="bench.multicast core", description=core_main.__doc__)
        p.add_argument("--nodes", type=int, default=3)
        p.add_argument("--senders", type=int, default=0)
        p.add_argument("--messages", type=int, default=100_000)
        p.add_argument("--size", type=int, default=100)
        p.add_argument("--batch", type=int, default=1000)
        p.add_argument("--window", type=int, default=1000)
        p.add_argument("--max-batch", type=int, default=1000)
        p.add_argument("--repeat", type=int, default=3)
        p.add_argument("--profile", action="store_true")
        p.add_argument("--profile-top", type=int, default=25)
        return core_main(p.parse_args(argv[1:]))
    if argv and argv[0] == "node":
        p = argparse.ArgumentParser(prog="bench.multicast node")
        p.add_argument("--id", type=int, required=True)
        p.add_argument("--nodes", type=int, required=True)
        p.add_argument("--send", type=int, default=0)
        p.add_argument("--size", type=int, default=100)
        p.add_argument("--rate", type=float, default=0.0)
        p.add_argument("--batch", type=int, default=1000)
        p.add_argument("--expect", type=int, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--latency", action="store_true")
        p.add_argument("--profile", default="")
        p.add_argument("--breakdown", action="store_true")
        p.add_argument("--no-callback", action="store_true")
        p.add_argument("--app", default="perf")
        p.add_argument("--set", action="append", default=[])
        return node_main(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m bench.multicast", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--senders", type=int, default=0, help="how many members send (default: all)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per sender")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--rate", type=float, default=0.0, help="msgs/s per sender; 0: as fast as the window allows")
    p.add_argument("--batch", type=int, default=1000, help="payloads per submit")
    p.add_argument("--latency", action="store_true", help="record send-to-delivery time of every message")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="node config override")
    p.add_argument("--profile", default="", metavar="DIR", help="run nodes under cProfile, dump to DIR")
    p.add_argument("--profile-top", type=int, default=0, metavar="N")
    p.add_argument("--breakdown", action="store_true", help="print where each node's CPU time goes")
    p.add_argument(
        "--app",
        choices=["perf", "load"],
        default="perf",
        help="load: the nodes run the built-in LoadApp (numbered payloads, a delivery log line per message)",
    )
    p.add_argument(
        "--no-callback",
        action="store_true",
        help="the app only counts deliveries (by default it "
        "makes one Python call per delivered message, as any real application does at least)",
    )
    p.add_argument("--spy", default="", metavar="DIR", help="sample node 1 with py-spy (if installed) into DIR")
    p.add_argument("--uvloop", action="store_true", help="run the nodes on uvloop (DERECHO_UVLOOP=1), if installed")
    p.add_argument("--limit", type=float, default=300.0, help="seconds before a run is abandoned")
    p.add_argument("--insecure", action="store_true", help="nodes without TLS (to measure what TLS costs)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (node logs)")
    return parent_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
