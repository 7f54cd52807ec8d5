"""Persistent mode, faults and recovery, measured on real node processes.

* ``persistent``: ordered puts on a persistent KV (a version per put, fsync'd at every replica
  before ``persisted()`` returns) next to the same puts on the atomic KV in the same run, and
  etcd with its data on the same disk (so both pay for fsync).
* ``faults``: kill -9 of a member and of the leader under a steady write load: time to the
  new view (from the survivors' logs) and to the first write acknowledged after the kill.
* ``recovery``: a joiner receiving a 100 MB state by transfer (MB/s), and a total restart of a
  3-node cluster from logs holding many versions.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import importlib.util
import math
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import report, security
from bench.actor_clients import run_clients
from bench.ours import (
    ACTOR_COLUMNS,
    CPU_COLUMNS,
    VALUE_SIZE,
    _cpu,
    contact_node,
    cpu_label,
    cpu_per_call,
    cpu_snapshot,
    load_kv_example,
    one_at_a_time,
    pipeline_calls,
    pipelined,
    single_calls,
    system_name,
)
from bench.procs import ROOT, Procs
from bench.registry import Context, Row, experiment
from bench.stats import percentile

CLIENT_PROCESSES = 2  # client processes of the many-clients rows (etcd's row: many connections)
DISK = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())


def load_example(name: str) -> ModuleType:
    import cloudpickle

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    cloudpickle.register_pickle_by_value(mod)
    return mod


def _cluster(nodes: int, cls: type, layout: Any, workdir: str, **overrides: str) -> Any:
    import derecho_actors as da

    # TLS with a throwaway CA in ``workdir/certs``, unless the run is insecure (bench.security).
    return da.local_cluster(
        nodes=nodes,
        types=[cls],
        layout=layout,
        workdir=workdir,
        overrides={"timeouts.suspicion_ms": "3000", **overrides},
        **security.cluster_kwargs(),
    )


def compiled_like_an_install() -> str:
    """Byte-compile the package (and the examples) in place, as ``pip install`` does when it
    installs a release (whatever PYTHONDONTWRITEBYTECODE says), so that node processes import
    from ``.pyc`` files as an installed node does. A checkout run with
    PYTHONDONTWRITEBYTECODE=1 (this repository's container and Dockerfile set it) compiles
    every module at every start instead: about 0.2 s of CPU per node process, which a total
    restart of three nodes on two cores pays before anything else. The ``__pycache__``
    folders are ignored by git; a module edited later is recompiled from its source (the
    ``.pyc`` records the source's size and time). Returns what the rows say about it."""
    import compileall

    ok = all(compileall.compile_dir(ROOT / name, quiet=1) for name in ("derecho_actors", "runtime", "examples"))
    return "from .pyc, as installed" if ok else "compiled at start (byte-compiling failed)"


def _err(exc: BaseException) -> Row:
    return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}


# ------------------------------------------------------------------------- persistent
def plot_persistent(results: dict[str, list[Row]], out: Path) -> list[Path]:
    rows = [r for r in results.get("persistent", []) if "error" not in r]
    pipe = [r for r in rows if r.get("mode") == "pipelined" and isinstance(r.get("writes_per_s"), float)]
    single = [r for r in rows if r.get("mode") == "single" and isinstance(r.get("p50_ms"), float)]
    if not pipe:
        return []
    plt = report._plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    name = lambda r: f"{r['system']}\n{r.get('mode_label', '')}"  # noqa: E731
    report._bars(axes[0], [name(r) for r in pipe], {"writes/s": [r["writes_per_s"] for r in pipe]})
    axes[0].set_title("pipelined puts/s, 3 replicas (100 B)")
    if single:
        report._bars(
            axes[1],
            [name(r) for r in single],
            {"p50": [r["p50_ms"] for r in single], "p99": [r["p99_ms"] for r in single]},
        )
        axes[1].legend(fontsize=8)
    axes[1].set_title("one put at a time: latency (ms)")
    fig.tight_layout()
    path = out / "persistent_vs_etcd.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


@experiment(
    "persistent",
    "Persistent vs atomic puts (3 replicas, fsync on, same disk as etcd)",
    columns=ACTOR_COLUMNS + CPU_COLUMNS + [("persisted_p50_ms", "persisted p50 ms", ".2f")],
    plot=plot_persistent,
)
def persistent(ctx: Context) -> list[Row]:
    import derecho_actors as da

    pkv = load_example("persistent_kv")
    kv = load_kv_example()
    value = b"v" * VALUE_SIZE
    window = ctx.pick(2000, 5000)
    rows: list[Row] = []
    for label, cls, module in (
        ("persistent (fsync)", pkv.PersistentKV, "persistent_kv"),
        ("atomic", kv.KV, "kv_store"),
    ):
        layout = da.Layout({cls: da.ShardPolicy(min_nodes=3, max_nodes=3)})
        workdir = tempfile.mkdtemp(prefix="derecho-bench-persist-", dir=str(DISK))
        base: Row = {"system": system_name(), "mode_label": label, "value_size": VALUE_SIZE, "tls": security.use_tls()}
        try:
            with Procs(Path(workdir)) as procs, _cluster(3, cls, layout, workdir) as cluster:
                for node, proc in cluster.procs.items():
                    procs.adopt(f"node-{node}", proc)
                h = cluster.handle(cls)

                def put(i: int, v: bytes) -> Any:
                    return h.put(f"key-{i % 1000}", v)

                for i in range(200):
                    put(i, value).get(timeout=30)
                n = pipeline_calls(ctx, window)
                last: list[Any] = []

                def put_keep(i: int, v: bytes) -> Any:
                    r = put(i, v)
                    if i == n - 1:
                        last.append(r)
                    return r

                before = cpu_snapshot(cluster)
                rate, cpu = pipelined(put_keep, n, window, value)
                tail = None
                if label.startswith("persistent") and last:
                    t = time.perf_counter()
                    last[0].persisted(timeout=60)  # the CPU figures include making all n durable
                    tail = (time.perf_counter() - t) * 1000
                per_put = cpu_per_call(before, cpu_snapshot(cluster), n, contact_node(cluster))
                pipe = {
                    **base,
                    "case": f"pipelined, {window} outstanding, {label}",
                    "mode": "pipelined",
                    "writes_per_s": rate,
                    "client_cpu": cpu,
                    "window": window,
                    "last_persisted_after_ms": tail,
                    **per_put,
                }
                # As etcd's row uses many connections: several client processes at once.
                clients = CLIENT_PROCESSES
                try:
                    many = run_clients(
                        procs, cluster, module, cls.__name__, clients, n // clients, window, VALUE_SIZE, Path(workdir)
                    )
                    rows.append(
                        {
                            **base,
                            **many,
                            "case": f"pipelined, {clients} client processes x {window} outstanding, {label}",
                            "mode": "pipelined_clients",
                        }
                    )
                    ctx.say(f"  {label}: {many['writes_per_s']:,.0f} puts/s from {clients} client processes")
                except Exception as exc:
                    rows.append({**base, "case": f"{clients} client processes, {label}", **_err(exc)})
                    ctx.note(f"{label}, {clients} client processes: {rows[-1]['error']}")
                lat = one_at_a_time(put, single_calls(ctx), value)
                single = {
                    **base,
                    "case": f"one at a time, {label}",
                    "mode": "single",
                    "p50_ms": percentile(lat, 50),
                    "p99_ms": percentile(lat, 99),
                }
                if label.startswith("persistent"):
                    plat = []
                    for i in range(single_calls(ctx) // 2):
                        t = time.perf_counter()
                        put(i, value).persisted(timeout=30)
                        plat.append((time.perf_counter() - t) * 1000)
                    single["persisted_p50_ms"] = percentile(plat, 50)
                    single["persisted_p99_ms"] = percentile(plat, 99)
                rows += [pipe, single]
                ctx.say(
                    f"  {label}: {rate:,.0f} puts/s pipelined (CPU µs per put: {cpu_label(per_put)}); "
                    f"one at a time p50 {single['p50_ms']:.2f} ms"
                    + (
                        f", until persisted p50 {single['persisted_p50_ms']:.2f} ms"
                        if "persisted_p50_ms" in single
                        else ""
                    )
                )
        except Exception as exc:
            rows.append({**base, "case": label, **_err(exc)})
            ctx.note(f"{label}: {rows[-1]['error']}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    rows += _etcd_on_disk(ctx)
    theirs = next(
        (r for r in rows if str(r.get("system", "")).startswith("etcd") and r.get("mode") == "pipelined"), None
    )
    for mode, how in (("pipelined", "one client"), ("pipelined_clients", f"{CLIENT_PROCESSES} client processes")):
        ours = next(
            (r for r in rows if r.get("mode") == mode and str(r.get("mode_label", "")).startswith("persistent")),
            None,
        )
        if ours and theirs and "writes_per_s" in ours and "writes_per_s" in theirs:
            ctx.note(
                f"persistent puts/s, {how}: ours {ours['writes_per_s']:,.0f} vs etcd on disk "
                f"{theirs['writes_per_s']:,.0f} (ours / etcd = {ours['writes_per_s'] / theirs['writes_per_s']:.2f})"
            )
    return rows


def _etcd_on_disk(ctx: Context) -> list[Row]:
    from bench.peers import etcd_peer

    binary = etcd_peer.etcd_binary()
    if binary is None:
        ctx.note("etcd not found on PATH; its on-disk row is skipped (apt-get install etcd-server)")
        return []
    system = f"etcd {etcd_peer.etcd_version(binary)} (disk)"
    value_b64 = base64.b64encode(b"v" * VALUE_SIZE).decode()
    conns = ctx.pick(256, 1000)
    base = Path(tempfile.mkdtemp(prefix="derecho-bench-etcd-disk-", dir=str(DISK)))
    try:
        with Procs(base) as procs:
            cluster = etcd_peer.EtcdCluster(binary, procs, base)
            asyncio.run(etcd_peer._single(cluster.leader_port(), 100, value_b64))
            n = pipeline_calls(ctx, conns)
            cpu0, t0 = _cpu(), time.perf_counter()
            done, errors = asyncio.run(etcd_peer._pipelined(cluster.client_ports, n, conns, value_b64))
            from bench.stats import steady_rate

            pipe = {
                "system": system,
                "case": f"pipelined, {conns} connections, disk (fsync)",
                "mode": "pipelined",
                "writes_per_s": steady_rate(done, list(range(1, len(done) + 1)), n),
                "client_cpu": (_cpu() - cpu0) / (time.perf_counter() - t0),
                "errors": errors,
            }
            lat = asyncio.run(etcd_peer._single(cluster.leader_port(), single_calls(ctx), value_b64))
            pipe["mode_label"] = "disk (fsync)"
            single = {
                "system": system,
                "case": "one at a time, disk (fsync)",
                "mode": "single",
                "mode_label": "disk (fsync)",
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
            }
            ctx.say(
                f"  etcd on disk: {pipe['writes_per_s']:,.0f} puts/s pipelined; one at a time p50 {single['p50_ms']:.2f} ms"
            )
            return [pipe, single]
    except Exception as exc:
        ctx.note(f"etcd on disk: {_err(exc)['error']}")
        return [{"system": system, "case": "etcd on disk", **_err(exc)}]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ faults
_VIEW_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) node(\d+) INFO derecho\.node: view (\d+) installed: members \[([\d, ]*)\]"
)


def _view_times(workdir: Path, node: int) -> list[tuple[float, int, list[int]]]:
    out = []
    for line in (workdir / f"node-{node}.log").read_text().splitlines():
        m = _VIEW_LINE.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, int(m.group(3)), [int(x) for x in m.group(4).split(",") if x.strip()]))
    return out


