"""Tests of the layout policy: tables of hand-checked cases plus properties over random views.

The tables pin down the exact allocation (so a change to the rules shows up as a readable
diff); the properties check what must hold for every policy and view: determinism,
disjointness, bounds, and adequacy depending only on the member count.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.layout import Layout, LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.errors import LayoutError

pytestmark = pytest.mark.timeout(60)

SP = ShardPolicy


def sid(text: str) -> ShardId:
    """``"KV/0/1"`` -> ShardId("KV", 0, 1): keeps the tables short."""
    name, subgroup, shard = text.split("/")
    return ShardId(name, int(subgroup), int(shard))


def policy(**types: ShardPolicy) -> LayoutPolicy:
    """Keyword order is the policy order."""
    return LayoutPolicy.of(types)


def as_text(layout: Layout) -> dict[str, tuple[int, ...]]:
    return {str(s): members for s, members in layout.shards.items()}


# --------------------------------------------------------------------------------------------
# Allocation table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One view (optionally after an earlier view ``before``) and the layout expected for it."""

    name: str
    policy: LayoutPolicy
    members: Sequence[int]
    shards: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    shortfall: Mapping[str, int] = field(default_factory=dict)
    before: Sequence[int] | None = None


KV2 = policy(KV=SP(shards=2, min_nodes=2))
KV2_MAX3 = policy(KV=SP(shards=2, min_nodes=2, max_nodes=3))
KV2_MIN1 = policy(KV=SP(shards=2))
RESERVED = policy(KV=SP(shards=2, max_nodes=2, reserved=((), (1,))))
TWO_TYPES = policy(A=SP(min_nodes=2), B=SP(subgroups=2, max_nodes=1))
WITH_OVERLAP = policy(A=SP(min_nodes=2, max_nodes=2), O=SP(shards=2, max_nodes=2, overlapping=True))

