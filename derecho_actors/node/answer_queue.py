"""Answers on their way out of this node, per destination, in bounded pieces and bounded turns.

Answers are queued as batches (``ReplyBatch``, ``AnswerBatch``) and encoded only when written,
in messages of about ``PIECE_BYTES`` of values, at most ``TURN_BYTES`` per loop turn in all,
round-robin among the destinations with answers waiting; a destination that cannot take more
now (``ready`` says no: a member's link is backed up) waits without holding the others up.

Why, measured (3 TLS nodes, one client pipelining P2P calls): answers handed to the loop
together were encoded as one message and written in one callback, so 400 calls for 1 MB each
(or 2,000 for 200 KB relayed to a replica) held a node's loop for 0.3-0.7 s in one ``packb``,
``frame`` and TLS write, its peers removed it for its silence, and a client's replies took
four or five copies of themselves at once. In pieces and turns, heartbeats and SST rows are
handled between the turns, one piece is the largest message, and what a destination does not
take is never encoded. Runs on the node's loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Generic, TypeVar, Union

from derecho_actors.wire.messages import AnswerBatch, ReplyBatch, encode
from runtime.node_api import NodeHandle

log = logging.getLogger(__name__)

PIECE_BYTES = 256 << 10
"""About this many bytes of answers' values per message and per write: large enough that a
turn of small answers is one message and one write, small enough that a destination that stops
taking writes costs at most a piece beyond its limit."""

TURN_BYTES = 2 << 20
"""At most about this many bytes per loop turn in all (encoding and TLS cost ~1-2 ms per MiB
here), so members' heartbeats and SST rows are handled between the turns of a large answer."""

LINK_READY_BYTES = 1 << 20
"""Messages for a member wait while its link holds this much unsent: at loopback TLS speed a
heartbeat then waits a few milliseconds behind them at most, not seconds."""

RETRY_S = 0.002
"""When every destination with answers waiting is backed up: look again this much later (a
loop turn each time would spin the loop)."""

ENTRY_BYTES = 24  # an answer's msgpack overhead beside its value, near enough for a bound
_value = itemgetter(2)  # an answer's value, in a ReplyEntry and a MergedEntry alike

Batch = Union[ReplyBatch, AnswerBatch]
Queued = Union[bytes, ReplyBatch, AnswerBatch]  # an encoded message, or answers encoded when written
D = TypeVar("D")  # a destination: a client connection or a member id (dict keys)


def pieces(batch: Batch, most: int = PIECE_BYTES) -> Iterator[Batch]:
    """``batch`` as batches of the same answers in order, each with about ``most`` bytes of
    values or fewer (one answer larger than that is a piece of its own); ``batch`` itself when
    it is small enough."""
    if _one_piece(batch, most):  # the common case, summed in C: no loop over the answers in Python
        if batch.entries:
            yield batch
        return
    entries = batch.entries
    size, start = 0, 0
    for i, entry in enumerate(entries):
        size += len(entry[2]) + ENTRY_BYTES
        if size >= most:
            yield batch if start == 0 and i + 1 == len(entries) else part(batch, start, i + 1)
            start, size = i + 1, 0
    if start == 0:
        if entries:
            yield batch
    elif start < len(entries):
        yield part(batch, start, len(entries))


def _one_piece(item: Queued, most: int) -> bool:
    """Whether ``pieces`` would leave ``item`` whole. The sizes only grow, so the running sum
    reaches ``most`` exactly when the total does: summed in C, not an answer at a time in
    Python (that loop cost a replica about what encoding the answers did, measured)."""
    if isinstance(item, bytes):
        return len(item) < most
    entries = item.entries
    return sum(map(len, map(_value, entries))) + ENTRY_BYTES * len(entries) < most


def member_queue(node: NodeHandle) -> AnswerQueue[int]:
    """Messages to members (answers to their calls, clients' calls relayed to them), paced by
    their links: written while a link holds less than ``LINK_READY_BYTES``, so heartbeats and
    SST rows never queue behind a burst of them (a client's 1 GB of relayed arguments held a
    contact's loop 0.2 s in TLS at once)."""

    def ready(member: int) -> bool:
        return node.link_backlog(member) < LINK_READY_BYTES

    def write(member: int, messages: list[bytes]) -> bool:
        for message in messages:
            node.send_app(member, message)
        return True  # a member that left: the transport drops what is sent to it

    return AnswerQueue(node, write, ready)


def part(batch: Batch, start: int, end: int) -> Batch:
    """``batch`` with its answers ``start:end`` only."""
    if isinstance(batch, AnswerBatch):
        return AnswerBatch(batch.vid, batch.replicas, batch.entries[start:end])
    return ReplyBatch(batch.node, batch.vid, batch.replicas, batch.entries[start:end])


