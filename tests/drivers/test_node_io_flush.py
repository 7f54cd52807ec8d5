"""One flush per loop turn, after the turn's input (runtime.drivers.node_io, issue 21).

A flush asked for while frames of several peers are read in one turn must carry the effects
of all of them (one write per peer, one wake-up of each), and a flush must never be lost or
run twice for one request.
"""

from __future__ import annotations

import asyncio

import pytest

from runtime.drivers.node_io import NodeIO

pytestmark = pytest.mark.timeout(30)


def make_io(log: list[str], busy: bool = True) -> NodeIO:
    """``busy``: every flush counts as recent (the loop never idle); else the loop is always
    idle (``node_io.IDLE_S``, for ``flush_if_idle``), so the tests do not depend on the
    machine's speed."""
    loop = asyncio.get_running_loop()
    io = NodeIO(loop, transport=None, on_flush=lambda: log.append("flush"), on_tick=lambda: None)  # type: ignore[arg-type]
    io.idle_s = 3600.0 if busy else 0.0
    return io


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_flush_waits_for_the_callbacks_ready_in_its_turn() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        io = make_io(log, busy=False)  # even an idle loop: the turn's input goes first
        loop = asyncio.get_running_loop()

        def frames(name: str) -> None:
            log.append(name)
            io.schedule_flush()

        loop.call_soon(frames, "peer 2")
        await asyncio.sleep(0)  # peer 2's frames ran and asked for a flush ...
        loop.call_soon(frames, "peer 3")  # ... and peer 3's became ready before it ran
        await settle()
        return log

    assert asyncio.run(main()) == ["peer 2", "peer 3", "flush"]


@pytest.mark.parametrize("busy", [False, True])
def test_flush_if_idle_flushes_at_once_only_when_idle(busy: bool) -> None:
    async def main() -> tuple[list[str], list[str]]:
        log: list[str] = []
        io = make_io(log, busy)
        io.flush_now()
        io.flush_if_idle()  # nothing scheduled: nothing to do
        io.schedule_flush()
        io.flush_if_idle()
        at_once = list(log)
        await settle()  # the scheduled flush: nothing left when it ran at once, else it runs
        return at_once, log

    at_once, log = asyncio.run(main())
    assert at_once == (["flush"] if busy else ["flush", "flush"])
    assert log == ["flush", "flush"]


def test_flush_runs_once_per_request_and_never_is_lost() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        io = make_io(log)
        io.schedule_flush()
        io.schedule_flush()  # one pending at most
        await settle()
        io.schedule_flush()
        io.flush_now()  # a timer flushed meanwhile: the pending one has nothing left to do
        await settle()
        io.schedule_flush()
        await settle()
        return log

    assert asyncio.run(main()) == ["flush", "flush", "flush"]


def test_input_without_pause_cannot_hold_a_flush_back() -> None:
    async def main() -> tuple[list[str], int]:
        log: list[str] = []
        io = make_io(log)
        loop = asyncio.get_running_loop()
        busy = {"n": 0}

        def chatter() -> None:  # a callback ready in every turn, for ever
            busy["n"] += 1
            if busy["n"] < 50:
                loop.call_soon(chatter)

        loop.call_soon(chatter)
        io.schedule_flush()
        await settle()
        return log, busy["n"]

    log, turns = asyncio.run(main())
    assert log == ["flush"] and turns < 50