CASES = [
    # adequacy boundaries
    Case("empty view", policy(KV=SP()), [], shortfall={"KV/0/0": 1}),
    Case("single node", policy(KV=SP()), [7], {"KV/0/0": (7,)}),
    Case("one short", KV2, [1, 2, 3], shortfall={"KV/0/1": 1}),
    Case(
        "two shards short",
        policy(KV=SP(shards=3, min_nodes=2)),
        [1, 2],
        shortfall={"KV/0/1": 2, "KV/0/2": 2},
    ),
    Case("exactly enough", KV2, [1, 2, 3, 4], {"KV/0/0": (1, 2), "KV/0/1": (3, 4)}),
    Case("rank order, not id order", KV2, [5, 3, 9, 1], {"KV/0/0": (5, 3), "KV/0/1": (9, 1)}),
    # extra nodes: round-robin, bounded by max_nodes, leftovers in no shard
    Case(
        "unbounded takes all",
        KV2,
        [1, 2, 3, 4, 5, 6, 7],
        {"KV/0/0": (1, 2, 5, 7), "KV/0/1": (3, 4, 6)},
    ),
    Case(
        "max bounds, rest left over",
        KV2_MAX3,
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        {"KV/0/0": (1, 2, 5), "KV/0/1": (3, 4, 6)},
    ),
    # several types share the disjoint pool in policy order
    Case(
        "two disjoint types",
        TWO_TYPES,
        [10, 20, 30, 40, 50],
        {"A/0/0": (10, 20, 50), "B/0/0": (30,), "B/1/0": (40,)},
    ),
    Case("later type starved", TWO_TYPES, [10, 20, 30], shortfall={"B/1/0": 1}),
    # overlapping types draw from every member
    Case(
        "overlapping reuses disjoint nodes",
        WITH_OVERLAP,
        [1, 2, 3, 4],
        {"A/0/0": (1, 2), "O/0/0": (1, 3), "O/0/1": (2, 4)},
    ),
    Case(
        "overlapping subgroups share nodes",
        policy(O=SP(subgroups=2, min_nodes=2, max_nodes=2, overlapping=True)),
        [1, 2, 3],
        {"O/0/0": (1, 2), "O/1/0": (1, 2)},
    ),
    Case(
        "only the overlapping type is short",
        policy(A=SP(min_nodes=5), O=SP(shards=3, min_nodes=2, overlapping=True)),
        [1, 2, 3, 4, 5],
        shortfall={"O/0/2": 1},
    ),
    # reserved ids
    Case("reserved present", RESERVED, [1, 2, 3, 4], {"KV/0/0": (2, 3), "KV/0/1": (1, 4)}),
    Case("reserved absent", RESERVED, [2, 3, 4], {"KV/0/0": (2, 4), "KV/0/1": (3,)}),
    Case(
        "reserved beats rank order",
        policy(A=SP(reserved=((7,),)), B=SP()),
        [1, 7],
        {"A/0/0": (7,), "B/0/0": (1,)},
    ),
    Case(
        "reserved by an overlapping type stays in the disjoint pool",
        policy(D=SP(max_nodes=1), O=SP(reserved=((5,),), overlapping=True)),
        [5, 6],
        {"D/0/0": (5,), "O/0/0": (5, 6)},
    ),
    Case(
        "reserved node joins its shard, nobody moves",
        RESERVED,
        [2, 3, 4, 1],
        {"KV/0/0": (2, 4), "KV/0/1": (3, 1)},
        before=[2, 3, 4],
    ),
    # stickiness
    Case(
        "member leaves, survivors stay",
        KV2_MIN1,
        [1, 2, 4, 5],
        {"KV/0/0": (1, 5), "KV/0/1": (2, 4)},
        before=[1, 2, 3, 4, 5],
    ),
    Case(
        "member joins, survivors stay",
        KV2_MIN1,
        [1, 2, 3, 4, 6],
        {"KV/0/0": (1, 3, 6), "KV/0/1": (2, 4)},
        before=[1, 2, 3, 4],
    ),
    Case(
        "leave and join together",
        KV2_MIN1,
        [2, 3, 4, 5],
        {"KV/0/0": (3, 5), "KV/0/1": (2, 4)},
        before=[1, 2, 3, 4],
    ),
    Case(
        "stickiness does not starve a minimum",
        KV2,
        [1, 2, 5, 6],
        {"KV/0/0": (1, 2), "KV/0/1": (5, 6)},
        before=[1, 2, 3, 4, 5, 6],
    ),
    Case(
        "inadequate before: fresh layout",
        KV2,
        [4, 3, 2, 1],
        {"KV/0/0": (4, 3), "KV/0/1": (2, 1)},
        before=[1, 2, 3],
    ),
    Case(
        "inadequate after: shortfall ignores before",
        KV2,
        [1, 2, 3],
        shortfall={"KV/0/1": 1},
        before=[1, 2, 3, 4],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_allocation_table(case: Case) -> None:
    previous = None if case.before is None else compute_layout(case.policy, case.before)
    layout = compute_layout(case.policy, case.members, previous)
    assert as_text(layout) == dict(case.shards)
    assert {str(s): n for s, n in layout.shortfall} == dict(case.shortfall)
    assert layout.adequate == (not case.shortfall)


# --------------------------------------------------------------------------------------------
# Layout accessors and shortfall text
# --------------------------------------------------------------------------------------------


SHORTFALL_TEXT = [
    (KV2, [1, 2, 3], "KV/0/1 needs 1 more node"),
    (
        policy(KV=SP(shards=3, min_nodes=2)),
        [1, 2],
        "KV/0/1 needs 2 more nodes and KV/0/2 needs 2 more nodes",
    ),
    (
        policy(A=SP(min_nodes=2), B=SP(), C=SP()),
        [1],
        "A/0/0 needs 1 more node, B/0/0 needs 1 more node and C/0/0 needs 1 more node",
    ),
    (KV2, [1, 2, 3, 4], ""),
]


@pytest.mark.parametrize(("layout_policy", "members", "text"), SHORTFALL_TEXT)
def test_shortfall_text(layout_policy: LayoutPolicy, members: list[int], text: str) -> None:
    assert compute_layout(layout_policy, members).describe_shortfall() == text


def test_accessors() -> None:
    layout = compute_layout(WITH_OVERLAP, [1, 2, 3, 4, 5])
    assert layout.shards_of(1) == (sid("A/0/0"), sid("O/0/0"))
    assert layout.shards_of(4) == (sid("O/0/1"),)
    assert layout.shards_of(5) == ()  # A is full, O is full: 5 is left over
    assert layout.shards_of(99) == ()
    assert layout.members_of(sid("O/0/1")) == (2, 4)
    assert layout.members_of(sid("Nope/0/0")) == ()
    assert list(layout.shards) == [sid("A/0/0"), sid("O/0/0"), sid("O/0/1")]


def test_inadequate_layout_has_no_shards() -> None:
    layout = compute_layout(KV2, [1, 2, 3])
    assert layout.shards == {}
    assert layout.shards_of(1) == ()
    assert layout.members_of(sid("KV/0/0")) == ()


def test_layout_is_immutable_and_hashable() -> None:
    source: dict[ShardId, tuple[int, ...]] = {sid("KV/0/0"): (1, 2)}
    layout = Layout(True, source, ())
    source[sid("KV/0/0")] = (3,)
    assert layout.members_of(sid("KV/0/0")) == (1, 2)
    with pytest.raises(TypeError):
        layout.shards[sid("KV/0/0")] = (9,)  # type: ignore[index]
    assert hash(layout) == hash(Layout(True, {sid("KV/0/0"): (1, 2)}, ()))
    assert layout == Layout(True, {sid("KV/0/0"): (1, 2)}, ())


def test_stickiness_is_capped_by_a_new_max() -> None:
    before = compute_layout(policy(KV=SP()), [1, 2, 3, 4])
    after = compute_layout(policy(KV=SP(max_nodes=2)), [4, 3, 2, 1], before)
    assert as_text(after) == {"KV/0/0": (4, 3)}


def test_previous_with_a_node_in_two_disjoint_shards_stays_disjoint() -> None:
    # Not something compute_layout produces, but a previous layout from another policy could.
    previous = Layout(True, {sid("KV/0/0"): (1, 2), sid("KV/0/1"): (2, 3)}, ())
    layout = compute_layout(KV2_MIN1, [1, 2, 3], previous)
    assert as_text(layout) == {"KV/0/0": (1, 2), "KV/0/1": (3,)}


def test_lists_in_reserved_are_accepted_as_tuples() -> None:
    shard_policy = SP(shards=2, reserved=[[1], []])  # type: ignore[arg-type]
    assert shard_policy.reserved == ((1,), ())
    assert hash(LayoutPolicy.of({"KV": shard_policy}))


# --------------------------------------------------------------------------------------------
# Bad policies and bad views
# --------------------------------------------------------------------------------------------


BAD_SHARD_POLICIES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("subgroups 0", {"subgroups": 0}, ("subgroups", "at least 1")),
    ("shards 0", {"shards": 0}, ("shards", "at least 1")),
    ("min_nodes 0", {"min_nodes": 0}, ("min_nodes", "at least 1")),
    ("negative shards", {"shards": -2}, ("shards", "-2")),
    ("max below min", {"min_nodes": 3, "max_nodes": 2}, ("max_nodes", "min_nodes", "raise")),
    ("subgroups str", {"subgroups": "2"}, ("subgroups", "int")),
    ("subgroups bool", {"subgroups": True}, ("subgroups", "int")),
    ("min_nodes float", {"min_nodes": 1.5}, ("min_nodes", "int")),
    ("max_nodes str", {"max_nodes": "3"}, ("max_nodes", "None")),
    ("overlapping str", {"overlapping": "yes"}, ("overlapping", "True or False")),
    ("reserved not nested", {"reserved": "abc"}, ("reserved", "one tuple of node ids")),
    ("reserved wrong length", {"shards": 2, "reserved": ((1,),)}, ("reserved", "shards=2", "()")),
    ("reserved id not int", {"reserved": ((1, "x"),)}, ("reserved[0]", "'x'", "ints")),
    ("reserved over max", {"max_nodes": 1, "reserved": ((1, 2),)}, ("reserved[0]", "max_nodes=1")),
    (
        "reserved in two shards",
        {"shards": 2, "reserved": ((1,), (1,))},
        ("node 1", "reserved[0] and reserved[1]", "one shard"),
    ),
    ("reserved twice in a shard", {"reserved": ((4, 4),)}, ("node 4", "twice in reserved[0]")),
    (
        "reserved on disjoint subgroups",
        {"subgroups": 2, "reserved": ((1,),)},
        ("subgroups=2", "overlapping=True"),
    ),
]


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [(f, m) for _, f, m in BAD_SHARD_POLICIES],
    ids=[name for name, _, _ in BAD_SHARD_POLICIES],
)
def test_bad_shard_policy(fields: dict[str, Any], fragments: tuple[str, ...]) -> None:
    with pytest.raises(LayoutError) as direct:
        SP(**fields).validate("KV")
    with pytest.raises(LayoutError) as via_policy:
        LayoutPolicy.of({"KV": SP(**fields)})
    for message in (str(direct.value), str(via_policy.value)):
        assert "'KV'" in message
        for fragment in fragments:
            assert fragment in message


