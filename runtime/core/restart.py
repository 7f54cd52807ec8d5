"""Total restart: from the logs and last views of restarting nodes to one restart view.

After every member of a group stopped, each restarting node reports what its disk holds: the
last view it installed, per shard the last version in its log, the highest view id of a
proposal it accepted (written to disk before its acceptance left the node), the highest
persistence frontier it recorded per shard, and the shards whose state transfer had not
completed. The restart leader feeds the reports to a :class:`RestartPlanner` (the driver and
the simulator drive the same object; the driver keeps only timers and sends), which decides
once these rules hold:

- **Quorum.** The reports cover a majority of the latest view among them (``L``) and, per
  shard ``L`` holds, a reporter whose log *vouches* for it: a holder of the shard in ``L``
  that held it in its own last view too, with its state transfer complete. Versions persisted
  in ``L`` are on every holder's disk, and a holder that never installed ``L`` persisted
  nothing there (the frontier needs every holder); versions persisted earlier are in the log
  of any holder whose transfer had landed. A member whose transfer was still owed holds only
  what it had before, so it vouches for nothing. Once every member of ``L`` is back, nobody
  else can hold anything they lack, and the vouching rule is waived.
- **No view id reused.** The restart view's id is above ``L`` *and* above every proposal any
  reporter accepted. A change to ``L + 1`` commits only with a majority of ``L`` having
  accepted it, so a majority of ``L`` always includes a node that knows of it, even when the
  only nodes that installed it do not come back.
- **An accepted view nobody installed** (some reporter accepted a view above ``L``) may have
  been installed by nodes that are not back, and may hold persisted versions no reporter has.
  The planner waits for them (see ``doubt_wait``) unless every member of ``L`` is back, or a
  majority of ``L`` reported accepting nothing above ``L`` (then the change never committed).
  It does not wait forever: after ``doubt_wait`` it goes ahead, above the accepted id, and the
  plan says what stayed unresolved.
- **Nothing persisted is silently dropped.** Per shard the state source is the reporter with
  the longest log (every log of a shard is a prefix of one sequence: only stable or agreed-trim
  messages are ever delivered, so the longest holds everything any reporter holds; the others
  fetch the tail by state transfer). If that log ends below the highest persistence frontier
  any reporter recorded (every version up to a frontier was on disk at every holder: a shorter
  longest log means damaged disks or a bug), the planner refuses with a :class:`RestartRefused`
  naming the shards, versions and nodes, unless the operator accepted the loss, in which case
  the plan carries the lost range per shard so that replicas answer reads of those versions
  with ``VersionLost`` rather than ``NotPersistedYet``.

Pure: no I/O, no clock; the same reports (and ``now`` values) give the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from runtime.core.layout import LayoutPolicy, ShardId, compute_layout
from runtime.core.versions import format_version
from runtime.core.view import View, is_majority


@dataclass(frozen=True, slots=True)
class RestartReport:
    """What one restarting node's disk holds.

    ``accepted_vid``: the highest view id of a proposal (or restart decision) this node
    accepted, made durable before its acceptance left the node (-1: none, or unknown).
    ``frontiers``: per shard, the highest persistence frontier (last version on disk at every
    holder) this node recorded durably; recorded lazily, so a lower bound of the truth.
    ``incomplete``: shards whose state transfer had not landed when the node stopped: the log
    holds only what the node had before it (re)gained the shard, and vouches for nothing more.
    """

    node: int
    address: str
    view: View
    logs: dict[ShardId, int] = field(default_factory=dict)  # shard -> last version in the log (-1: empty)
    accepted_vid: int = -1
    frontiers: dict[ShardId, int] = field(default_factory=dict)
    incomplete: frozenset[ShardId] = frozenset()


@dataclass(frozen=True, slots=True)
class ShardLoss:
    """A shard whose longest surviving log ends below a persistence frontier a reporter
    recorded: the versions after ``longest`` up to ``frontier`` were on disk at every holder
    once and are on no reporting disk now."""

    shard: ShardId
    frontier: int  # the highest frontier any reporter recorded
    recorded_by: tuple[int, ...]  # reporters that recorded that frontier
    longest: int  # last version of the longest log back (-1: no log at all)
    held_by: tuple[int, ...]  # reporters with that log

    @property
    def lost(self) -> tuple[int, int]:
        """Inclusive bounds of the lost versions: every version ``v`` with ``lo <= v <= hi``."""
        return self.longest + 1, self.frontier

    def describe(self) -> str:
        lo, hi = self.lost
        holders = f"nodes {list(self.held_by)}" if self.held_by else "no node"
        return (
            f"shard {self.shard}: versions {format_version(lo)} to {format_version(hi)} lost; nodes "
            f"{list(self.recorded_by)} recorded them persisted (frontier {format_version(self.frontier)}), "
            f"but the longest log back ({holders}) ends at {format_version(self.longest)}"
        )


@dataclass(frozen=True, slots=True)
class RestartRefused:
    """The reports make a quorum, but restarting from them would drop persisted versions."""

    latest_vid: int
    reporters: tuple[int, ...]
    losses: tuple[ShardLoss, ...]

    def describe(self) -> str:
        lines = [
            f"total restart refused: the logs of nodes {list(self.reporters)} (latest view {self.latest_vid}) "
            "lack versions that were reported persisted:"
        ]
        lines += [f"  {loss.describe()}" for loss in self.losses]
        lines.append("  bring back the nodes that hold them, or restart with --accept-loss to go on without them")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RestartPlan:
    view: View  # the restart view, with a state source per shard
    latest_vid: int  # the latest view found among the reports
    longest: dict[ShardId, int]  # per shard, the longest log's last version
    # Shards whose persisted versions were lost and the loss accepted: per shard the inclusive
    # bounds (first, last) of versions that must read as VersionLost from now on.
    lost: dict[ShardId, tuple[int, int]] = field(default_factory=dict)
    losses: tuple[ShardLoss, ...] = ()
    accepted_vid: int = -1  # the highest accepted view id among the reports
    # A view above the latest that some reporter accepted and none installed, when the plan
    # went ahead without knowing whether it was installed (see RestartPlanner.doubt_wait).
    unresolved: str | None = None


@dataclass(frozen=True, slots=True)
class RestartWaiting:
    """No decision yet: why, and when a tick could change that (None: only a new report)."""

    reason: str
    until: float | None = None


Decision = RestartWaiting | RestartPlan | RestartRefused


# ------------------------------------------------------------------------ the rules
def view_holders(view: View) -> dict[ShardId, tuple[int, ...]]:
    """Who holds each shard's state in ``view``: the layout's members in an adequate view; in
    an inadequate one (no shard runs) the previous holders still in it; for a shard waiting on
    its lost holders (``View.lost``), those holders."""
    return view.state_holders()


def latest_view(reports: Iterable[RestartReport]) -> View:
    return max((r.view for r in reports), key=lambda v: v.vid)


def vouches(report: RestartReport, shard: ShardId, latest: View) -> bool:
    """True if ``report``'s log holds every version of ``shard`` persisted up to ``latest``."""
    return (
        report.node in view_holders(latest).get(shard, ())
        and report.node in view_holders(report.view).get(shard, ())
        and shard not in report.incomplete
    )


