"""Tests of the round-robin order arithmetic: hand-checked tables plus brute-force properties.

The brute-force references walk the global order one index at a time, exactly as the rules
are stated (deliver in order while stable; send nulls until nothing received waits on us), so
they share no formula with the O(senders) implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.core.ordering import (
    catch_up_count,
    count_before,
    delivery_frontier,
    global_index,
    nulls_to_pass,
    position,
)

pytestmark = pytest.mark.timeout(60)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------


def frontier_by_walking(stable_counts: Sequence[int]) -> int:
    """First global index g, in order, whose message is not stable."""
    n = len(stable_counts)
    g = 0
    while True:
        k, s = g // n, g % n
        if k >= stable_counts[s]:
            return g
        g += 1


def nulls_by_trying(sender_pos: int, sent: int, received: Sequence[int], n: int) -> int:
    """Fewest nulls after which no received message of another sender is past our next index."""
    held = [(c - 1) * n + s for s, c in enumerate(received) if s != sender_pos and c > 0]
    nulls = 0
    while any(g > (sent + nulls) * n + sender_pos for g in held):
        nulls += 1
    return nulls


# --------------------------------------------------------------------------------------------
# global_index / position
# --------------------------------------------------------------------------------------------

INDEX_CASES: list[tuple[int, int, int, int]] = [
    # (k, sender_pos, n_senders, global index)
    (0, 0, 1, 0),
    (5, 0, 1, 5),
    (0, 0, 3, 0),
    (0, 2, 3, 2),
    (1, 0, 3, 3),
    (1, 2, 3, 5),
    (4, 1, 3, 13),
    (2, 1, 2, 5),
    (10, 6, 7, 76),
]


@pytest.mark.parametrize(("k", "s", "n", "g"), INDEX_CASES)
def test_global_index_and_position_round_trip(k: int, s: int, n: int, g: int) -> None:
    assert global_index(k, s, n) == g
    assert position(g, n) == (k, s)


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 10**6), st.integers(0, n - 1))))
@PROPERTY
def test_global_index_is_a_bijection(nks: tuple[int, int, int]) -> None:
    n, k, s = nks
    g = global_index(k, s, n)
    assert position(g, n) == (k, s)
    assert global_index(*position(g, n), n) == g
    assert g % n == s


# --------------------------------------------------------------------------------------------
# delivery_frontier
# --------------------------------------------------------------------------------------------

FRONTIER_CASES: list[tuple[str, list[int], int]] = [
    ("nothing stable", [0, 0, 0], 0),
    ("one full round", [1, 1, 1], 3),
    ("first sender ahead waits for the second", [2, 1, 1], 4),
    ("zero stable in slot 1 blocks all after it", [5, 0, 5], 1),
    ("zero stable in slot 0 blocks everything", [0, 5, 5], 0),
    ("zero stable in the last slot", [5, 5, 0], 2),
    ("last sender behind", [3, 3, 2], 8),
    ("single sender", [3], 3),
    ("single sender, nothing stable", [0], 0),
    ("two senders, second ahead", [2, 3], 4),
    ("two senders, first ahead", [3, 2], 5),
    ("many senders, one lagging in the middle", [9, 9, 9, 4, 9, 9], 27),
]


@pytest.mark.parametrize(("counts", "frontier"), [c[1:] for c in FRONTIER_CASES], ids=[c[0] for c in FRONTIER_CASES])
def test_delivery_frontier(counts: list[int], frontier: int) -> None:
    assert delivery_frontier(counts) == frontier
    assert frontier_by_walking(counts) == frontier  # the table itself is right


stable_counts = st.lists(st.integers(0, 20), min_size=1, max_size=8)


@given(stable_counts)
@PROPERTY
def test_delivery_frontier_matches_brute_force(counts: list[int]) -> None:
    f = delivery_frontier(counts)
    assert f == frontier_by_walking(counts)
    n = len(counts)
    # Everything below the frontier is delivered, and none of it is beyond what is stable.
    for s in range(n):
        assert count_before(f, s, n) <= counts[s]


# --------------------------------------------------------------------------------------------
# count_before
# --------------------------------------------------------------------------------------------

COUNT_CASES: list[tuple[int, int, int, int]] = [
    # (frontier, sender_pos, n_senders, messages of sender_pos below frontier)
    (0, 0, 3, 0),
    (1, 0, 3, 1),
    (3, 0, 3, 1),
    (4, 0, 3, 2),
    (0, 2, 3, 0),
    (2, 2, 3, 0),
    (3, 2, 3, 1),
    (5, 2, 3, 1),
    (6, 2, 3, 2),
    (7, 1, 3, 2),
    (8, 1, 3, 3),
    (5, 0, 1, 5),
    (0, 0, 1, 0),
    (9, 3, 4, 2),
]


@pytest.mark.parametrize(("frontier", "s", "n", "count"), COUNT_CASES)
def test_count_before(frontier: int, s: int, n: int, count: int) -> None:
    assert count_before(frontier, s, n) == count
    assert count == sum(1 for g in range(frontier) if g % n == s)


@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, 200))))
@PROPERTY
def test_count_before_matches_enumeration(nsf: tuple[int, int, int]) -> None:
    n, s, frontier = nsf
    assert count_before(frontier, s, n) == sum(1 for g in range(frontier) if position(g, n)[1] == s)


# --------------------------------------------------------------------------------------------
# catch_up_count
# --------------------------------------------------------------------------------------------

CATCH_UP_CASES: list[tuple[str, int, int, list[int], int, int]] = [
    # (name, sender_pos, sent, received, n_senders, nulls owed)
    ("idle sender behind one peer", 0, 0, [0, 3, 0], 3, 3),
    ("idle sender behind, some sent", 2, 1, [1, 4, 1], 3, 2),
    ("behind by exactly one", 0, 1, [1, 2, 0], 3, 1),
    ("ahead of everyone", 0, 5, [5, 2, 2], 3, 0),
    ("equal, first slot", 0, 2, [2, 2, 2], 3, 0),
    ("equal, middle slot", 1, 2, [2, 2, 2], 3, 0),
    ("equal, last slot", 2, 2, [2, 2, 2], 3, 0),
    ("peers one further, last slot", 2, 1, [2, 2, 1], 3, 0),
    ("received index below our first", 2, 0, [1, 1, 0], 3, 0),
    ("nothing received", 1, 0, [0, 0, 0], 3, 0),
    ("own received count is ignored", 1, 0, [0, 9, 0], 3, 0),
    ("single sender", 0, 0, [7], 1, 0),
    ("single sender, nothing", 0, 3, [0], 1, 0),
    ("two senders, idle second", 1, 0, [4, 0], 2, 3),
    ("two senders, idle first", 0, 0, [0, 4], 2, 4),
]


@pytest.mark.parametrize(
    ("pos", "sent", "received", "n", "nulls"),
    [c[1:] for c in CATCH_UP_CASES],
    ids=[c[0] for c in CATCH_UP_CASES],
)
def test_catch_up_count(pos: int, sent: int, received: list[int], n: int, nulls: int) -> None:
    assert catch_up_count(pos, sent, received, n) == nulls
    assert nulls_by_trying(pos, sent, received, n) == nulls  # the table itself is right


@pytest.mark.parametrize(
    ("pos", "sent", "g", "n", "nulls"),
    [
        (1, 0, -1, 3, 0),  # nothing to pass
        (1, 0, 0, 3, 0),  # global 0 comes before our first slot (1): nothing waits on us
        (0, 0, 5, 3, 2),  # pass global 5 (round 1, sender 2): rounds 0 and 1
        (2, 1, 5, 3, 1),  # own slot 2 sent; slot 5 is ours in round 1
        (2, 3, 5, 3, 0),  # already past it
        (0, 0, 0, 1, 1),  # a single sender passes its own index too
    ],
)
def test_nulls_to_pass(pos: int, sent: int, g: int, n: int, nulls: int) -> None:
    assert nulls_to_pass(pos, sent, g, n) == nulls
    if nulls:  # the least that passes g: our next index after them does, one fewer does not
        assert global_index(sent + nulls, pos, n) > g >= global_index(sent + nulls - 1, pos, n)


@st.composite
def catch_up_inputs(draw: st.DrawFn) -> tuple[int, int, list[int], int]:
    n = draw(st.integers(1, 8))
    pos = draw(st.integers(0, n - 1))
    sent = draw(st.integers(0, 25))
    received = draw(st.lists(st.integers(0, 25), min_size=n, max_size=n))
    return pos, sent, received, n


@given(catch_up_inputs())
@PROPERTY
def test_catch_up_count_is_the_minimum_number_of_nulls(args: tuple[int, int, list[int], int]) -> None:
    pos, sent, received, n = args
    nulls = catch_up_count(pos, sent, received, n)
    assert nulls == nulls_by_trying(pos, sent, received, n)
    # After sending them, a frontier computed with us caught up is not held back by our slot.
    counts = [c if s != pos else sent + nulls for s, c in enumerate(received)]
    f = delivery_frontier(counts)
    assert f == frontier_by_walking(counts)
    if f % n == pos:
        assert all(c == 0 or global_index(c - 1, s, n) < f for s, c in enumerate(received) if s != pos)
