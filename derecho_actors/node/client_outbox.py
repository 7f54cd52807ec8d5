"""What this node sends its clients: per connection, in the order queued, in bounded pieces and
loop turns (``answer_queue``); a connection that stops taking writes (the transport cut the
client off for not reading its replies, or it closed) gets nothing more, and what was queued for
it is never encoded.

Refusals this node makes itself (a call too large, a limit reached, a shard that cannot run)
are gathered too: a client's refusals of one loop turn go in one ``ReplyBatch`` per view, and
a refusal repeated word for word is encoded once (``codec.encode_refusal``), so a burst of
refused calls costs the loop little more per call than reading it. Runs on the node's loop.
"""

from __future__ import annotations

from derecho_actors.node.answer_queue import PIECE_BYTES, TURN_BYTES, AnswerQueue, Queued
from derecho_actors.wire.messages import ReplyBatch, ReplyEntry, ReplyTo
from runtime.errors import DerechoError
from runtime.node_api import ClientConn, NodeHandle


class ClientOutbox:
    def __init__(self, node: NodeHandle, piece_bytes: int = PIECE_BYTES, turn_bytes: int = TURN_BYTES) -> None:
        self.node = node
        self.node_id = node.node_id
        self._refused: dict[ClientConn, list[tuple[int, ReplyEntry]]] = {}  # per client: (vid, refusal)
        self.queue: AnswerQueue[ClientConn] = AnswerQueue(
            node, self._write, None, piece_bytes, turn_bytes, before_flush=self._gather_refusals
        )

    @property
    def unsent(self) -> int:
        """Answers never encoded: their client was cut off (or closed) first."""
        return self.queue.unsent

    def send(self, conn: ClientConn, data: Queued) -> None:
        """Queue a message (encoded, or a batch of answers encoded when written) for a client
        connection, behind what is queued for it; what one loop turn queues goes together."""
        self.queue.send(conn, data)

    def offer(self, conn: ClientConn, data: Queued) -> None:
        """Write a message to a client now when nothing is queued or gathered for it (it
        waits for nothing else from this node, so there is nothing to batch it with: waiting for
        the next loop turn would only add a turn of latency, Kafka's producer's rule), else
        queue it as :meth:`send` does, so what the client gets stays in order."""
        if conn in self._refused:
            self.queue.send(conn, data)
        else:
            self.queue.offer(conn, data)

    def refuse(self, conn: ClientConn, to: ReplyTo, refusal: DerechoError) -> None:
        """Tell a client this node refused its call ``to`` (``to.caller`` is this node)."""
        r = to.refused(self.node_id, refusal)
        queued = self._refused.get(conn)
        if queued is None:
            queued = self._refused[conn] = []
            self.queue.schedule()
        queued.append((r.vid, (r.call_id, False, r.value, r.origin, r.version)))

    def forget(self, conn: ClientConn) -> None:
        """The connection closed: nothing queued for it goes out."""
        self.queue.forget(conn)
        self._refused.pop(conn, None)

    def waiting(self) -> int:
        """Clients with something still to be written (status, tests)."""
        return self.queue.waiting()

    def _write(self, conn: ClientConn, messages: list[bytes]) -> bool:
        return self.node.reply_client(conn, *messages)

    def _gather_refusals(self) -> None:
        """The turn's refusals, one ``ReplyBatch`` per client and view, behind its answers."""
        refused, self._refused = self._refused, {}
        me = (self.node_id,)
        for conn, items in refused.items():
            by_vid: dict[int, list[ReplyEntry]] = {}
            for vid, entry in items:
                by_vid.setdefault(vid, []).append(entry)
            for vid, entries in by_vid.items():
                self.queue.send(conn, ReplyBatch(self.node_id, vid, me, tuple(entries)))
