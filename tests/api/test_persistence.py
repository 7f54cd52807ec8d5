"""Persistent delivery through the public API, with nodes in this process on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import derecho_actors as da
from tests.api.groups import address, running_groups


@da.replicated
class Bank:
    balance = da.Persistent(0)
    owners = da.Persistent({})

    def __init__(self) -> None:
        self.calls = 0  # not persistent: lost on total restart, sent on state transfer

    @da.ordered
    def deposit(self, owner: str, amount: int) -> int:
        self.calls += 1
        self.balance += amount
        self.owners[owner] = self.owners.get(owner, 0) + amount
        return da.current_version(self)

    @da.ordered
    def close_account(self, owner: str) -> None:
        del self.owners[owner]

    @da.p2p
    def read(self) -> list[Any]:
        return [self.balance, dict(self.owners), self.calls]

    @da.p2p
    def at_version(self, version: int) -> list[Any]:
        snap = da.at_version(self, version)
        return [snap.balance, dict(snap.owners)]

    @da.p2p
    def at_time(self, ts: int) -> list[Any]:
        snap = da.at_time(self, ts)
        return [snap.balance, dict(snap.owners), snap.version]


@da.replicated
class Plain:
    def __init__(self) -> None:
        self.items: list[int] = []

    @da.ordered
    def add(self, x: int) -> int:
        self.items.append(x)
        return len(self.items)

    @da.p2p
    def read(self) -> list[int]:
        return self.items


LAYOUT = da.Layout({
    Bank: da.ShardPolicy(min_nodes=1, max_nodes=3, overlapping=True),
    Plain: da.ShardPolicy(min_nodes=1, max_nodes=3, overlapping=True),
})


def test_persisted_resolves_and_reads_of_the_past_agree(tmp_path: Path) -> None:
    with running_groups(3, [Bank, Plain], LAYOUT, "persist-1", 400, tmp_path) as groups:
        frontiers: list[int] = []
        groups[0].on_persisted(lambda shard, v: frontiers.append(v))
        bank = groups[0].handle(Bank)
        versions = []
        times = []
        for i in range(20):
            r = bank.deposit(f"o{i % 3}", 10)
            versions.append(set(r.get(timeout=10).values()).pop())
            times.append(time.time_ns())
        bank.close_account("o0").get(timeout=10)
        last = bank.deposit("o1", 5)
        v = last.persisted(timeout=10)
        assert v == last.version and v == max(last.get(timeout=1).values())
        assert versions == sorted(versions) and len(set(versions)) == 20
        assert frontiers and frontiers[-1] >= v
        # The same past at every replica, by version and by time.
        for node in (1, 2, 3):
            past = bank.at_version(versions[9], node=node).get(timeout=10)[node]
            assert past == [100, {"o0": 40, "o1": 30, "o2": 30}]
            closed = bank.at_version(v, node=node).get(timeout=10)[node]
            assert closed == [205, {"o1": 75, "o2": 60}]
            at = bank.at_time(times[4], node=node).get(timeout=10)[node]
            assert at[0] == 50 and at[2] == versions[4]
            before = bank.at_time(1, node=node).get(timeout=10)[node]
            assert before[:2] == [0, {}]
        # A version not yet on disk everywhere is refused with a clear error.
        with pytest.raises(da.RemoteError, match="NotPersistedYet"):
            bank.at_version(v + 10_000, node=2).get(timeout=10)


def test_atomic_calls_have_no_persistence(tmp_path: Path) -> None:
    with running_groups(1, [Bank, Plain], LAYOUT, "persist-2", 400, tmp_path) as groups:
        r = groups[0].handle(Plain).add(1)
        r.get(timeout=10)
        assert r.version is None
        with pytest.raises(da.NotPersistent):
            r.persisted(timeout=1)


def test_client_waits_for_persistence(tmp_path: Path) -> None:
    with running_groups(3, [Bank, Plain], LAYOUT, "persist-3", 400, tmp_path) as groups:
        with da.Client([address(groups[1])], cluster="persist-3") as client:
            bank = client.handle(Bank)
            pending = [bank.deposit("c", 1) for _ in range(200)]
            versions = [p.persisted(timeout=20) for p in pending]
            assert versions == sorted(versions)
            assert groups[2].persisted_frontier(Bank) >= versions[-1] or _eventually(
                lambda: groups[2].persisted_frontier(Bank) >= versions[-1]
            )


def _eventually(pred: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        threading.Event().wait(0.02)
    return False