BAD_LAYOUT_POLICIES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("empty name", (("", SP()),), ("''", "non-empty")),
    ("blank name", (("  ", SP()),), ("non-empty",)),
    ("name not str", ((3, SP()),), ("3", "non-empty")),
    ("duplicate name", (("KV", SP()), ("KV", SP(shards=2))), ("'KV'", "twice")),
    ("value not ShardPolicy", (("KV", {"shards": 2}),), ("'KV'", "ShardPolicy(...)")),
    ("entry not a pair", (("KV",),), ("pair",)),
    ("types not a tuple", {"KV": SP()}, ("LayoutPolicy.of",)),
    (
        "node reserved by two disjoint types",
        (("A", SP(reserved=((1,),))), ("B", SP(reserved=((1,),)))),
        ("node 1", "'A'", "'B'", "overlapping=True"),
    ),
]


@pytest.mark.parametrize(
    ("types", "fragments"),
    [(t, m) for _, t, m in BAD_LAYOUT_POLICIES],
    ids=[name for name, _, _ in BAD_LAYOUT_POLICIES],
)
def test_bad_layout_policy(types: Any, fragments: tuple[str, ...]) -> None:
    with pytest.raises(LayoutError) as error:
        LayoutPolicy(types)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_of_rejects_empty_name() -> None:
    with pytest.raises(LayoutError, match="non-empty"):
        LayoutPolicy.of({"": SP()})


