"""What this node sends its clients, queued per connection during a loop turn and written at its
end, one write per connection for what a turn usually holds.

Refusals this node makes itself (a call too large, a limit reached, a shard that cannot run)
are gathered too: a client's refusals of one loop turn go in one ``ReplyBatch`` per view, and
a refusal repeated word for word is encoded once (``codec.encode_refusal``), so a burst of
refused calls costs the loop little more per call than reading it.

Answers are queued as batches and encoded only when written, in messages of about
``PIECE_BYTES`` of values, written one group of pieces at a time: a client whose accepted
calls make a large turn of answers (600 calls for 32 KiB each) and that does not read them is
cut off by the transport after its ``client_max_backlog_bytes``, and what is left for it is
then never encoded, framed or encrypted. Encoding the turn's answers whole made four or five
copies of them at once (the encoded batch, its frame, the write, TLS's), which a client could
multiply by pipelining. Runs on the node's loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Union

from derecho_actors.wire.messages import AnswerBatch, ReplyBatch, ReplyEntry, ReplyTo, encode
from runtime.errors import DerechoError
from runtime.node_api import ClientConn, NodeHandle

log = logging.getLogger(__name__)

PIECE_BYTES = 256 << 10
"""About this many bytes of answers' values per message and per write to a client: large
enough that a turn of small answers is one message and one write, small enough that a cut-off
client costs at most a few pieces beyond its backlog limit."""

ENTRY_BYTES = 24  # an answer's msgpack overhead beside its value, near enough for a bound

Batch = Union[ReplyBatch, AnswerBatch]
Queued = Union[bytes, ReplyBatch, AnswerBatch]  # an encoded message, or answers encoded when written


def pieces(batch: Batch, most: int = PIECE_BYTES) -> Iterator[Batch]:
    """``batch`` as batches of the same answers in order, each with about ``most`` bytes of
    values or fewer (one answer larger than that is a piece of its own); ``batch`` itself when
    it is small enough."""
    entries = batch.entries
    size, start = 0, 0
    for i, entry in enumerate(entries):
        size += len(entry[2]) + ENTRY_BYTES
        if size >= most:
            yield batch if start == 0 and i + 1 == len(entries) else _part(batch, start, i + 1)
            start, size = i + 1, 0
    if start == 0:
        if entries:
            yield batch
    elif start < len(entries):
        yield _part(batch, start, len(entries))


def _part(batch: Batch, start: int, end: int) -> Batch:
    """``batch`` with its answers ``start:end`` only."""
    if isinstance(batch, AnswerBatch):
        return AnswerBatch(batch.vid, batch.replicas, batch.entries[start:end])
    return ReplyBatch(batch.node, batch.vid, batch.replicas, batch.entries[start:end])


class ClientOutbox:
    def __init__(self, node: NodeHandle, piece_bytes: int = PIECE_BYTES) -> None:
        self.node = node
        self.node_id = node.node_id
        self.piece_bytes = piece_bytes
        self._out: dict[ClientConn, list[Queued]] = {}
        self._refused: dict[ClientConn, list[tuple[int, ReplyEntry]]] = {}  # per client: (vid, refusal)
        self._scheduled = False
        self.unsent = 0  # answers never encoded: their client was cut off (or closed) first

    def send(self, conn: ClientConn, data: Queued) -> None:
        """Queue a message (encoded, or a batch of answers encoded when written) for a client
        connection; all queued in one loop turn go together."""
        queued = self._out.get(conn)
        if queued is not None:
            queued.append(data)
            return
        self._out[conn] = [data]
        self._schedule()

    def refuse(self, conn: ClientConn, to: ReplyTo, refusal: DerechoError) -> None:
        """Tell a client this node refused its call ``to`` (``to.caller`` is this node)."""
        r = to.refused(self.node_id, refusal)
        queued = self._refused.get(conn)
        if queued is None:
            queued = self._refused[conn] = []
            self._schedule()
        queued.append((r.vid, (r.call_id, False, r.value, r.origin, r.version)))

    def forget(self, conn: ClientConn) -> None:
        """The connection closed: nothing queued for it goes out."""
        self._out.pop(conn, None)
        self._refused.pop(conn, None)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.node.call_later(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        refused, self._refused = self._refused, {}
        me = (self.node_id,)
        for conn, items in refused.items():
            by_vid: dict[int, list[ReplyEntry]] = {}
            for vid, entry in items:
                by_vid.setdefault(vid, []).append(entry)
            queued = self._out.setdefault(conn, [])
            for vid, entries in by_vid.items():
                queued.append(ReplyBatch(self.node_id, vid, me, tuple(entries)))
        out, self._out = self._out, {}
        for conn, messages in out.items():
            self._write(conn, messages)

    def _write(self, conn: ClientConn, queued: list[Queued]) -> None:
        """``queued`` to ``conn`` in writes of about ``piece_bytes``; once the connection
        stops taking writes (the client was cut off for not reading, or it closed), the rest
        is dropped before it is encoded."""
        most = self.piece_bytes
        group: list[bytes] = []
        size = written = 0  # bytes in ``group``; answers written or in ``group``
        for item in queued:
            parts = (
                [(item, 0)] if isinstance(item, bytes) else ((encode(p), len(p.entries)) for p in pieces(item, most))
            )
            for data, answers in parts:
                group.append(data)
                size += len(data)
                written += answers
                if size >= most:
                    if not self.node.reply_client(conn, *group):
                        self._dropped(conn, queued, written)
                        return
                    group, size = [], 0
        if group:
            self.node.reply_client(conn, *group)

    def _dropped(self, conn: ClientConn, queued: list[Queued], written: int) -> None:
        """The connection took no more writes after ``written`` of the answers in ``queued``."""
        n = sum(len(item.entries) for item in queued if not isinstance(item, bytes)) - written
        if n:
            self.unsent += n
            log.debug("%d answers to %s not sent: the connection takes no more writes", n, conn)
