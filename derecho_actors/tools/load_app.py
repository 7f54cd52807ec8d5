"""A built-in application for nodes run from the command line: a load generator that
multicasts numbered messages, and a delivery log.

It is what ``derecho-actors node --send N`` runs: the protocol alone, without replicated
types. The multicast demo, the node driver's multi-process tests and ``bench.multicast`` use
it to check that every node delivers the same sequence: each delivered message becomes one
line of the delivery log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

from runtime.core.effects import Delivery
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.drivers.node import AppHooks, NodeDriver

log = logging.getLogger("derecho.load")


def payload(node_id: int, seq: int, size: int) -> bytes:
    """``<node>:<seq>:`` padded with dots to ``size`` bytes (longer if the prefix needs it)."""
    return (b"%d:%d:" % (node_id, seq)).ljust(size, b".")


def payloads(node_id: int, first: int, n: int, size: int) -> list[bytes]:
    """``payload(node_id, seq, size)`` for ``seq`` in ``first .. first + n - 1``."""
    head = b"%d:" % node_id + b"%d:"
    return [(head % seq).ljust(size, b".") for seq in range(first, first + n)]


def _tag(p: bytes | memoryview) -> bytes:
    """What a log line shows of a payload: ``<node>:<seq>`` of a load payload, else its
    first 32 bytes in hex. (A large object arrives as a memoryview: its head is read.)"""
    if type(p) is not bytes:
        p = bytes(p[:64])
    first = p.find(b":")
    second = p.find(b":", first + 1) if first >= 0 else -1
    if second < 0:
        return p[:32].hex().encode()
    return p[:second]


class LoadApp:
    """Sends ``count`` messages into this node's first shard, as fast as the window allows
    (``batch`` per submit), starting once a view has ``wait_members`` members and gives this
    node a shard; logs deliveries."""

    def __init__(
        self, node_id: int, count: int, size: int, log_path: Path | None, batch: int = 100, wait_members: int = 1
    ) -> None:
        self.node_id = node_id
        self.wait_members = wait_members
        self.go = wait_members <= 1
        self.count = count
        self.size = size
        self.batch = batch
        self.sent = 0
        self.delivered = 0
        self.driver: NodeDriver | None = None
        self.shard: ShardId | None = None
        self._log: BinaryIO | None = open(log_path, "ab", buffering=1 << 16) if log_path else None

    def hooks(self) -> AppHooks:
        return AppHooks(on_deliver=self.on_deliver, on_view=self.on_view, on_window_open=self.on_window_open)

    def on_view(self, view: View) -> None:
        if view.n >= self.wait_members:
            self.go = True
        mine = view.my_shards(self.node_id)
        self.shard = mine[0] if mine else None
        self._pump()

    def on_window_open(self, shard: ShardId) -> None:
        self._pump()

    def _pump(self) -> None:
        """Keep the driver's queue topped up by one batch beyond what the window takes."""
        if self.driver is None or self.shard is None or self.sent >= self.count or not self.go:
            return
        driver, shard = self.driver, self.shard
        # Re-read the queue after each submit: while the window takes whole batches the queue
        # stays empty, so the window gets all it can take, not two batches per event.
        while self.sent < self.count and driver.queued(shard) < self.batch * 2:
            n = min(self.batch, self.count - self.sent)
            driver.send_ordered(shard, payloads(self.node_id, self.sent, n, self.size))
            self.sent += n

    def on_deliver(self, d: Delivery) -> None:
        """One line per message, ``<vid> <shard> <global index> <sender> <sender index> <tag>``,
        the whole batch in one write."""
        msgs = d.messages
        self.delivered += len(msgs)
        if self._log is not None:
            line = f"{d.vid} {d.shard} ".encode().replace(b"%", b"%%") + b"%d %d %d %s\n"
            try:  # load payloads, "<node>:<seq>:...": two finds and a slice per message
                # (a large object arrives as a memoryview, which has no index(): the slow path)
                text = b"".join([line % (g, s, k, p[: p.index(b":", p.index(b":") + 1)]) for g, s, k, p in msgs])  # type: ignore[misc]
            except (ValueError, AttributeError):  # some other payload in the batch
                text = b"".join([line % (g, s, k, _tag(p)) for g, s, k, p in msgs])
            if not text.isascii():  # slow path: tags are shown as ASCII, the shard as it is
                head = f"{d.vid} {d.shard} "
                text = "".join(
                    [f"{head}{g} {s} {k} {_tag(p).decode('ascii', 'replace')}\n" for g, s, k, p in msgs]
                ).encode()
            self._log.write(text)
            self._log.flush()  # one write per delivered batch: readers see whole batches
        self._pump()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