def test_node_reserved_by_disjoint_and_overlapping_type_is_fine() -> None:
    both = LayoutPolicy.of({"A": SP(reserved=((1,),)), "O": SP(reserved=((1,),), overlapping=True)})
    assert as_text(compute_layout(both, [1, 2])) == {"A/0/0": (1, 2), "O/0/0": (1, 2)}


def test_empty_policy_is_always_adequate() -> None:
    layout = compute_layout(LayoutPolicy(()), [1, 2])
    assert layout.adequate and layout.shards == {} and layout.shortfall == ()


@pytest.mark.parametrize(
    ("members", "fragment"),
    [([1, 2, 1], "node 1 appears twice"), ([1, "2"], "'2'"), ([True], "True")],
    ids=["duplicate", "str", "bool"],
)
def test_bad_members(members: list[Any], fragment: str) -> None:
    with pytest.raises(LayoutError, match=fragment):
        compute_layout(KV2, members)


def test_layout_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        LayoutPolicy.of({"KV": SP(shards=0)})


def test_module_is_sans_io() -> None:
    import runtime.core.layout as module

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"socket", "threading", "asyncio", "time", "os", "io", "random", "selectors"}
    assert not imported & forbidden


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

NODE_IDS = st.integers(min_value=0, max_value=40)


@st.composite
def shard_policies(draw: st.DrawFn, reserved_ids: bool) -> ShardPolicy:
    shards = draw(st.integers(1, 3))
    min_nodes = draw(st.integers(1, 3))
    max_nodes = draw(st.one_of(st.none(), st.integers(min_nodes, min_nodes + 2)))
    overlapping = draw(st.booleans())
    subgroups = draw(st.integers(1, 2))
    reserved = None
    if reserved_ids:
        if not overlapping:
            subgroups = 1
        cap = 2 if max_nodes is None else min(2, max_nodes)
        ids = draw(st.lists(NODE_IDS, unique=True, max_size=shards * cap))
        reserved = tuple(tuple(ids[i * cap : (i + 1) * cap]) for i in range(shards))
    return ShardPolicy(subgroups, shards, min_nodes, max_nodes, reserved, overlapping)


@st.composite
def layout_policies(draw: st.DrawFn, reserved_ids: bool = False) -> LayoutPolicy:
    count = draw(st.integers(1, 3))
    types: list[tuple[str, ShardPolicy]] = []
    taken: set[int] = set()
    for index in range(count):
        shard_policy = draw(shard_policies(reserved_ids))
        if shard_policy.reserved is not None and not shard_policy.overlapping:
            # disjoint types may not reserve the same node
            ids = {n for shard in shard_policy.reserved for n in shard}
            if ids & taken:
                shard_policy = replace(shard_policy, reserved=None)
            taken |= ids
        types.append((f"T{index}", shard_policy))
    return LayoutPolicy(tuple(types))


views = st.lists(NODE_IDS, unique=True, max_size=18)
any_policy = st.one_of(layout_policies(), layout_policies(reserved_ids=True))


