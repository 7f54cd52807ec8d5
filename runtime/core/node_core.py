"""The node's protocol core: every shard this node belongs to, behind one step/ready API.

In the style of etcd-io/raft's ``RawNode``: the driver feeds events with :meth:`NodeCore.step`
and app sends with :meth:`NodeCore.send`, then calls :meth:`NodeCore.ready` and carries out
what it returns. The core keeps no clock and does no I/O; given the same calls in the same
order it returns the same results.

This is the data plane for one fixed view; membership and view changes build on it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from runtime.core.effects import Outgoing, Ready, Rejected
from runtime.core.events import Event, PushArrived, Tick
from runtime.core.messages import ShardKey
from runtime.core.smc import MulticastConfig, ShardMulticast


class UnknownShard(KeyError):
    """The app asked to send on a shard this node is not a member of."""


class NodeCore:
    """Protocol state of one node in one fixed view."""

    def __init__(
        self,
        node_id: int,
        shards: Mapping[ShardKey, Sequence[int]],
        config: MulticastConfig = MulticastConfig(),
        now: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.now = now
        self.shards: dict[ShardKey, ShardMulticast] = {
            key: ShardMulticast(key, members, node_id, config, now=now)
            for key, members in shards.items()
            if node_id in members
        }
        self._ready = Ready()

    # ------------------------------------------------------------------ inputs
    def step(self, event: Event) -> None:
        """Apply one event; effects accumulate until :meth:`ready`."""
        if event.now > self.now:
            self.now = event.now
        if isinstance(event, PushArrived):
            self._on_push(event)
        elif isinstance(event, Tick):
            for smc in self.shards.values():
                smc.evaluate(self.now)
        else:  # pragma: no cover - the type union is closed
            raise TypeError(f"unknown event {event!r}")

    def _on_push(self, event: PushArrived) -> None:
        push = event.push
        smc = self.shards.get(push.shard)
        if smc is None:
            self._ready.rejected.append(
                Rejected(event.sender, f"push for shard {push.shard!r}, which this node is not in")
            )
            return
        rank = push.rank
        if not isinstance(rank, int) or not 0 <= rank < len(smc.members) or smc.members[rank] != event.sender:
            self._ready.rejected.append(
                Rejected(event.sender, f"node {event.sender} sent a push as rank {rank!r} of {push.shard!r}")
            )
            return
        problem = smc.on_push(push)
        if problem is not None:
            self._ready.rejected.append(problem)
            return
        smc.evaluate(self.now)

    def send(self, shard: ShardKey, payloads: Sequence[bytes], now: float) -> int:
        """Multicast payloads in ``shard``; returns how many the window took (the rest wait)."""
        if now > self.now:
            self.now = now
        smc = self.shards.get(shard)
        if smc is None:
            raise UnknownShard(f"node {self.node_id} is not a member of shard {shard!r}")
        taken = smc.send(payloads, self.now)
        if taken:
            smc.evaluate(self.now)
        return taken

    # ----------------------------------------------------------------- outputs
    def ready(self) -> Ready:
        """Hand over accumulated effects and start collecting afresh."""
        out = self._ready
        self._ready = Ready()
        wakeup: float | None = None
        for smc in self.shards.values():
            pushes, deliveries, opened = smc.drain()
            peers = smc.peers()
            if peers:
                out.outgoing.extend(Outgoing(peers, p) for p in pushes)
            out.deliveries.extend(deliveries)
            if opened:
                out.window_open.append(smc.shard)
            w = smc.wakeup_at()
            if w is not None and (wakeup is None or w < wakeup):
                wakeup = w
        out.wakeup_at = wakeup
        return out
