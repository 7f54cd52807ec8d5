"""What the application sent that the core's window has not taken yet, per shard, in order.

The app may send before the node has a core (restarting, joining) or faster than a shard's
window opens; nothing is dropped. Payloads go to the core as soon as it takes them: at once
when nothing of the shard waits ahead of them, else when a window opens or a view is installed.

Large payloads (objects) are digested off the loop first (:mod:`runtime.drivers.object_digests`):
one waits here as a :class:`Pending` until its digest is done, and nothing of its shard behind
it is offered before it, so each shard's payloads reach the core in their submit order.
"""

from __future__ import annotations

from typing import Any, Sequence

from runtime.core.layout import ShardId
from runtime.core.node_core import NodeCore
from runtime.core.rdmc_descriptor import OwnPayload
from runtime.drivers.object_digests import ObjectDigests, Pending


class AppQueue:
    def __init__(self, digests: ObjectDigests | None = None) -> None:
        self._queues: dict[ShardId, list[Any]] = {}  # OwnPayload or Pending, in submit order
        self.digests = digests
        self._pending: dict[ShardId, int] = {}  # Pending entries per shard

    def queued(self, shard: ShardId) -> int:
        """Payloads of ``shard`` waiting for the window (or for their digest)."""
        q = self._queues.get(shard)
        return len(q) if q else 0

    def shards(self) -> list[ShardId]:
        """Every shard the app has sent in (a new view may open the window of any of them)."""
        return list(self._queues)

    def _digest(self, shard: ShardId, payloads: Sequence[Any]) -> Sequence[Any]:
        """``payloads`` with the large ones put to digest (as they are when none is large)."""
        digests = self.digests
        if digests is None or not digests.wants(payloads):
            return payloads
        wrapped = digests.wrap(shard, payloads)
        self._pending[shard] = self._pending.get(shard, 0) + sum(type(p) is Pending for p in wrapped)
        return wrapped

    def add(self, shard: ShardId, payloads: Sequence[OwnPayload]) -> None:
        """Keep ``payloads`` behind what waits already (no core to offer them to yet)."""
        self._queues.setdefault(shard, []).extend(self._digest(shard, payloads))

    def put_back(self, shard: ShardId, payloads: Sequence[OwnPayload]) -> None:
        """``payloads`` the core took and trimmed unsent (a view change): ahead of the rest
        (its own objects come back with their digests)."""
        self._queues.setdefault(shard, [])[0:0] = payloads

    def send(self, shard: ShardId, payloads: Sequence[OwnPayload], core: NodeCore, now: float) -> bool:
        """Offer ``payloads`` to ``core`` behind what of ``shard`` waits already, keeping what it
        does not take; returns whether it took any."""
        q = self._queues.get(shard)
        if q is None:
            q = self._queues[shard] = []
        payloads = self._digest(shard, payloads)
        if not q and shard in core.shards and not self._pending.get(shard):
            # Nothing queued ahead of these: offer them as they are, queue what is left.
            taken = core.send(shard, payloads, now)
            if taken < len(payloads):
                q.extend(payloads[taken:] if taken else payloads)
            return taken > 0
        q.extend(payloads)
        return self.offer(shard, core, now)

    def offer(self, shard: ShardId, core: NodeCore, now: float) -> bool:
        """Offer what of ``shard`` waits to ``core`` (up to its first payload still being
        digested); returns whether it took any."""
        q = self._queues.get(shard)
        if not q or shard not in core.shards:
            return False
        ready = self._ready(shard, q)
        if not ready:
            return False
        taken = core.send(shard, q if ready == len(q) else q[:ready], now)
        if taken:
            del q[:taken]  # the core copied what it took
        return taken > 0

    def _ready(self, shard: ShardId, q: list[Any]) -> int:
        """How many of ``q``'s first payloads may go: up to the first digest not done (those
        done become their ``Digested`` in place)."""
        if not self._pending.get(shard):
            return len(q)
        for i, p in enumerate(q):
            if type(p) is Pending:
                if p.done is None:
                    return i
                q[i] = p.done
                self._pending[shard] -= 1
                if not self._pending[shard]:
                    return len(q)
        return len(q)
