"""Where a multicast message's time goes, between its submit and its delivery at each member.

``bench.ournode --trace PATH`` installs a :class:`Tracer` in the node process once the shard
is complete. It wraps a few of the driver's and core's calls (the bench's own process only;
nothing of the node changes) and records, with the machine's wall clock (``time.time_ns``,
the same in every process, as the latency stamps are):

- ``submit``: each submit of the app: (its first message's stamp, the time of the submit,
  count);
- ``sent``: each push with messages leaving this node, stamped after the flush that wrote it
  went to the transport: (time, first sender index, count, the sender index of its first
  real message, that message's latency stamp). These messages are the samples;
- ``recv``: each push with messages arriving here: (time, sender node, first index, count);
- ``stable``: after each arriving push, how many of each sender's messages every member
  holds, as this member knows it (the stability predicate's input);
- ``deliv``: each delivery batch: (time, frontier after it);
- ``turn``: each turn of the event loop: (start, busy ns, ns waiting in select, handles run);
- ``flush``: each flush of the core's effects: (start, ns taken);
- ``counts``: events per node, to set against the messages it delivered (``delivered``):
  pushes sent (``push_msgs`` with real messages, ``push_nulls`` with nulls only,
  ``push_row`` with a row alone; each goes to every peer), group rows sent
  (``group_push``), frames the core took (``frames_in``), transport writes
  (``writes``, ``write_bytes``), timer firings (``ticks``), flushes and loop turns, and
  the process's CPU seconds from install to write (``cpu_s``); doorbell rings of the
  shared-memory transport (``rings``) with the wall and CPU microseconds they took
  (``ring_wall_us``, ``ring_cpu_us``: a ring that wakes a sleeping peer on a busy machine
  lets the kernel run that peer in the ringer's place, so its wall time is the peer's turn,
  not the system call), and the process's context switches (``ctx_voluntary``: it slept;
  ``ctx_preempted``: it was runnable and taken off the CPU).

The stage samples are the first real message of each push: the oldest of its batch, so the
wait for the app's tick is the longest one (a message due just after a tick waits a whole
tick; the batch's average waits about half of one).

:func:`analyse` joins the files of all members: for sampled messages, the time from submit to
the push leaving the sender, to its arrival at each member, to stability known there, to its
delivery there; plus loop-turn statistics. ``python -m bench.latency_trace DIR`` prints it.

:func:`virtual_latency` (``python -m bench.latency_trace --virtual``) measures the core's own
waits in hops, with no processes: what the protocol adds, apart from the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from array import array
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable

import msgpack

from bench.ournode import STAMP
from runtime.core.events import MessageArrived
from runtime.core.messages import GroupPush, ShardPush


class Tracer:
    """Records what the module docstring lists, for one node process."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.submit = array("q")
        self.sent = array("q")
        self.recv = array("q")
        self.stable = array("q")
        self.deliv = array("q")
        self.turn = array("q")
        self.flush = array("q")
        self.late = array("q")  # per submit: how long after its stamp it was made
        self.members: list[int] = []
        self.senders: list[int] = []
        self.my_pos = -1
        self._pending_sent: list[tuple[int, int]] = []
        self._handles = 0
        self.counts: dict[str, float] = dict.fromkeys(
            (
                "push_msgs",
                "push_nulls",
                "push_row",
                "group_push",
                "frames_in",
                "writes",
                "write_bytes",
                "ticks",
                "rings",
                "ring_wall_us",
                "ring_cpu_us",
            ),
            0,
        )
        self._switches0 = (0, 0)
        self._cpu0 = 0.0
        self._delivered0 = -1
        self._delivered = 0

    def install(self, driver: Any, shard: Any) -> None:
        core = driver.core
        smc = core.shards[shard]
        self.members = list(smc.members)
        self.senders = [smc.members[r] for r in smc.sender_ranks]
        self.my_pos = -1 if smc.my_pos is None else smc.my_pos
        ns = time.time_ns
        step0, ready0 = core.step, core.ready
        stable, recv = self.stable, self.recv

        counts = self.counts

        def step(event: Any) -> None:
            step0(event)
            if type(event) is MessageArrived:
                counts["frames_in"] += 1
            if type(event) is MessageArrived and type(event.message) is ShardPush:
                push = event.message
                t = ns()
                if push.messages:
                    recv.extend((t, event.sender, push.first, len(push.messages)))
                s = core.shards.get(shard)
                if s is not None:
                    stable.append(t)
                    stable.extend(s.sst.vector_min("received_num"))

        def ready() -> Any:
            out = ready0()
            for o in out.outgoing:
                m = o.message
                if type(m) is ShardPush:
                    kind = (
                        "push_row"
                        if not m.messages
                        else "push_nulls"
                        if m.messages.count(None) == len(m.messages)
                        else "push_msgs"
                    )
                    counts[kind] += 1
                elif type(m) is GroupPush:
                    counts["group_push"] += 1
                if type(m) is ShardPush and m.messages:
                    # The first real message of the push is its sample: its index and stamp.
                    for i, p in enumerate(m.messages):
                        if p is not None:
                            stamp = STAMP.unpack_from(p)[0] if len(p) >= 8 else 0
                            self._pending_sent.append((m.first, len(m.messages), m.first + i, stamp))
                            break
            return out

        core.step, core.ready = step, ready
        io = driver._io
        flush0: Callable[[], None] = io._on_flush
        flush_rec, sent = self.flush, self.sent

        def flush() -> None:
            t0 = ns()
            flush0()
            t1 = ns()
            flush_rec.extend((t0, t1 - t0))
            for rec in self._pending_sent:
                sent.extend((t1, *rec))
            self._pending_sent.clear()

        io._on_flush = flush
        tick0: Callable[[], None] = io._on_tick

        def tick() -> None:
            counts["ticks"] += 1
            tick0()

        io._on_tick = tick
        transport = io.transport
        send0 = transport.send

        def send(node: int, data: Any) -> Any:
            counts["writes"] += 1
            counts["write_bytes"] += len(data)
            return send0(node, data)

        transport.send = send
        self._count_rings()
        self._switches0 = _context_switches()
        self._cpu0 = time.process_time()
        loop = io.loop
        run_once0 = loop._run_once
        selector = loop._selector
        select0 = selector.select
        wait = [0]

        def select(timeout: Any = None) -> Any:
            t0 = ns()
            r = select0(timeout)
            wait[0] += ns() - t0
            return r

        turn = self.turn

        def run_once() -> None:
            wait[0] = 0
            n = len(loop._ready)
            t0 = ns()
            run_once0()
            t1 = ns()
            turn.extend((t0, t1 - t0 - wait[0], wait[0], n))

        selector.select = select
        loop._run_once = run_once

    def _count_rings(self) -> None:
        """Wrap the shared-memory doorbell (this process only: the tracer's node)."""
        from runtime.drivers.shm_doorbell import Doorbell

        counts = self.counts
        ring0 = Doorbell.ring
        wall, cpu = time.perf_counter_ns, time.thread_time_ns

        def ring(bell: Doorbell) -> None:
            w0, c0 = wall(), cpu()
            ring0(bell)
            counts["rings"] += 1
            counts["ring_wall_us"] += (wall() - w0) / 1e3
            counts["ring_cpu_us"] += (cpu() - c0) / 1e3

        Doorbell.ring = ring  # type: ignore[method-assign]

    def on_submit(self, stamp_ns: int, first: int, n: int) -> None:
        """A submit of ``n`` messages stamped ``stamp_ns`` (their due time when paced)."""
        now = time.time_ns()
        self.submit.extend((stamp_ns, now, n))
        self.late.append(now - stamp_ns)

    def on_deliver(self, frontier: int, messages: int) -> None:
        """A delivery batch of ``messages`` app messages, up to global index ``frontier``."""
        self.deliv.extend((time.time_ns(), frontier))
        self._delivered += messages

    def write(self, path: Path) -> None:
        doc = {
            "node": self.node_id,
            "members": self.members,
            "senders": self.senders,
            "my_pos": self.my_pos,
            "counts": {
                **self.counts,
                "delivered": self._delivered,
                "flushes": len(self.flush) // 2,
                "turns": len(self.turn) // 4,
                "cpu_s": time.process_time() - self._cpu0,
                **dict(
                    zip(
                        ("ctx_voluntary", "ctx_preempted"),
                        (b - a for a, b in zip(self._switches0, _context_switches())),
                    )
                ),
            },
            **{
                k: getattr(self, k).tobytes()
                for k in ("submit", "sent", "recv", "stable", "deliv", "turn", "flush", "late")
            },
        }
        path.write_bytes(msgpack.packb(doc))


