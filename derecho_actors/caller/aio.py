"""derecho-actors from asyncio code, without blocking the event loop.

Everything that may wait is an ``await``: a call's replies (``await results``), its
persistence (``await results.persisted_async()``), room in a client's window of outstanding
calls (``await handle.aio.put(...)``), connecting and closing (``await da.Client.open(...)``,
``async with``), a local cluster's start and stop (``async with da.local_cluster(...)``).
Blocking waits run on worker threads (``asyncio.to_thread``), so the loop keeps running
other tasks meanwhile; replies wake the loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Self

if TYPE_CHECKING:
    from derecho_actors.caller.results import QueryResults

TryCall = Callable[..., "QueryResults | None"]
ROOM_POLL = 0.5  # seconds a worker waits for room before the loop tries again


class AsyncMethod:
    """``handle.aio.<method>``: ``await m(*args)`` sends the call (awaiting room if the window
    is full) and returns every replica's answer, as ``QueryResults.get`` does;
    ``await m.send(*args)`` returns the ``QueryResults`` once the call is on its way (for
    pipelining, ``version`` and ``persisted_async``)."""

    def __init__(self, try_call: TryCall, wait_room: Callable[[float], bool] | None) -> None:
        self._try_call = try_call
        self._wait_room = wait_room

    async def send(self, *args: Any, **kwargs: Any) -> QueryResults:
        while True:
            results = self._try_call(*args, **kwargs)
            if results is not None:
                return results
            assert self._wait_room is not None  # only a window that can fill returns None
            await asyncio.to_thread(self._wait_room, ROOM_POLL)

    async def __call__(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        results = await self.send(*args, **kwargs)
        return await results


class AsyncHandle:
    """A handle's asyncio side (``handle.aio``): each method is an :class:`AsyncMethod`."""

    def __init__(self, method: Callable[[str], TryCall], wait_room: Callable[[float], bool] | None) -> None:
        self._method = method
        self._wait_room = wait_room

    def __getattr__(self, method: str) -> AsyncMethod:
        if method.startswith("__"):
            raise AttributeError(method)
        return AsyncMethod(self._method(method), self._wait_room)


class AsyncLifecycle:
    """For classes whose constructor connects or starts and whose ``close()`` stops:
    ``await Cls.open(...)`` constructs on a worker thread, and ``async with`` closes on one."""

    def close(self) -> None:
        raise NotImplementedError

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> Self:
        """Construct with these arguments without blocking the event loop."""
        return await asyncio.to_thread(cls, *args, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)