def needed(layout_policy: LayoutPolicy) -> int:
    """Members a view needs for a policy without reserved ids, by the documented rule."""
    disjoint = sum(p.subgroups * p.shards * p.min_nodes for _, p in layout_policy.types if not p.overlapping)
    overlapping = [p.shards * p.min_nodes for _, p in layout_policy.types if p.overlapping]
    return max([disjoint, *overlapping])


def check_invariants(layout_policy: LayoutPolicy, members: list[int], layout: Layout) -> None:
    rank = {node: i for i, node in enumerate(members)}
    if not layout.adequate:
        assert layout.shards == {} and layout.shortfall
        assert all(count > 0 for _, count in layout.shortfall)
        return
    assert layout.shortfall == ()
    disjoint_seen: set[int] = set()
    for name, p in layout_policy.types:
        for subgroup in range(p.subgroups):
            subgroup_seen: set[int] = set()
            for shard in range(p.shards):
                shard_members = layout.members_of(ShardId(name, subgroup, shard))
                assert set(shard_members) <= set(members)
                assert list(shard_members) == sorted(shard_members, key=rank.__getitem__)
                assert len(shard_members) >= p.min_nodes
                assert p.max_nodes is None or len(shard_members) <= p.max_nodes
                if p.reserved is not None:
                    present = {n for n in p.reserved[shard] if n in rank}
                    assert present <= set(shard_members)
                assert not subgroup_seen & set(shard_members)
                subgroup_seen |= set(shard_members)
                if not p.overlapping:
                    assert not disjoint_seen & set(shard_members)
                    disjoint_seen |= set(shard_members)
    expected_ids = {
        ShardId(name, g, s) for name, p in layout_policy.types for g in range(p.subgroups) for s in range(p.shards)
    }
    assert set(layout.shards) == expected_ids


FAST = settings(max_examples=100, deadline=None)


@FAST
@given(any_policy, views, views)
def test_invariants_and_determinism(layout_policy: LayoutPolicy, members: list[int], before: list[int]) -> None:
    previous = compute_layout(layout_policy, before)
    layout = compute_layout(layout_policy, members, previous)
    check_invariants(layout_policy, members, layout)
    # Same inputs, rebuilt from scratch, give the same layout.
    again = compute_layout(
        LayoutPolicy(tuple(layout_policy.types)),
        list(members),
        compute_layout(layout_policy, before),
    )
    assert again == layout
    assert list(again.shards) == list(layout.shards)
    check_invariants(layout_policy, before, previous)


@FAST
@given(any_policy, views, st.data())
def test_invariants_after_churn(layout_policy: LayoutPolicy, before: list[int], data: st.DataObject) -> None:
    """Views that share most members with the previous one, where stickiness has most say."""
    survivors = [n for n in before if data.draw(st.booleans())]
    joiners = data.draw(st.lists(st.integers(50, 60), unique=True, max_size=4))
    members = survivors + joiners
    layout = compute_layout(layout_policy, members, compute_layout(layout_policy, before))
    check_invariants(layout_policy, members, layout)
    assert layout.adequate == compute_layout(layout_policy, members).adequate


@FAST
@given(layout_policies(), views, views)
def test_adequacy_depends_only_on_count(layout_policy: LayoutPolicy, members: list[int], before: list[int]) -> None:
    previous = compute_layout(layout_policy, before)
    fresh = compute_layout(layout_policy, members)
    sticky = compute_layout(layout_policy, members, previous)
    relabelled = compute_layout(layout_policy, [n + 100 for n in reversed(members)])
    expected = len(members) >= needed(layout_policy)
    assert fresh.adequate == sticky.adequate == relabelled.adequate == expected


@FAST
@given(layout_policies(), views, st.integers(100, 120))
def test_join_keeps_every_assignment(layout_policy: LayoutPolicy, members: list[int], joiner: int) -> None:
    before = compute_layout(layout_policy, members)
    after = compute_layout(layout_policy, [*members, joiner], before)
    if before.adequate:
        for shard, shard_members in before.shards.items():
            assert set(shard_members) <= set(after.members_of(shard))


@FAST
@given(layout_policies(), views, st.data())
def test_leave_moves_at_most_one_survivor_per_lost_seat(
    layout_policy: LayoutPolicy, members: list[int], data: st.DataObject
) -> None:
    before = compute_layout(layout_policy, members)
    if not members or not before.adequate:
        return
    leaver = data.draw(st.sampled_from(members))
    survivors = [n for n in members if n != leaver]
    after = compute_layout(layout_policy, survivors, before)
    if not after.adequate:
        return
    lost = sum(
        1
        for shard, shard_members in before.shards.items()
        for node in shard_members
        if node != leaver and node not in after.members_of(shard)
    )
    assert lost <= len(before.shards_of(leaver))