def _context_switches() -> tuple[int, int]:
    """This process's (voluntary, involuntary) context switches so far; zeros off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def _rows(raw: bytes, width: int) -> list[tuple[int, ...]]:
    a = array("q")
    a.frombytes(raw)
    return [tuple(a[i : i + width]) for i in range(0, len(a), width)]


def _first_cover(rows: list[tuple[int, ...]], k: int, first_col: int, n_col: int) -> int | None:
    """Time of the first row whose [first, first + n) covers k (rows in time order)."""
    for r in rows:
        if r[first_col] <= k < r[first_col] + r[n_col]:
            return r[0]
    return None


def analyse(folder: Path, sample: int = 400) -> dict[str, Any]:
    docs = {d["node"]: d for d in (msgpack.unpackb(p.read_bytes()) for p in sorted(folder.glob("trace-*.msgpack")))}
    any_doc = next(iter(docs.values()))
    senders: list[int] = any_doc["senders"]
    n = len(senders)
    per = {}
    for node, d in docs.items():
        per[node] = {
            "submit": _rows(d["submit"], 3),
            "sent": _rows(d["sent"], 5),
            "recv": _rows(d["recv"], 4),
            "stable": _rows(d["stable"], 1 + n),
            "deliv": _rows(d["deliv"], 2),
            "turn": _rows(d["turn"], 4),
            "flush": _rows(d["flush"], 2),
            "late": _rows(d["late"], 1),
        }
    stages: dict[str, list[float]] = {}

    def add(name: str, a: int | None, b: int | None) -> None:
        if a is not None and b is not None:
            stages.setdefault(name, []).append((b - a) / 1e6)

    for pos, snode in enumerate(senders):
        sent = per[snode]["sent"]
        if not sent:
            continue
        lo, hi = len(sent) // 10, len(sent) * 9 // 10
        submits = per[snode]["submit"]
        starts = [x[0] for x in submits]
        for t_sent, _first, _n, k, stamp in sent[lo : hi : max(1, (hi - lo) // sample)]:
            add("stamp->sent (sender)", stamp, t_sent)
            i = bisect_right(starts, stamp) - 1
            if i >= 0:
                add("stamp->submit (app's tick)", stamp, submits[i][1])
                add("submit->sent (sender)", submits[i][1], t_sent)
            g = k * n + pos
            for rnode, r in per.items():
                if rnode == snode:
                    t_recv = t_sent
                else:
                    t_recv = next((x[0] for x in r["recv"] if x[1] == snode and x[2] <= k < x[2] + x[3]), None)
                    add("sent->recv (wire+loop)", t_sent, t_recv)
                t_stab = next((x[0] for x in r["stable"] if x[1 + pos] > k), None)
                t_del = next((x[0] for x in r["deliv"] if x[1] > g), None)
                if rnode != snode:
                    add("recv->stable", t_recv, t_stab)
                else:
                    add("sent->stable (sender)", t_sent, t_stab)
                add("stable->delivered (order wait)", t_stab, t_del)
                add("stamp->delivered", stamp, t_del)
    turns: dict[str, Any] = {}
    for node, r in per.items():
        busy = [t[1] / 1e3 for t in r["turn"]]
        waits = [t[2] / 1e3 for t in r["turn"]]
        fl = [f[1] / 1e3 for f in r["flush"]]
        if busy:
            span = (r["turn"][-1][0] - r["turn"][0][0]) / 1e9
            turns[node] = {
                "turns_per_s": len(busy) / max(span, 1e-9),
                "busy_us_p50": statistics.median(busy),
                "busy_us_p99": sorted(busy)[int(0.99 * (len(busy) - 1))],
                "busy_share": sum(busy) / 1e6 / max(span, 1e-9),
                "select_us_p50": statistics.median(waits),
                "flush_us_p50": statistics.median(fl) if fl else 0,
                "flushes_per_s": len(fl) / max(span, 1e-9),
                "pushes_sent_per_s": len(r["sent"]) / max(span, 1e-9),
                "msgs_per_push": statistics.mean([s[2] for s in r["sent"]]) if r["sent"] else 0,
                "submit_late_us_p50": statistics.median([x[0] / 1e3 for x in r["late"]]) if r["late"] else 0,
            }
    summary = {
        name: {
            "n": len(v),
            "p50": statistics.median(v),
            "p90": sorted(v)[int(0.9 * (len(v) - 1))],
            "p99": sorted(v)[int(0.99 * (len(v) - 1))],
        }
        for name, v in stages.items()
    }
    per_message = {}
    for node, d in docs.items():
        c = d.get("counts")
        if c and c.get("delivered"):
            dn = c["delivered"]
            # Four significant digits: at high rates most counts are thousandths per message.
            per_message[node] = {k: float(f"{v / dn:.4g}") for k, v in c.items() if k != "delivered"}
            per_message[node]["cpu_us"] = round(c["cpu_s"] / dn * 1e6, 1)
            per_message[node]["delivered"] = dn
            if c.get("rings"):  # what one ring cost: its system call (CPU) and the wait it caused (wall)
                per_message[node]["ring_wall_us_each"] = round(c["ring_wall_us"] / c["rings"], 1)
                per_message[node]["ring_cpu_us_each"] = round(c["ring_cpu_us"] / c["rings"], 1)
    return {"stages_ms": summary, "turns": turns, "per_delivered_message": per_message}


def virtual_latency(
    senders: int,
    hop: float,
    period: float = 0.001,
    batch: int = 1,
    rounds: int = 400,
    members: int = 3,
    config: Any = None,
) -> dict[str, float]:
    """The protocol's own waits, without a machine's: ``members`` cores of one shard in one
    process, the first ``senders`` of them sending ``batch`` messages every ``period`` seconds
    (their phases spread evenly over it, as unsynchronised apps' ticks are), every frame
    arriving ``hop`` seconds after it left, processing free, timers firing exactly.

    Latency is in hops (submit to delivery, every member): 2 is the floor of all-to-all
    stability (the push, then the acknowledgements). ``config``: the shard's
    ``MulticastConfig`` (default: the node's). Also pushes per message (each to every
    peer, counted once) and timer firings. Deterministic, so it shows what a change of the
    core's null or push rules does to latency on a machine too loaded to measure it.
    """
    import heapq
    import itertools
    import math
    import struct

    from runtime.core.events import Tick
    from runtime.core.layout import LayoutPolicy, ShardPolicy, compute_layout
    from runtime.core.membership import MembershipConfig
    from runtime.core.node_core import CoreConfig, NodeCore
    from runtime.core.smc import MulticastConfig
    from runtime.core.view import View

    ids = tuple(range(1, members + 1))
    policy = LayoutPolicy.of({"T": ShardPolicy(min_nodes=members, max_nodes=members)})
    view = View(0, ids, tuple(f"n{m}" for m in ids), compute_layout(policy, ids))
    quiet = MembershipConfig(heartbeat_interval=math.inf, suspicion_timeout=math.inf, join_retry=1.0)
    cores = {m: NodeCore(m, f"n{m}", policy, CoreConfig(config or MulticastConfig(), quiet), view=view) for m in ids}
    shard = view.my_shards(1)[0]
    seq = itertools.count()
    events: list[tuple[float, int, str, int, Any]] = []
    for pos in range(senders):
        for k in range(rounds):
            events.append((0.01 + k * period + period * pos / senders, next(seq), "send", ids[pos], None))
    heapq.heapify(events)
    timers: dict[int, float] = {}
    lat: list[float] = []
    counts = {"pushes": 0, "ticks": 0}
    end = 0.01 + rounds * period + 0.2
    while events:
        t, _, kind, node, data = heapq.heappop(events)
        if t > end:
            break
        core = cores[node]
        if kind == "send":
            core.send(shard, [struct.pack("d", t) + b"x" * 92] * batch, t)
        elif kind == "frame":
            core.step(MessageArrived(t, data[0], data[1]))
        else:
            if timers.get(node) != data:
                continue  # superseded by a later request
            del timers[node]
            counts["ticks"] += 1
            core.step(Tick(t))
        ready = core.ready()
        for o in ready.outgoing:
            if type(o.message) is ShardPush:
                counts["pushes"] += 1
            for dst in o.to:
                heapq.heappush(events, (t + hop, next(seq), "frame", dst, (node, o.message)))
        for d in ready.deliveries:
            lat.extend(t - struct.unpack_from("d", p)[0] for p in d.messages.payloads())
        w = ready.wakeup_at
        if w is not None and timers.get(node) != w:
            timers[node] = w
            heapq.heappush(events, (max(w, t), next(seq), "tick", node, w))
    lat.sort()
    sent = senders * rounds * batch
    return {
        "p50_hops": round(lat[len(lat) // 2] / hop, 2),
        "mean_hops": round(statistics.mean(lat) / hop, 2),
        "p90_hops": round(lat[9 * len(lat) // 10] / hop, 2),
        "delivered": len(lat),
        "pushes_per_msg": round(counts["pushes"] / sent, 3),
        "ticks_per_msg": round(counts["ticks"] / sent, 3),
    }


def main(argv: list[str]) -> int:
    import json

    if argv and argv[0] == "--virtual":
        for senders in (1, 3):
            for hop in (0.0001, 0.0003):
                print(f"{senders} sender(s), hop {hop * 1e6:.0f} us:", json.dumps(virtual_latency(senders, hop)))
        return 0
    print(json.dumps(analyse(Path(argv[0])), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
