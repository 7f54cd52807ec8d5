"""Membership across view changes: failures, takeover, majority rule, joins, leaves, bad input.

Every scenario runs a few NodeCores through ``GroupNet`` (tests/core/group_net.py) on a virtual
clock with small timeouts (heartbeat 10 ms, suspicion 50 ms): deterministic and fast.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from runtime.core.effects import Rejected
from runtime.core.events import PeerLost, Tick
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, ViewAnnouncement
from runtime.core.sst import RowDelta
from runtime.core.view import Proposal, View, ViewFormatError, is_majority, leader_rank
from tests.core.group_net import FAST, POLICY, GroupNet, address_of

pytestmark = pytest.mark.timeout(60)

SUSPICION = FAST.suspicion_timeout


# --------------------------------------------------------------------------- helpers
def wedged(net: GroupNet, node: int, vid: int = 0) -> bool:
    m = net.membership_in(node, vid)
    return m is not None and bool(m.mine["wedged"])


def all_in_view(net: GroupNet, nodes: list[int], vid: int) -> bool:
    return all(net.vid(n) is not None and net.vid(n) >= vid for n in nodes)


def assert_one_view_per_vid(net: GroupNet) -> None:
    assert net.conflicting_views() == {}, "two nodes installed different views with the same vid"


def assert_sender_fifo(net: GroupNet, node: int, senders: list[int]) -> None:
    """Each sender's payloads reach ``node`` in the order the sender's core accepted them."""
    got = net.payloads(node)
    for s in senders:
        mine = set(net.accepted[s])
        assert [p for p in got if p in mine] == [p for p in net.accepted[s] if p in set(got)]


def warm_up(net: GroupNet, members: tuple[int, ...], per_node: int = 3) -> list[bytes]:
    """Every member multicasts ``per_node`` messages; wait until all delivered them."""
    sent = []
    for m in members:
        batch = [f"pre-{m}-{k}".encode() for k in range(per_node)]
        assert net.send(m, *batch) == per_node
        sent += batch
    assert net.run_until(lambda: all(len(net.payloads(m)) == len(sent) for m in members), 0.5)
    return sent


# ===================================================================== 1. single crash
CRASH_CASES = [
    # members, victim, how many survivors get the victim's last push before it dies
    pytest.param((0, 1, 2), 2, 1, id="3-nonleader-mid-push-reaches-one"),
    pytest.param((0, 1, 2), 0, 1, id="3-leader-mid-push-reaches-one"),
    pytest.param((0, 1, 2), 1, 2, id="3-nonleader-mid-push-reaches-all"),
    pytest.param((0, 1, 2, 3, 4), 3, 2, id="5-nonleader-mid-push-reaches-two"),
    pytest.param((0, 1, 2, 3, 4), 0, 4, id="5-leader-mid-push-reaches-all"),
    pytest.param((0, 1, 2, 3, 4), 0, 0, id="5-leader-mid-push-lost"),
    pytest.param((0, 1, 2, 3, 4), 4, 3, id="5-last-rank-mid-push-reaches-three"),
]


@pytest.mark.parametrize("members, victim, reach", CRASH_CASES)
def test_crash_survivors_agree_on_view_and_on_messages(members: tuple[int, ...], victim: int, reach: int) -> None:
    net = GroupNet(members)
    survivors = [m for m in members if m != victim]
    pre = warm_up(net, members)

    # The victim multicasts; its push reaches only ``reach`` survivors before it crashes.
    mid = [f"mid-{victim}-{k}".encode() for k in range(4)]
    assert net.send(victim, *mid) == len(mid)
    for s in survivors[:reach]:
        while net.deliver_one(victim, s):
            pass
    net.crash(victim)

    # Survivors keep sending: these can never be stable (the victim never acknowledges them),
    # so they are delivered by the agreed trim, in the view's final delivery.
    post = []
    for s in survivors:
        batch = [f"post-{s}-{k}".encode() for k in range(2)]
        assert net.send(s, *batch) == 2
        post += batch

    # Race: the first survivor wedges; one that has not wedged yet sends more. Those messages
    # are beyond the trim and must reach everybody in the next view, exactly once.
    assert net.run_until(lambda: any(wedged(net, s) for s in survivors), 0.5)
    racers = [s for s in survivors if not wedged(net, s)]
    assert racers, "harness: every survivor wedged in the same step"
    racer = racers[-1]
    race = [f"race-{racer}-{k}".encode() for k in range(3)]
    assert net.send(racer, *race) == len(race)

    assert net.run_until(lambda: all_in_view(net, survivors, 1), 0.5)
    assert net.run_until(lambda: all(set(race) <= set(net.payloads(s, vid=1)) for s in survivors), 0.5)
    net.run_for(0.05)

    # One next view, without the victim, everywhere.
    first = net.views[survivors[0]][1]
    assert first.vid == 1
    assert first.members == tuple(survivors)
    assert first.departed == (victim,) and first.joined == ()
    for s in survivors:
        assert net.views[s] == [net.views[survivors[0]][0], first]
        assert net.excluded[s] is None
    assert_one_view_per_vid(net)

    # Virtual synchrony: identical old-view deliveries, ending with the trimmed final one.
    old = net.delivered(survivors[0], vid=0)
    for s in survivors:
        assert net.delivered(s, vid=0) == old
        finals = [d for d in net.deliveries[s] if d.final]
        assert len(finals) == 1 and finals[0].vid == 0
        assert net.deliveries[s][[d.vid for d in net.deliveries[s]].index(1) - 1].final
    final_payloads = {p for (vid, _g, _s, _k, p, fin) in old if fin}
    assert set(post) <= final_payloads
    old_payloads = [item[4] for item in old]
    assert set(pre) | set(post) <= set(old_payloads)
    # The victim's last batch: delivered by all if every survivor got it, else by none.
    if reach == len(survivors):
        assert set(mid) <= set(old_payloads)
    else:
        for s in survivors:
            assert not set(mid) & set(net.payloads(s))

    # No loss, no duplicate: every live sender's message exactly once; the racer's trimmed
    # messages are resent and delivered in view 1 only.
    for s in survivors:
        counts = Counter(net.payloads(s))
        assert all(c == 1 for c in counts.values()), f"node {s} delivered a message twice"
        for r in survivors:
            assert all(counts[p] == 1 for p in net.accepted[r])
        assert not set(race) & set(net.payloads(s, vid=0))
        assert set(race) <= set(net.payloads(s, vid=1))
        assert_sender_fifo(net, s, survivors)
        assert net.orphaned[s] == []
        assert all(not q for q in net.outbox[s].values())


# ===================================================================== 2. harder failures
@pytest.mark.parametrize("victims", [(3, 4), (0, 1), (0, 4), (1, 3)])
def test_two_crashes_at_once_in_five(victims: tuple[int, int]) -> None:
    members = (0, 1, 2, 3, 4)
    net = GroupNet(members)
    survivors = [m for m in members if m not in victims]
    warm_up(net, members, 2)
    for v in victims:
        net.crash(v)
    for s in survivors:
        net.send(s, f"post-{s}".encode())
    assert net.run_until(lambda: all_in_view(net, survivors, 1), 0.5)
    net.run_for(0.05)
    for s in survivors:
        v1 = net.views[s][1]
        assert (v1.vid, v1.members, v1.departed) == (1, tuple(survivors), victims)
        assert len(net.views[s]) == 2
        assert net.delivered(s, vid=0) == net.delivered(survivors[0], vid=0)
        assert {f"post-{r}".encode() for r in survivors} <= set(net.payloads(s, vid=0))
    assert_one_view_per_vid(net)


def _ballot(net: GroupNet, node: int) -> int:
    m = net.membership_in(node, 0)
    return int(m.mine["ballot"]) if m is not None else 0


# Crash node 4 to start a change; then crash the leader (node 0) at a chosen point of it.
# hold: followers whose link from the leader is slow from the moment the leader wedges;
# accepted: the survivors holding the leader's proposal when it dies.
LEADER_DIES_CASES = [
    pytest.param(
        {1, 2, 3},
        lambda net: _ballot(net, 0) == 1,
        set(),
        id="proposal-reached-nobody",
    ),
    pytest.param(
        {1, 2},
        lambda net: _ballot(net, 3) == 1,
        {3},
        id="only-last-follower-accepted",
    ),
    pytest.param(
        {2, 3},
        lambda net: _ballot(net, 1) == 1,
        {1},
        id="only-next-leader-accepted",
    ),
    pytest.param(
        set(),
        lambda net: int(net.row(0, 0)["commit"]) > 0,
        {1, 2, 3},
        id="all-accepted-commit-lost",
    ),
    pytest.param(
        set(),
        lambda net: any((net.vid(n) or 0) >= 1 for n in (1, 2, 3)),
        {1, 2, 3},
        id="commit-seen-by-one-follower",
    ),
]


@pytest.mark.parametrize("hold, crash_when, accepted", LEADER_DIES_CASES)
def test_leader_dies_during_view_change(hold: set[int], crash_when: Any, accepted: set[int]) -> None:
    members = (0, 1, 2, 3, 4)
    net = GroupNet(members)
    survivors = [1, 2, 3]
    warm_up(net, members, 2)
    net.crash(4)
    for s in (0, 1, 2, 3):
        net.send(s, f"post-{s}".encode())
    assert net.run_until(lambda: wedged(net, 0), 0.5)
    for f in hold:
        net.hold(0, f)
    assert net.run_until(lambda: crash_when(net), 0.5)
    # The scenario is the one named: exactly these survivors hold the dead leader's proposal.
    assert {s for s in survivors if _ballot(net, s) == 1} == accepted
    net.crash(0)
    net.release()

    expected_last = tuple(survivors)
    assert net.run_until(lambda: all(net.last_view(s).members == expected_last for s in survivors), 1.0)
    net.run_for(0.1)
    assert_one_view_per_vid(net)
    # Everybody went through the same views; the first is the adopted proposal if any
    # survivor had accepted the dead leader's proposal, else a fresh one without both.
    seqs = {s: [(v.vid, v.members) for v in net.views[s]] for s in survivors}
    assert seqs[1] == seqs[2] == seqs[3]
    if accepted:  # adopted: view 1 is the dead leader's proposal (it still lists node 0)
        assert seqs[1][1:] == [(1, (0, 1, 2, 3)), (2, expected_last)]
        assert net.views[1][1].departed == (4,) and net.views[1][2].departed == (0,)
    else:
        assert seqs[1][1:] == [(1, expected_last)]
        assert net.views[1][1].departed == (0, 4)
    # Old-view deliveries are identical at every survivor (one agreed trim).
    for s in survivors:
        assert net.delivered(s, vid=0) == net.delivered(1, vid=0)
        assert net.excluded[s] is None
    assert {f"post-{r}".encode() for r in survivors} <= set(net.payloads(1, vid=0))


# ===================================================================== 3. majority rule
PARTITIONS = [
    ((0, 1), (2, 3, 4)),
    ((3, 4), (0, 1, 2)),
    ((0, 4), (1, 2, 3)),
    ((1, 3), (0, 2, 4)),
]


@pytest.mark.parametrize("minority, majority", PARTITIONS)
def test_partition_only_the_majority_installs(minority: tuple[int, ...], majority: tuple[int, ...]) -> None:
    net = GroupNet((0, 1, 2, 3, 4))
    warm_up(net, (0, 1, 2, 3, 4), 1)
    net.partition(minority, majority)
    assert net.run_until(lambda: all_in_view(net, list(majority), 1), 0.5)
    net.run_for(0.3)
    net.heal()
    net.run_for(0.2)
    for m in majority:
        assert [v.members for v in net.views[m]] == [(0, 1, 2, 3, 4), majority]
        assert net.views[m][1].departed == minority
        assert net.excluded[m] is None
    for m in minority:
        assert [v.vid for v in net.views[m]] == [0]
        assert net.excluded[m] is not None and "partitioned" in net.excluded[m]
    assert_one_view_per_vid(net)


@pytest.mark.parametrize(
    "members, fault, expect_excluded",
    [
        pytest.param((0, 1), ("crash", 1), (0,), id="2-lose-follower"),
        pytest.param((0, 1), ("crash", 0), (1,), id="2-lose-leader"),
        pytest.param((0, 1), ("cut", (0, 1)), (0, 1), id="2-split"),
        pytest.param((0, 1, 2, 3), ("split", ((0, 1), (2, 3))), (0, 1, 2, 3), id="4-split-2-2"),
        pytest.param((0, 1, 2, 3), ("split", ((0, 3), (1, 2))), (0, 1, 2, 3), id="4-split-2-2-mixed"),
    ],
)
def test_no_majority_no_view(
    members: tuple[int, ...], fault: tuple[str, Any], expect_excluded: tuple[int, ...]
) -> None:
    net = GroupNet(members)
    net.run_for(0.03)
    kind, arg = fault
    if kind == "crash":
        net.crash(arg)
    elif kind == "cut":
        net.cut(*arg)
    else:
        net.partition(*arg)
    assert net.run_until(lambda: all(net.excluded[m] is not None for m in expect_excluded), 0.5)
    net.run_for(0.3)
    for m in expect_excluded:
        assert "partitioned" in net.excluded[m]
    for m in members:
        assert [v.vid for v in net.views[m]] == [0]


# ===================================================================== 4. joins and leaves
JOIN_CASES = [
    # members, [(joiner, contacts)]
    pytest.param((0, 1, 2), [(7, [1])], id="redirected-by-non-leader"),
    pytest.param((0, 1, 2), [(7, [0])], id="straight-to-leader"),
    pytest.param((0, 1, 2), [(7, ["nowhere", 2])], id="first-contact-unreachable"),
    pytest.param((0,), [(7, [0])], id="founder-alone"),
    pytest.param((0, 1, 2, 3, 4), [(7, [3]), (8, [0])], id="two-joiners"),
]


@pytest.mark.parametrize("members, joiners", JOIN_CASES)
def test_join(members: tuple[int, ...], joiners: list[tuple[int, list[Any]]]) -> None:
    net = GroupNet(members)
    net.run_for(0.02)
    for node, contacts in joiners:
        net.add_joiner(node, contacts)
    ids = [j for j, _ in joiners]
    everyone = list(members) + ids

    def joined_everywhere() -> bool:
        views = [net.last_view(n) for n in everyone]
        return all(v is not None and set(ids) <= set(v.members) for v in views)

    assert net.run_until(joined_everywhere, 1.0)
    net.run_for(0.05)
    assert_one_view_per_vid(net)
    final = net.last_view(members[0])
    for n in everyone:
        assert net.excluded[n] is None
        assert net.last_view(n) == final
        assert net.last_view(n).layout == final.layout  # the joiner got the members' layout
    assert set(final.layout.members_of(ShardId("T", 0, 0))) == set(everyone)
    for node, contacts in joiners:
        # The joiner learnt its view from a ViewAnnouncement that lists it as joined.
        announced = [
            View.from_wire(msg.view)
            for (_t, _s, dst, msg) in net.frames
            if dst == node and isinstance(msg, ViewAnnouncement)
        ]
        assert announced and all(node in v.members and node in v.joined for v in announced)
        assert net.views[node][0] == announced[0]
        first = contacts[0]
        if first == members[0] or first == "nowhere":
            continue
        # A non-leader contact redirects the joiner to the leader's address.
        replies = [
            msg for (_t, src, dst, msg) in net.frames if src == first and dst == node and isinstance(msg, JoinReply)
        ]
        assert replies and replies[0].redirect_to == address_of(members[0])
    # The joiners take part in multicast in their first view.
    for n in everyone:
        net.send(n, f"hello-{n}".encode())
    hello = {f"hello-{n}".encode() for n in everyone}
    assert net.run_until(lambda: all(hello <= set(net.payloads(n)) for n in everyone), 0.5)
    logs = [net.delivered(n, vid=final.vid) for n in everyone]
    assert all(log == logs[0] for log in logs)


def test_joins_make_an_inadequate_group_adequate() -> None:
    """The founder waits alone in an inadequate view; each join is one view change."""
    policy = LayoutPolicy.of({"T": ShardPolicy(min_nodes=3)})
    net = GroupNet((0,), policy=policy)
    net.run_for(0.02)
    assert net.core(0).shards == {}
    net.add_joiner(1, [0])
    assert net.run_until(lambda: net.vid(1) == 1 and net.vid(0) == 1, 1.0)
    assert net.core(1).shards == {} and not net.last_view(1).layout.adequate
    net.add_joiner(2, [1])
    assert net.run_until(lambda: all(net.vid(n) == 2 for n in (0, 1, 2)), 1.0)
    for vid, by_node in net.views_by_vid().items():
        shapes = {(v.members, v.joined, v.layout.adequate, tuple(v.layout.shards.items())) for v in by_node.values()}
        assert len(shapes) == 1, f"view {vid} differs across nodes"
    assert net.last_view(2).layout.members_of(ShardId("T", 0, 0)) == (0, 1, 2)
    for n in (0, 1, 2):
        net.send(n, f"hi-{n}".encode())
    assert net.run_until(lambda: all(len(net.payloads(n)) == 3 for n in (0, 1, 2)), 0.5)
    assert net.delivered(0) == net.delivered(1) == net.delivered(2)


@pytest.mark.parametrize("contact", [0, 2])
def test_join_with_a_members_id_is_refused(contact: int) -> None:
    net = GroupNet((0, 1, 2))
    net.run_for(0.02)
    rejected = net.inject(contact, 1, JoinRequest(1, "elsewhere"))
    assert rejected == []
    replies = [msg for (_t, src, dst, msg) in net.frames if src == contact and dst == 1 and isinstance(msg, JoinReply)]
    assert len(replies) == 1 and replies[0].redirect_to is None
    assert "member" in replies[0].reason
    net.run_for(0.2)
    for n in (0, 1, 2):
        assert [v.vid for v in net.views[n]] == [0]
        assert net.core(n).membership.pending_joins == {}


@pytest.mark.parametrize(
    "members, leaver",
    [((0, 1, 2), 2), ((0, 1, 2), 0), ((0, 1, 2, 3, 4), 1), ((0, 1), 1)],
)
def test_graceful_leave(members: tuple[int, ...], leaver: int) -> None:
    net = GroupNet(members)
    stay = [m for m in members if m != leaver]
    warm_up(net, members, 2)
    for m in members:
        net.send(m, f"last-{m}".encode())
    net.leave(leaver)

    # No suspicion needed: the change completes well within one suspicion timeout.
    def done() -> bool:
        return net.excluded[leaver] is not None and all_in_view(net, stay, 1)

    assert net.run_until(done, SUSPICION * 0.8)
    net.run_for(0.1)
    assert "left" in net.excluded[leaver]
    assert [v.vid for v in net.views[leaver]] == [0]
    for m in stay:
        v1 = net.views[m][1]
        assert (v1.members, v1.departed, v1.joined) == (tuple(stay), (leaver,), ())
        assert len(net.views[m]) == 2 and net.excluded[m] is None
    for m in members:
        assert not any(net.membership_in(m, 0).mine["suspected"]), f"node {m} suspected someone"
        # The leaver delivered the same messages in the old view as those who stay (each in
        # a normal or in the final delivery: which one is each node's own timing).
        assert [d[:5] for d in net.delivered(m, vid=0)] == [d[:5] for d in net.delivered(stay[0], vid=0)]
    # The leaver wedged at once, so what the others sent meanwhile may be beyond the trim:
    # then it is sent again in the new view. Either way exactly once.
    for m in stay:
        counts = Counter(net.payloads(m))
        assert all(counts[f"last-{s}".encode()] == 1 for s in stay)
        assert all(c == 1 for c in counts.values())
    # The leaver's own last message: delivered in the old view, or handed back to its app.
    mine = f"last-{leaver}".encode()
    orphaned = [p for _sid, ps in net.orphaned[leaver] for p in ps]
    assert (mine in net.payloads(stay[0], vid=0)) != (mine in orphaned)
    assert_one_view_per_vid(net)


# ===================================================================== 5. bad input
def _snapshot(net: GroupNet, node: int) -> Any:
    core = net.core(node)
    m = core.membership
    return (
        core.vid,
        core.excluded,
        repr(m.sst.rows),
        list(m.sst._applied_seq),
        dict(m.pending_joins),
        m.decided,
        m.excluded,
        list(m.last_heard),
    )


BIG = 10**6  # a push counter newer than anything sent, so a delta is not dropped as stale

BAD_GROUP_PUSHES = [
    pytest.param(1, GroupPush(0, 2, RowDelta(2, BIG, {"heartbeat": 99})), id="claims-another-rank"),
    pytest.param(1, GroupPush(0, 1, RowDelta(2, BIG, {"heartbeat": 99})), id="row-rank-differs"),
    pytest.param(1, GroupPush(0, 7, RowDelta(7, BIG, {"heartbeat": 99})), id="rank-out-of-range"),
    pytest.param(1, GroupPush(0, None, RowDelta(None, BIG, {"heartbeat": 99})), id="rank-none"),
    pytest.param(9, GroupPush(0, 1, RowDelta(1, BIG, {"heartbeat": 99})), id="from-non-member"),
    pytest.param(9, GroupPush(0, 0, RowDelta(0, BIG, {"suspected": (0, 1, 1)})), id="non-member-as-rank-0"),
    pytest.param(0, GroupPush(0, 0, RowDelta(0, BIG, {"heartbeat": 99})), id="own-row"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, {"bogus": 1})), id="unknown-column"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, {"heartbeat": "x"})), id="heartbeat-not-int"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, {"suspected": (1, 1)})), id="suspected-wrong-width"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, {"suspected": ("a", 0, 0)})), id="suspected-not-ints"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, {"heartbeat": 99, "commit": 1.5})), id="commit-float"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, "9", {"heartbeat": 99})), id="seq-not-int"),
    pytest.param(1, GroupPush(0, 1, RowDelta(1, BIG, [("heartbeat", 99)])), id="values-not-mapping"),
]


@pytest.mark.parametrize("sender, msg", BAD_GROUP_PUSHES)
def test_malformed_group_push_is_rejected_without_effect(sender: int, msg: GroupPush) -> None:
    net = GroupNet((0, 1, 2))
    net.run_for(0.03)
    before = _snapshot(net, 0)
    rejected = net.inject(0, sender, msg)
    assert len(rejected) == 1 and isinstance(rejected[0], Rejected)
    assert rejected[0].sender == sender
    assert _snapshot(net, 0) == before
    net.run_for(0.3)  # the group carries on as if nothing had come
    for n in (0, 1, 2):
        assert [v.vid for v in net.views[n]] == [0] and net.excluded[n] is None


@pytest.mark.parametrize(
    "frozen", ["zz", 5, [["T", 0, 0, ["a", "b", "c"]]], [["T", 0, 0, [1]]], [["X", 0, 0, [1, 1, 1]]], [[1, 2]]]
)
def test_malformed_frozen_counts_are_rejected(frozen: Any) -> None:
    net = GroupNet((0, 1, 2))
    net.run_for(0.03)
    rejected = net.inject(0, 1, GroupPush(0, 1, RowDelta(1, BIG, {"wedged": 1, "frozen": frozen})))
    net.run_for(0.2)  # must not raise out of NodeCore.step
    assert rejected, "a group row with unreadable frozen counts was accepted"


def _good_view_wire() -> dict[str, Any]:
    members = (0, 1, 2, 5)
    addresses = tuple(address_of(m) for m in members)
    return View(1, members, addresses, compute_layout(POLICY, members), joined=(5,)).to_wire()


BAD_ANNOUNCEMENTS = [
    pytest.param(None, id="none"),
    pytest.param("garbage", id="string"),
    pytest.param([1, 2, 3], id="list"),
    pytest.param({}, id="empty"),
    pytest.param(dict(_good_view_wire(), vid="1"), id="vid-str"),
    pytest.param(dict(_good_view_wire(), vid=True), id="vid-bool"),
    pytest.param(dict(_good_view_wire(), members=[0, 1, 2, 2]), id="duplicate-member"),
    pytest.param(dict(_good_view_wire(), members=[0, 1, 2, "5"]), id="member-str"),
    pytest.param(dict(_good_view_wire(), addresses=["n0"]), id="addresses-short"),
    pytest.param(dict(_good_view_wire(), shards=[["T", 0, 0, [0, 1, 2, 5, 6]]]), id="shard-outsider"),
    pytest.param(dict(_good_view_wire(), shards=[["T", 0]]), id="shard-short"),
    pytest.param(dict(_good_view_wire(), shards=5), id="shards-int"),
    pytest.param(dict(_good_view_wire(), joined=None), id="joined-none"),
    pytest.param(dict(_good_view_wire(), departed=["x"]), id="departed-str"),
    pytest.param(dict(_good_view_wire(), shards=[["T", float("nan"), 0, [0]]]), id="shard-index-nan"),
]


@pytest.mark.parametrize("wire", BAD_ANNOUNCEMENTS)
@pytest.mark.parametrize("receiver", ["joiner", "member"])
def test_garbage_view_announcement_is_rejected(wire: Any, receiver: str) -> None:
    net = GroupNet((0, 1, 2))
    joiner = net.add_joiner(5, [0])
    target = 5 if receiver == "joiner" else 1
    before = (net.core(target).view, net.core(target).excluded)
    rejected = net.inject(target, 0, ViewAnnouncement(wire))
    assert len(rejected) == 1 and rejected[0].sender == 0
    assert (net.core(target).view, net.core(target).excluded) == before
    assert joiner.joining and net.views[5] == []
    # The real join still works afterwards.
    assert net.run_until(lambda: net.vid(5) == 1, 1.0)
    assert net.last_view(5) == net.last_view(0)


@pytest.mark.parametrize("field", ["subgroup", "member"])
def test_view_announcement_with_infinite_number_is_rejected(field: str) -> None:
    net = GroupNet((0, 1, 2))
    net.add_joiner(5, [0])
    entry = ["T", float("inf"), 0, [0]] if field == "subgroup" else ["T", 0, 0, [float("inf")]]
    rejected = net.inject(5, 0, ViewAnnouncement(dict(_good_view_wire(), shards=[entry])))
    assert len(rejected) == 1


def test_view_announcement_not_naming_the_joiner_is_ignored() -> None:
    net = GroupNet((0, 1, 2))
    joiner = net.add_joiner(5, ["nowhere"])
    members = (0, 1, 2, 6)
    addresses = tuple(address_of(m) for m in members)
    other = View(1, members, addresses, compute_layout(POLICY, members), joined=(6,))
    assert net.inject(5, 0, ViewAnnouncement(other.to_wire())) == []
    assert joiner.joining and net.views[5] == []


# ===================================================================== 6. wire forms, tables
TWO_TYPES = LayoutPolicy.of({"A": ShardPolicy(shards=2, min_nodes=1), "B": ShardPolicy(min_nodes=2, max_nodes=2)})
NEEDS_FOUR = LayoutPolicy.of({"T": ShardPolicy(min_nodes=4)})


def _view(vid: int, members: tuple[int, ...], policy: LayoutPolicy = POLICY, **kw: Any) -> View:
    return View(vid, members, tuple(address_of(m) for m in members), compute_layout(policy, members), **kw)


@pytest.mark.parametrize(
    "view",
    [
        _view(0, (3,)),
        _view(4, (0, 1, 2), joined=(2,), departed=(9,)),
        _view(7, (5, 2, 8, 1), TWO_TYPES, departed=(3, 4)),
        pytest.param(_view(2, (1, 2), NEEDS_FOUR), id="inadequate"),  # no shards, a shortfall
    ],
)
def test_view_wire_round_trip(view: View) -> None:
    back = View.from_wire(view.to_wire())
    assert back == view and back.layout == view.layout
    # Through a text codec too (tuples become lists, ints stay ints).
    assert View.from_wire(json.loads(json.dumps(view.to_wire()))) == view
    assert [back.rank_of(m) for m in view.members] == list(range(view.n))


def test_view_wire_round_trip_is_not_vacuous() -> None:
    a, b = _view(1, (0, 1, 2)), _view(1, (0, 2, 1))
    assert View.from_wire(a.to_wire()) != b
    assert View.from_wire(dict(a.to_wire(), departed=[4])) != a


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda w: w.pop("vid"), id="no-vid"),
        pytest.param(lambda w: w.pop("shards"), id="no-shards"),
        pytest.param(lambda w: w.update(vid=1.0), id="vid-float"),
        pytest.param(lambda w: w.update(vid=False), id="vid-bool"),
        pytest.param(lambda w: w.update(members=[0, 0, 1]), id="member-twice"),
        pytest.param(lambda w: w.update(members=[0, 1, None]), id="member-none"),
        pytest.param(lambda w: w.update(addresses=["a", "b"]), id="address-missing"),
        pytest.param(lambda w: w.update(joined=[1.5]), id="joined-float"),
        pytest.param(lambda w: w.update(departed=7), id="departed-int"),
        pytest.param(lambda w: w.update(shards=[["T", 0, 0, [0, 9]]]), id="shard-outsider"),
        pytest.param(lambda w: w.update(shards=[["T", 0, 0]]), id="shard-no-members"),
        pytest.param(lambda w: w.update(shards=[["T", "x", 0, [0]]]), id="shard-index-str"),
    ],
)
def test_view_from_wire_rejects(mutate: Any) -> None:
    wire = _view(1, (0, 1, 2)).to_wire()
    View.from_wire(dict(wire))  # the unmutated form is fine
    mutate(wire)
    with pytest.raises(ViewFormatError):
        View.from_wire(wire)


SID = ShardId("T", 0, 0)
PROPOSALS = [
    Proposal(1, (0, 1), ("n0", "n1"), (), (2,), ((SID, (3, 3, 2)),)),
    Proposal(5, (2, 4, 9), ("a", "b", "c"), (9,), (), ()),
    Proposal(3, (1,), ("n1",), (), (0, 2), ((ShardId("A", 0, 1), (1, 0)), (ShardId("B", 2, 0), (4,)))),
]


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_proposal_wire_round_trip(proposal: Proposal) -> None:
    assert Proposal.from_wire(proposal.to_wire()) == proposal
    assert Proposal.from_wire(json.loads(json.dumps(proposal.to_wire()))) == proposal
    for sid, counts in proposal.trims:
        assert Proposal.from_wire(proposal.to_wire()).trim_of(sid) == counts
    assert proposal.trim_of(ShardId("nope", 0, 0)) is None


def test_proposal_next_view_matches_layout() -> None:
    p = PROPOSALS[0]
    v = p.next_view(POLICY, View(0, (0, 1, 2), ("a", "b", "c"), compute_layout(POLICY, (0, 1, 2))))
    assert (v.vid, v.members, v.addresses, v.departed) == (1, (0, 1), ("n0", "n1"), (2,))
    assert v.layout == compute_layout(POLICY, (0, 1))


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(None, id="none"),
        pytest.param(7, id="int"),
        pytest.param([1, [0], ["n0"], [], []], id="five-fields"),
        pytest.param([1, [0], ["n0"], [], [], [], []], id="seven-fields"),
        pytest.param(["1", [0], ["n0"], [], [], []], id="vid-str"),
        pytest.param([True, [0], ["n0"], [], [], []], id="vid-bool"),
        pytest.param([1, [0, 0], ["n0", "n0"], [], [], []], id="member-twice"),
        pytest.param([1, [0, 1], ["n0"], [], [], []], id="address-missing"),
        pytest.param([1, [0], ["n0"], [None], [], []], id="joined-none"),
        pytest.param([1, [0], ["n0"], [], [], [["T", 0, 0]]], id="trim-short"),
        pytest.param([1, [0], ["n0"], [], [], [["T", 0, 0, [1.0]]]], id="trim-count-float"),
        pytest.param([1, [0], ["n0"], [], [], [["T", "0", 0, [1]]]], id="trim-subgroup-str"),
        pytest.param([1, [0], ["n0"], [], [], 5], id="trims-int"),
    ],
)
def test_proposal_from_wire_rejects(wire: Any) -> None:
    with pytest.raises(ViewFormatError):
        Proposal.from_wire(wire)


@pytest.mark.parametrize(
    "suspected, expected",
    [
        ([], None),
        ([0], 0),
        ([1], None),
        ([0, 1, 1], 0),
        ([1, 0, 0], 1),
        ([1, 1, 0, 0, 1], 2),
        ([1, 1, 1, 1], None),
        ([0, 0, 0, 0, 0], 0),
        ((1, 0), 1),
    ],
)
def test_leader_rank(suspected: list[int], expected: int | None) -> None:
    assert leader_rank(suspected) == expected


@pytest.mark.parametrize(
    "count, n, expected",
    [
        (0, 1, False), (1, 1, True), (1, 2, False), (2, 2, True), (1, 3, False), (2, 3, True),
        (2, 4, False), (3, 4, True), (2, 5, False), (3, 5, True), (3, 6, False), (4, 6, True),
        (0, 0, False),
    ],
)  # fmt: skip
def test_is_majority(count: int, n: int, expected: bool) -> None:
    assert is_majority(count, n) is expected


# ============================================================ acceptance made durable first
def _watch_acceptances(net: GroupNet) -> dict[int, list[tuple[str, int]]]:
    """Wrap every core's ``ready()`` to record, in the order a driver would act on them, each
    ``Ready.accepted`` ("durable") and each group push that carries an acceptance ("sent")."""
    log: dict[int, list[tuple[str, int]]] = {n: [] for n in net.cores}
    for node, core in net.cores.items():
        inner = core.ready

        def ready(inner: Any = inner, node: int = node) -> Any:
            r = inner()
            if r.accepted is not None:
                log[node].append(("durable", r.accepted))
            for out in r.outgoing:
                msg = out.message
                if isinstance(msg, GroupPush) and msg.row.values.get("proposal") is not None:
                    if msg.row.values.get("ballot", 1):
                        log[node].append(("sent", msg.row.values["proposal"][0]))
            return r

        core.ready = ready  # type: ignore[method-assign]
    return log


def _leave_node(net: GroupNet, node: int) -> None:
    net.leave(node)


def _crash_node(net: GroupNet, node: int) -> None:
    net.crash(node)


@pytest.mark.parametrize(
    "act, node",
    [
        pytest.param(_crash_node, 4, id="follower-crashes"),
        pytest.param(_crash_node, 0, id="leader-crashes"),
        pytest.param(_leave_node, 2, id="member-leaves"),
        pytest.param(_leave_node, 0, id="leader-leaves"),
    ],
)
def test_acceptance_is_handed_to_the_driver_before_the_ack_leaves(act: Any, node: int) -> None:
    """Ready.accepted names a proposal no later than the Ready whose pushes first carry this
    node's acceptance of it (a driver that makes it durable first never acks what its disk does
    not know), only ever grows, and every member that installed a view accepted it."""
    members = (0, 1, 2, 3, 4)
    net = GroupNet(members)
    log = _watch_acceptances(net)
    warm_up(net, members, 2)
    act(net, node)
    survivors = [m for m in members if m != node]
    assert net.run_until(lambda: all((net.vid(s) or 0) >= 1 for s in survivors), 1.0)
    net.run_for(0.05)
    for n, entries in log.items():
        durable = -1
        for kind, vid in entries:
            if kind == "durable":
                assert vid > durable, f"node {n}: Ready.accepted went from {durable} to {vid}"
                durable = vid
            else:
                assert vid <= durable, f"node {n} sent its acceptance of view {vid} before Ready.accepted named it"
    for s in survivors:
        durable = [vid for kind, vid in log[s] if kind == "durable"]
        assert durable and durable[-1] >= net.vid(s)  # type: ignore[operator]
    assert any(kind == "sent" for entries in log.values() for kind, _ in entries)


# ===================================================================== 7. stalls
class PausingNet(GroupNet):
    """A GroupNet whose nodes can be paused as a SIGSTOP pauses a process: a paused node is
    neither ticked nor handed frames (they stay queued for it), and it sends nothing."""

    def __init__(self, members: tuple[int, ...], **kwargs: Any) -> None:
        self.paused: set[int] = set()
        super().__init__(members, **kwargs)

    def alive(self, node: int) -> bool:
        return node not in self.paused and super().alive(node)

    def pause(self, *nodes: int) -> None:
        for node in nodes:
            self.paused.add(node)
            for src in self.cores:
                self.hold(src, node)

    def resume(self, node: int, first: str) -> None:
        """Run ``node`` again; its first event is a (stale) timer tick or the frames that were
        queued for it, as ``first`` says (asyncio serves sockets before timers, but a read
        budget or TLS buffering may leave data for the next turn)."""
        self.paused.discard(node)
        self.held = {link for link in self.held if link[1] != node}
        if first == "tick":
            self.cores[node].step(Tick(self.now))
            self.flush(node)
        for src in sorted(self.cores):
            while self.deliver_one(src, node):
                pass


def suspicions(net: GroupNet, node: int) -> list[int]:
    m = net.cores[node].membership
    assert m is not None
    return [m.view.members[r] for r in range(m.n) if m.suspects(r)]


STALL_CASES = [
    # gap (in suspicion timeouts), what each node meets first on resume
    pytest.param(4.0, {0: "tick", 1: "tick", 2: "tick"}, id="4x-timers-first"),
    pytest.param(4.0, {0: "frames", 1: "frames", 2: "frames"}, id="4x-frames-first"),
    pytest.param(4.0, {0: "tick", 1: "frames", 2: "tick"}, id="4x-mixed"),
    pytest.param(40.0, {0: "frames", 1: "tick", 2: "frames"}, id="40x-mixed"),
    pytest.param(1.2, {0: "tick", 1: "tick", 2: "tick"}, id="just-over-timeout"),
    pytest.param(0.8, {0: "tick", 1: "tick", 2: "tick"}, id="under-timeout"),
]


@pytest.mark.parametrize("gap, first", STALL_CASES)
def test_all_members_stalled_together_resume_in_the_same_view(gap: float, first: dict[int, str]) -> None:
    members = (0, 1, 2)
    net = PausingNet(members)
    pre = warm_up(net, members)
    during = [f"during-{m}".encode() for m in members]
    for m, payload in zip(members, during):
        net.send(m, payload)  # pushes queued, unread, when every process stops
    net.pause(*members)
    net.now += gap * SUSPICION
    for node in members:  # resumed one after another, as SIGCONTs are
        net.resume(node, first[node])
    for node in members:
        net.cores[node].step(Tick(net.now + FAST.heartbeat_interval))  # a second tick, before any peer ran again
        net.flush(node)
    after = [f"after-{m}".encode() for m in members]
    for m, payload in zip(members, after):
        net.send(m, payload)
    assert net.run_until(lambda: all(len(net.payloads(m)) == len(pre) + 6 for m in members), 1.0)
    for node in members:
        assert suspicions(net, node) == [], f"node {node} suspected peers that only stalled with it"
        assert net.excluded[node] is None and net.vid(node) == 0
        assert set(net.payloads(node)) == set(pre + during + after)
        stalled = net.cores[node].status().stalls
        if gap > 0.5:
            assert stalled is not None and stalled.count == 1, stalled
            assert stalled.longest_ms >= gap * SUSPICION * 1000 - 1e-6
    net.run_for(5 * SUSPICION)
    assert all(net.vid(n) == 0 and not suspicions(net, n) for n in members)


@pytest.mark.parametrize("first", ["tick", "frames"])
def test_a_member_that_stays_stopped_is_still_suspected_after_the_grace(first: str) -> None:
    members = (0, 1, 2)
    net = PausingNet(members)
    warm_up(net, members)
    net.pause(*members)
    net.now += 4 * SUSPICION
    net.resume(0, first)
    net.resume(1, first)
    t0 = net.now
    assert net.run_until(lambda: all(net.vid(n) == 1 for n in (0, 1)), 1.0)
    took = net.now - t0
    assert 0.5 * SUSPICION < took < 3 * SUSPICION, f"view 1 after {took / SUSPICION:.2f} suspicion timeouts"
    assert net.last_view(0).members == (0, 1)  # type: ignore[union-attr]


def test_a_loop_that_always_runs_late_still_suspects_a_crashed_peer() -> None:
    """Only lateness is credited: ticks 3 heartbeat intervals apart still suspect a silent peer."""
    members = (0, 1, 2)
    net = GroupNet(members)
    warm_up(net, members)
    net.crash(2)
    t0 = net.now
    late = 3 * FAST.heartbeat_interval
    for _ in range(200):
        net.now += late
        for node in (0, 1):
            net.cores[node].step(Tick(net.now))
            net.flush(node)
        net.deliver_all()
        if all(net.vid(n) == 1 for n in (0, 1)):
            break
    assert all(net.vid(n) == 1 for n in (0, 1)), "a crashed peer was never suspected"
    assert net.now - t0 < 6 * SUSPICION


def test_one_member_stalled_while_the_others_go_on_never_installs_a_view() -> None:
    members = (0, 1, 2)
    net = PausingNet(members)
    pre = warm_up(net, members)
    net.pause(2)
    assert net.run_until(lambda: all(net.vid(n) == 1 for n in (0, 1)), 1.0)
    net.send(0, b"without-2")
    assert net.run_until(lambda: b"without-2" in net.payloads(1), 0.5)
    net.resume(2, "frames")
    net.run_for(4 * SUSPICION)
    assert [v.vid for v in net.views[2]] == [0] and net.vid(2) == 0, "the stalled member installed a view on its own"
    assert net.excluded[2] is not None and net.excluded[2].startswith(("partitioned", "suspected"))
    assert set(net.payloads(2)) <= set(pre), "the stalled member delivered what the others never did"
    assert_one_view_per_vid(net)


@pytest.mark.parametrize("closed", [True, False], ids=["connection-closed", "silence-only"])
@pytest.mark.parametrize("first", ["tick", "frames"])
def test_a_majority_stalled_while_one_member_ran_on_survives_its_suspicions(closed: bool, first: str) -> None:
    """Nodes 0 and 1 stall (node 1 a little later) while node 2 runs on: node 2 suspects 0,
    tells 1 (the row waits in 1's socket), then suspects 1 and stops itself. On resume, 0 and
    1 must not take node 2's word and suspect each other: they form view [0, 1]."""
    members = (0, 1, 2)
    net = PausingNet(members)
    warm_up(net, members)
    net.pause(0)
    net.run_for(3 * FAST.heartbeat_interval)
    net.pause(1)
    assert net.run_until(lambda: net.excluded[2] is not None, 1.0)
    assert net.excluded[2].startswith("partitioned")  # type: ignore[union-attr]
    told = [m for _, src, dst, m in net.frames if src == 2 and dst == 1 and isinstance(m, GroupPush)]
    assert any(m.row.values.get("suspected", [0])[0] for m in told), "node 2 never told node 1 it suspects node 0"
    net.now += 2 * SUSPICION
    for node in (0, 1):
        if closed:  # its process ended: the transport reports the closed connection at once
            net.cores[node].step(PeerLost(net.now, 2))
            net.flush(node)
        net.resume(node, first)
    assert net.run_until(lambda: all(net.vid(n) == 1 for n in (0, 1)), 1.0), {
        n: (net.excluded[n], suspicions(net, n)) for n in (0, 1)
    }
    assert net.last_view(0).members == (0, 1)  # type: ignore[union-attr]
    assert net.excluded[0] is None and net.excluded[1] is None
    assert_one_view_per_vid(net)
