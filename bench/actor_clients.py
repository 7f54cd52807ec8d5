"""Several client processes calling one group at once, as etcd's bench uses many connections.

One Python ``Client`` is one process with one interpreter lock: its caller thread and socket
thread share a core, and a single client becomes the group's bound before the members are.
``run_clients`` starts ``clients`` processes (``python -m bench.actor_clients``), each with
its own ``Client`` whose contact is member ``k % n + 1`` (so the contacts' work is spread as
etcd's clients spread over its members), warms each up, starts them together (a go file) and
reports the group's rate: all calls over the time from the first client's first call to the
last client's last answer (every replica answered), the sum of the clients' steady rates
beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Procs
from bench.registry import Row


def run_clients(
    procs: Procs,
    cluster: Any,
    example: str,
    type_name: str,
    clients: int,
    calls: int,
    window: int,
    value_size: int,
    workdir: Path,
    timeout: float = 300.0,
) -> Row:
    """``clients`` processes of ``calls`` pipelined ``put`` calls each (``window``
    outstanding per client) on ``example``'s ``type_name`` in a ``LocalCluster``."""
    go = workdir / "clients-go"
    go.unlink(missing_ok=True)
    members = sorted(cluster.ports)
    outs = []
    for k in range(clients):
        out = workdir / f"client-{k}.json"
        out.unlink(missing_ok=True)
        outs.append(out)
        procs.python(
            f"client-{k}",
            "bench.actor_clients",
            "--example",
            example,
            "--type",
            type_name,
            "--contact",
            cluster.address(members[k % len(members)]),
            "--cluster",
            cluster.cluster,
            "--certs",
            str(cluster.certs_dir),
            "--key-prefix",
            f"c{k}-",
            "--calls",
            str(calls),
            "--window",
            str(window),
            "--value-size",
            str(value_size),
            "--out",
            str(out),
            "--go",
            str(go),
            *(["--insecure"] if cluster.insecure else []),
        )
    ready = [out.with_suffix(".ready") for out in outs]
    _wait_files(procs, clients, ready, 120, "the clients warmed up")
    go.touch()
    _wait_files(procs, clients, outs, timeout, "the clients' calls")
    res = [json.loads(o.read_text()) for o in outs]
    if any("error" in r for r in res):
        raise BenchError("; ".join(str(r["error"]) for r in res if "error" in r))
    span = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
    total = sum(r["calls"] for r in res)
    return {
        "clients": clients,
        "writes_per_s": total / span if span > 0 else math.nan,
        "sum_of_client_rates": sum(r["rate"] for r in res),
        "client_cpu": sum(r["cpu"] for r in res) / clients,
        "calls": total,
        "window": window,
    }


def _wait_files(procs: Procs, clients: int, files: list[Path], timeout: float, what: str) -> None:
    """Wait until every one of ``files`` exists; a client that exits is fine once its file is
    there (it wrote its results and ended), an error otherwise."""
    deadline = time.monotonic() + timeout
    while not all(f.exists() for f in files):
        for k in range(clients):
            proc = procs.procs[f"client-{k}"]
            if proc.poll() is not None and not files[k].exists():
                raise BenchError(
                    f"client-{k} exited with {proc.returncode} before {what}:\n{procs.log_tail(f'client-{k}')}"
                )
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def child_main(a: argparse.Namespace) -> int:
    import derecho_actors as da
    from bench.ours import pipelined
    from bench.persistence import load_example

    out = Path(a.out)
    try:
        cls = getattr(load_example(a.example), a.type)
        how: dict[str, Any] = {"insecure": True} if a.insecure else {"certs_dir": a.certs, "name": "local"}
        with da.Client([a.contact], cluster=a.cluster, **how) as client:
            h = client.handle(cls)
            value = b"v" * a.value_size
            prefix = a.key_prefix
            for i in range(100):
                h.put(f"{prefix}warm-{i}", value).get(timeout=30)
            out.with_suffix(".ready").touch()
            go = Path(a.go)
            deadline = time.monotonic() + 120
            while not go.exists():
                if time.monotonic() > deadline:
                    raise BenchError("no go within 120 s")
                time.sleep(0.001)
            t_start = time.time()
            rate, cpu = pipelined(lambda i, v: h.put(f"{prefix}{i % 1000}", v), a.calls, a.window, value)
            t_end = time.time()
        _publish(out, {"calls": a.calls, "rate": rate, "cpu": cpu, "t_start": t_start, "t_end": t_end})
    except Exception as exc:
        _publish(out, {"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    return 0


def _publish(out: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``out`` whole or not at all: the parent reads ``out`` as soon as it
    exists, and a file written in place can be seen empty (a JSONDecodeError in a run)."""
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(doc))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.actor_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--example", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--contact", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--key-prefix", default="")
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--window", type=int, required=True)
    p.add_argument("--value-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--insecure", action="store_true", help="the group runs without TLS")
    return child_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
