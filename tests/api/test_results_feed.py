"""``ResultsFeed``'s producer side, table-driven: every way answers come in (merged, one by
one, refusals, departures, a failover's resend, a failure) gives the same results whether the
call's tables were made up front or only when first written (``results_feed.NONE``), and the
shared empty table is never written."""

from __future__ import annotations

import gc
import threading
from typing import Any, Callable

import msgpack
import pytest

from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.results_feed import NONE, ResultsFeed
from derecho_actors.wire import codec as _codec
from runtime.errors import DivergenceError, GroupClosed, RemoteError, ReplicaLost

R3 = (1, 2, 3)
V = msgpack.packb("v")
W = msgpack.packb("w")
ERR = _codec.encode_error(RuntimeError("boom"))

Step = Callable[[QueryResults], Any]


def agreed(nodes: tuple[int, ...], value: bytes = V, version: int = -1, vid: int | None = None) -> Step:
    return lambda r: r.add_agreed(nodes, R3, True, value, version, vid)


def reply(node: int, value: bytes = V, ok: bool = True, version: int = -1, vid: int | None = None) -> Step:
    return lambda r: r.add_reply(node, R3, ok, value, version, vid)


def left(nodes: set[int], vid: int | None = None) -> Step:
    return lambda r: r.mark_left(nodes, "left the group", vid)


def again() -> Step:
    return lambda r: r.sending_again()


def fail() -> Step:
    return lambda r: r.fail(GroupClosed("closed"))


# steps, done, what wait_all gives ({node: value, or the error's type}), version, lost nodes
CASES: list[tuple[str, list[Step], bool, dict[int, Any], int | None, set[int]]] = [
    ("merged from all", [agreed(R3)], True, {1: "v", 2: "v", 3: "v"}, None, set()),
    ("merged with a version", [agreed(R3, version=7)], True, {1: "v", 2: "v", 3: "v"}, 7, set()),
    ("merged in parts", [agreed((1, 2)), agreed((3,))], True, {1: "v", 2: "v", 3: "v"}, None, set()),
    ("one by one", [reply(1), reply(2), reply(3)], True, {1: "v", 2: "v", 3: "v"}, None, set()),
    ("partial", [reply(2, version=4)], False, {2: "v"}, 4, set()),
    (
        "an error among them",
        [reply(1), reply(2, ERR, ok=False), reply(3)],
        True,
        {1: "v", 2: RemoteError, 3: "v"},
        None,
        set(),
    ),
    ("a replica left before", [left({3}), agreed((1, 2))], True, {1: "v", 2: "v", 3: ReplicaLost}, None, {3}),
    ("a replica left after", [reply(1), left({2, 3})], True, {1: "v", 2: ReplicaLost, 3: ReplicaLost}, None, {2, 3}),
    ("resent, then merged", [reply(1, W), again(), agreed(R3)], True, {1: "v", 2: "v", 3: "v"}, None, set()),
    ("resent keeps versions", [reply(1, version=3), again(), agreed(R3)], True, {1: "v", 2: "v", 3: "v"}, 3, set()),
    (
        "merged with versions in parts",
        [agreed((1, 2), version=4), agreed((3,), version=5)],
        True,
        {1: "v", 2: "v", 3: "v"},
        5,
        set(),
    ),
    (
        "merged, then a later version",
        [agreed(R3, version=7), reply(1, version=9)],
        True,
        {1: "v", 2: "v", 3: "v"},
        9,
        set(),
    ),
    ("failed before any answer", [fail()], True, GroupClosed, None, set()),  # type: ignore[list-item]
    ("failed after one", [reply(1), fail()], True, {1: "v", 2: GroupClosed, 3: GroupClosed}, None, set()),
    ("answered twice counts once", [reply(1), reply(1, W), agreed(R3)], True, {1: "v", 2: "v", 3: "v"}, None, set()),
]


def _shown(out: dict[int, Any]) -> dict[int, Any]:
    return {n: type(v) if isinstance(v, BaseException) else v for n, v in out.items()}


