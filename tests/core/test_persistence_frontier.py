"""The persistence frontier: the minimum over members of the version each holds on disk."""

from __future__ import annotations

import pytest

from runtime.core.versions import format_version, make_version, version_parts
from tests.core.shard_net import SHARD, ShardNet


@pytest.mark.parametrize(
    "reports, expected",
    [
        # (node, version) reports in order -> frontiers seen at node 1, in order
        ([(1, 5), (2, 5)], []),  # node 3 has not reported: nothing is on disk everywhere
        ([(1, 5), (2, 5), (3, 5)], [5]),
        ([(1, 5), (2, 7), (3, 9)], [5]),
        ([(1, 5), (2, 7), (3, 9), (1, 8)], [5, 7]),
        ([(1, 9), (2, 9), (3, 9), (2, 3)], [9]),  # a lower report never moves it back
        ([(1, 0), (2, 0), (3, 0)], [0]),  # version 0 (view 0, index 0) is a version too
    ],
)
def test_frontier_is_the_minimum_over_members(reports: list[tuple[int, int]], expected: list[int]) -> None:
    net = ShardNet((1, 2, 3))
    for node, version in reports:
        net.persist(node, version)
        net.settle()
    assert net.persisted[1] == expected
    assert net.persisted[2] == expected and net.persisted[3] == expected


def test_frontier_moves_once_per_settled_step_not_per_version() -> None:
    net = ShardNet((1, 2))
    for v in range(1, 200):
        net.persist(1, v)
    net.persist(2, 150)
    net.settle()
    assert net.persisted[1] == [150]


@pytest.mark.parametrize("vid, index", [(0, 0), (0, 1), (3, 17), (2**20, 2**40 - 1)])
def test_versions_round_trip_and_order_by_view_first(vid: int, index: int) -> None:
    v = make_version(vid, index)
    assert version_parts(v) == (vid, index)
    assert make_version(vid + 1, 0) > v
    assert format_version(v) == f"{vid}.{index}"


@pytest.mark.parametrize("vid, index", [(-1, 0), (0, -1), (0, 2**40)])
def test_bad_versions_refused(vid: int, index: int) -> None:
    with pytest.raises(ValueError):
        make_version(vid, index)


def test_delivered_everywhere_follows_the_slowest_member_and_never_leads_it() -> None:
    """The frontier reads depend on: every member has delivered below it; it only moves up,
    never beyond what the slowest member delivered, and reaches the end once the lazy column
    has been pushed."""
    net = ShardNet((1, 2, 3))
    for i in range(30):
        net.send(1 + i % 3, b"m%d" % i)
    for _ in range(40):  # deliver a little at a time and check the bound at every step
        for src, dst in net.in_flight():
            net.deliver_one(src, dst)
            slowest = min(len(net.delivered[m]) for m in net.members)
            for m in net.members:
                assert all(n <= slowest for n in net.everywhere[m])
    net.settle()
    for m in net.members:
        seen = net.everywhere[m]
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert len(net.delivered[m]) == 30
        assert seen[-1] == net.cores[m].shards[SHARD].delivered  # every global index (the nulls ahead too)