def quorum_problem(reports: Sequence[RestartReport], accept_loss: bool = False) -> str | None:
    """Why these reports do not allow a restart yet (None: they do). A shard that waited on
    lost holders needs one of them back too, unless the operator accepts the loss."""
    if not reports:
        return "no reports"
    latest = latest_view(reports)
    present = {r.node for r in reports}
    have = sum(1 for m in latest.members if m in present)
    if not is_majority(have, latest.n):
        return f"{have} of the {latest.n} members of view {latest.vid} are back; need a majority"
    waived = {o.shard for o in latest.lost} if accept_loss else set()
    if have == latest.n and not (set(o.shard for o in latest.lost) - waived):
        return None  # nobody else can hold a version every member of the latest view lacks
    for sid, members in view_holders(latest).items():
        if sid in waived:
            continue
        if members and not any(vouches(r, sid, latest) for r in reports):
            return f"no member of shard {sid} of view {latest.vid} ({list(members)}) with its whole log is back"
    return None


def in_flight(reports: Sequence[RestartReport]) -> str | None:
    """A view change above the latest reported view that may have been installed by nodes
    that are not back (None: there is none, or it certainly was not installed)."""
    if not reports:
        return None
    latest = latest_view(reports)
    above = sorted(r.node for r in reports if r.accepted_vid > latest.vid)
    if not above:
        return None
    present = {r.node: r for r in reports}
    if all(m in present for m in latest.members):
        return None  # the first node to install a change is a member of the view it ends
    declined = sum(1 for m in latest.members if m in present and present[m].accepted_vid <= latest.vid)
    if is_majority(declined, latest.n):
        return None  # a majority never accepted it: it was never committed
    accepted = max(present[n].accepted_vid for n in above)
    missing = [m for m in latest.members if m not in present]
    return (
        f"nodes {above} accepted view {accepted} but no node back installed it; members {missing} of "
        f"view {latest.vid} may have, with versions persisted there"
    )