@experiment(
    "faults",
    "kill -9 under a write load: time to the new view and to the first acknowledged write",
    columns=[
        ("case", "case", ""),
        ("to_view_ms", "to new view ms", ".0f"),
        ("to_write_ms", "to next write ms", ".0f"),
        ("repeats", "runs", ""),
    ],
)
def faults(ctx: Context) -> list[Row]:
    import derecho_actors as da

    kv = load_kv_example()
    layout = da.Layout({kv.KV: da.ShardPolicy(min_nodes=2, max_nodes=4)})
    rows = []
    for case, victim in (("member (node 3)", 3), ("leader (node 1)", 1)):
        views, writes = [], []
        for _ in range(ctx.pick(2, 5)):
            workdir = tempfile.mkdtemp(prefix="derecho-bench-faults-")
            try:
                with (
                    Procs(Path(workdir)) as procs,
                    da.local_cluster(
                        nodes=4,
                        types=[kv.KV],
                        layout=layout,
                        workdir=workdir,
                        overrides={"timeouts.heartbeat_ms": "50", "timeouts.suspicion_ms": "500"},
                        **security.cluster_kwargs(),
                    ) as cluster,
                ):
                    for node, proc in cluster.procs.items():
                        procs.adopt(f"node-{node}", proc)
                    h = cluster.handle(kv.KV)
                    stop = threading.Event()
                    acked: list[float] = []

                    def writer() -> None:
                        i = 0
                        while not stop.is_set():
                            try:
                                h.put(f"k{i}", b"v").get(timeout=10)
                                acked.append(time.time())
                            except da.DerechoError:
                                pass
                            i += 1

                    t = threading.Thread(target=writer)
                    t.start()
                    time.sleep(0.5)
                    killed_at = time.time()
                    cluster.kill(victim)
                    time.sleep(1.5)
                    stop.set()
                    t.join(15)
                    survivor = 2
                    after = [
                        vt
                        for vt, vid, members in _view_times(Path(workdir), survivor)
                        if vt >= killed_at - 0.002 and victim not in members
                    ]
                    if after:
                        views.append((after[0] - killed_at) * 1000)
                    nxt = [a for a in acked if a > killed_at]
                    if nxt:
                        writes.append((nxt[0] - killed_at) * 1000)
            except Exception as exc:
                ctx.note(f"{case}: {_err(exc)['error']}")
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        row = {
            "case": case,
            "repeats": len(views),
            "to_view_ms": percentile(views, 50) if views else math.nan,
            "to_write_ms": percentile(writes, 50) if writes else math.nan,
            "to_view_all_ms": views,
            "to_write_all_ms": writes,
        }
        rows.append(row)
        ctx.say(
            f"  kill -9 {case}: new view after {row['to_view_ms']:.0f} ms, next write after {row['to_write_ms']:.0f} ms (median)"
        )
    return rows