@pytest.mark.parametrize(
    ("steps", "done", "expected", "version", "lost"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_answers_fed_in_any_way_resolve_the_call(
    steps: list[Step], done: bool, expected: Any, version: int | None, lost: set[int]
) -> None:
    r = QueryResults("KV.put", msgpack.unpackb, compare="raise")
    untouched = QueryResults("KV.put", msgpack.unpackb, compare="raise")
    for step in steps:
        step(r)
    assert r.done() is done
    assert r.version == version
    if isinstance(expected, type):  # the whole call failed
        with pytest.raises(expected):
            r.wait_all(0)
    elif done:
        assert _shown(r.wait_all(0)) == {n: v for n, v in expected.items()}
        assert set(r.lost) == lost
    else:
        assert r.pending == tuple(n for n in R3 if n not in expected)
    # The shared empty table stays empty and read-only; a call never fed shares it still.
    assert len(NONE) == 0
    with pytest.raises(TypeError):
        NONE[1] = 1
    assert not untouched.done() and untouched.pending == () and untouched.version is None


def test_calls_fed_alike_do_not_share_their_tables() -> None:
    a = QueryResults("KV.put", msgpack.unpackb)
    b = QueryResults("KV.put", msgpack.unpackb)
    a.add_reply(1, R3, True, V, 5)
    b.add_reply(2, R3, False, ERR, 6)
    assert a.pending == (2, 3) and b.pending == (1, 3)
    assert a.version == 5 and b.version == 6
    a.mark_left({2}, "left")
    assert b.lost == {} and set(a.lost) == {2}


def test_a_batch_answered_with_versions_keeps_each_calls_version_without_a_table() -> None:
    """A persistent put's answers, merged by the contact: each call's version is kept without a
    dict of versions per call (issue 21: such a dict per call made a pipelining client collect
    garbage 30x as often), and reads the same; a later answer's version is kept beside it."""
    lock = threading.Lock()
    calls = [QueryResults("PKV.put", msgpack.unpackb, compare="raise", call_id=i, lock=lock) for i in range(1, 5)]
    entries = [(i, True, msgpack.packb(10 + i), 10 + i, ()) for i in range(1, 5)]
    assert ResultsFeed.add_agreed_all(entries, calls, R3) == [1, 2, 3, 4]
    for i, r in enumerate(calls, 1):
        assert r.get(0) == {1: 10 + i, 2: 10 + i, 3: 10 + i}
        assert r.version == 10 + i and r.versioned(0) == ([1, 2, 3], 10 + i)
        assert r._versions is NONE
    calls[0].add_reply(2, R3, True, msgpack.packb(11), 20)  # answered twice: the version counts
    assert calls[0].version == 20 and calls[0].versioned(0) == ([1, 2, 3], 20)
    assert calls[1].version == 12 and len(NONE) == 0


E2 = _codec.encode_error(RuntimeError("bang"))
DIVERGED = DivergenceError

# answers (node, ok, bytes) in order, on_divergence, what ``get`` gives (values, or the error's type)
DIVERGENCE: list[tuple[str, list[tuple[int, bool, bytes]], str, Any]] = [
    ("values differ", [(1, True, V), (2, True, W), (3, True, V)], "raise", DIVERGED),
    ("values differ, warn", [(1, True, V), (2, True, W), (3, True, V)], "warn", {1: "v", 2: "w", 3: "v"}),
    ("values agree", [(1, True, V), (2, True, V), (3, True, V)], "raise", {1: "v", 2: "v", 3: "v"}),
    ("a value, then an error", [(1, True, V), (2, False, ERR), (3, True, V)], "raise", DIVERGED),
    ("an error, then values", [(1, False, ERR), (2, True, V), (3, True, V)], "raise", DIVERGED),
    ("an error, then values, warn", [(1, False, ERR), (2, True, V), (3, True, V)], "warn", RemoteError),
    ("errors agree", [(1, False, ERR), (2, False, ERR), (3, False, ERR)], "raise", RemoteError),
    ("errors differ", [(1, False, ERR), (2, False, E2), (3, False, ERR)], "raise", RemoteError),
    ("merged, then one that differs", [(0, True, V), (3, True, W)], "raise", DIVERGED),
    ("merged, then one that agrees", [(0, True, V), (3, True, V)], "raise", {1: "v", 2: "v", 3: "v"}),
]


@pytest.mark.parametrize(
    ("answers", "compare", "expected"), [c[1:] for c in DIVERGENCE], ids=[c[0] for c in DIVERGENCE]
)
def test_answers_that_differ_as_encoded_reach_the_divergence_check(
    answers: list[tuple[int, bool, bytes]], compare: str, expected: Any
) -> None:
    """The first answer is kept as encoded (a value's bytes, an error's ``(False, bytes)``) and
    every later one compared with it; node 0 stands for nodes 1 and 2 merged by the contact."""
    r = QueryResults("KV.put", msgpack.unpackb, compare=compare)
    for node, ok, data in answers:
        if node == 0:
            r.add_agreed((1, 2), R3, ok, data)
        else:
            r.add_reply(node, R3, ok, data)
    assert r.done()
    if isinstance(expected, type):
        with pytest.raises(expected):
            r.get(0)
    else:
        assert r.get(0) == expected


def _agreed_batch(n: int, compare: str | None = "raise") -> list[QueryResults]:
    """``n`` persistent puts answered alike by all of R3 in one batch, each its own version."""
    lock = threading.Lock()
    calls = [QueryResults("PKV.put", msgpack.unpackb, compare=compare, call_id=i, lock=lock) for i in range(n)]
    entries = [(i, True, msgpack.packb(100 + i), 100 + i, ()) for i in range(n)]
    assert ResultsFeed.add_agreed_all(entries, calls, R3) == list(range(n))
    return calls


def test_an_agreed_batch_makes_no_dict_per_call() -> None:
    """Issue 20/21: a batch of calls answered alike, each with its own value (a persistent put's
    version), makes no table of answers per call (each dict counts towards the collector's next
    young pass, which walks every call in flight); readers still get every replica's answer."""
    lock = threading.Lock()
    n = 500
    calls = [QueryResults("PKV.put", msgpack.unpackb, compare="raise", call_id=i, lock=lock) for i in range(n)]
    entries = [(i, True, msgpack.packb(100 + i), 100 + i, ()) for i in range(n)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        done = ResultsFeed.add_agreed_all(entries, calls, R3)
        made = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert done == list(range(n))
    assert made < 20, f"{made} objects for the collector from {n} agreed calls"
    assert [r.get(0) for r in calls] == [dict.fromkeys(R3, 100 + i) for i in range(n)]


def test_a_dict_a_reader_gets_of_agreed_answers_is_its_own() -> None:
    """What ``get``, ``wait_all`` and iteration give of a call answered alike is built for the
    reader: changing it changes neither a later read nor another call's answers."""
    a, b = _agreed_batch(2)
    got = a.get(0)
    got[1], got[9] = "changed", "added"
    del got[2]
    waited = a.wait_all(0)
    waited.clear()
    assert a.get(0) == a.wait_all(0) == {1: 100, 2: 100, 3: 100}
    assert list(a) == [(1, 100), (2, 100), (3, 100)]
    assert b.get(0) == {1: 101, 2: 101, 3: 101} and a.get(0) is not a.get(0)
    assert a.pending == () and a.lost == {} and a.version == 100
    assert "3 replies" in repr(a)


def test_an_answer_that_differs_after_agreement_is_a_divergence() -> None:
    """A call answered alike by all, then a differing answer from a node outside its replicas
    (a copy delivered in another view): the answers become the call's own table, the difference
    is caught, and the call's neighbours are untouched. A repeated answer from a replica that
    answered already changes no value, only the version it reports."""
    a, b, c = _agreed_batch(3)
    a.add_reply(4, (1, 2, 3, 4), True, W)
    with pytest.raises(DivergenceError):
        a.get(0)
    assert _shown(a.wait_all(0)) == {1: 100, 2: 100, 3: 100, 4: "w"}
    b.add_reply(2, R3, True, W, 130)
    assert b.get(0) == {1: 101, 2: 101, 3: 101} and b.version == 130
    c.add_agreed((4,), (1, 2, 3, 4), True, msgpack.packb(102))  # agrees: no divergence
    assert c.get(0) == {1: 102, 2: 102, 3: 102, 4: 102}
    warned = _agreed_batch(1, compare="warn")[0]
    warned.add_reply(4, (1, 2, 3, 4), True, W)
    assert _shown(warned.get(0)) == {1: 100, 2: 100, 3: 100, 4: "w"}


def test_partial_answers_then_the_rest_and_departures_after_agreement() -> None:
    """A call answered in part (one replica, or a failover's resend forgetting it) goes the slow
    way and reads the same; once answered alike, departures and a resend change nothing."""
    lock = threading.Lock()
    partial, resent = (QueryResults("PKV.put", msgpack.unpackb, compare="raise", lock=lock) for _ in range(2))
    partial.add_reply(1, R3, True, V, 5)
    resent.add_reply(1, R3, True, W, 4)
    resent.sending_again()
    entries = [(1, True, V, 5, ()), (2, True, V, 6, ())]
    assert sorted(ResultsFeed.add_agreed_all(entries, [partial, resent], R3)) == [1, 2]  # the slow one last
    assert partial.get(0) == resent.get(0) == {1: "v", 2: "v", 3: "v"}
    assert list(partial) == list(resent) == [(1, "v"), (2, "v"), (3, "v")]
    assert resent.version == 6 and resent.versioned(0) == ([1, 2, 3], 6)
    (agreed,) = _agreed_batch(1)
    agreed.mark_left({2, 3}, "left the group", 3)
    agreed.sending_again()
    agreed.fail(GroupClosed("closed"))
    assert agreed.get(0) == {1: 100, 2: 100, 3: 100} and agreed.lost == {}
    assert agreed.done() and agreed.pending == ()