def find_losses(reports: Sequence[RestartReport]) -> tuple[ShardLoss, ...]:
    """Shards whose longest reported log ends below a frontier some reporter recorded."""
    ordered = sorted(reports, key=lambda r: r.node)
    out = []
    for sid in sorted({s for r in ordered for s in r.frontiers}):
        frontier = max(r.frontiers.get(sid, -1) for r in ordered)
        longest = max(r.logs.get(sid, -1) for r in ordered)
        if longest >= frontier:
            continue
        out.append(
            ShardLoss(
                sid,
                frontier,
                tuple(r.node for r in ordered if r.frontiers.get(sid, -1) == frontier),
                longest,
                tuple(r.node for r in ordered if sid in r.logs and r.logs[sid] == longest),
            )
        )
    return tuple(out)


def plan_restart(
    reports: Sequence[RestartReport], policy: LayoutPolicy, accept_loss: bool = False
) -> RestartPlan | RestartRefused | None:
    """The restart decision from these reports as they are now: None while they make no
    quorum; :class:`RestartRefused` if persisted versions would be lost (unless
    ``accept_loss``); else the plan. Waiting for stragglers is :class:`RestartPlanner`'s job."""
    if quorum_problem(reports, accept_loss) is not None:
        return None
    by_node = {r.node: r for r in reports}
    latest = latest_view(reports)
    losses = find_losses(reports)
    if losses and not accept_loss:
        return RestartRefused(latest.vid, tuple(sorted(by_node)), losses)
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
    holders = (
        ()
        if layout.adequate
        else tuple(
            (sid, tuple(n for n in ranked if by_node[n].logs.get(sid, -1) == longest[sid])) for sid in sorted(longest)
        )
    )
    accepted = max(r.accepted_vid for r in reports)
    view = View(
        max(latest.vid, accepted) + 1,
        tuple(ranked),
        tuple(by_node[n].address for n in ranked),
        layout,
        joined=tuple(ranked),
        departed=(),
        sources=sources,
        holders=holders,
    )
    return RestartPlan(
        view, latest.vid, longest, {loss.shard: loss.lost for loss in losses}, losses, accepted, in_flight(reports)
    )


# ------------------------------------------------------------------ the state machine
class RestartPlanner:
    """The total-restart decision over time: reports come in, ticks pass, a decision falls.

    ``quorum_wait``: once the reports make a quorum, how long to wait for the other members of
    the latest view (not at all once every one of them is back), so that the restart view
    holds as many as it can. ``doubt_wait``: how long, counted from the quorum, a doubt may
    hold the decision while members of the latest view are missing: an accepted view nobody
    back installed (:func:`in_flight`), or a shard whose longest log ends below a recorded
    frontier (a missing member may hold the rest). After it the planner decides with what it
    has: it goes ahead past an in-flight view (the plan says so) and refuses a loss unless
    ``accept_loss``.
    """

    def __init__(self, policy: LayoutPolicy, quorum_wait: float, doubt_wait: float, accept_loss: bool = False) -> None:
        self.policy = policy
        self.quorum_wait = quorum_wait
        self.doubt_wait = max(doubt_wait, quorum_wait)
        self.accept_loss = accept_loss
        self.reports: dict[int, RestartReport] = {}
        self.quorum_since: float | None = None
        self._quorum_vid: int | None = None  # the latest view the quorum was counted in

    def on_report(self, report: RestartReport) -> None:
        """A node's report (a repeat replaces the earlier one)."""
        self.reports[report.node] = report

    def everyone_back(self) -> bool:
        """Every member of the latest reported view has reported."""
        if not self.reports:
            return False
        return all(m in self.reports for m in latest_view(self.reports.values()).members)

    def on_tick(self, now: float) -> Decision:
        reports = [self.reports[n] for n in sorted(self.reports)]
        problem = quorum_problem(reports, self.accept_loss)
        if problem is not None:
            self.quorum_since = None
            return RestartWaiting(problem)
        latest = latest_view(reports)
        if self.quorum_since is None or self._quorum_vid != latest.vid:
            self.quorum_since, self._quorum_vid = now, latest.vid
        everyone = self.everyone_back()
        if not everyone and now < self.quorum_since + self.quorum_wait:
            return RestartWaiting(
                f"a quorum of view {latest.vid} is back; waiting for its other members",
                self.quorum_since + self.quorum_wait,
            )
        if not everyone and now < self.quorum_since + self.doubt_wait:
            doubt = in_flight(reports)
            losses = find_losses(reports)
            if losses:
                doubt = "; ".join(loss.describe() for loss in losses)
            if doubt is not None:
                return RestartWaiting(doubt, self.quorum_since + self.doubt_wait)
        decision = plan_restart(reports, self.policy, self.accept_loss)
        assert decision is not None  # the quorum held above
        return decision
