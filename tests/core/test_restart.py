"""Total restart decisions (runtime/core/restart.py), table-driven.

The last tests are cases the simulator found (``python -m runtime.sim --faults restart-race``)
where a restart lost persisted state; restart.py now covers them.
"""

from __future__ import annotations

import pytest

from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.restart import RestartReport, plan_restart, quorum_problem
from runtime.core.versions import make_version as ver
from runtime.core.view import Proposal, View

POLICY = LayoutPolicy.of({"T": ShardPolicy(shards=2, min_nodes=1)})
S0, S1 = ShardId("T", 0, 0), ShardId("T", 0, 1)


def view(vid: int, members: tuple[int, ...], policy: LayoutPolicy = POLICY, **kw: object) -> View:
    return View(vid, members, tuple(f"n{m}" for m in members), compute_layout(policy, members), **kw)  # type: ignore[arg-type]


# View 4 of nodes 1-4: shard 0 is (1, 3), shard 1 is (2, 4).
V4 = view(4, (1, 2, 3, 4))
V3 = view(3, (1, 2, 3))
V5 = view(5, (1, 2, 3, 4, 5))  # shard 0 is (1, 3, 5), shard 1 is (2, 4)


def rep(node: int, v: View, **logs: int) -> RestartReport:
    return RestartReport(node, f"n{node}", v, {ShardId("T", 0, int(k[1:])): x for k, x in logs.items()})


def test_fixture_layout() -> None:
    assert dict(V4.layout.shards) == {S0: (1, 3), S1: (2, 4)}
    assert dict(V5.layout.shards) == {S0: (1, 3, 5), S1: (2, 4)}


@pytest.mark.parametrize(
    "reports, problem",
    [
        ([], "no reports"),
        ([rep(1, V4), rep(2, V4)], "2 of the 4 members of view 4 are back; need a majority"),
        ([rep(1, V4), rep(3, V4), rep(2, V3)], None),  # view 3 reporters count toward view 4's majority
        ([rep(1, V4), rep(3, V4), rep(9, V4)], "2 of the 4 members of view 4 are back; need a majority"),
        ([rep(1, V5), rep(3, V5), rep(5, V5)], "no member of shard T/0/1 of view 5 ([2, 4]) is back"),
        ([rep(1, V5), rep(3, V5), rep(4, V3)], None),
        ([rep(1, V4), rep(2, V4), rep(3, V4)], None),
        ([rep(1, V3), rep(2, V3)], None),  # the latest view among the reports is the one that counts
        ([rep(4, V4), rep(1, V3)], "2 of the 4 members of view 4 are back; need a majority"),
    ],
)
def test_quorum(reports: list[RestartReport], problem: str | None) -> None:
    assert quorum_problem(reports) == problem
    assert (plan_restart(reports, POLICY) is None) == (problem is not None)


@pytest.mark.parametrize(
    "reports, members, sources, longest",
    [
        # Every reporter is back: the latest view's rank order, one source per shard.
        (
            [rep(1, V4, s0=ver(4, 9)), rep(2, V4, s1=ver(4, 3)), rep(3, V4, s0=ver(4, 12)), rep(4, V4, s1=ver(4, 3))],
            (1, 2, 3, 4), {S0: 3, S1: 2}, {S0: ver(4, 12), S1: ver(4, 3)},
        ),
        # Ties go to the earliest rank in the latest view; a log from an older view can still
        # be the longest.
        (
            [rep(1, V4, s0=ver(4, 1)), rep(3, V4, s0=ver(4, 1)), rep(4, V4, s1=ver(3, 8)), rep(2, V3, s1=ver(3, 8))],
            (1, 2, 3, 4), {S0: 1, S1: 2}, {S0: ver(4, 1), S1: ver(3, 8)},
        ),
        # Nodes outside the latest view rank after its members, by id.
        (
            [rep(9, view(2, (1, 3, 9))), rep(4, V4, s1=ver(4, 0)), rep(1, V4, s0=ver(2, 5)), rep(3, V4, s0=ver(4, 2))],
            (1, 3, 4, 9), {S0: 3, S1: 4}, {S0: ver(4, 2), S1: ver(4, 0)},
        ),
        # A shard nobody logged has no source (nothing to copy).
        ([rep(1, V4, s0=-1), rep(2, V4), rep(3, V4)], (1, 2, 3), {}, {}),
        # A log of a shard the reporter no longer holds still counts: it is a prefix like any other.
        (
            [rep(1, V4, s0=ver(4, 2), s1=ver(4, 7)), rep(2, V4, s1=ver(4, 5)), rep(3, V4, s0=ver(4, 2))],
            (1, 2, 3), {S0: 1, S1: 1}, {S0: ver(4, 2), S1: ver(4, 7)},
        ),
    ],
)
def test_plan(reports: list[RestartReport], members: tuple[int, ...], sources: dict, longest: dict) -> None:
    plan = plan_restart(reports, POLICY)
    assert plan is not None
    assert plan.latest_vid == max(r.view.vid for r in reports)
    assert plan.view.vid == plan.latest_vid + 1
    assert plan.view.members == members
    assert plan.view.addresses == tuple(f"n{m}" for m in members)
    assert dict(plan.view.sources) == sources
    assert {s: v for s, v in plan.longest.items() if v >= 0} == longest
    for sid, src in plan.view.sources:
        assert src in plan.view.members and plan.longest[sid] == max(r.logs.get(sid, -1) for r in reports)


