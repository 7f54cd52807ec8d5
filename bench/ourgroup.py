"""Start a shard of derecho-actors node processes (``bench.ournode``) on loopback, let it run a
load, collect what every member measured, and stop everything.

The founder starts first; once it has a view, the others join through it. The layout needs all
``n`` members in the one shard (``layout.default.min_nodes = n``), so nobody sends before the
whole shard is there, and the members start sending when they see it.

TLS is on (a throwaway CA in the run's work folder, see ``bench.security``) unless the run is
insecure (``run.py --insecure``) or ``tls=False`` is asked for.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from bench import security
from bench.procs import HOST, BenchError, Procs, free_ports
from bench.stats import percentile, steady_rate
from runtime.config import MulticastSection
from runtime.drivers.status import fetch_status

# Every run gets these node settings. Failure detection stays as it is (heartbeats, broken
# connections); the suspicion timeout is raised because 3-6 busy processes on 2 shared cores can
# starve a heartbeat for more than the default 0.5 s, and a false suspicion would end the run.
BASE_SETTINGS = {"timeouts.suspicion_ms": "3000", "node.log_level": "WARNING"}

FRAME_BYTES = 8 << 20  # one push carries at most ~8 MB of payload (max_frame_bytes is 64 MB)
SUBMIT_BYTES = 1 << 20  # what the app hands the node per submit (at most 1000 messages)


def size_settings(size: int) -> dict[str, str]:
    """The batch bound for a message size: the default (1000) for small messages, fewer for
    large ones, so one push stays within a few MB. The window is the node's default: messages
    and bytes (``multicast.window_size``, ``multicast.window_bytes``) bound it together."""
    return {"multicast.max_batch": str(max(1, min(1000, FRAME_BYTES // max(1, size))))}


def window_for(size: int) -> int:
    """Messages of ``size`` bytes the default window holds."""
    m = MulticastSection()
    return max(1, min(m.window_size, m.window_bytes // max(1, size)))


def submit_batch(size: int) -> int:
    """Messages per submit: enough that a single sender keeps its window fed (a window of
    10,000 small messages drains several times per loop turn of 100-message submits)."""
    return max(1, min(1000, SUBMIT_BYTES // max(1, size)))


@dataclass
class MemberResult:
    node: int
    sent: int
    delivered: int
    t_go: float  # seconds (wall clock)
    t_first_send: float
    t_done: float
    cpu: float  # CPU seconds from go to done
    times: list[float] = field(repr=False)
    counts: list[int] = field(repr=False)
    lat_ns: array = field(repr=False)

    def rate(self, total: int) -> float:
        return steady_rate(self.times, self.counts, total)


@dataclass
class GroupRun:
    n: int
    senders: int
    size: int
    expect: int
    members: dict[int, MemberResult]
    wall: float  # seconds from the first start to the last result
    tls: bool = True

    def cpu_us_per_msg(self) -> float:
        """CPU microseconds a member spent per message it delivered (sending included), averaged
        over the members."""
        per = [m.cpu / m.delivered * 1e6 for m in self.members.values() if m.delivered]
        return sum(per) / len(per) if per else math.nan

    def rates(self) -> list[float]:
        return [m.rate(self.expect) for m in self.members.values()]

    def latencies_ms(self, lo: float = 0.1, hi: float = 0.9) -> list[float]:
        """Send->delivery latencies at every member of the messages in the steady part."""
        out: list[float] = []
        for m in self.members.values():
            lat = m.lat_ns
            out.extend(x / 1e6 for x in lat[int(lo * len(lat)) : int(hi * len(lat))])
        return out

    def cpu_shares(self) -> list[float]:
        """CPU use of each member while it ran the load (1.0 = one core all the time)."""
        return [m.cpu / max(1e-9, m.t_done - m.t_go) for m in self.members.values()]

    def summary(self) -> dict[str, float]:
        rates = self.rates()
        lat = self.latencies_ms()
        return {
            "msgs_per_s": min(rates),
            "msgs_per_s_max": max(rates),
            "MB_per_s": min(rates) * self.size / 1e6,
            "p50_ms": percentile(lat, 50) if lat else math.nan,
            "p99_ms": percentile(lat, 99) if lat else math.nan,
            "cpu": sum(self.cpu_shares()) / self.n,
            "cpu_max": max(self.cpu_shares()),
            "cpu_us_per_msg": self.cpu_us_per_msg(),
        }


def run_group(
    n: int,
    senders: int,
    per_sender: int,
    size: int,
    *,
    rate: float = 0.0,
    latency: bool = False,
    settings: dict[str, str] | None = None,
    stall: float = 20.0,
    limit: float = 300.0,
    tls: bool | None = None,
    trace_dir: Path | None = None,
) -> GroupRun:
    """``n`` members, the first ``senders`` of them sending ``per_sender`` messages each.
    ``tls``: True/False for that mode, None for the run's default (on unless ``--insecure``).
    ``trace_dir``: each member records where its messages' time goes there
    (``bench.latency_trace``; ``trace-<id>.msgpack``)."""
    workdir = Path(tempfile.mkdtemp(prefix="derecho-bench-"))
    ports = dict(zip(range(1, n + 1), free_ports(n)))
    cluster = f"bench-{uuid.uuid4().hex[:8]}"
    expect = senders * per_sender
    addr = {i: f"{HOST}:{p}" for i, p in ports.items()}
    t0 = time.monotonic()
    try:
        sec = security.group_security(workdir, ports, cluster, tls)
        conf = {
            **BASE_SETTINGS,
            **size_settings(size),
            "layout.default.min_nodes": str(n),
            **sec.settings,
            **(settings or {}),
        }
        with Procs(workdir) as procs:

            def start(i: int) -> None:
                sets = {
                    **conf,
                    "node.id": str(i),
                    "node.listen": addr[i],
                    "node.cluster": cluster,
                    "node.data_dir": str(workdir / f"data-{i}"),
                }
                if i != 1:
                    sets["node.contacts"] = addr[1]
                args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
                args += [
                    "--send",
                    str(per_sender if i <= senders else 0),
                    "--size",
                    str(size),
                    "--rate",
                    str(rate),
                    "--batch",
                    str(submit_batch(size)),
                    "--wait-members",
                    str(n),
                    "--expect",
                    str(expect),
                    "--out",
                    str(workdir / f"result-{i}.msgpack"),
                ]
                if latency:
                    args.append("--latency")
                if trace_dir is not None:
                    args += ["--trace", str(Path(trace_dir) / f"trace-{i}.msgpack")]
                procs.python(f"node-{i}", "bench.ournode", *args)

            start(1)
            procs.wait_until(
                lambda: "vid" in fetch_status(addr[1], cluster, 1.0, sec.credentials), 30, "the founder's view"
            )
            for i in range(2, n + 1):
                start(i)
            files = [workdir / f"result-{i}.msgpack" for i in ports]
            last, last_change = -1, time.monotonic()
            while not all(f.exists() for f in files):
                procs.check_alive("running the load")
                now = time.monotonic()
                if now - t0 > limit:
                    raise BenchError(f"run of {n} members x {size} B did not finish in {limit:.0f} s")
                try:
                    st = fetch_status(addr[1], cluster, 1.0, sec.credentials)
                    progress = sum(s.get("delivered", 0) for s in st.get("shards", [])) + len(st.get("members", []))
                except Exception:
                    progress = last
                if progress != last:
                    last, last_change = progress, now
                elif now - last_change > stall:
                    raise BenchError(f"no progress for {stall:.0f} s (logs in {workdir})")
                time.sleep(0.2 if now - t0 > 2 else 0.05)
            wall = time.monotonic() - t0
            members = {i: _load(f) for i, f in zip(ports, files)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return GroupRun(n, senders, size, expect, members, wall, sec.tls)


def latencies(stamps_raw: bytes, ends_raw: bytes, at_raw: bytes) -> array:
    """Send->delivery nanoseconds of every message a member delivered, in delivery order,
    from its messages' stamps and, per delivery batch, where the batch ends in them and
    when it was delivered."""
    stamps, ends, at = array("q"), array("q"), array("q")
    stamps.frombytes(stamps_raw)
    ends.frombytes(ends_raw)
    at.frombytes(at_raw)
    lat = array("q")
    start = 0
    for end, t in zip(ends, at):
        lat.extend(map(t.__sub__, stamps[start:end]))
        start = end
    return lat


def _load(path: Path) -> MemberResult:
    doc = msgpack.unpackb(path.read_bytes())
    tt, tn = array("q"), array("q")
    tt.frombytes(doc["timeline_t"])
    tn.frombytes(doc["timeline_n"])
    lat = latencies(doc["stamps"], doc["stamp_ends"], doc["stamp_at"])
    return MemberResult(
        node=doc["node"],
        sent=doc["sent"],
        delivered=doc["delivered"],
        t_go=doc["t_go"] / 1e9,
        t_first_send=doc["t_first_send"] / 1e9,
        t_done=doc["t_done"] / 1e9,
        cpu=doc["cpu"],
        times=[t / 1e9 for t in tt],
        counts=list(tn),
        lat_ns=lat,
    )


def messages_for(size: int, budget_bytes: int, lo: int, hi: int, senders: int) -> int:
    """Messages per sender: ``budget_bytes`` of payload in all, between ``lo`` and ``hi`` messages."""
    total = max(lo, min(hi, budget_bytes // max(1, size)))
    return max(1, total // senders)


def sizes_label(size: int) -> str:
    for unit, k in (("MB", 1_000_000), ("KB", 1_000)):
        if size >= k:
            v = size / k
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.3g} {unit}"
    return f"{size} B"
