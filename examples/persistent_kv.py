"""A persistent, versioned key-value store that survives losing every machine.

    python examples/persistent_kv.py demo     # 3 processes; writes; kill -9 all; restart; check
    python examples/persistent_kv.py put KEY VALUE --contact HOST:PORT --certs-dir certs
    python examples/persistent_kv.py get KEY [--at VERSION] --contact HOST:PORT --certs-dir certs

Each put is a version on disk at every replica (``persisted()`` says when); reads of the past
(``get_at``, ``get_at_time``) answer the same at every replica; after a total failure the
nodes restart from their data directories with every persisted write.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import derecho_actors as da

if not __package__:  # run as `python examples/persistent_kv.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.client_cli import add_client_args, connect, need, run  # noqa: E402


@da.replicated
class PersistentKV:
    data = da.Persistent({})

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        """Store ``value``; returns the version this write created."""
        self.data[key] = value
        return da.current_version(self)

    @da.ordered
    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    @da.p2p
    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    @da.p2p
    def get_at(self, key: str, version: int) -> bytes | None:
        """The value of ``key`` right after ``version`` (which must be persisted)."""
        return da.at_version(self, version).data.get(key)

    @da.p2p
    def get_at_time(self, key: str, timestamp_ns: int) -> bytes | None:
        return da.at_time(self, timestamp_ns).data.get(key)

    @da.p2p
    def size(self) -> int:
        return len(self.data)


LAYOUT = da.Layout({PersistentKV: da.ShardPolicy(min_nodes=3, max_nodes=3)})


@da.sim_workload(PersistentKV, model="register")
def persistent_kv_sim_calls(rng: random.Random) -> da.SimCall:
    """Simulated clients (``python -m runtime.sim --app examples.persistent_kv:PersistentKV``):
    writes and linearizable reads of a few keys, through crashes and total restarts from the
    logs; checked as registers."""
    key = f"key-{rng.randrange(5)}"
    if rng.random() < 0.55:
        value = b"%d" % rng.randrange(10**9)
        return da.SimCall("put", (key, value), kind="write", key=key, value=value)
    return da.SimCall("get", (key,), {"consistency": "linearizable"}, kind="read", key=key)


def demo(writes: int) -> int:
    with da.local_cluster(
        3, [PersistentKV], LAYOUT, overrides={"persistence.restart_quorum_wait_ms": "200"}
    ) as cluster:
        kv = cluster.handle(PersistentKV)
        started = time.monotonic()
        pending = [kv.put(f"key-{i % 500}", f"value-{i}".encode()) for i in range(writes)]
        confirmed: list[tuple[int, int]] = []  # (write number, version) whose persisted() returned

        def confirm() -> None:
            for i, p in enumerate(pending):
                try:
                    confirmed.append((i, p.persisted(timeout=30)))
                except da.DerechoError:
                    return

        waiter = threading.Thread(target=confirm)
        waiter.start()
        while len(confirmed) < writes // 2:
            time.sleep(0.01)
        cluster.kill_all()  # kill -9 every node while writes are still in flight
        waiter.join()
        print(
            f"{len(confirmed)} of {writes} writes reported persisted before kill -9 of all 3 nodes "
            f"({time.monotonic() - started:.1f} s)"
        )
        t0 = time.monotonic()
        cluster.restart()
        print(f"restarted all 3 from their logs in {time.monotonic() - t0:.2f} s")
        kv = cluster.handle(PersistentKV)
        # A new write, once persisted, means every replica reported its restored log too.
        marker = kv.put("restarted", b"yes").persisted(timeout=30)
        print(f"new writes go on after the restart (version {da.format_version(marker)})")
        lost = 0
        for node in (1, 2, 3):
            checks = [(i, kv.get_at(f"key-{i % 500}", v, node=node)) for i, v in confirmed[-200:]]
            lost += sum(1 for i, c in checks if c.get(timeout=20)[node] != f"value-{i}".encode())
        print(f"checked the last 200 persisted writes at every node by version: {lost} missing or different")
        return 1 if lost else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["demo", "put", "get"])
    p.add_argument("args", nargs="*")
    p.add_argument("--writes", type=int, default=4000, help="demo: how many writes")
    p.add_argument("--at", help="get: the value as of this version (VID.INDEX, as put prints it)")
    add_client_args(p)
    a = p.parse_args(argv)
    if a.command == "demo":
        return demo(a.writes)
    with connect(p, a) as client:
        kv = client.handle(PersistentKV)
        if a.command == "put":
            key, value = need(p, a, 2, "KEY VALUE")
            results = kv.put(key, value.encode())
            results.get(timeout=10)
            version = results.persisted(timeout=30)
            print(f"stored as version {da.format_version(version)}, persisted at every replica")
        elif a.at is None:
            (key,) = need(p, a, 1, "KEY")
            print(list(kv.get(key).get(timeout=10).values())[0])
        else:
            (key,) = need(p, a, 1, "KEY --at VERSION")
            try:
                version = da.parse_version(a.at)
            except ValueError as exc:
                p.error(str(exc))
            print(list(kv.get_at(key, version).get(timeout=10).values())[0])
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