def test_plan_keeps_the_latest_layout_where_it_can() -> None:
    plan = plan_restart([rep(1, V4), rep(2, V4), rep(4, V4)], POLICY)
    assert plan is not None
    assert dict(plan.view.layout.shards) == {S0: (1,), S1: (2, 4)}


def test_plan_is_independent_of_report_order() -> None:
    reports = [rep(1, V4, s0=ver(4, 2)), rep(3, V4, s0=ver(4, 2)), rep(2, V4, s1=ver(4, 1)), rep(4, V3, s1=ver(3, 0))]
    plans = [plan_restart(order, POLICY) for order in (reports, reports[::-1], reports[1:] + reports[:1])]
    assert all(p is not None for p in plans)
    assert len({(p.view, tuple(sorted(p.longest.items()))) for p in plans if p is not None}) == 1


# ------------------------------------------------------------------- gaps found by the simulator, fixed
def test_a_newcomer_alone_does_not_make_a_shard_quorum() -> None:
    """View 5 admitted node 7 into shard 1 with node 2 as its state source; node 7 fetches the
    shard's log at the start of the view. If everyone stops before that transfer lands and
    only node 7 of shard 1 reports, the restart takes its empty log as the longest: what node 2
    had persisted is gone (and node 2's log is cut back when it rejoins).

    Reproduced end to end: ``python -m runtime.sim --seed 0 --faults restart-race --members 3
    --messages 100 --plain-restart-quorum --verbose``.
    Possible fix: a report says which of its logs are complete (the driver knows whether its
    transfer landed), and quorum_problem counts only complete logs; from the view alone, at
    least do not count members listed in ``latest.joined`` for shards with a named source."""
    v5 = view(5, (1, 2, 3, 7), joined=(7,), sources=((S1, 2),))
    assert dict(v5.layout.shards) == {S0: (1, 3), S1: (2, 7)}
    reports = [rep(1, v5, s0=ver(4, 9)), rep(3, v5, s0=ver(4, 9)), rep(7, v5, s1=-1)]
    assert quorum_problem(reports) is not None


def test_an_inadequate_restart_view_keeps_track_of_who_holds_the_state() -> None:
    """Two shards of at least two nodes each; three of five nodes come back, a majority, but
    too few for the layout: the restart view is inadequate. It names no holders, so when a
    fourth node joins, the first adequate view names no state source and the new member of
    shard 1 starts empty (then reports Persisted for versions on top of a gap).
    Possible fix: plan_restart sets ``holders`` (per shard, the reporters holding a log of it)
    on an inadequate restart view, as next_view does for inadequate views."""
    policy = LayoutPolicy.of({"T": ShardPolicy(shards=2, min_nodes=2)})
    latest = view(7, (1, 2, 3, 4, 5), policy)
    assert dict(latest.layout.shards) == {S0: (1, 2, 5), S1: (3, 4)}
    reports = [rep(1, latest, s0=ver(7, 10)), rep(2, latest, s0=ver(7, 10)), rep(3, latest, s1=ver(7, 20))]
    plan = plan_restart(reports, policy)
    assert plan is not None and not plan.view.layout.adequate
    joined = Proposal(9, (1, 2, 3, 4), ("n1", "n2", "n3", "n4"), (4,), (), ())
    nxt = joined.next_view(policy, plan.view)
    assert nxt.layout.adequate and 4 in dict(nxt.layout.shards)[S1]
    assert nxt.source_of(S1) == 3
