"""Replicas watched in the simulator: the shipped inline runner, with a state digest taken
after every ordered batch a replica applies, so two replicas that diverge are caught at the
first call where they differ rather than at the end of the run.

The watch wraps the real ``ReplicaRef`` and changes nothing it does; it only reports what it
saw to the run (``Record``), which compares digests across replicas.
"""

from __future__ import annotations

from typing import Any, Callable

from derecho_actors.node.runners import InlineRunner, ReplicaRef
from derecho_actors.replica.replica import OrderedBatch, Replica
from derecho_actors.wire.digest import state_digest
from runtime.core.layout import ShardId

Record = Callable[[ShardId, int, int, int, bytes, list[str]], None]
"""Takes (shard, view, calls of the view so far, node, digest, the batch's methods)."""


class WatchedRef:
    """Runs a replica inline and records its state digest after each ordered batch it applies
    at once (a replica that held batches while awaiting its state is not digested again until
    the next view: its count of the view's calls is not known here)."""

    def __init__(self, record: Record, inner: ReplicaRef, replica: Replica, shard: ShardId, node: int) -> None:
        self.record, self.inner, self.replica, self.shard, self.node = record, inner, replica, shard, node
        self.vid = -1
        self.count = 0
        self.dirty_vid = -1

    def tell(self, message: Any) -> None:
        replica = self.replica
        was_behind = replica.behind
        self.inner.tell(message)
        if type(message) is not OrderedBatch:
            return
        vid = message.vid
        if was_behind or replica.behind or replica.failed:
            self.dirty_vid = vid
            return
        if vid == self.dirty_vid:
            return
        if vid != self.vid:
            self.vid, self.count = vid, 0
        self.count += len(message.calls)
        self.record(
            self.shard, vid, self.count, self.node, state_digest(replica, replica.spec), [c[2] for c in message.calls]
        )

    def stop(self) -> Any:
        return self.inner.stop()


class WatchingRunner(InlineRunner):
    """The inline runner of one simulated node: every replica it starts is watched and listed
    in ``replicas`` (the run's table of live replicas, by node and shard)."""

    def __init__(self, record: Record, replicas: dict[tuple[int, ShardId], WatchedRef], node: int) -> None:
        self.record, self.replicas, self.node = record, replicas, node

    def start(self, replica: Replica, shard: ShardId) -> ReplicaRef:
        ref = WatchedRef(self.record, super().start(replica, shard), replica, shard, self.node)
        self.replicas[(self.node, shard)] = ref
        return ref
