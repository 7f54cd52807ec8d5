"""derecho-actors from asyncio code: a ticker task must keep running (no gap of more than
a fraction of a second) while a local cluster starts and stops, a client connects and closes,
calls wait for room in a full window, replies arrive and a version becomes persisted, all on
the same event loop. The same steps through the blocking API stall the ticker (shown too)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import CLIENT_NAME

pytestmark = pytest.mark.timeout(180)

NAP = 0.3  # seconds each nap() takes at a replica
MAX_GAP = 0.2  # the ticker ticks every 5 ms; a blocked loop shows as a longer gap


@da.replicated
class Sleepy:
    """Ordered calls that take a while: with a client window of 2, a third call must wait."""

    def __init__(self) -> None:
        self.naps = 0

    @da.ordered
    def nap(self, seconds: float) -> int:
        time.sleep(seconds)  # deterministic in effect: every replica counts the same
        self.naps += 1
        return self.naps


@da.replicated
class Jar:
    items = da.Persistent({})

    @da.ordered
    def put(self, key: str, value: bytes) -> int:
        self.items[key] = value
        return len(self.items)

    @da.p2p
    def get(self, key: str) -> bytes | None:
        return self.items.get(key)


LAYOUT = da.Layout({Sleepy: da.ShardPolicy(min_nodes=3), Jar: da.ShardPolicy(min_nodes=3, overlapping=True)})
FAST = {"timeouts.heartbeat_ms": "50", "timeouts.suspicion_ms": "2000"}


class Ticker:
    """A task that wakes every 5 ms and records the longest time between two wakes."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        self._stop.set()
        assert self._task is not None
        await self._task
        return max(self.gaps)


async def scenario(workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ticker = Ticker()
    ticker.start()
    async with da.local_cluster(3, [Sleepy, Jar], LAYOUT, overrides=FAST, workdir=str(workdir)) as cluster:
        contacts = [cluster.address(n) for n in (1, 2, 3)]
        async with await da.Client.open(
            contacts, cluster=cluster.cluster, certs_dir=cluster.certs_dir, name=CLIENT_NAME, max_outstanding=2
        ) as client:
            sleepy = client.handle(Sleepy).aio
            started = time.monotonic()
            sent = [await sleepy.nap.send(NAP) for _ in range(4)]  # calls 3 and 4 await room
            out["sent_after"] = time.monotonic() - started
            out["naps"] = [sorted(set((await r).values())) for r in sent]
            jar = client.handle(Jar).aio
            results = await jar.put.send("k", b"v")
            out["put"] = await results
            out["persisted"] = (await results.persisted_async(timeout=30), results.version)
            out["get"] = await jar.get("k")
            out["ticks_before_block"] = len(ticker.gaps)
    out["max_gap"] = await ticker.stop()
    out["ticks"] = len(ticker.gaps)
    return out


def test_asyncio_api_keeps_the_event_loop_running(tmp_path: Path) -> None:
    out = asyncio.run(scenario(tmp_path))
    # The window of 2 held calls 3 and 4 back until calls 1 and 2 were answered...
    assert out["sent_after"] >= 2 * NAP * 0.9, out
    assert out["naps"] == [[1], [2], [3], [4]], out
    assert set(out["put"].values()) == {1} and len(out["put"]) == 3, out
    version, expected = out["persisted"]
    assert version == expected and version >= 0, out
    assert list(out["get"].values()) == [b"v"], out
    # ...while the loop went on: cluster start and stop, connect, room, replies, persistence.
    assert out["max_gap"] < MAX_GAP, f"the event loop stalled for {out['max_gap']:.3f} s"
    assert out["ticks"] > 100, out


def test_the_blocking_api_would_stall_the_loop(tmp_path: Path) -> None:
    """The control: the same window wait through the blocking API holds the loop, which is
    what the ticker is there to see."""

    async def blocking() -> float:
        layout = da.Layout({Sleepy: da.ShardPolicy(min_nodes=3)})
        with da.local_cluster(3, [Sleepy], layout, overrides=FAST, workdir=str(tmp_path)) as cluster:
            with cluster.new_client(max_outstanding=1) as client:
                h = client.handle(Sleepy)
                ticker = Ticker()
                ticker.start()
                await asyncio.sleep(0.05)
                first = h.nap(NAP)
                h.nap(0.0)  # waits for room right here, on the loop's thread
                first.get(timeout=30)
                return await ticker.stop()

    assert asyncio.run(blocking()) >= NAP * 0.8


def test_async_handles_of_a_member_and_unknown_methods(tmp_path: Path) -> None:
    from tests.api.groups import running_groups

    async def run(groups: list[da.Group]) -> None:
        h = groups[0].handle(Sleepy).aio
        assert sorted(set((await h.nap(0.0)).values())) == [1]
        with pytest.raises(da.UnknownMethod):
            h.sleep_forever  # noqa: B018 - the lookup itself fails, as for plain handles

    with running_groups(
        3, [Sleepy], da.Layout({Sleepy: da.ShardPolicy(min_nodes=3)}), "aio-test", 1000, data_root=tmp_path
    ) as groups:
        asyncio.run(run(groups))
