"""Read consistency per P2P call: ``consistency="local" | "stable" | "linearizable"`` and
``at_version=`` / ``at_time=`` on groups of real nodes (loopback, TLS), through handles and
clients; options checked at the caller."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

import derecho_actors as da
from tests.api.groups import client as client_of
from tests.api.groups import running_groups

pytestmark = pytest.mark.timeout(120)

SLOW: dict[int, float] = {}  # id(replica) -> seconds each put sleeps there (test control)


@da.replicated
class Reg:
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    @da.ordered
    def put(self, key: str, value: int) -> int:
        delay = SLOW.get(id(self))
        if delay:
            time.sleep(delay)  # this replica applies late: its local reads lag
        self.data[key] = value
        return value

    @da.ordered
    def bump(self) -> None:
        pass

    @da.p2p
    def get(self, key: str) -> int | None:
        return self.data.get(key)

    @da.p2p
    def me(self) -> int:
        return id(self)


@da.replicated
class Ledger:
    balance = da.Persistent(0)

    @da.ordered
    def add(self, n: int) -> int:
        self.balance += n
        return self.balance

    @da.p2p
    def read(self) -> int:
        return self.balance

    @da.p2p
    def scratch(self) -> int:
        self.other = 1  # non-persistent attribute: no history
        return 0


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[da.Group]]:
    policy = da.ShardPolicy(min_nodes=3, max_nodes=3, overlapping=True)
    layout = da.Layout({Reg: policy, Ledger: policy})
    with running_groups(
        3, [Reg, Ledger], layout, "reads-test", 1000, data_root=tmp_path_factory.mktemp("reads")
    ) as made:
        yield made


def test_linearizable_read_at_a_lagging_replica_sees_acknowledged_writes(groups: list[da.Group]) -> None:
    """Node 3's replica applies puts late. A put acknowledged by node 1 is not yet in node 3's
    state; a linearizable read there goes through the order, runs after the put and sees it.
    (That a local read can be stale is shown by the simulator's history check, which catches
    it under partitions: tests/sim/test_app_sim.py.)"""
    reg = groups[0].handle(Reg)
    slow_id = reg.me(node=3).get(timeout=10)[3]
    SLOW[slow_id] = 0.3
    try:
        fresh = 0
        for i in range(3):
            results = reg.put("k", i + 1)
            node, value = next(iter(results))  # the first reply: not node 3's
            assert node != 3 and value == i + 1
            lin = reg.get("k", node=3, consistency="linearizable").get(timeout=10)[3]
            fresh += lin == i + 1
            results.get(timeout=10)
        assert fresh == 3
    finally:
        SLOW.clear()


def test_stable_read_sees_completed_writes_and_answers_when_idle(groups: list[da.Group]) -> None:
    reg = groups[1].handle(Reg)
    reg.put("s", 7).get(timeout=10)
    started = time.monotonic()
    for node in (1, 2, 3):
        assert reg.get("s", node=node, consistency="stable").get(timeout=10) == {node: 7}
    # An idle shard: the replica's state is covered once an empty multicast goes round.
    assert time.monotonic() - started < 5


def test_stable_reads_under_concurrent_writes_never_see_an_unapplied_value(groups: list[da.Group]) -> None:
    reg = groups[2].handle(Reg)
    reg.put("c", 0).get(timeout=10)
    stop = threading.Event()
    written: list[int] = [0]

    def writer() -> None:
        for i in range(1, 200):
            reg.put("c", i).get(timeout=10)
            written.append(i)
            if stop.is_set():
                return

    t = threading.Thread(target=writer)
    t.start()
    try:
        seen = []
        for _ in range(30):
            value = reg.get("c", node=1, consistency="stable").get(timeout=10)[1]
            seen.append(value)
        assert seen == sorted(seen)  # one replica's stable reads never go back
    finally:
        stop.set()
        t.join(30)
    assert max(seen) <= max(written)


def test_client_reads_carry_their_options(groups: list[da.Group]) -> None:
    groups[0].handle(Reg).put("cl", 3).get(timeout=10)
    with client_of(groups) as client:
        reg = client.handle(Reg)
        assert list(reg.get("cl", consistency="linearizable").get(timeout=10).values()) == [3]
        assert list(reg.get("cl", consistency="stable").get(timeout=10).values()) == [3]
        assert list(reg.get("cl", node=2, consistency="local").get(timeout=10).values()) == [3]


def test_reads_of_the_past_by_version_and_time(groups: list[da.Group]) -> None:
    ledger = groups[0].handle(Ledger)
    first = ledger.add(10)
    first.get(timeout=10)
    v1 = first.persisted(timeout=10)
    between = time.time_ns()
    time.sleep(0.01)
    second = ledger.add(5)
    second.get(timeout=10)
    second.persisted(timeout=10)
    now = ledger.read(node=2).get(timeout=10)[2]
    for node in (1, 2, 3):
        assert ledger.read(node=node, at_version=v1).get(timeout=10) == {node: now - 5}
        assert ledger.read(node=node, at_time=between).get(timeout=10) == {node: now - 5}
    with da.Client(
        [f"127.0.0.1:{groups[0].config.listen_host_port()[1]}"],
        cluster="reads-test",
        certs_dir=groups[0].config.security.certs_dir,
        name="tester",
    ) as client:
        assert list(client.handle(Ledger).read(at_version=v1).get(timeout=10).values()) == [now - 5]


def test_read_of_a_version_not_on_disk_everywhere_is_refused(groups: list[da.Group]) -> None:
    ledger = groups[0].handle(Ledger)
    results = ledger.add(1)
    results.get(timeout=10)
    with pytest.raises(da.NotPersistedYet):
        ledger.read(node=1, at_version=results.version + (1 << 20)).get(timeout=10)


def test_past_reads_cannot_write_or_see_non_persistent_attributes(groups: list[da.Group]) -> None:
    ledger = groups[0].handle(Ledger)
    results = ledger.add(1)
    results.get(timeout=10)
    version = results.persisted(timeout=10)
    with pytest.raises(da.RemoteError, match="reads the past"):
        ledger.scratch(node=1, at_version=version).get(timeout=10)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda g: g.handle(Reg).get("k", consistency="eventual"), da.ReadOptionError),
        (lambda g: g.handle(Reg).put("k", 1, consistency="stable"), da.ReadOptionError),
        (lambda g: g.handle(Reg).get("k", at_version=3), da.NotPersistent),
        (lambda g: g.handle(Ledger).read(at_version=3, at_time=4), da.ReadOptionError),
        (lambda g: g.handle(Ledger).read(at_version=3, consistency="linearizable"), da.ReadOptionError),
        (lambda g: g.handle(Ledger).read(at_version=-1), da.ReadOptionError),
        (lambda g: g.handle(Ledger).read(at_time="yesterday"), da.ReadOptionError),
    ],
)
def test_bad_read_options_fail_at_the_call(groups: list[da.Group], call, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        call(groups[0])


def test_read_options_on_the_wire_round_trip_and_reject_garbage() -> None:
    from derecho_actors.model.reads import ReadOptions
    from derecho_actors.wire.read_options import OPTIONS_MARK, encode_read, split_read
    from runtime.errors import WireError

    for read in (
        ReadOptions("stable"),
        ReadOptions("linearizable"),
        ReadOptions("local", 5),
        ReadOptions("local", None, -3),
    ):
        assert split_read(encode_read(read, b"\x92\x90\x80")) == (read, b"\x92\x90\x80")
    assert split_read(b"\x92\x90\x80") == (None, b"\x92\x90\x80")
    for bad in (
        bytes([OPTIONS_MARK]),
        bytes([OPTIONS_MARK, 3, 0x93, 9, 0xC0, 0xC0]),
        bytes([OPTIONS_MARK, 4, 0x93, 1, 5, 0xC0]),
    ):
        with pytest.raises(WireError):
            split_read(bad)
