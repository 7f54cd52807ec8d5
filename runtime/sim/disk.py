"""Simulated disks: what a node keeps across crashes in persistent delivery mode.

Each node id owns one :class:`Disk` for the whole run (every incarnation of the node reuses
it). Per shard, the disk holds the *durable* log: ``(version, payload)`` records, versions
strictly increasing, each one fsync'd. A delivered message first goes to the node's volatile
log (kept on the incarnation, see ``SimNode``) and reaches the disk when a seeded fsync
completes; a crash loses the volatile tail and nothing else. A fsync'd record is never torn
or lost. The only way a durable record goes away is a state transfer that finds the local log
*diverged* from the shard's history (records a total restart discarded because no reporting
node had them): the log is cut back to the common prefix and the source's records replace
the rest, as the transfer's digest check would do.

Besides the logs the disk keeps the last view the node installed (the view a total restart
reports), a marker per shard whose state transfer had not completed (the log then holds only
a prefix of what the shard had persisted when the node joined it), and the id of the newest
view change the node accepted (written before its acceptance leaves the node, so a majority
of any view knows of every change that view may have committed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.core.layout import ShardId
from runtime.core.restart import RestartReport
from runtime.core.view import View

LogRecord = tuple[int, bytes]  # (version, payload)


@dataclass(slots=True)
class Disk:
    node_id: int
    logs: dict[ShardId, list[LogRecord]] = field(default_factory=dict)
    last_view: View | None = None
    incomplete: set[ShardId] = field(default_factory=set)  # state transfer still owed at crash time
    accepted_vid: int = -1  # highest view id of a proposal this node accepted (written before the ack)

    def last_version(self, shard: ShardId) -> int:
        log = self.logs.get(shard)
        return log[-1][0] if log else -1

    def report(self, address: str) -> RestartReport:
        """The restart report this disk supports (needs a last view)."""
        assert self.last_view is not None
        return RestartReport(
            self.node_id, address, self.last_view, {sid: self.last_version(sid) for sid in sorted(self.logs)}
        )

    def complete_member(self, shard: ShardId, latest: View) -> bool:
        """True if this disk certainly holds every version of ``shard`` that was persisted up
        to the end of ``latest``: the node installed ``latest``, held the shard in it, and its
        state transfer for the shard (if it joined the shard in that view) had landed."""
        v = self.last_view
        return (
            v is not None
            and v.vid == latest.vid
            and self.node_id in held_by(v).get(shard, ())
            and shard not in self.incomplete
        )


def held_by(view: View) -> dict[ShardId, tuple[int, ...]]:
    """Who holds each shard's state in ``view``: its members in an adequate view; in an
    inadequate one (no shard runs) the previous holders still in the view."""
    if view.layout.adequate:
        return dict(view.layout.shards)
    return dict(view.holders)


def held_shards(view: View, node: int) -> tuple[ShardId, ...]:
    return tuple(sid for sid, members in held_by(view).items() if node in members)


def common_prefix(a: list[LogRecord], b: list[LogRecord]) -> int:
    """Length of the longest common prefix of two logs (records compared whole)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
