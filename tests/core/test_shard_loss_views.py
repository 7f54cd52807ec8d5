"""What a view says about a shard whose every holder is gone (``View.lost``, ``View.restarted``):
table-driven over ``Proposal.next_view``, then through real cores (the leader puts a returning
holder's log into its proposal)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.membership import JoinClaim
from runtime.core.restart import RestartReport, quorum_problem
from runtime.core.view import Proposal, ReturningLog, ShardOrphan, View

from .group_net import FAST, GroupNet

pytestmark = pytest.mark.timeout(60)

KEEP = ShardId("P", 0, 0)
LOST = ShardId("P", 0, 1)
SHARDS = ShardPolicy(shards=2, min_nodes=2, max_nodes=2)
DURABLE = LayoutPolicy.of({"P": SHARDS}, frozenset({"P"}))
VOLATILE = LayoutPolicy.of({"P": SHARDS})


def first_view(policy: LayoutPolicy) -> View:
    """Six nodes: P/0/0 on 1 and 2, P/0/1 on 3 and 4; 5 and 7 hold nothing."""
    members = (1, 2, 3, 4, 5, 7)
    view = View(1, members, tuple(f"n{m}" for m in members), compute_layout(policy, members))
    assert dict(view.layout.shards) == {KEEP: (1, 2), LOST: (3, 4)}
    return view


def change(
    policy: LayoutPolicy,
    previous: View,
    members: tuple[int, ...],
    joined: tuple[int, ...] = (),
    returning: tuple[ReturningLog, ...] = (),
    accept_loss: bool = False,
) -> View:
    departed = tuple(m for m in previous.members if m not in members or m in joined)
    return Proposal(
        previous.vid + 1, members, tuple(f"n{m}" for m in members), joined, departed, (), returning, accept_loss
    ).next_view(policy, previous)


def test_a_durable_shard_whose_holders_all_went_waits_and_holds_nothing() -> None:
    one = first_view(DURABLE)
    two = change(DURABLE, one, (1, 2, 5, 7))
    assert two.layout.members_of(LOST) == (5, 7)
    assert two.lost == (ShardOrphan(LOST, (3, 4), 1),) and two.restarted == ()
    assert two.source_of(LOST) is None
    assert LOST not in dict(two.holders)  # 5 and 7 are in the layout but hold nothing
    assert two.state_holders()[LOST] == (3, 4)  # the logs that vouch for it (a total restart asks for them)
    three = change(DURABLE, two, (1, 2, 5, 7, 8), joined=(8,))  # a stranger joins: still waiting
    assert three.lost == two.lost and three.source_of(LOST) is None
    assert View.from_wire(three.to_wire()) == three


@dataclass(frozen=True)
class Return:
    case: str
    returning: tuple[ReturningLog, ...]
    accept_loss: bool
    source: int | None  # the node named source of LOST in the next view
    waits: bool
    restarts: bool


RETURNS = [
    Return("nobody back", (), False, None, True, False),
    Return("a last holder back", (ReturningLog(3, LOST, 40),), False, 3, False, False),
    Return("the longer log wins", (ReturningLog(3, LOST, 40), ReturningLog(4, LOST, 41)), False, 4, False, False),
    Return(
        "a tie goes to the lower id", (ReturningLog(4, LOST, 41), ReturningLog(3, LOST, 41)), False, 3, False, False
    ),
    Return("an older holder does not count", (ReturningLog(8, LOST, 99),), False, None, True, False),
    Return("a log of another shard does not count", (ReturningLog(3, KEEP, 99),), False, None, True, False),
    Return("the operator accepts the loss", (), True, None, False, True),
    Return("a returning log beats an accepted loss", (ReturningLog(4, LOST, 7),), True, 4, False, False),
]


@pytest.mark.parametrize("case", RETURNS, ids=[r.case for r in RETURNS])
def test_what_ends_the_wait(case: Return) -> None:
    one = first_view(DURABLE)
    two = change(DURABLE, one, (1, 2, 5, 7))
    joined = tuple(sorted({r.node for r in case.returning if r.node != 5} | {8}))
    members = (1, 2, 5, 7, *joined)
    three = change(DURABLE, two, members, joined=joined, returning=case.returning, accept_loss=case.accept_loss)
    assert three.source_of(LOST) == case.source
    assert bool(three.lost) is case.waits
    assert bool(three.restarted) is case.restarts
    if case.source is not None:
        assert dict(three.holders)[LOST] == three.layout.members_of(LOST)
    if case.restarts:
        assert three.restarted == (ShardOrphan(LOST, (3, 4), 1),)


def test_an_in_memory_shard_starts_anew_in_the_view_of_the_loss() -> None:
    one = first_view(VOLATILE)
    two = change(VOLATILE, one, (1, 2, 5, 7))
    assert two.lost == () and two.restarted == (ShardOrphan(LOST, (3, 4), 1),)
    three = change(VOLATILE, two, (1, 2, 5, 7, 8), joined=(8,))
    assert three.restarted == ()  # said once, in the view of the loss


def test_a_loss_while_the_view_is_too_small_is_decided_when_it_is_whole_again() -> None:
    for policy, waits in ((DURABLE, True), (VOLATILE, False)):
        one = first_view(policy)
        small = change(policy, one, (1, 2, 3))  # inadequate: 3 still holds P/0/1
        assert not small.layout.adequate and dict(small.holders)[LOST] == (3,)
        smaller = change(policy, small, (1, 2, 5))  # 3 gone too while nothing runs
        assert smaller.lost == (ShardOrphan(LOST, (3,), small.vid),) and smaller.restarted == ()
        whole = change(policy, smaller, (1, 2, 5, 7), joined=(7,))
        assert whole.layout.adequate
        assert bool(whole.lost) is waits and bool(whole.restarted) is not waits


def test_a_total_restart_waits_for_a_last_holder_unless_the_loss_is_accepted() -> None:
    one = first_view(DURABLE)
    two = change(DURABLE, one, (1, 2, 5, 7))

    def report(node: int, view: View, logs: dict[ShardId, int]) -> RestartReport:
        return RestartReport(node, f"n{node}", view, logs, view.vid, {}, frozenset())

    everyone = [report(m, two, {KEEP: 10}) for m in two.members]
    problem = quorum_problem(everyone)
    assert problem is not None and "shard P/0/1" in problem and "[3, 4]" in problem
    assert quorum_problem(everyone, accept_loss=True) is None
    assert quorum_problem([*everyone, report(3, one, {LOST: 40})]) is None


def test_the_leader_proposes_a_returning_holder_as_source_through_real_cores() -> None:
    net = GroupNet((1, 2, 3, 4, 5, 7), DURABLE, FAST)
    net.crash(3)
    net.crash(4)
    assert net.run_until(lambda: all(net.vid(n) == 1 for n in (1, 2, 5, 7)))
    waiting = net.last_view(1)
    assert waiting is not None and waiting.lost == (ShardOrphan(LOST, (3, 4), 0),)
    # A stranger with a log of the shard (an older holder, say) does not end the wait.
    net.add_joiner(8, [1], JoinClaim(((LOST, 99),)))
    assert net.run_until(lambda: net.vid(8) is not None)
    view = net.last_view(1)
    assert view is not None and view.lost and view.source_of(LOST) is None
    # Node 3 comes back with its data folder: the view names it the source.
    net.add_joiner(3, [1], JoinClaim(((LOST, 40), (KEEP, -1))))
    assert net.run_until(lambda: net.vid(3) is not None)
    back = net.last_view(1)
    assert back is not None and back.lost == () and back.source_of(LOST) == 3
    assert net.last_view(3) == back


def test_a_joiner_with_accept_loss_ends_the_wait_through_real_cores() -> None:
    net = GroupNet((1, 2, 3, 4, 5, 7), DURABLE, FAST)
    net.crash(3)
    net.crash(4)
    assert net.run_until(lambda: all(net.vid(n) == 1 for n in (1, 2, 5, 7)))
    net.add_joiner(8, [2], JoinClaim((), accept_loss=True))
    assert net.run_until(lambda: net.vid(8) is not None)
    view = net.last_view(1)
    assert view is not None and view.lost == () and view.restarted == (ShardOrphan(LOST, (3, 4), 0),)
