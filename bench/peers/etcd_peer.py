"""etcd (Raft in Go), measured like our actor API: a 3-member cluster on loopback.

The bench looks for the ``etcd`` binary (Debian: ``apt-get install etcd-server``) and skips with
a note when it is absent. The members run in a fresh temporary folder with client and peer ports
chosen at run time on 127.0.0.1; everything is killed and removed at the end.

Fairness choices:

* Data directories live on tmpfs (``/dev/shm``) when there is one. etcd fsyncs its WAL on every
  commit; on tmpfs an fsync costs nothing, which matches the in-memory systems it is compared
  with (neither derecho-actors here nor PySyncObj writes to disk). On a real disk the fsync would
  dominate and say more about the disk than about etcd.
* The client speaks the v3 JSON gateway (``POST /v3/kv/put``, base64 key and value) over
  persistent HTTP/1.1 connections from asyncio, with hand-built requests. The other option,
  ``etcdctl put``, starts a Go process per write (tens of ms each) and would measure process
  start-up, not etcd; and there is no gRPC library in this environment. The gateway costs etcd a
  JSON->gRPC translation per request, which is the price of talking to it without gRPC.
* Pipelined: many connections with one request in flight each (HTTP/1.1 has no
  multiplexing), spread over all three members (followers forward proposals to the leader, and
  the gateway's JSON work is spread over the three processes; this measured no slower than
  sending everything to the leader). Several connection counts are tried, each on a freshly
  started cluster, and the best is reported; beyond ~1000 connections nothing improved. One at a time: a single connection to
  the leader.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench import report
from bench.ours import ACTOR_COLUMNS, VALUE_SIZE, best_of, pipeline_calls, single_calls
from bench.procs import HOST, Procs, free_ports
from bench.registry import Context, Row, experiment
from bench.stats import percentile, steady_rate


def connection_levels(ctx: Context) -> list[int]:
    """Outstanding requests (one per connection) tried in the pipelined run."""
    return ctx.pick([256, 1000], [64, 256, 1000])


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _post(port: int, path: str, body: dict, timeout: float = 2.0) -> dict:
    req = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    # No proxy may route loopback traffic elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _get(port: int, path: str, timeout: float = 2.0) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


class EtcdCluster:
    def __init__(self, binary: str, procs: Procs, datadir: Path) -> None:
        ports = free_ports(6)
        self.client_ports, peer_ports = ports[:3], ports[3:]
        names = [f"m{i}" for i in range(3)]
        initial = ",".join(f"{n}=http://{HOST}:{p}" for n, p in zip(names, peer_ports))
        token = f"bench-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        for name, cport, pport in zip(names, self.client_ports, peer_ports):
            procs.spawn(
                f"etcd-{name}",
                [
                    binary,
                    "--name",
                    name,
                    "--data-dir",
                    str(datadir / name),
                    "--listen-client-urls",
                    f"http://{HOST}:{cport}",
                    "--advertise-client-urls",
                    f"http://{HOST}:{cport}",
                    "--listen-peer-urls",
                    f"http://{HOST}:{pport}",
                    "--initial-advertise-peer-urls",
                    f"http://{HOST}:{pport}",
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    token,
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ],
                env=env,
            )
        procs.wait_until(
            lambda: all(_get(p, "/health").get("health") == "true" for p in self.client_ports),
            60,
            "etcd's three members to be healthy",
            interval=0.2,
        )

    def leader_port(self) -> int:
        for p in self.client_ports:
            st = _post(p, "/v3/maintenance/status", {})
            if st.get("leader") and st["leader"] == st.get("header", {}).get("member_id"):
                return p
        return self.client_ports[0]


def _put_request(port: int, key: str, value_b64: str) -> bytes:
    body = ('{"key":"%s","value":"%s"}' % (base64.b64encode(key.encode()).decode(), value_b64)).encode()
    return (
        b"POST /v3/kv/put HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (HOST.encode(), port, len(body))
    ) + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _pipelined(ports: list[int], n: int, conns: int, value_b64: str) -> tuple[list[float], int]:
    done: list[float] = []
    errors = [0]
    next_key = iter(range(n))

    async def worker(port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for i in next_key:
                writer.write(_put_request(port, f"key-{i}", value_b64))
                if await _read_response(reader) != 200:
                    errors[0] += 1
                done.append(time.perf_counter())
        finally:
            writer.close()

    await asyncio.gather(*(worker(ports[c % len(ports)]) for c in range(conns)))
    return done, errors[0]


async def _single(port: int, n: int, value_b64: str) -> list[float]:
    reader, writer = await asyncio.open_connection(HOST, port)
    lat = []
    try:
        for i in range(n):
            t = time.perf_counter()
            writer.write(_put_request(port, f"one-{i}", value_b64))
            status = await _read_response(reader)
            if status != 200:
                raise RuntimeError(f"etcd answered HTTP {status}")
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        writer.close()
    return lat[n // 10 :]


def etcd_binary() -> str | None:
    return shutil.which("etcd") or next(
        (p for p in ("/usr/bin/etcd", "/usr/local/bin/etcd") if os.access(p, os.X_OK)), None
    )


def etcd_version(binary: str) -> str:
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split("\n")[0].split(":")[-1].strip()
    except Exception:
        return "?"


@experiment(
    "etcd",
    "etcd (Raft, Go): put via the v3 JSON gateway, 3 members on tmpfs",
    columns=ACTOR_COLUMNS,
    plot=report.plot_comparison,
)
def etcd(ctx: Context) -> list[Row]:
    binary = etcd_binary()
    if binary is None:
        ctx.note("etcd not found on PATH; skipped (apt-get install etcd-server)")
        return []
    system = f"etcd {etcd_version(binary)}"
    value_b64 = base64.b64encode(b"v" * VALUE_SIZE).decode()
    n_single = single_calls(ctx)

    def measure(fn: Any) -> Row:
        """Run ``fn(cluster)`` on a freshly started 3-member cluster, then remove it."""
        shm = Path("/dev/shm")
        base = Path(
            tempfile.mkdtemp(
                prefix="derecho-bench-etcd-", dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
            )
        )
        try:
            with Procs(base) as procs:
                cluster = EtcdCluster(binary, procs, base)
                asyncio.run(_single(cluster.leader_port(), 100, value_b64))  # warm-up
                return {"tmpfs": str(base).startswith("/dev/shm"), **fn(cluster)}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def pipelined_run(conns: int) -> Any:
        def fn(cluster: EtcdCluster) -> Row:
            asyncio.run(_pipelined(cluster.client_ports, 2000, min(conns, 256), value_b64))  # warm-up
            n_pipe = pipeline_calls(ctx, conns)
            cpu0, t0 = _cpu(), time.perf_counter()
            done, errors = asyncio.run(_pipelined(cluster.client_ports, n_pipe, conns, value_b64))
            if errors:
                ctx.note(f"etcd answered {errors} puts with an error status ({conns} connections)")
            return {
                "errors": errors,
                "writes_per_s": steady_rate(done, list(range(1, len(done) + 1)), n_pipe),
                "client_cpu": (_cpu() - cpu0) / (time.perf_counter() - t0),
            }

        return fn

    def single_run(cluster: EtcdCluster) -> Row:
        cpu0, t0 = _cpu(), time.perf_counter()
        lat = asyncio.run(_single(cluster.leader_port(), n_single, value_b64))
        return {
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "writes_per_s": 1000 / (sum(lat) / len(lat)),
            "client_cpu": (_cpu() - cpu0) / (time.perf_counter() - t0),
            "calls": n_single,
        }

    runs = [{"window": c, "calls": pipeline_calls(ctx, c), **measure(pipelined_run(c))} for c in connection_levels(ctx)]
    pipe = best_of(
        {
            "system": system,
            "case": "pipelined",
            "case_suffix": ", 3 members",
            "mode": "pipelined",
            "value_size": VALUE_SIZE,
        },
        runs,
        "connections",
    )
    single = {
        "system": system,
        "case": "one at a time, 3 members",
        "mode": "single",
        "value_size": VALUE_SIZE,
        **measure(single_run),
    }
    for r in (pipe, single):
        if "error" in r:
            ctx.note(f"{r['case']}: {r['error']}")
    ctx.say(
        f"  etcd {pipe['case']}: {pipe.get('writes_per_s', float('nan')):,.0f} writes/s; one at a time "
        f"p50 {single.get('p50_ms', float('nan')):.2f} ms p99 {single.get('p99_ms', float('nan')):.2f} ms"
    )
    return [pipe, single]
