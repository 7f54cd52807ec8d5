"""Stable reads on the node's loop: the latest mark the engine reported per shard, and the reads
waiting at the replica for it (see ``replica.reads`` for what a stable read is)."""

from __future__ import annotations

import collections
import threading

from derecho_actors.model.reads import ReadOptions
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.outbox import Outbox
from derecho_actors.replica.reads import Mark
from derecho_actors.replica.replica import P2PRequest, StableMark
from derecho_actors.wire.messages import ReplyTo
from runtime.core.layout import ShardId
from runtime.node_api import NodeHandle


class StableReads:
    """One shard's stable reads, on the node's loop: the latest mark the engine reported, and
    whether reads wait at the replica (only then are marks passed on to it, so a shard without
    stable reads pays one dict update per mark). Thread-safe :meth:`finished` is called by
    the replica as reads stop waiting."""

    SYNC_AFTER = 0.05
    """Seconds after which a read still waiting sends an empty multicast: it moves every
    member's delivered count (and so the mark) past what the replica applied, even when no
    other call comes (an idle shard, or a new view without traffic yet)."""
    GIVE_UP_TICKS = 200
    """Sync periods (10 s) after which a waiting read fails instead of holding the replica."""

    def __init__(self) -> None:
        self.mark: Mark = (-1, 0)
        self._lock = threading.Lock()
        self.waiting = 0
        self.seq = 0
        self.ticks = 0
        self.issued: collections.deque[tuple[int, int]] = collections.deque()  # (seq, tick) of reads sent
        self.timer = False

    def moved(self, vid: int, index: int) -> bool:
        """Note a mark; True if it is new."""
        if (vid, index) > self.mark:
            self.mark = (vid, index)
            return True
        return False

    def issue(self) -> int:
        """A read goes to the replica: its number."""
        with self._lock:
            self.waiting += 1
        self.seq += 1
        self.issued.append((self.seq, self.ticks))
        return self.seq

    def finished(self, n: int = 1) -> None:
        with self._lock:
            self.waiting -= n

    def tick(self) -> int:
        """One sync period passed: the highest read number that has waited too long (0: none)."""
        self.ticks += 1
        issued = self.issued
        if not self.waiting:
            issued.clear()
            return 0
        expire = 0
        while issued and self.ticks - issued[0][1] >= self.GIVE_UP_TICKS:
            expire = issued.popleft()[0]
        return expire


class StableReadBook:
    """Every shard's :class:`StableReads` on this node: sends a stable read to the replica with
    the latest mark, passes the engine's marks on while reads wait, and keeps the shard's
    delivered counts moving (an empty multicast every ``SYNC_AFTER``) until none waits."""

    def __init__(self, node: NodeHandle, host: ReplicaHost, outbox: Outbox) -> None:
        self.node = node
        self.host = host
        self.outbox = outbox
        self._shards: dict[ShardId, StableReads] = {}

    def _of(self, shard: ShardId) -> StableReads:
        stable = self._shards.get(shard)
        if stable is None:
            stable = self._shards[shard] = StableReads()
        return stable

    def read(self, shard: ShardId, to: ReplyTo, method: str, args: bytes, read: ReadOptions) -> bool:
        """Send a stable read to this node's replica of ``shard``; False if it holds none."""
        stable = self._of(shard)
        seq = stable.issue()
        request = P2PRequest(to.vid, to.caller, to.call_id, method, args, to.origin, read, stable.mark, seq, stable)
        if not self.host.tell(shard, request):
            stable.finished(1)
            return False
        if not stable.timer:
            stable.timer = True
            self.node.call_later(StableReads.SYNC_AFTER, self._tick, shard)
        return True

    def on_stable(self, shard: ShardId, vid: int, index: int) -> None:
        """The engine's ``AppHooks.on_stable``: every member of ``shard`` has delivered view
        ``vid``'s messages of global index below ``index``. Passed on to the replica only while
        stable reads wait there."""
        stable = self._of(shard)
        if stable.moved(vid, index) and stable.waiting > 0:
            self.host.tell(shard, StableMark(vid, index))

    def _tick(self, shard: ShardId) -> None:
        """While stable reads wait: an empty multicast, so every member's delivered count moves
        past what the replica applied even if no call comes; reads waiting too long fail."""
        stable = self._shards.get(shard)
        if stable is None:
            return
        expire = stable.tick()
        if stable.waiting <= 0 or not self.host.holds(shard):
            stable.timer = False
            return
        self.outbox.send_empty(shard)
        self.host.tell(shard, StableMark(*stable.mark, expire))
        self.node.call_later(StableReads.SYNC_AFTER, self._tick, shard)
