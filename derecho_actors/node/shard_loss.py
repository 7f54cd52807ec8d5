"""A shard that lost every replica, as this node tells its callers: started anew (its updates
before the view of the loss are gone) or waiting for a node that held it last (see
``hosting``). The words callers and operators get are made here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derecho_actors.exceptions import ShardAwaitingLog, ShardStateLost
from runtime.core.layout import ShardId
from runtime.core.status import AwaitingLog, RestartedEmpty
from runtime.core.view import ShardOrphan


def nodes(ids: tuple[int, ...]) -> str:
    """``node 2`` or ``nodes 2, 3``, for log lines and errors."""
    return f"node{'s' if len(ids) != 1 else ''} {', '.join(map(str, ids))}"


@dataclass
class ShardLoss:
    """A shard this node started anew because no holder of its state was left.

    ``vid``: the view it restarted in; ``last_holders`` held it last, in view ``last_vid``, so
    every version below ``vid.0`` is gone (the exact last one was known only to them).
    Reads are answered with ``ShardStateLost`` while the notice lasts: until a batch of writes
    is applied. ``refuse_writes``: the first message with writes is refused too (every replica
    of the shard in ``vid`` reads the loss from the view, so all of them refuse the same one)."""

    shard: ShardId
    vid: int
    last_holders: tuple[int, ...]
    last_vid: int
    persistent: bool
    refuse_writes: bool = True

    @classmethod
    def of(cls, orphan: ShardOrphan, vid: int, persistent: bool) -> ShardLoss:
        return cls(orphan.shard, vid, orphan.last_holders, orphan.last_vid, persistent)

    def error(self) -> ShardStateLost:
        """What callers get, saying what happened and what to do."""
        start = "from its own log, if any" if self.persistent else f"from {self.shard.type_name}.__init__"
        return ShardStateLost(
            f"shard {self.shard} lost every replica ({nodes(self.last_holders)} held it last, "
            f"in view {self.last_vid}) and started anew {start} in view {self.vid}: its updates before version "
            f"{self.vid}.0 are gone. This call was not run; call again to use the new state, and write back what "
            "you need from your own records"
        )

    def as_status(self) -> RestartedEmpty:
        return RestartedEmpty(str(self.shard), self.vid, self.last_holders, self.last_vid)


@dataclass(frozen=True, slots=True)
class LossStatus:
    """This node's part of ``status`` on shards that lost every replica: how many it started
    anew (the last 16 named) and which wait for a node that held them last."""

    shards_restarted_empty: int
    restarted_empty: tuple[RestartedEmpty, ...]
    awaiting_log: tuple[AwaitingLog, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "shards_restarted_empty": self.shards_restarted_empty,
            "restarted_empty": [r.to_wire() for r in self.restarted_empty],
            "shards_awaiting_log": len(self.awaiting_log),
            "awaiting_log": [a.to_wire() for a in self.awaiting_log],
        }


def awaiting_log(sid: ShardId, orphan: ShardOrphan) -> ShardAwaitingLog:
    """What callers of ``sid`` get while it waits on its lost holders."""
    return ShardAwaitingLog(
        f"shard {sid} lost every replica ({nodes(orphan.last_holders)} held it last, in view "
        f"{orphan.last_vid}) and waits for one of them to come back with its data folder; this call was not "
        "run. Restart one of those nodes, then call again (or start any node with --accept-loss to give the "
        "lost versions up)"
    )