# ---------------------------------------------------------------- state sources
from runtime.core.view import View, state_sources  # noqa: E402

_S = ShardId("T", 0, 0)


@pytest.mark.parametrize(
    "before, now, members, expected",
    [
        ((1, 2, 3), (1, 2, 3), (1, 2, 3), ()),  # nobody new: no transfer
        ((1, 2, 3), (1, 2, 4), (1, 2, 4), ((_S, 1),)),  # 3 replaced by 4: first survivor sends
        ((1, 2, 3), (2, 3, 4), (2, 3, 4), ((_S, 2),)),  # 1 gone: next holder sends
        ((1, 2), (3, 4), (1, 3, 4), ((_S, 1),)),  # 1 moved elsewhere but alive: it still sends
        ((1, 2), (3, 4), (3, 4), ()),  # no holder survives: nothing to send from
        ((), (1, 2), (1, 2), ()),  # shard is new in this view
    ],
)
def test_state_sources(before: tuple, now: tuple, members: tuple, expected: tuple) -> None:
    cur = Layout(True, {_S: now}, ())
    assert state_sources({_S: before} if before else {}, cur, members) == expected


def _view(
    vid: int, members: tuple, shards: dict, adequate: bool = True, joined: tuple = (), holders: tuple = ()
) -> View:
    return View(vid, members, tuple(f"n{m}" for m in members), Layout(adequate, shards, ()), joined, (), (), holders)


def test_holders_survive_an_inadequate_view_and_rejoiners_hold_nothing() -> None:
    from runtime.core.view import Proposal

    policy = LayoutPolicy.of({"T": ShardPolicy(min_nodes=3, max_nodes=3)})
    v1 = _view(1, (1, 2, 3), {_S: (1, 2, 3)})
    # 3 crashes: the view is too small, replicas idle; 1 and 2 still hold the state.
    v2 = Proposal(2, (1, 2), ("n1", "n2"), (), (3,), ()).next_view(policy, v1)
    assert not v2.layout.adequate and v2.holders == ((_S, (1, 2)),) and v2.sources == ()
    # 3 comes back as a new process: it must fetch the state, from 1.
    v3 = Proposal(3, (1, 2, 3), ("n1", "n2", "n3"), (3,), (), ()).next_view(policy, v2)
    assert v3.layout.adequate and v3.sources == ((_S, 1),) and dict(v3.holders)[_S] == (1, 2, 3)


def test_sources_survive_the_wire() -> None:
    layout = Layout(True, {_S: (1, 2)}, ())
    view = View(3, (1, 2), ("a", "b"), layout, (2,), (), ((_S, 1),), ((_S, (1, 2)),))
    back = View.from_wire(view.to_wire())
    assert back.sources == ((_S, 1),) and back.holders == ((_S, (1, 2)),)


# --------------------------------------------------------------- helpers for hosts and launchers
def test_merge_over_takes_only_the_named_keys() -> None:
    from runtime.core.layout import merge_over

    code = ShardPolicy(shards=2, min_nodes=3, max_nodes=3)
    table = ShardPolicy(shards=4)  # what a table with `shards = 4` alone builds (defaults elsewhere)
    assert merge_over(code, table, frozenset({"shards"})) == ShardPolicy(shards=4, min_nodes=3, max_nodes=3)
    assert merge_over(code, table, frozenset()) == code
    assert merge_over(code, table, frozenset({"shards", "min_nodes", "max_nodes"})) == table


def test_single_replica_shards_and_nodes_needed() -> None:
    from runtime.core.layout import nodes_needed, single_replica_shards

    policy = LayoutPolicy.of({"KV": ShardPolicy(shards=2, min_nodes=1)})
    layout = compute_layout(policy, (1, 2, 3))
    assert single_replica_shards(layout) == ((ShardId("KV", 0, 1), 2),)
    assert single_replica_shards(compute_layout(policy, (1, 2, 3, 4))) == ()
    six = LayoutPolicy.of({"KV": ShardPolicy(shards=2, min_nodes=3, max_nodes=3)})
    assert single_replica_shards(compute_layout(six, (1, 2, 3))) == ()  # inadequate: nothing runs
    assert nodes_needed(six, 3) == 6 and nodes_needed(six, 7) == 7
    assert nodes_needed(LayoutPolicy.of({"KV": ShardPolicy(min_nodes=20)}), 1, limit=10) is None
