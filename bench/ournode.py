"""One derecho-actors node process for the benchmarks: ``python -m bench.ournode ...``.

It runs the real node driver (``runtime.drivers.node.NodeDriver``, TCP on loopback) with a
bench-local application instead of the built-in ``LoadApp``, because the bench needs what
``LoadApp`` does not give: send timestamps inside payloads, paced sending, and a compact record
of progress instead of a text log line per message.

The app sends ``--send`` messages of ``--size`` bytes into its shard once a view has
``--wait-members`` members, either as fast as the window allows (the driver's queue is kept
topped up by one batch) or at ``--rate`` messages per second. The first 8 bytes of every payload
are the sender's ``time.time_ns()`` at submit (messages under 8 bytes carry no stamp). Every
delivery batch appends ``(now, delivered so far)`` to a timeline and, with ``--latency``, the
stamps of its messages and its time (``bench.ourgroup.latencies`` turns them into one
send->delivery latency per message). Paced messages are stamped when each fell due (to within
``STAMP_STEP``), not when their tick came. Once ``--expect`` messages were delivered, it writes
all of it (msgpack) to ``--out`` and keeps serving the group until the bench kills it.
``--trace PATH`` also records where each message's time goes (``bench.latency_trace``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import struct
import sys
import time
from array import array
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgpack

from runtime.config import load_config, parse_override
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.drivers.node import AppHooks, NodeDriver

STAMP = struct.Struct("<q")


PACE_TICK = 0.0005  # seconds between paced submits, at least
STAMP_STEP = 0.00005  # paced messages due within this many seconds share one stamp (the earliest)


_STAMP_BYTES = itemgetter(slice(0, STAMP.size))


def _payloads_of(msgs: Any) -> Any:
    """The payloads of a delivery's messages, in order (a DeliveredBatch lays out only them)."""
    payloads = getattr(msgs, "payloads", None)
    return payloads() if payloads is not None else [m[3] for m in msgs]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class BenchApp:
    def __init__(
        self,
        node_id: int,
        count: int,
        size: int,
        rate: float,
        wait_members: int,
        expect: int,
        out: Path,
        latency: bool,
        batch: int,
    ) -> None:
        self.node_id = node_id
        self.count = count
        self.size = size
        self.rate = rate
        self.wait_members = wait_members
        self.expect = expect
        self.out = out
        self.latency = latency
        self.batch = max(1, batch)
        self.pad = bytes(max(0, size - STAMP.size))
        self.driver: NodeDriver | None = None
        self.shard: ShardId | None = None
        self.go = False
        self.sent = 0
        self.delivered = 0
        self.t_go = 0
        self.cpu_go = 0.0
        self.t_first_send = 0
        self.timeline_t = array("q")
        self.timeline_n = array("q")
        self.stamps = array("q")  # the latency stamps of the delivered messages, in order
        self.stamp_ends = array("q")  # per delivery batch: len(stamps) after it
        self.stamp_at = array("q")  # per delivery batch: when it was delivered
        self.written = False
        self._pacing = False
        self.trace_path: Path | None = None  # --trace: where the Tracer's records go
        self.tracer: Any = None

    def hooks(self) -> AppHooks:
        return AppHooks(on_deliver=self.on_deliver, on_view=self.on_view, on_window_open=self.on_window_open)

    def _payloads(self, n: int, stamp_ns: int | None = None) -> list[bytes]:
        """``n`` payloads stamped ``stamp_ns`` (default: now): one stamp per submit, since they
        enter together."""
        if self.size < STAMP.size:
            return [b"\x00" * self.size] * n
        p = STAMP.pack(time.time_ns() if stamp_ns is None else stamp_ns) + self.pad
        return [p] * n

    def on_view(self, view: View) -> None:
        mine = view.my_shards(self.node_id)
        self.shard = mine[0] if mine else None
        if not self.go and view.n >= self.wait_members and self.shard is not None:
            self.go = True
            self.t_go = time.time_ns()
            self.cpu_go = _cpu()
            if self.trace_path is not None and self.driver is not None:
                from bench.latency_trace import Tracer

                self.tracer = Tracer(self.node_id)
                self.tracer.install(self.driver, self.shard)
        if self.rate > 0:
            if self.go and not self._pacing and self.count > 0:
                self._pacing = True
                self._t0 = time.monotonic()
                self._pace()
        else:
            self._pump()

    def on_window_open(self, shard: ShardId) -> None:
        self._pump()

    def _submit(self, n: int, stamp_ns: int | None = None) -> None:
        assert self.driver is not None and self.shard is not None
        if not self.t_first_send:
            self.t_first_send = time.time_ns()
        if self.tracer is not None:
            self.tracer.on_submit(time.time_ns() if stamp_ns is None else stamp_ns, self.sent, n)
        self.driver.send_ordered(self.shard, self._payloads(n, stamp_ns))
        self.sent += n

    def _pump(self) -> None:
        """As fast as the window allows: keep one batch beyond what the window took queued."""
        if self.rate > 0 or not self.go or self.driver is None or self.shard is None or self.sent >= self.count:
            return
        queued = self.driver.queued(self.shard)
        while self.sent < self.count and queued < self.batch:
            n = min(self.batch, self.count - self.sent)
            self._submit(n)
            queued += n

    def _due_payloads(self, n: int, now: float, wall_ns: int) -> list[bytes]:
        """The next ``n`` paced payloads, each stamped when it fell due (not now: the wait
        for the tick counts, message by message). Messages due within one ``STAMP_STEP``
        share a payload stamped at the earliest of them: at most that much is over-counted,
        and a payload is not built per message. One comprehension per submit: this runs in
        the member's own process, so what it costs is taken from the node it measures (a
        loop with a few calls per ``STAMP_STEP`` was ~8% of a member's CPU at half load)."""
        if self.size < STAMP.size:
            return [b"\x00" * self.size] * n
        per = max(1, int(self.rate * STAMP_STEP))
        late0 = (now - self._t0 - self.sent / self.rate) * 1e9  # ns the first is overdue
        step = per / self.rate * 1e9  # ns between the first messages of two stamps
        chunks = range((n + per - 1) // per)
        due_ns = [wall_ns - int(late0 - i * step) if late0 > i * step else wall_ns for i in chunks]
        stamps = list(map(bytes.__add__, map(STAMP.pack, due_ns), repeat(self.pad)))
        if per == 1:
            return stamps
        out = [p for p in stamps for _ in range(per)]
        del out[n:]
        return out

    def _pace(self) -> None:
        """``rate`` messages per second, on schedule (late ticks catch up)."""
        if self.driver is None or self.shard is None or self.sent >= self.count:
            return
        now = time.monotonic()
        due = min(self.count, int((now - self._t0) * self.rate) + 1) - self.sent
        if due > 0:
            wall = time.time_ns()
            payloads = self._due_payloads(due, now, wall)
            assert self.driver is not None and self.shard is not None
            if not self.t_first_send:
                self.t_first_send = wall
            if self.tracer is not None:
                self.tracer.on_submit(
                    STAMP.unpack_from(payloads[0])[0] if self.size >= STAMP.size else wall, self.sent, due
                )
            self.driver.send_ordered(self.shard, payloads)
            self.sent += due
        if self.sent < self.count:
            # At most one tick per PACE_TICK: at high rates what fell due meanwhile goes in one
            # submit, as an application's batching would (a timer per message would cost more
            # than the messages and measure the timer).
            next_at = self._t0 + self.sent / self.rate
            assert self.driver.loop is not None
            self.driver.loop.call_later(max(PACE_TICK, next_at - time.monotonic()), self._pace)

    def on_deliver(self, d: Delivery) -> None:
        now = time.time_ns()
        msgs = d.messages
        if self.latency and self.size >= STAMP.size:
            # C-level passes only (no Python call per message): the measuring must not cost
            # the members more CPU than what it measures (it lowered the maximum rate the
            # latency experiment's heavy row finds by a third). The stamps are kept as they
            # are, with the delivery time of their batch; the bench's parent subtracts
            # (bench.ourgroup.latencies).
            self.stamps.frombytes(b"".join(map(_STAMP_BYTES, _payloads_of(msgs))))
            self.stamp_ends.append(len(self.stamps))
            self.stamp_at.append(now)
        self.delivered += len(msgs)
        if self.tracer is not None:
            self.tracer.on_deliver(d.frontier, len(d.messages))
        self.timeline_t.append(now)
        self.timeline_n.append(self.delivered)
        if self.delivered >= self.expect and not self.written:
            self._write()
        self._pump()

    def _write(self) -> None:
        self.written = True
        doc = {
            "node": self.node_id,
            "sent": self.sent,
            "delivered": self.delivered,
            "t_go": self.t_go,
            "t_first_send": self.t_first_send,
            "t_done": time.time_ns(),
            "cpu": _cpu() - self.cpu_go,
            "timeline_t": self.timeline_t.tobytes(),
            "timeline_n": self.timeline_n.tobytes(),
            # The latencies are worked out by the bench's parent (bench.ourgroup.latencies), not
            # here: a pass over every message would stall this member's loop.
            "stamps": self.stamps.tobytes(),
            "stamp_ends": self.stamp_ends.tobytes(),
            "stamp_at": self.stamp_at.tobytes(),
        }
        if self.tracer is not None and self.trace_path is not None:
            self.tracer.write(self.trace_path)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(doc))
        os.replace(tmp, self.out)  # the bench sees the whole file or none


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ournode")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--rate", type=float, default=0.0, help="messages/s; 0: as fast as the window allows")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--wait-members", type=int, default=1)
    p.add_argument("--expect", type=int, required=True, help="deliveries after which the results are written")
    p.add_argument("--latency", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--trace", default="", help="record where each message's time goes (bench.latency_trace)")
    a = p.parse_args(argv)
    overrides = dict(parse_override(text) for text in a.set)
    config = load_config(None, overrides, environ={})
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s node{config.node.id} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("derecho.node").setLevel(logging.INFO)  # view installs, for the logs
    app = BenchApp(
        config.node.id,
        a.send,
        a.size,
        a.rate,
        a.wait_members,
        a.expect,
        Path(a.out),
        a.latency,
        a.batch,
    )
    if a.trace:
        app.trace_path = Path(a.trace)
    driver = NodeDriver(config, app.hooks())
    app.driver = driver
    reason = asyncio.run(driver.run())
    print(f"node stopped: {reason}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
