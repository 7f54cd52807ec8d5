"""What the application sent that the core's window has not taken yet, per shard, in order.

The app may send before the node has a core (restarting, joining) or faster than a shard's
window opens; nothing is dropped. Payloads go to the core as soon as it takes them: at once
when nothing of the shard waits ahead of them, else when a window opens or a view is installed.
"""

from __future__ import annotations

from typing import Sequence

from runtime.core.layout import ShardId
from runtime.core.node_core import NodeCore


class AppQueue:
    def __init__(self) -> None:
        self._queues: dict[ShardId, list[bytes]] = {}

    def queued(self, shard: ShardId) -> int:
        """Payloads of ``shard`` waiting for the window."""
        q = self._queues.get(shard)
        return len(q) if q else 0

    def shards(self) -> list[ShardId]:
        """Every shard the app has sent in (a new view may open the window of any of them)."""
        return list(self._queues)

    def add(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """Keep ``payloads`` behind what waits already (no core to offer them to yet)."""
        self._queues.setdefault(shard, []).extend(payloads)

    def put_back(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        """``payloads`` the core took and trimmed unsent (a view change): ahead of the rest."""
        self._queues.setdefault(shard, [])[0:0] = payloads

    def send(self, shard: ShardId, payloads: Sequence[bytes], core: NodeCore, now: float) -> bool:
        """Offer ``payloads`` to ``core`` behind what of ``shard`` waits already, keeping what it
        does not take; returns whether it took any."""
        q = self._queues.get(shard)
        if q is None:
            q = self._queues[shard] = []
        if not q and shard in core.shards:
            # Nothing queued ahead of these: offer them as they are, queue what is left.
            taken = core.send(shard, payloads, now)
            if taken < len(payloads):
                q.extend(payloads[taken:] if taken else payloads)
            return taken > 0
        q.extend(payloads)
        return self.offer(shard, core, now)

    def offer(self, shard: ShardId, core: NodeCore, now: float) -> bool:
        """Offer what of ``shard`` waits to ``core``; returns whether it took any."""
        q = self._queues.get(shard)
        if not q or shard not in core.shards:
            return False
        taken = core.send(shard, q, now)
        if taken:
            del q[:taken]  # the core copied what it took
        return taken > 0
