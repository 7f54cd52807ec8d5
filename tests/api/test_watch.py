"""Watches: every change event (``da.emit``) of a shard, in order, across failovers."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import _free_ports
from tests.api.groups import address, running_groups, tls_overrides
from tests.api.groups import client as client_of

pytestmark = pytest.mark.timeout(120)


@da.replicated(watch_history=5000)
class Feed:
    def __init__(self) -> None:
        self.seen: list[int] = []

    @da.ordered
    def add(self, k: int) -> int:
        self.seen.append(k)
        da.emit({"k": k})
        if k % 10 == 0:
            da.emit({"k": k, "tenth": True})  # two events of one call: positions (v, 0), (v, 1)
        return len(self.seen)

    @da.ordered
    def quiet(self) -> None:
        """Changes nothing and emits nothing."""

    @da.p2p
    def state(self) -> list[int]:
        return self.seen

    @da.p2p
    def bad_emit(self) -> None:
        da.emit("from a p2p method")


@da.replicated(watch_history=5)
class Short:
    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self) -> int:
        self.n += 1
        da.emit(self.n)
        return self.n


@da.replicated
class Ledger:
    total = da.Persistent(0)

    @da.ordered
    def add(self, k: int) -> int:
        self.total += k
        da.emit(k)
        return self.total

    @da.p2p
    def read(self) -> int:
        return self.total


def expected_events(ks: list[int]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for k in ks:
        out.append({"k": k})
        if k % 10 == 0:
            out.append({"k": k, "tenth": True})
    return out


def collect(watch: da.Watch, count: int, timeout: float) -> list[da.WatchEvent]:
    got: list[da.WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        ev = watch.next(timeout=1.0)
        if ev is not None:
            got.append(ev)
    return got


def check_stream(events: list[da.WatchEvent]) -> None:
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions), "out of order or repeated"
    for a, b in zip(events, events[1:]):
        if a.version == b.version:
            assert b.index == a.index + 1, f"an event of version {a.version} was skipped"
        else:
            assert b.index == 0, f"the first events of version {b.version} were skipped"


def test_watch_sees_every_change_in_order_across_failover_of_its_contact() -> None:
    layout = da.Layout({Feed: da.ShardPolicy(min_nodes=2)})
    with running_groups(3, [Feed], layout, "watch-failover", 1500) as groups:
        contacts = [address(g) for g in groups]
        with client_of(groups, contacts) as watcher_client, client_of(groups, contacts[1:]) as writer:
            watch = watcher_client.watch(Feed, since=-1, hold=1.0)  # its contact and replica: node 1
            feed = writer.handle(Feed)
            got: list[da.WatchEvent] = []
            done = threading.Event()

            def read() -> None:
                while not done.is_set():
                    ev = watch.next(timeout=0.5)
                    if ev is not None:
                        got.append(ev)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            first = [feed.add(i) for i in range(300)]
            first[-1].get(timeout=20)
            deadline = time.monotonic() + 20
            while len(got) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            groups[0].close()  # the watcher's contact (and replica, and the leader) goes
            rest = [feed.add(i) for i in range(300, 500)]
            for r in first + rest:
                r.get(timeout=30)
            want = expected_events(list(range(500)))
            deadline = time.monotonic() + 30
            while len(got) < len(want) and time.monotonic() < deadline:
                time.sleep(0.05)
            done.set()
            reader.join(5)
            state = groups[1].handle(Feed).state(node=2).get(timeout=10)[2]
        assert state == list(range(500))
        assert [e.value for e in got] == want, (
            f"{len(got)} events of {len(want)}; first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a.value != b), None)}"
        )
        check_stream(got)
        assert watcher_client.connections >= 2 and watcher_client.connected_to != contacts[0], (
            "the watcher's client never failed over: the test did not test a failover"
        )


def test_watch_from_a_version_resumes_without_gap_and_members_watch_too() -> None:
    layout = da.Layout({Feed: da.ShardPolicy(min_nodes=2)})
    with running_groups(2, [Feed], layout, "watch-resume", 1500) as groups:
        feed = groups[0].handle(Feed)
        results = [feed.add(i) for i in range(40)]
        for r in results:
            r.get(timeout=10)
        everything = collect(groups[1].watch(Feed, since=-1, hold=0.5), 44, 10)
        assert [e.value for e in everything] == expected_events(list(range(40)))
        check_stream(everything)
        # From an event's position: exactly the ones after it (also within one call's events).
        cut = everything[21]
        after = collect(groups[0].watch(Feed, since=cut, hold=0.5), 44 - 22, 10)
        assert after == everything[22:]
        # From a version: the events of later calls.
        later = collect(groups[0].watch(Feed, since=everything[10].version, hold=0.5), 100, 3)
        assert (
            later
            and later[0].version > everything[10].version
            and later == [e for e in everything if e.version > everything[10].version]
        )
        # From now on: nothing old, and new events as they come.
        now = groups[1].watch(Feed, hold=0.5)
        assert now.next(timeout=1.5) is None
        groups[1].handle(Feed).quiet().get(timeout=10)  # a call without events changes no stream
        feed.add(1000).get(timeout=10)
        ev = now.next(timeout=10)
        assert ev is not None and ev.value == {"k": 1000} and ev.version > everything[-1].version
        # The shard began in view 1 (min_nodes=2): a position of view 0 belongs to no state here.
        assert da.version_parts(everything[0].version)[0] == 1
        with pytest.raises(da.WatchHistoryLost, match="began anew"):
            groups[0].watch(Feed, since=5).next(timeout=5)  # version 0.5


def test_async_for_and_errors_a_user_can_hit() -> None:
    layout = da.Layout({Feed: da.ShardPolicy(min_nodes=1), Short: da.ShardPolicy(min_nodes=1)})
    with running_groups(2, [Feed, Short], layout, "watch-errors", 1500) as groups:
        g = groups[0]
        with client_of(groups) as client:
            with pytest.raises(da.EmitError, match="only be called from inside an @ordered"):
                client.handle(Feed).bad_emit().get(timeout=10)

            async def take(n: int) -> list[da.WatchEvent]:
                out = []
                async for ev in client.watch(Feed, since=-1, hold=0.5):
                    out.append(ev)
                    if len(out) == n:
                        break
                return out

            for i in range(3):
                g.handle(Feed).add(i + 1).get(timeout=10)
            got = asyncio.run(asyncio.wait_for(take(3), 20))
            assert [e.value for e in got] == [{"k": 1}, {"k": 2}, {"k": 3}]

            short = client.handle(Short)
            for _ in range(20):
                short.add().get(timeout=10)
            with pytest.raises(da.WatchHistoryLost, match="watch_history is 5"):
                next(iter(client.watch(Short, since=-1)))
            recent = client.watch(Short, hold=0.5)
            assert recent.next(timeout=1.0) is None
            for _ in range(3):
                short.add().get(timeout=10)
            kept = collect(recent, 3, 10)
            assert [e.value for e in kept] == [21, 22, 23]
            assert [e.value for e in collect(client.watch(Short, since=kept[0], hold=0.5), 2, 10)] == [22, 23]
        with pytest.raises(da.EmitError):
            da.emit("outside any method")


def test_joiner_gets_the_history_by_state_transfer(tmp_path: Path) -> None:
    layout = da.Layout({Feed: da.ShardPolicy(min_nodes=1)})
    cluster = "watch-join"
    with running_groups(2, [Feed], layout, cluster, 1500, data_root=tmp_path) as groups:
        for i in range(30):
            groups[0].handle(Feed).add(i).get(timeout=10)
        overrides = {
            "timeouts.heartbeat_ms": "20",
            "timeouts.suspicion_ms": "1500",
            "node.cluster": cluster,
            "node.id": "3",
            "node.listen": f"127.0.0.1:{_free_ports(1)[0]}",
            "node.data_dir": str(tmp_path / "node-3"),
            "node.contacts": address(groups[0]),
            **tls_overrides(tmp_path, [1, 2, 3], cluster),
        }
        with da.Group(types=[Feed], layout=layout, overrides=overrides) as joiner:
            # Node 3 joined with nothing: Feed's state, with its events, came by transfer.
            got = collect(joiner.watch(Feed, since=-1, node=3, hold=0.5), 33, 10)
            assert [e.value for e in got] == expected_events(list(range(30)))
            check_stream(got)
            groups[0].handle(Feed).add(30).get(timeout=10)
            more = collect(joiner.watch(Feed, since=got[-1], node=3, hold=0.5), 2, 10)
            assert [e.value for e in more] == expected_events([30])


def test_persistent_type_events_come_once_persisted_everywhere(tmp_path: Path) -> None:
    layout = da.Layout({Ledger: da.ShardPolicy(min_nodes=2)})
    with running_groups(2, [Ledger], layout, "watch-persistent", 1500, data_root=tmp_path) as groups:
        watch = groups[1].watch(Ledger, since=-1, hold=0.5)
        for k in range(1, 21):
            r = groups[0].handle(Ledger).add(k)
        version = r.persisted(timeout=20)
        got = collect(watch, 20, 10)
        assert [e.value for e in got] == list(range(1, 21))
        assert all(e.version <= version for e in got)
        assert groups[1].persisted_frontier(Ledger) >= got[-1].version
