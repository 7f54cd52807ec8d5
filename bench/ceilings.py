"""Reference ceilings measured on this machine, in this run: what one loopback hop between two
Python processes can carry at all. They are drawn as horizontal lines on the matching plots.

* ``tcp``: one TCP stream, the sender writing 1 MB buffers, the receiver ``recv_into`` a 1 MB
  buffer (bytes only, no parsing): the bandwidth bound for large messages, in GB/s.
* ``msgpack``: 100-byte messages in msgpack batches of 1000 (a length-prefixed frame holding a
  list of ``bin`` items, like a push of the multicast), the receiver unpacking every frame and
  calling a function per message: the bound for small messages through one Python hop, msgs/s.
* ``objects3`` / ``objects3_tls``: one 100 MB object to the two other members of a 3-member
  shard by three bare processes (``bench.object_ceiling``: blocks relayed between the
  receivers, every receiver hashing every byte), TLS off / on: the bound for ``objects``'
  shape on this machine, MB/s per receiver.

Each role is a separate process (``python -m bench.ceilings ROLE ...``); the receiver binds a
free port on 127.0.0.1, prints it, and at the end prints its progress samples as JSON.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import HOST, Procs
from bench.registry import Context, Row, experiment
from bench.stats import steady_rate

CHUNK = 1 << 20
MSG_SIZE = 100
BATCH = 1000


# ------------------------------------------------------------------------------ processes
def _listen() -> tuple[socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    return srv, conn


def tcp_recv() -> None:
    srv, conn = _listen()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total, k = 0, 0
    times, counts = [], []
    while True:
        n = conn.recv_into(view)
        if not n:
            break
        total += n
        k += 1
        if k % 16 == 0:
            times.append(time.perf_counter())
            counts.append(total)
    times.append(time.perf_counter())
    counts.append(total)
    print(json.dumps({"times": times, "counts": counts}), flush=True)
    conn.close()
    srv.close()


def tcp_send(port: int, seconds: float) -> None:
    sock = socket.create_connection((HOST, port))
    data = memoryview(bytes(CHUNK))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            sock.sendall(data)
    sock.close()


def msgpack_recv() -> None:
    import msgpack

    srv, conn = _listen()
    delivered = [0]

    def deliver(message: bytes) -> None:  # the per-message upcall a receiver makes
        delivered[0] += 1

    buf = bytearray()
    times, counts = [], []
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "little")
            if end - pos - 4 < n:
                break
            for m in msgpack.unpackb(bytes(buf[pos + 4 : pos + 4 + n])):
                deliver(m)
            pos += 4 + n
        if pos:
            del buf[:pos]
            times.append(time.perf_counter())
            counts.append(delivered[0])
    print(json.dumps({"times": times, "counts": counts}), flush=True)
    conn.close()
    srv.close()


def msgpack_send(port: int, batches: int) -> None:
    import msgpack

    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in range(batches):
        # A fresh batch every time: the sender pays for packing, as a real sender would.
        head = b.to_bytes(8, "little")
        body = msgpack.packb([head + bytes(MSG_SIZE - 8)] * BATCH, use_bin_type=True)
        sock.sendall(len(body).to_bytes(4, "little") + body)
    sock.close()


# ------------------------------------------------------------------------------ experiment
def _pair(workdir: Path, name: str, recv_role: str, send_args: list[str], limit: float = 120) -> dict:
    with Procs(workdir) as procs:
        import subprocess

        rx = procs.python(f"{name}-recv", "bench.ceilings", recv_role, stdout=subprocess.PIPE)
        assert rx.stdout is not None
        port = rx.stdout.readline().decode().strip()
        procs.python(f"{name}-send", "bench.ceilings", f"{recv_role[:-5]}-send", port, *send_args)
        out, _ = rx.communicate(timeout=limit)
        return json.loads(out.decode().strip().splitlines()[-1])


@experiment(
    "ceilings",
    "Reference ceilings: one loopback hop between two Python processes",
    columns=[("case", "case", ""), ("shown", "rate", ""), ("unit", "unit", "")],
)
def ceilings(ctx: Context) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="derecho-bench-ceil-"))
    rows = []
    try:
        doc = _pair(workdir, "tcp", "tcp-recv", [str(ctx.pick(1.5, 4.0))])
        bps = steady_rate(doc["times"], doc["counts"], doc["counts"][-1])
        rows.append(
            {
                "kind": "tcp",
                "case": "TCP stream, 1 connection, 1 MB writes",
                "value": bps / 1e9,
                "unit": "GB/s",
                "shown": f"{bps / 1e9:.2f}",
                "MB_per_s": bps / 1e6,
            }
        )
        ctx.say(f"  TCP stream: {bps / 1e9:.2f} GB/s")
        doc = _pair(workdir, "msgpack", "msgpack-recv", [str(ctx.pick(6000, 15000))])
        rate = steady_rate(doc["times"], doc["counts"], doc["counts"][-1])
        rows.append(
            {
                "kind": "msgpack",
                "case": f"msgpack batches of {BATCH} x {MSG_SIZE} B, unpack + call per message",
                "value": rate,
                "unit": "msgs/s",
                "shown": f"{rate:,.0f}",
                "msgs_per_s": rate,
                "MB_per_s": rate * MSG_SIZE / 1e6,
            }
        )
        ctx.say(f"  msgpack one hop: {rate:,.0f} msgs/s")
        rows += _object_ceilings(ctx, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _object_ceilings(ctx: Context, workdir: Path) -> list[Row]:
    from bench.object_ceiling import pipeline_rate
    from runtime.security import create_ca, create_node

    certs = workdir / "certs"
    certs.mkdir()
    create_ca(certs, cluster="bench")
    for node_id in (1, 2, 3):
        create_node(certs, node_id)
    rows: list[Row] = []
    for kind, tls in (("objects3", None), ("objects3_tls", certs)):
        # The best of a few runs: a ceiling is what the machine can do, and a neighbour's
        # burst of work only ever lowers a run.
        runs = [pipeline_rate(workdir, 100, ctx.pick(2, 3), tls) for _ in range(ctx.pick(2, 3))]
        best = max(runs, key=lambda r: r["MB_per_s"])
        label = "on" if tls else "off"
        rows.append(
            {
                "kind": kind,
                "case": f"100 MB object to 2 receivers of a 3-member shard, relayed + hashed, 3 bare processes, TLS {label}",
                "value": best["MB_per_s"],
                "unit": "MB/s per receiver",
                "shown": f"{best['MB_per_s']:,.0f}",
                "MB_per_s": best["MB_per_s"],
                "runs_MB_per_s": [r["MB_per_s"] for r in runs],
            }
        )
        ctx.say(f"  object to a 3-member shard, bare processes, TLS {label}: {best['MB_per_s']:,.0f} MB/s per receiver")
    return rows


def main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "tcp-recv":
        tcp_recv()
    elif role == "tcp-send":
        tcp_send(int(args[0]), float(args[1]))
    elif role == "msgpack-recv":
        msgpack_recv()
    elif role == "msgpack-send":
        msgpack_send(int(args[0]), int(args[1]))
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
