"""The core's timer (``NodeIO.wake_at``): each ask is the core's whole answer, so a timer set
for an earlier ask that the core no longer waits for re-arms instead of ticking (a tick is a
full step and flush of the core), and an earlier ask still moves the timer forward."""

from __future__ import annotations

import asyncio

import pytest

from runtime.drivers.node_io import NodeIO

pytestmark = pytest.mark.timeout(30)


def make_io(ticks: list[float]) -> NodeIO:
    loop = asyncio.get_running_loop()
    return NodeIO(loop, transport=None, on_flush=lambda: None, on_tick=lambda: ticks.append(loop.time()))  # type: ignore[arg-type]


def test_a_later_ask_replaces_an_earlier_one() -> None:
    async def main() -> tuple[float, list[float]]:
        ticks: list[float] = []
        io = make_io(ticks)
        t0 = io.loop.time()
        io.wake_at(t0 + 0.02)  # e.g. owed nulls ...
        io.wake_at(t0 + 0.12)  # ... that went out with a send: next due is later
        await asyncio.sleep(0.25)
        return t0, ticks

    t0, ticks = asyncio.run(main())
    assert len(ticks) == 1, ticks
    assert ticks[0] >= t0 + 0.12 - 1e-6


def test_an_earlier_ask_fires_at_its_time_and_once() -> None:
    async def main() -> tuple[float, list[float]]:
        ticks: list[float] = []
        io = make_io(ticks)
        t0 = io.loop.time()
        io.wake_at(t0 + 0.2)
        io.wake_at(t0 + 0.03)
        await asyncio.sleep(0.1)
        assert len(ticks) == 1 and t0 + 0.03 - 1e-6 <= ticks[0] < t0 + 0.2
        await asyncio.sleep(0.2)  # the core did not ask again: the earlier ask was its answer
        return t0, ticks

    _, ticks = asyncio.run(main())
    assert len(ticks) == 1, ticks


def test_none_changes_nothing_and_a_due_ask_ticks() -> None:
    async def main() -> list[float]:
        ticks: list[float] = []
        io = make_io(ticks)
        t0 = io.loop.time()
        io.wake_at(t0 + 0.03)
        io.wake_at(None)
        await asyncio.sleep(0.08)
        io.wake_at(io.loop.time() - 1.0)  # already due: ticks at once
        await asyncio.sleep(0.02)
        return ticks

    assert len(asyncio.run(main())) == 2
