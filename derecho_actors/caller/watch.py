"""``Watch``: a subscriber's view of a shard's change events (``da.emit``), in order.

``for ev in client.watch(KV, shard=0, since=version)`` (or ``async for``) yields
:class:`~derecho_actors.replica.events.WatchEvent` objects. Underneath, the watch long-polls one
replica of the shard with the position of the last event it yielded (see ``replica.events``). When a
poll fails because its replica or contact went away, or it got no answer in time, the watch
asks again, from the same position, of whichever replica answers now: every replica has the
same events at the same positions, so nothing is skipped or repeated. Errors that retrying
cannot cure are raised: ``WatchHistoryLost`` (the position is older than what replicas keep),
``GroupClosed`` (the client or node was closed, or no contact answered for ``retry_for``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from derecho_actors.caller.results import QueryResults
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import LAST, PollArgs, Position, WatchEvent
from runtime.core.layout import ShardId
from runtime.errors import CallTimeout, GroupClosed, ReplicaLost, ShardUnavailable, WatchHistoryLost

if TYPE_CHECKING:
    from derecho_actors.caller.handles import Caller
    from derecho_actors.model.decorators import TypeSpec

log = logging.getLogger("derecho.watch")

SendPoll = Callable[[PollArgs], QueryResults]
_ids = itertools.count(random.getrandbits(40))


def start_position(since: int | tuple[int, int] | WatchEvent | None) -> Position | None:
    """``since``: None (events from now on), a version (events of later calls), a position
    ``(version, index)`` or an event (events after it)."""
    if since is None:
        return None
    if isinstance(since, WatchEvent):
        return since.position
    if isinstance(since, tuple):
        return (int(since[0]), int(since[1]))
    if isinstance(since, int) and not isinstance(since, bool):
        return (since, LAST)
    raise TypeError(f"watch(since=...) takes a version (int), a (version, index) pair or a WatchEvent, not {since!r}")


class Watch:
    """The events of one shard after a position. Iterate it (blocking, or ``async for``);
    ``close()`` ends it. ``position`` is where it stands: pass it as ``since`` to resume
    (in this process or another) without a gap."""

    def __init__(
        self,
        send: SendPoll,
        serializer: str,
        description: str,
        since: Position | None,
        *,
        hold: float = 5.0,
        batch: int = 1000,
    ) -> None:
        self._send = send
        self._serializer = serializer
        self.description = description
        self.position = since
        self._hold = hold
        self._batch = batch
        self._id = next(_ids)
        self._buffer: deque[WatchEvent] = deque()
        self._closed = False
        self._lock = threading.Lock()  # one poll at a time
        self.retries = 0  # polls that failed and were sent again (failovers, for tests and logs)

    @classmethod
    def over(
        cls,
        caller: Caller,
        spec: TypeSpec,
        shard: ShardId,
        since: int | tuple[int, int] | WatchEvent | None = None,
        *,
        node: int | None = None,
        hold: float = 5.0,
    ) -> Watch:
        """The watch of ``shard`` through any ``Caller`` (a member's router, a ``Client``):
        ``node`` polls that replica (None: the caller picks)."""
        what = f"watch of {shard}"
        return cls(
            lambda poll: caller.watch_poll(shard, what, poll, node),
            spec.serializer,
            what,
            start_position(since),
            hold=hold,
        )

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ blocking side
    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        while not self._buffer:
            if self._closed:
                raise StopIteration
            self.poll()
        return self._buffer.popleft()

    def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            if self._closed:
                raise GroupClosed(f"{self.description} was closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.poll(left)
        return self._buffer.popleft()

    def poll(self, wait: float | None = None) -> int:
        """One long poll (at most ``wait`` seconds of holding): the number of new events
        buffered. Retries what a failover or a lost answer interrupted."""
        hold = self._hold if wait is None else max(0.0, min(self._hold, wait))
        with self._lock:
            results = self._send(PollArgs(self._id, self.position, self._batch, hold))
            try:
                answers = results.get(timeout=hold + 10.0)
            except WatchHistoryLost:
                raise
            except (ReplicaLost, ShardUnavailable, CallTimeout) as exc:
                self.retries += 1
                log.info("%s: poll failed (%s); asking again from %s", self.description, exc, self.position)
                time.sleep(min(1.0, 0.05 * self.retries) * random.uniform(0.5, 1.5))
                return 0
            (cursor, events) = next(iter(answers.values()))
            for version, index, payload in events:
                if self.position is not None and (version, index) <= self.position:
                    continue  # never twice (an answer to an earlier poll, for instance)
                self._buffer.append(WatchEvent(version, index, _codec.decode_result(payload, self._serializer)))
                self.position = (version, index)
            if self.position is None or cursor > self.position:
                self.position = cursor
            return len(events)

    # ------------------------------------------------------------------ asyncio side
    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await asyncio.to_thread(self.poll)
        return self._buffer.popleft()
