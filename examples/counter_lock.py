"""A replicated counter and a lock service whose locks are leased by view.

    python examples/counter_lock.py demo
    python examples/counter_lock.py add [K] | read --contact HOST:PORT --certs-dir certs
    python examples/counter_lock.py acquire NAME OWNER | release NAME OWNER | holder NAME --contact ...

A lock is held by a member node; when that node leaves the group (fails or leaves), the next
view releases its locks at every replica at the same point of the order, so no lock outlives
its holder. Replicated classes may define ``on_view(vid, members)`` for such view-dependent
state: it runs at the same place in the call order at every replica.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import derecho_actors as da

if not __package__:  # run as `python examples/counter_lock.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.client_cli import add_client_args, connect, need, run  # noqa: E402


@da.replicated
class Counter:
    def __init__(self) -> None:
        self.value = 0

    @da.ordered
    def add(self, k: int = 1) -> int:
        self.value += k
        return self.value

    @da.p2p
    def read(self) -> int:
        return self.value


@da.replicated
class Locks:
    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # lock name -> owner node id
        self.members: list[int] = []

    @da.ordered
    def acquire(self, name: str, owner: int) -> bool:
        holder = self.held.get(name)
        if holder is None or holder == owner:
            self.held[name] = owner
            return True
        return False

    @da.ordered
    def release(self, name: str, owner: int) -> bool:
        if self.held.get(name) == owner:
            del self.held[name]
            return True
        return False

    @da.p2p
    def holder(self, name: str) -> int | None:
        return self.held.get(name)

    def on_view(self, vid: int, members: list[int]) -> None:
        self.members = members
        for name, owner in list(self.held.items()):
            if owner not in members:
                del self.held[name]  # the lease ends with the holder's membership


LAYOUT = da.Layout({Counter: da.ShardPolicy(min_nodes=2), Locks: da.ShardPolicy(min_nodes=2, overlapping=True)})


@da.sim_workload(Counter, model="counter")
def counter_sim_calls(rng: random.Random) -> da.SimCall:
    """Simulated clients (``python -m runtime.sim --app examples.counter_lock:Counter,Locks``):
    adds (each returns the new total) and linearizable reads, checked as a counter."""
    if rng.random() < 0.6:
        k = rng.randint(1, 9)
        return da.SimCall("add", (k,), kind="add", key="value", value=k)
    return da.SimCall("read", kwargs={"consistency": "linearizable"}, kind="read", key="value")


@da.sim_workload(Locks)
def locks_sim_calls(rng: random.Random) -> da.SimCall:
    """Acquires and releases by a few owners; no history model, so the simulator checks that
    every replica agrees (replies, state digests, leases ended by views alike)."""
    name, owner = f"lock-{rng.randrange(3)}", rng.randrange(1, 5)
    method = rng.choice(("acquire", "acquire", "release"))
    return da.SimCall(method, (name, owner))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["demo", "add", "read", "acquire", "release", "holder"])
    p.add_argument("args", nargs="*")
    add_client_args(p)
    a = p.parse_args(argv)
    if a.command != "demo":
        with connect(p, a) as client:
            counter, locks = client.handle(Counter), client.handle(Locks)
            if a.command == "add":
                k = int(a.args[0]) if a.args else 1
                print(max(counter.add(k).get(timeout=10).values()))
            elif a.command == "read":
                print(list(counter.read().get(timeout=10).values())[0])
            elif a.command == "holder":
                (name,) = need(p, a, 1, "NAME")
                print(list(locks.holder(name).get(timeout=10).values())[0])
            else:
                name, owner = need(p, a, 2, "NAME OWNER (a member's node id)")
                call = locks.acquire if a.command == "acquire" else locks.release
                print(set(call(name, int(owner)).get(timeout=10).values()).pop())
        return 0
    with da.local_cluster(
        nodes=3,
        types=[Counter, Locks],
        layout=LAYOUT,
        overrides={"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "500"},
    ) as cluster:
        counter = cluster.handle(Counter)
        results = [counter.add() for _ in range(500)]
        finals = [max(r.get(timeout=30).values()) for r in results]
        print(
            f"counter reached {finals[-1]} after 500 increments; replicas agree: {len(set(results[-1].get(timeout=5).values())) == 1}"
        )
        locks = cluster.handle(Locks)
        print("node 3 takes lock 'printer':", set(locks.acquire("printer", 3).get(timeout=10).values()))
        print("node 1 tries it:", set(locks.acquire("printer", 1).get(timeout=10).values()))
        cluster.kill(3)
        cluster.wait_members({1, 2})
        print("after node 3 failed, holder is", set(locks.holder("printer").get(timeout=10).values()))
        print("node 1 tries again:", set(locks.acquire("printer", 1).get(timeout=10).values()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
