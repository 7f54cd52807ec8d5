"""Replicated classes with planted bugs, for the simulator to catch (tests/sim/test_app_sim.py,
and ``python -m runtime.sim --app tests.sim.planted_bugs:Clock``)."""

from __future__ import annotations

import itertools
import random

import derecho_actors as da
from derecho_actors.caller.session import ClientSession

_TICKS = itertools.count()  # shared by every replica in the simulator's one process


@da.replicated
class Clock:
    """``stamp`` reads a clock of its own: every replica answers (and stores) another value."""

    def __init__(self) -> None:
        self.stamps: list[int] = []

    @da.ordered
    def stamp(self, tag: str) -> int:
        now = next(_TICKS)  # as time.time_ns() would be: different at every replica
        self.stamps.append(now)
        return now

    @da.p2p
    def count(self) -> int:
        return len(self.stamps)


@da.sim_workload(Clock)
def clock_calls(rng: random.Random) -> da.SimCall:
    return da.SimCall("stamp", (f"t{rng.randrange(5)}",)) if rng.random() < 0.7 else da.SimCall("count")


@da.replicated
class Shuffle:
    """``add`` replies the same everywhere, but stores in a replica-dependent order: only the
    state digests can tell."""

    def __init__(self) -> None:
        self.items: list[int] = []

    @da.ordered
    def add(self, n: int) -> int:
        self.items.insert(next(_TICKS) % (len(self.items) + 1), n)
        return len(self.items)


@da.sim_workload(Shuffle)
def shuffle_calls(rng: random.Random) -> da.SimCall:
    return da.SimCall("add", (rng.randrange(100),))


@da.replicated
class Hits:
    """``get`` is a @p2p method that counts its calls: the replica it ran at now differs."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}
        self.reads = 0

    @da.ordered
    def put(self, key: str, value: int) -> None:
        self.data[key] = value

    @da.p2p
    def get(self, key: str) -> int | None:
        self.reads += 1
        return self.data.get(key)


@da.sim_workload(Hits)
def hits_calls(rng: random.Random) -> da.SimCall:
    key = f"k{rng.randrange(3)}"
    if rng.random() < 0.5:
        return da.SimCall("put", (key, rng.randrange(100)))
    return da.SimCall("get", (key,))


@da.replicated
class StaleKV:
    """``get`` answers what the key held before its last write: every replica alike (so no
    digest or reply differs), but a client can read a value that was already overwritten."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}
        self.before: dict[str, int | None] = {}

    @da.ordered
    def put(self, key: str, value: int) -> None:
        self.before[key] = self.data.get(key)
        self.data[key] = value

    @da.p2p
    def get(self, key: str) -> int | None:
        return self.before.get(key, self.data.get(key))


@da.replicated
class LossyKV:
    """``put`` acknowledges every write but drops each one whose value ends in 7, at every
    replica alike: a lost write."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    @da.ordered
    def put(self, key: str, value: int) -> None:
        if value % 10 != 7:
            self.data[key] = value

    @da.p2p
    def get(self, key: str) -> int | None:
        return self.data.get(key)


def _register_calls(rng: random.Random) -> da.SimCall:
    key = f"k{rng.randrange(3)}"
    if rng.random() < 0.5:
        value = rng.randrange(1000)
        return da.SimCall("put", (key, value), kind="write", key=key, value=value)
    return da.SimCall("get", (key,), {"consistency": "linearizable"}, kind="read", key=key)


da.sim_workload(StaleKV, model="register")(_register_calls)
da.sim_workload(LossyKV, model="register")(_register_calls)


@da.replicated
class LocalReadCounter:
    """A correct counter read with ``consistency="local"``: a replica cut off by a partition
    keeps answering its old total while the majority goes on adding. Not a bug in the class
    but in the choice of read: the history check shows why "linearizable" exists."""

    def __init__(self) -> None:
        self.total = 0

    @da.ordered
    def add(self, n: int) -> int:
        self.total += n
        return self.total

    @da.p2p
    def read(self) -> int:
        return self.total


@da.sim_workload(LocalReadCounter, model="counter")
def local_counter_calls(rng: random.Random) -> da.SimCall:
    if rng.random() < 0.6:
        n = rng.randint(1, 9)
        return da.SimCall("add", (n,), kind="add", key="total", value=n)
    return da.SimCall("read", kind="read", key="total")


class ResendOutsideSession(ClientSession):
    """A client bug: after a failover it sends its unanswered calls again in a new session (a
    new session number), outside the session the replicas know them by. A call the lost
    contact had already multicast is applied a second time."""

    def connected(self, now: float, address: str, peer: str = "") -> bytes:
        if self.connections:
            self.session = self.rng.getrandbits(62) | 1
        return super().connected(now, address, peer)


@da.replicated
class Journal:
    """A correct list per key; its simulated clients run ``ResendOutsideSession``, so an
    append resent after a failover can appear twice: the history check (append model) says so."""

    def __init__(self) -> None:
        self.lists: dict[str, list[int]] = {}

    @da.ordered
    def append(self, key: str, item: int) -> int:
        items = self.lists.setdefault(key, [])
        items.append(item)
        return len(items)

    @da.p2p
    def read(self, key: str) -> tuple[int, ...]:
        return tuple(self.lists.get(key, ()))


@da.sim_workload(Journal, model="append", session=ResendOutsideSession)
def journal_calls(rng: random.Random) -> da.SimCall:
    key = f"k{rng.randrange(2)}"
    if rng.random() < 0.6:
        item = rng.getrandbits(40)
        return da.SimCall("append", (key, item), kind="append", key=key, value=item)
    return da.SimCall("read", (key,), {"consistency": "linearizable"}, kind="read", key=key)
