"""Total restart: from the logs and last views of restarting nodes to one restart view.

After every member of a group stopped, each restarting node reports the last view it
installed and, per shard it keeps a log of, the last version in that log. The restart leader
waits until the reports cover a majority of the latest view among them and at least one member
of each of its shards (a version reported persisted was on disk at *every* replica of its
shard, so any one member of the shard from that view holds all of them), then decides:

- the restart view: id one above the latest, members the reporting nodes (latest view's rank
  order first, then others by id), layout computed stickily from the latest view's layout;
- per shard, the state source: the reporter with the longest log of it. Delivery is totally
  ordered and only stable or agreed-trim messages are ever delivered, so every log of a shard
  is a prefix of one sequence; the longest holds everything any member holds, and the others
  fetch the tail from it by state transfer (a member whose last record disagrees replaces its
  log, which the transfer detects with a digest).

Pure: no I/O; the driver collects reports and carries the plan out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from runtime.core.layout import LayoutPolicy, ShardId, compute_layout
from runtime.core.view import View, is_majority


@dataclass(frozen=True, slots=True)
class RestartReport:
    """What one restarting node brings: its last view and its logs' last versions."""

    node: int
    address: str
    view: View
    logs: dict[ShardId, int] = field(default_factory=dict)  # shard -> last version in the log (-1: empty)


@dataclass(frozen=True, slots=True)
class RestartPlan:
    view: View  # the restart view, with a state source per shard
    latest_vid: int  # the latest view found among the reports
    longest: dict[ShardId, int]  # per shard, the longest log's last version


def quorum_problem(reports: Sequence[RestartReport]) -> str | None:
    """Why these reports do not allow a restart yet (None: they do)."""
    if not reports:
        return "no reports"
    latest = max((r.view for r in reports), key=lambda v: v.vid)
    present = {r.node for r in reports}
    have = sum(1 for m in latest.members if m in present)
    if not is_majority(have, latest.n):
        return f"{have} of the {latest.n} members of view {latest.vid} are back; need a majority"
    for sid, members in latest.layout.shards.items():
        # A member that joined in that view with a state source named for the shard may have
        # stopped before its transfer landed: its log does not vouch for the shard.
        source = latest.source_of(sid)
        vouching = [m for m in members if source is None or m == source or m not in latest.joined]
        if members and not present.intersection(vouching):
            return f"no member of shard {sid} of view {latest.vid} ({vouching}) is back"
    return None


def plan_restart(reports: Sequence[RestartReport], policy: LayoutPolicy) -> RestartPlan | None:
    """The restart decision, or None while the reports do not make a quorum."""
    if quorum_problem(reports) is not None:
        return None
    by_node = {r.node: r for r in reports}
    latest = max((r.view for r in reports), key=lambda v: v.vid)
    ranked = [m for m in latest.members if m in by_node]
    ranked += sorted(n for n in by_node if n not in latest.members)
    layout = compute_layout(policy, ranked, latest.layout if latest.layout.adequate else None)
    longest: dict[ShardId, int] = {}
    holder: dict[ShardId, int] = {}
    for node in ranked:  # ties go to the earliest rank, deterministically
        for sid, last in by_node[node].logs.items():
            if last > longest.get(sid, -1):
                longest[sid] = last
                holder[sid] = node
    sources = tuple(
        (sid, holder[sid]) for sid in layout.shards if layout.adequate and sid in holder and longest[sid] >= 0
    )
    # A restart view too small for the layout runs no shard; it records who holds each
    # shard's complete log, so the first adequate view after it names sources from them.
    holders = () if layout.adequate else tuple(
        (sid, tuple(n for n in ranked if by_node[n].logs.get(sid, -1) == longest[sid])) for sid in sorted(longest)
    )
    view = View(
        latest.vid + 1,
        tuple(ranked),
        tuple(by_node[n].address for n in ranked),
        layout,
        joined=tuple(ranked),
        departed=(),
        sources=sources,
        holders=holders,
    )
    return RestartPlan(view, latest.vid, longest)