# ---------------------------------------------------------------------------- recovery
@experiment(
    "recovery",
    "State transfer to a joiner and total restart from logs",
    columns=[
        ("case", "case", ""),
        ("mb", "MB", ",.1f"),
        ("seconds", "s", ".2f"),
        ("mb_per_s", "MB/s", ",.0f"),
        ("versions", "versions", ","),
        ("bytecode", "node modules", ""),
    ],
)
def recovery(ctx: Context) -> list[Row]:
    import derecho_actors as da

    pkv = load_example("persistent_kv")
    rows: list[Row] = []
    # 1. A joiner gets a large state: 100 MB of values in the persistent map (the log part).
    size_mb = ctx.pick(40, 100)
    workdir = tempfile.mkdtemp(prefix="derecho-bench-transfer-", dir=str(DISK))
    try:
        layout = da.Layout({pkv.PersistentKV: da.ShardPolicy(min_nodes=2, max_nodes=3)})
        with Procs(Path(workdir)) as procs, _cluster(3, pkv.PersistentKV, layout, workdir) as cluster:
            for node, proc in cluster.procs.items():
                procs.adopt(f"node-{node}", proc)
            cluster.kill(3)
            cluster.wait_members({1, 2})
            shutil.rmtree(cluster.data_dir(3), ignore_errors=True)
            h = cluster.handle(pkv.PersistentKV)
            chunk = b"x" * (512 * 1024)
            pending = [h.put(f"blob-{i}", chunk) for i in range(size_mb * 2)]
            pending[-1].persisted(timeout=120)
            t0 = time.perf_counter()
            cluster.restart([3])
            h.put("after", b"1").persisted(timeout=120)  # node 3's log is in: the frontier moved
            wall = time.perf_counter() - t0
            # The sender logs the transfer when its last chunk is acknowledged, which can come
            # after the joiner already serves: wait for that line a little.
            sent: list[tuple[str, str]] = []
            # (Node 3 also got a small transfer when the cluster first formed: take the largest.)
            deadline = time.monotonic() + 15
            big: list[tuple[float, float]] = []
            while not big and time.monotonic() < deadline:
                sent = []
                for node in (1, 2):
                    sent += re.findall(
                        r"state of \S+ sent to node 3: ([\d.]+) MB in ([\d.]+) s",
                        (Path(workdir) / f"node-{node}.log").read_text(),
                    )
                big = [(float(m), float(s)) for m, s in sent if float(m) >= size_mb / 2]
                if not big:
                    time.sleep(0.1)
            if not big:
                ctx.note("state transfer: no 'state of ... sent to node 3' line for the big state in the senders' logs")
            mb, secs = max(big) if big else (math.nan, math.nan)
            rows.append(
                {
                    "case": "joiner state transfer (stream)",
                    "mb": mb,
                    "seconds": secs,
                    "mb_per_s": mb / secs if secs else math.nan,
                }
            )
            rows.append({"case": "joiner: restart to first persisted write", "mb": mb, "seconds": wall})
            ctx.say(
                f"  state transfer: {mb:.1f} MB in {secs:.2f} s ({mb / secs if secs else math.nan:,.0f} MB/s); joiner serving after {wall:.2f} s"
            )
    except Exception as exc:
        rows.append({"case": "state transfer", **_err(exc)})
        ctx.note(f"state transfer: {rows[-1]['error']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # 2. Total restart of 3 nodes from logs with many versions, the nodes importing the
    # package from bytecode as an installed release does (see compiled_like_an_install).
    bytecode = compiled_like_an_install()
    versions = ctx.pick(20_000, 100_000)
    workdir = tempfile.mkdtemp(prefix="derecho-bench-restart-", dir=str(DISK))
    try:
        layout = da.Layout({pkv.PersistentKV: da.ShardPolicy(min_nodes=3, max_nodes=3)})
        with (
            Procs(Path(workdir)) as procs,
            _cluster(3, pkv.PersistentKV, layout, workdir, **{"persistence.restart_quorum_wait_ms": "100"}) as cluster,
        ):
            for node, proc in cluster.procs.items():
                procs.adopt(f"node-{node}", proc)
            h = cluster.handle(pkv.PersistentKV)
            last = None
            for start in range(0, versions, 5000):
                batch = [h.put(f"k{i % 1000}", b"v" * VALUE_SIZE) for i in range(start, min(versions, start + 5000))]
                last = batch[-1]
            assert last is not None
            v = last.persisted(timeout=120)
            cluster.kill_all()
            t0 = time.perf_counter()
            cluster.restart(timeout=300)
            to_view = time.perf_counter() - t0
            for node, proc in cluster.procs.items():
                procs.adopt(f"node-{node}-restarted", proc)
            h = cluster.handle(pkv.PersistentKV)
            h.put("marker", b"1").persisted(timeout=120)
            to_write = time.perf_counter() - t0
            ok = h.get_at(f"k{(versions - 1) % 1000}", v, node=2).get(timeout=30)[2] == b"v" * VALUE_SIZE
            rows.append(
                {
                    "case": "total restart: to the restart view",
                    "seconds": to_view,
                    "versions": versions,
                    "bytecode": bytecode,
                }
            )
            rows.append(
                {
                    "case": "total restart: to the first persisted write",
                    "seconds": to_write,
                    "versions": versions,
                    "last_version_readable": ok,
                    "bytecode": bytecode,
                }
            )
            ctx.say(
                f"  total restart with {versions:,} versions: view after {to_view:.2f} s, first persisted write after "
                f"{to_write:.2f} s (node modules {bytecode})"
            )
    except Exception as exc:
        rows.append({"case": "total restart", **_err(exc)})
        ctx.note(f"total restart: {rows[-1]['error']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows
