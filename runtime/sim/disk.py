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

Besides the logs the disk keeps what a total restart reports (:meth:`Disk.report`): the last
view the node installed, a marker per shard whose state transfer had not completed (the log
then holds only a prefix of what the shard had persisted when the node joined it), the id of
the newest view change the node accepted (written from ``Ready.accepted`` before that Ready's
messages leave the node, so a majority of any view knows of every change that view may have
committed), and the highest persistence frontier the node learned per shard (from
``Ready.persisted``).

A disk can fail (``failing``): from a seeded moment every write to it errs, and the node must
fail-stop (leave the group) rather than report anything persisted that is not. What was on it
stays readable. The node comes back later with the disk repaired, as an operator would do.
Tests may also damage a disk (:meth:`Disk.drop_after`: records lost below a frontier, as a
lying fsync would do) to show that a total restart refuses to start from less.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.core.layout import ShardId
from runtime.core.restart import RestartReport, view_holders
from runtime.core.view import View

LogRecord = tuple[int, bytes]  # (version, payload)

held_by = view_holders  # who holds each shard's state in a view (the planner's own rule)


@dataclass(slots=True)
class Disk:
    node_id: int
    logs: dict[ShardId, list[LogRecord]] = field(default_factory=dict)
    last_view: View | None = None
    incomplete: set[ShardId] = field(default_factory=set)  # state transfer still owed at crash time
    accepted_vid: int = -1  # highest view id of a proposal this node accepted (written before the ack)
    frontiers: dict[ShardId, int] = field(default_factory=dict)  # highest persistence frontier learned
    failing: bool = False  # writes err (disk full, I/O error) until the node restarts with it repaired

    def last_version(self, shard: ShardId) -> int:
        log = self.logs.get(shard)
        return log[-1][0] if log else -1

    def report(self, address: str, plain: bool = False) -> RestartReport:
        """The restart report this disk supports (needs a last view). ``plain``: only the view
        and log ends, as reports were before accepted ids, frontiers and transfer markers."""
        assert self.last_view is not None
        logs = {sid: self.last_version(sid) for sid in sorted(self.logs)}
        if plain:
            return RestartReport(self.node_id, address, self.last_view, logs)
        return RestartReport(
            self.node_id,
            address,
            self.last_view,
            logs,
            self.accepted_vid,
            {sid: v for sid, v in sorted(self.frontiers.items())},
            frozenset(self.incomplete),
        )

    def drop_after(self, shard: ShardId, version: int) -> int:
        """Damage: lose every durable record of ``shard`` after ``version``; returns how many."""
        log = self.logs.get(shard, [])
        keep = len(log)
        while keep and log[keep - 1][0] > version:
            keep -= 1
        gone = len(log) - keep
        del log[keep:]
        return gone


def held_shards(view: View, node: int) -> tuple[ShardId, ...]:
    return tuple(sid for sid, members in held_by(view).items() if node in members)


def common_prefix(a: list[LogRecord], b: list[LogRecord]) -> int:
    """Length of the longest common prefix of two logs (records compared whole)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
