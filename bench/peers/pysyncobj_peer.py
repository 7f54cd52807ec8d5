"""PySyncObj (Raft in pure Python), measured like our actor API.

Three processes on loopback (``python -m bench.peers.pysyncobj_peer node ...``), each a
``SyncObj`` holding a replicated dict whose ``@replicated set(key, value)`` is the write. There
is no external client protocol in PySyncObj: an application calls its local replica, which
forwards to the leader. To give it its best, the load runs *in the leader's process* (no
forwarding hop): each process waits for a leader, and the one that is leader runs the load and
writes its results; the others serve until the bench kills them. In-memory log (no journal
file, no dump file), no dynamic membership, log compaction not reached within a run.

* pipelined: ``set(..., callback=cb)`` with up to W calls outstanding, batched append
  entries (``appendEntriesUseBatch=True``, the throughput setting its docs recommend);
  steady-state completions/s between 10% and 90% of the calls. W takes the same levels as for
  our actor API (``bench.ours.pipeline_windows``), each on a freshly started cluster (its
  in-memory log grows and it slows down as it does), and the best is reported (PySyncObj's
  batches grow with W, so it gains from large W).
* one at a time: ``set(..., sync=True)`` in a loop with ``appendEntriesUseBatch=False`` (the
  docs' setting for single-request speed: no waiting for a batch to fill); p50/p99.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import report
from bench.ours import ACTOR_COLUMNS, VALUE_SIZE, best_of, pipeline_calls, pipeline_windows, single_calls
from bench.procs import HOST, Procs, free_ports
from bench.registry import Context, Row, experiment
from bench.stats import percentile, steady_rate


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def node_main(self_addr: str, partners: list[str], out: Path, mode: str, n: int, windows: list[int], size: int) -> int:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Store(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(
                appendEntriesUseBatch=(mode == "pipelined"),
                dynamicMembershipChange=False,
                commandsQueueSize=max(100_000, 2 * max(windows)),
                connectionRetryTime=0.5,  # start-up only: peers started a moment later are found sooner
            )
            super().__init__(self_addr, partners, conf)
            self.data: dict[str, bytes] = {}

        @replicated
        def set(self, key: str, value: bytes) -> int:
            self.data[key] = value
            return len(self.data)

    obj = Store()
    deadline = time.monotonic() + 60
    while not (obj._getLeader() is not None and obj.isReady()):
        if time.monotonic() > deadline:
            print("no leader within 60 s", file=sys.stderr)
            return 2
        time.sleep(0.05)
    time.sleep(0.5)  # let the election settle (a follower may still be catching up)
    if not obj._isLeader():
        while True:  # a follower: serve until killed
            time.sleep(1)
    value = b"v" * size
    if mode == "pipelined":  # warm-up; with batching a sync call waits for a tick, so go async
        warm = threading.Semaphore(0)
        for i in range(1000):
            obj.set(f"warm-{i}", value, callback=lambda res, err: warm.release())
        for _ in range(1000):
            warm.acquire(timeout=30)
    else:
        for i in range(100):
            obj.set(f"warm-{i}", value, sync=True, timeout=30)
    result: dict = {"leader": self_addr, "mode": mode, "runs": []}
    if mode == "pipelined":
        for window in windows:
            cpu0, t0 = _cpu(), time.perf_counter()
            slots = threading.Semaphore(window)
            done: list[float] = []
            errors = [0]
            finished = threading.Event()

            def callback(res: object, err: object) -> None:
                if err != FAIL_REASON.SUCCESS:
                    errors[0] += 1
                done.append(time.perf_counter())
                slots.release()
                if len(done) == n:
                    finished.set()

            for i in range(n):
                slots.acquire()
                obj.set(f"key-{window}-{i}", value, callback=callback)
            run = {"window": window, "calls": n}
            if not finished.wait(120):
                run["error"] = f"only {len(done)} of {n} calls completed"
            run.update(
                writes_per_s=steady_rate(done, list(range(1, len(done) + 1)), n),
                errors=errors[0],
                client_cpu=(_cpu() - cpu0) / (time.perf_counter() - t0),
            )
            result["runs"].append(run)
    else:
        cpu0, t0 = _cpu(), time.perf_counter()
        lat = []
        for i in range(n):
            t = time.perf_counter()
            obj.set(f"key-{i}", value, sync=True, timeout=30)
            lat.append((time.perf_counter() - t) * 1000)
        lat = lat[n // 10 :]
        result.update(
            p50_ms=percentile(lat, 50),
            p99_ms=percentile(lat, 99),
            writes_per_s=1000 / (sum(lat) / len(lat)),
            calls=n,
            client_cpu=(_cpu() - cpu0) / (time.perf_counter() - t0),
        )
    # The load runs in the leader, so "client CPU" is the replica's and the caller's together.
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out)
    while True:
        time.sleep(1)


def run_cluster(mode: str, n: int, windows: list[int], size: int, limit: float = 300) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="derecho-bench-pysyncobj-"))
    try:
        addrs = [f"{HOST}:{p}" for p in free_ports(3)]
        with Procs(workdir) as procs:
            outs = []
            for i, me in enumerate(addrs):
                out = workdir / f"result-{i}.json"
                outs.append(out)
                partners = ",".join(a for a in addrs if a != me)
                procs.python(
                    f"pysyncobj-{i}",
                    "bench.peers.pysyncobj_peer",
                    "node",
                    me,
                    partners,
                    str(out),
                    mode,
                    str(n),
                    ",".join(map(str, windows)),
                    str(size),
                )
            procs.wait_until(lambda: any(o.exists() for o in outs), limit, f"PySyncObj {mode} run", interval=0.1)
            return json.loads(next(o for o in outs if o.exists()).read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@experiment(
    "pysyncobj",
    "PySyncObj 0.3 (Raft, pure Python): replicated dict set, 3 processes, load in the leader",
    columns=ACTOR_COLUMNS,
    plot=report.plot_comparison,
)
def pysyncobj(ctx: Context) -> list[Row]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("pysyncobj")
    except PackageNotFoundError:
        ctx.note("pysyncobj is not installed (pip install pysyncobj, or pip install '.[bench]'); skipped")
        return []
    system = f"PySyncObj {ver}"
    rows = []
    pipe: Row = {
        "system": system,
        "case": "pipelined",
        "case_suffix": ", 3 nodes",
        "mode": "pipelined",
        "value_size": VALUE_SIZE,
    }
    runs: list[Row] = []
    for window in pipeline_windows(ctx):  # a fresh cluster for each level (its log grows)
        try:
            runs += run_cluster("pipelined", pipeline_calls(ctx, window), [window], VALUE_SIZE)["runs"]
        except Exception as exc:
            runs.append(
                {
                    "window": window,
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200],
                }
            )
    best_of(pipe, runs)
    if "error" in pipe:
        ctx.note(f"pipelined: {pipe['error']}")
    rows.append(pipe)
    ctx.say(f"  PySyncObj {pipe['case']}: {pipe.get('writes_per_s', float('nan')):,.0f} writes/s")
    single: Row = {"system": system, "case": "one at a time, 3 nodes", "mode": "single", "value_size": VALUE_SIZE}
    try:
        res = run_cluster("single", single_calls(ctx), [1], VALUE_SIZE)
        single.update({k: v for k, v in res.items() if k != "runs"})
    except Exception as exc:
        single["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        ctx.note(f"one at a time: {single['error']}")
    rows.append(single)
    ctx.say(
        f"  PySyncObj one at a time: p50 {single.get('p50_ms', float('nan')):.2f} ms, "
        f"p99 {single.get('p99_ms', float('nan')):.2f} ms"
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        a = sys.argv[2:]
        sys.exit(
            node_main(
                a[0],
                [p for p in a[1].split(",") if p],
                Path(a[2]),
                a[3],
                int(a[4]),
                [int(w) for w in a[5].split(",")],
                int(a[6]),
            )
        )
    print("usage: python -m bench.peers.pysyncobj_peer node SELF PARTNERS OUT MODE N WINDOWS SIZE", file=sys.stderr)
    sys.exit(2)
