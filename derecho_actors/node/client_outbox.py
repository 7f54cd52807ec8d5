"""What this node sends its clients, queued per connection during a loop turn and written at its
end in one write per connection.

Refusals this node makes itself (a call too large, a limit reached, a shard that cannot run)
are gathered too: a client's refusals of one loop turn go in one ``ReplyBatch`` per view, and
a refusal repeated word for word is encoded once (``codec.encode_refusal``), so a burst of
refused calls costs the loop little more per call than reading it. Runs on the node's loop.
"""

from __future__ import annotations

from derecho_actors.wire.messages import ReplyBatch, ReplyEntry, ReplyTo, encode
from runtime.errors import DerechoError
from runtime.node_api import ClientConn, NodeHandle


class ClientOutbox:
    def __init__(self, node: NodeHandle) -> None:
        self.node = node
        self.node_id = node.node_id
        self._out: dict[ClientConn, list[bytes]] = {}
        self._refused: dict[ClientConn, list[tuple[int, ReplyEntry]]] = {}  # per client: (vid, refusal)
        self._scheduled = False

    def send(self, conn: ClientConn, data: bytes) -> None:
        """Queue a message for a client connection; all queued in one loop turn go together."""
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
                queued.append(encode(ReplyBatch(self.node_id, vid, me, tuple(entries))))
        out, self._out = self._out, {}
        for conn, messages in out.items():
            self.node.reply_client(conn, *messages)
