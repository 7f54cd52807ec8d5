"""A sharded, replicated key-value store: 2 shards of 3 replicas.

    python examples/kv_store.py demo                  # a local 6-process cluster, some writes
    python examples/kv_store.py put KEY VALUE --contact 127.0.0.1:7001
    python examples/kv_store.py get KEY --contact 127.0.0.1:7001
    python examples/kv_store.py watch SHARD --contact 127.0.0.1:7001   # every change, as it comes

Keys go to a shard by a stable hash, so every client finds the same replicas.
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from pathlib import Path

import derecho_actors as da

if not __package__:  # run as `python examples/kv_store.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.client_cli import add_client_args, connect, run  # noqa: E402

SHARDS = 2


@da.replicated
class KV:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        da.emit(("put", key, value))  # watchers (client.watch) see every change, in order
        return len(self.data)

    @da.ordered
    def delete(self, key: str) -> bool:
        found = self.data.pop(key, None) is not None
        if found:
            da.emit(("delete", key, None))
        return found

    @da.p2p
    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    @da.p2p
    def size(self) -> int:
        return len(self.data)


LAYOUT = da.Layout({KV: da.ShardPolicy(shards=SHARDS, min_nodes=3, max_nodes=3)})


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


@da.sim_workload(KV, model="register", shards=SHARDS)
def kv_sim_calls(rng: random.Random) -> da.SimCall:
    """What clients do in the simulator (``python -m runtime.sim --app examples.kv_store:KV``):
    writes and linearizable reads of a few keys, checked as registers."""
    key = f"key-{rng.randrange(6)}"
    if rng.random() < 0.5:
        value = b"%d" % rng.randrange(10**9)
        return da.SimCall("put", (key, value), shard=shard_of(key), kind="write", key=key, value=value)
    return da.SimCall("get", (key,), {"consistency": "linearizable"}, shard=shard_of(key), kind="read", key=key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["demo", "put", "get", "watch"])
    p.add_argument("args", nargs="*")
    add_client_args(p)
    p.add_argument("--since", type=int, default=None, help="watch: changes after this version (default: from now)")
    p.add_argument("--count", type=int, default=0, help="watch: stop after this many changes (default: never)")
    a = p.parse_args(argv)
    if a.command == "demo":
        with da.local_cluster(nodes=6, types=[KV], layout=LAYOUT) as cluster:
            for i in range(100):
                key = f"key-{i}"
                cluster.handle(KV, shard=shard_of(key)).put(key, f"value-{i}".encode()).get(timeout=10)
            sizes = [cluster.handle(KV, shard=s).size().get(timeout=10) for s in range(SHARDS)]
            print(f"100 keys written; keys per shard: {[list(s.values())[0] for s in sizes]}")
        return 0
    with connect(p, a) as client:
        if a.command == "watch":
            return watch(client, int(a.args[0]) if a.args else 0, a.since, a.count)
        key = a.args[0]
        kv = client.handle(KV, shard=shard_of(key))
        if a.command == "put":
            replies = kv.put(key, a.args[1].encode()).get(timeout=10)
            print(f"stored at {len(replies)} replicas")
        else:
            print(list(kv.get(key).get(timeout=10).values())[0])
    return 0


def watch(client: da.Client, shard: int, since: int | None, count: int) -> int:
    """Print every change of one shard as ``VERSION OP KEY VALUE``, in order, following the
    group through failures of the contact."""
    seen = 0
    for ev in client.watch(KV, shard=shard, since=since):
        op, key, value = ev.value
        print(f"{da.format_version(ev.version)} {op} {key} {value!r}", flush=True)
        seen += 1
        if seen == count:
            break
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