class AnswerQueue(Generic[D]):
    """``write(dest, messages)`` sends encoded messages in one write and says whether ``dest``
    still takes writes (False: it is gone, and the rest queued for it is dropped unencoded);
    ``ready(dest)`` says whether to write to it now."""

    def __init__(
        self,
        node: NodeHandle,
        write: Callable[[D, list[bytes]], bool],
        ready: Callable[[D], bool] | None = None,
        piece_bytes: int = PIECE_BYTES,
        turn_bytes: int = TURN_BYTES,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        """``before_flush``: run first in each flush (to queue what was gathered in the turn)."""
        self.node = node
        self.write = write
        self.ready = ready
        self.piece_bytes = piece_bytes
        self.turn_bytes = turn_bytes
        self.before_flush = before_flush
        self.queued: dict[D, deque[Queued]] = {}  # in the order they are served
        self._scheduled = False
        self.unsent = 0  # answers never encoded: their destination took no more writes first

    def send(self, dest: D, item: Queued) -> None:
        """Queue a message (encoded, or a batch of answers encoded when written) for ``dest``,
        behind what is queued for it."""
        queued = self.queued.get(dest)
        if queued is not None:
            queued.append(item)
            return
        self.queued[dest] = deque((item,))
        self.schedule()

    def offer(self, dest: D, item: Queued) -> None:
        """Write ``item`` now if nothing waits for ``dest``, ``dest`` is ready and ``item`` is
        one piece (as everything small always went: no added turn of latency); else queue it
        behind what waits, so what ``dest`` gets stays in order."""
        if dest in self.queued or not _one_piece(item, self.piece_bytes) or (self.ready and not self.ready(dest)):
            self.send(dest, item)
        elif not self.write(dest, [item if isinstance(item, bytes) else encode(item)]):
            self.unsent += 0 if isinstance(item, bytes) else len(item.entries)

    def forget(self, dest: D) -> None:
        """``dest`` is gone: nothing queued for it goes out."""
        self.queued.pop(dest, None)

    def waiting(self) -> int:
        """Destinations with something still to be written."""
        return len(self.queued)

    def schedule(self, delay: float = 0) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.node.call_later(delay, self.flush)

    def flush(self) -> None:
        if self.before_flush is not None:
            self.before_flush()  # what it queues is written now: no other flush is scheduled for it
        self._scheduled = False
        budget = self.turn_bytes
        held = False  # a destination skipped for now
        for dest in list(self.queued):
            if budget <= 0:
                break
            if self.ready is not None and not self.ready(dest):
                held = True
                continue
            queued = self.queued.pop(dest)
            budget -= self._write(dest, queued, budget)
            if queued:
                self.queued[dest] = queued  # the rest next turn, after the others
        if self.queued:
            self.schedule(RETRY_S if held and budget == self.turn_bytes else 0)

    def _write(self, dest: D, queued: deque[Queued], budget: int) -> int:
        """Write from the front of ``queued`` to ``dest``, in writes of about ``piece_bytes``,
        until ``budget`` bytes are spent; a batch cut short leaves its unwritten answers at the
        front. Returns the bytes written."""
        most = self.piece_bytes
        group: list[bytes] = []
        size = spent = 0
        while queued and spent + size < budget:
            item = queued.popleft()
            if isinstance(item, bytes):
                group.append(item)
                size += len(item)
            else:
                done = 0
                for piece in pieces(item, most):
                    data = encode(piece)
                    group.append(data)
                    size += len(data)
                    done += len(piece.entries)
                    if spent + size >= budget and done < len(item.entries):
                        queued.appendleft(part(item, done, len(item.entries)))
                        break
                    if size >= most:
                        if not self.write(dest, group):
                            self._dropped(dest, queued, len(item.entries) - done)
                            return spent + size
                        spent, group, size = spent + size, [], 0
            if size >= most:
                if not self.write(dest, group):
                    self._dropped(dest, queued, 0)
                    return spent + size
                spent, group, size = spent + size, [], 0
        if group and not self.write(dest, group):
            self._dropped(dest, queued, 0)
        return spent + size

    def _dropped(self, dest: D, queued: deque[Queued], left: int) -> None:
        """``dest`` takes no more writes: ``left`` answers of the batch being written and
        everything still queued are not sent."""
        n = left + sum(len(item.entries) for item in queued if not isinstance(item, bytes))
        queued.clear()
        if n:
            self.unsent += n
            log.debug("%d answers to %s not sent: it takes no more writes", n, dest)
