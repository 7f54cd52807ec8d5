"""Tests of the shared state table: local writes, coalesced pushes, remote merges, predicates.

Every group of behaviours is a table of cases; a case names what it pins down, so a failure
reads as a sentence. The table under test always has four rows and this member owns row 1,
so vectors (width 3) and rows never have the same length by accident.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from runtime.core.sst import SST, Column, PredicateKind, RowDelta, Schema, SSTError, Value

pytestmark = pytest.mark.timeout(60)

N_ROWS = 4
ME = 1
PEER = 2

SCHEMA = Schema(
    (
        Column("num"),  # monotonic scalar
        Column("epoch"),  # a second monotonic scalar
        Column("recv", width=3),  # monotonic vector
        Column("vote", width=3, monotonic=False),  # overwritten vector
        Column("tag", monotonic=False, default=b""),  # opaque, overwritten
    )
)

INITIAL_ROW: dict[str, object] = {"num": 0, "epoch": 0, "recv": [0, 0, 0], "vote": [0, 0, 0], "tag": b""}


def make_sst(my_rank: int = ME, max_rounds: int = 64) -> SST:
    return SST(SCHEMA, N_ROWS, my_rank, max_rounds=max_rounds)


@dataclass(frozen=True)
class Set:
    """A local write of a scalar column."""

    name: str
    value: Value


@dataclass(frozen=True)
class Item:
    """A local write of one entry of a vector column."""

    name: str
    index: int
    value: int


Write = Set | Item


def write(sst: SST, op: Write) -> None:
    if isinstance(op, Set):
        sst.set(op.name, op.value)
    else:
        sst.set_item(op.name, op.index, op.value)


def row_with(**changes: object) -> dict[str, object]:
    row = copy.deepcopy(INITIAL_ROW)
    row.update(changes)
    return row


def ids(cases: Sequence[object]) -> list[str]:
    return [c.name for c in cases]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Local writes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteCase:
    name: str
    writes: tuple[Write, ...]
    row: dict[str, object]


WRITE_CASES = [
    WriteCase("fresh row holds the defaults", (), row_with()),
    WriteCase("scalar write", (Set("num", 7),), row_with(num=7)),
    WriteCase("scalar grows twice", (Set("num", 2), Set("num", 9)), row_with(num=9)),
    WriteCase("monotonic scalar may be rewritten equal", (Set("num", 4), Set("num", 4)), row_with(num=4)),
    WriteCase("vector entry", (Item("recv", 2, 5),), row_with(recv=[0, 0, 5])),
    WriteCase(
        "vector entries are independent",
        (Item("recv", 0, 3), Item("recv", 2, 1), Item("recv", 0, 4)),
        row_with(recv=[4, 0, 1]),
    ),
    WriteCase("opaque column overwrites", (Set("tag", b"a"), Set("tag", b"")), row_with(tag=b"")),
    WriteCase("opaque column takes None", (Set("tag", None),), row_with(tag=None)),
    WriteCase("non-monotonic scalar may go down", (Set("tag", 9), Set("tag", 2)), row_with(tag=2)),
    WriteCase(
        "non-monotonic vector may go down",
        (Item("vote", 1, 8), Item("vote", 1, 3), Item("vote", 2, 1)),
        row_with(vote=[0, 3, 1]),
    ),
]


@pytest.mark.parametrize("case", WRITE_CASES, ids=ids(WRITE_CASES))
def test_local_writes(case: WriteCase) -> None:
    sst = make_sst()
    for op in case.writes:
        write(sst, op)
    assert sst.mine == case.row
    assert sst.rows[ME] is sst.mine
    for r in range(N_ROWS):
        if r != ME:
            assert sst.rows[r] == INITIAL_ROW, f"a local write leaked into row {r}"


@dataclass(frozen=True)
class BadWriteCase:
    name: str
    before: tuple[Write, ...]
    bad: Write
    row: dict[str, object]


BAD_WRITE_CASES = [
    BadWriteCase("monotonic scalar lowered", (Set("num", 5),), Set("num", 4), row_with(num=5)),
    BadWriteCase("monotonic scalar below default", (), Set("epoch", -1), row_with()),
    BadWriteCase("monotonic vector entry lowered", (Item("recv", 1, 6),), Item("recv", 1, 5), row_with(recv=[0, 6, 0])),
    BadWriteCase("set on a vector column", (), Set("recv", 3), row_with()),
    BadWriteCase("set_item on a scalar column", (), Item("num", 0, 3), row_with()),
]


@pytest.mark.parametrize("case", BAD_WRITE_CASES, ids=ids(BAD_WRITE_CASES))
def test_bad_local_write_raises_and_changes_nothing(case: BadWriteCase) -> None:
    sst = make_sst()
    for op in case.before:
        write(sst, op)
    sst.drain_push()
    with pytest.raises(SSTError):
        write(sst, case.bad)
    assert sst.mine == case.row
    assert not sst.has_changes()
    assert sst.drain_push() is None


# --------------------------------------------------------------------------------------------
# Pushes: coalescing, full rows, snapshots
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainCase:
    """Rounds of local writes; after each round one drain, expected to carry ``values``."""

    name: str
    rounds: tuple[tuple[tuple[Write, ...], dict[str, Value] | None], ...]


DRAIN_CASES = [
    DrainCase("nothing written", (((), None),)),
    DrainCase(
        "scalar rewritten: one delta, last value", (((Set("num", 1), Set("num", 2), Set("num", 5)), {"num": 5}),)
    ),
    DrainCase(
        "vector entries coalesce into one snapshot",
        (((Item("recv", 0, 1), Item("recv", 2, 4), Item("recv", 0, 3)), {"recv": (3, 0, 4)}),),
    ),
    DrainCase(
        "only changed columns, then nothing, then another column",
        (
            ((Set("epoch", 2), Item("vote", 1, 7)), {"epoch": 2, "vote": (0, 7, 0)}),
            ((), None),
            ((Set("tag", b"x"),), {"tag": b"x"}),
        ),
    ),
    DrainCase(
        "writing the current value is no change",
        (
            ((Set("num", 0), Item("recv", 1, 0), Set("tag", b""), Item("vote", 2, 0)), None),
            ((Set("num", 1),), {"num": 1}),
        ),
    ),
    DrainCase(
        "non-monotonic vector ends lower than it went",
        (
            ((Set("tag", b"a"),), {"tag": b"a"}),
            ((Item("vote", 0, 9), Item("vote", 0, 2)), {"vote": (2, 0, 0)}),
        ),
    ),
    DrainCase(
        "every column in one round",
        (
            (
                (Set("num", 1), Set("epoch", 1), Item("recv", 2, 2), Item("vote", 0, 3), Set("tag", None)),
                {"num": 1, "epoch": 1, "recv": (0, 0, 2), "vote": (3, 0, 0), "tag": None},
            ),
        ),
    ),
    DrainCase(
        "drains in a row",
        (
            ((Set("num", 3),), {"num": 3}),
            ((), None),
            ((), None),
            ((Set("num", 4), Item("recv", 0, 1)), {"num": 4, "recv": (1, 0, 0)}),
            ((Set("num", 6),), {"num": 6}),
        ),
    ),
]


@pytest.mark.parametrize("case", DRAIN_CASES, ids=ids(DRAIN_CASES))
def test_drain_coalesces_changes_and_peer_converges(case: DrainCase) -> None:
    sst = make_sst()
    peer = make_sst(my_rank=PEER)
    seqs: list[int] = []
    for writes, expected in case.rounds:
        for op in writes:
            write(sst, op)
        assert sst.has_changes() is (expected is not None)
        delta = sst.drain_push()
        if expected is None:
            assert delta is None
            continue
        assert delta is not None
        assert delta.rank == ME
        assert delta.values == expected
        assert not sst.has_changes()
        seqs.append(delta.seq)
        assert peer.apply_remote_row(delta) is True
        assert peer.rows[ME] == sst.mine
    assert all(s > 0 for s in seqs)
    assert seqs == sorted(set(seqs)), f"push seq not strictly increasing: {seqs}"


@dataclass(frozen=True)
class FullCase:
    name: str
    writes: tuple[Write, ...]
    drain_first: bool
    values: dict[str, Value]


FULL_CASES = [
    FullCase(
        "fresh table sends the defaults",
        (),
        False,
        {"num": 0, "epoch": 0, "recv": (0, 0, 0), "vote": (0, 0, 0), "tag": b""},
    ),
    FullCase(
        "pending writes included",
        (Set("num", 3), Item("vote", 2, 1)),
        False,
        {"num": 3, "epoch": 0, "recv": (0, 0, 0), "vote": (0, 0, 1), "tag": b""},
    ),
    FullCase(
        "already drained writes still sent",
        (Set("epoch", 2), Item("recv", 0, 5), Set("tag", None)),
        True,
        {"num": 0, "epoch": 2, "recv": (5, 0, 0), "vote": (0, 0, 0), "tag": None},
    ),
]


@pytest.mark.parametrize("case", FULL_CASES, ids=ids(FULL_CASES))
def test_full_drain_sends_every_column(case: FullCase) -> None:
    sst = make_sst()
    for op in case.writes:
        write(sst, op)
    before = sst.drain_push() if case.drain_first else None
    delta = sst.drain_push(full=True)
    assert delta is not None
    assert delta.rank == ME
    assert delta.values == case.values
    if before is not None:
        assert delta.seq > before.seq
    assert sst.drain_push() is None, "a full drain must also clear the pending changes"
    peer = make_sst(my_rank=PEER)
    assert peer.apply_remote_row(delta)
    assert peer.rows[ME] == sst.mine


MUTATIONS: list[tuple[str, str, Callable[[SST], None]]] = [
    ("recv via set_item", "recv", lambda s: s.set_item("recv", 0, 9)),
    ("vote via set_item", "vote", lambda s: s.set_item("vote", 0, 0)),
    ("recv by editing the row list", "recv", lambda s: s.mine["recv"].__setitem__(1, 9)),  # type: ignore[union-attr]
    ("vote by editing the row list", "vote", lambda s: s.mine["vote"].__setitem__(2, 9)),  # type: ignore[union-attr]
]


@pytest.mark.parametrize("full", [False, True], ids=["changed", "full"])
@pytest.mark.parametrize(("column", "mutate"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_drained_vectors_are_snapshots(column: str, mutate: Callable[[SST], None], full: bool) -> None:
    sst = make_sst()
    sst.set_item(column, 0, 4)
    delta = sst.drain_push(full=full)
    assert delta is not None
    assert delta.values[column] == (4, 0, 0)
    mutate(sst)
    assert sst.mine[column] != [4, 0, 0], "the mutation under test did nothing"
    assert delta.values[column] == (4, 0, 0)


# --------------------------------------------------------------------------------------------
# Remote merges
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeCase:
    name: str
    deltas: tuple[RowDelta, ...]
    accepted: tuple[bool, ...]
    rows: Mapping[int, Mapping[str, object]] = field(default_factory=dict)  # rank -> changed cells


MERGE_CASES = [
    MergeCase(
        "monotonic scalar grows",
        (RowDelta(2, 1, {"num": 5}), RowDelta(2, 2, {"num": 9})),
        (True, True),
        {2: {"num": 9}},
    ),
    MergeCase(
        "monotonic scalar keeps the max",
        (RowDelta(2, 1, {"num": 5}), RowDelta(2, 2, {"num": 3})),
        (True, True),
        {2: {"num": 5}},
    ),
    MergeCase(
        "monotonic vector takes the entry-wise max",
        (RowDelta(2, 1, {"recv": (1, 5, 0)}), RowDelta(2, 2, {"recv": (3, 2, 0)})),
        (True, True),
        {2: {"recv": [3, 5, 0]}},
    ),
    MergeCase(
        "non-monotonic vector overwrites",
        (RowDelta(2, 1, {"vote": (5, 5, 5)}), RowDelta(2, 2, {"vote": (1, 0, 0)})),
        (True, True),
        {2: {"vote": [1, 0, 0]}},
    ),
    MergeCase(
        "opaque column overwrites, even with None",
        (RowDelta(2, 1, {"tag": b"a"}), RowDelta(2, 2, {"tag": None})),
        (True, True),
        {2: {"tag": None}},
    ),
    MergeCase(
        "list accepted for a vector",
        (RowDelta(3, 1, {"recv": [0, 2, 1]}),),
        (True,),
        {3: {"recv": [0, 2, 1]}},
    ),
    MergeCase(
        "repeated delta dropped",
        (RowDelta(2, 1, {"num": 5}), RowDelta(2, 1, {"num": 7})),
        (True, False),
        {2: {"num": 5}},
    ),
    MergeCase("seq zero never applies", (RowDelta(2, 0, {"num": 4}),), (False,), {}),
    MergeCase(
        "stale delta dropped after a gap",
        (RowDelta(2, 3, {"num": 5}), RowDelta(2, 2, {"tag": b"old", "num": 8}), RowDelta(2, 4, {"tag": b"new"})),
        (True, False, True),
        {2: {"num": 5, "tag": b"new"}},
    ),
    MergeCase(
        "push counters are per row",
        (
            RowDelta(0, 5, {"num": 1}),
            RowDelta(3, 1, {"num": 2}),
            RowDelta(0, 5, {"num": 9}),
            RowDelta(3, 2, {"num": 3}),
            RowDelta(0, 4, {"epoch": 1}),
        ),
        (True, True, False, True, False),
        {0: {"num": 1}, 3: {"num": 3}},
    ),
    MergeCase(
        "an empty delta still advances the counter",
        (RowDelta(2, 1, {}), RowDelta(2, 1, {"num": 3})),
        (True, False),
        {},
    ),
]


@pytest.mark.parametrize("case", MERGE_CASES, ids=ids(MERGE_CASES))
def test_apply_remote_row(case: MergeCase) -> None:
    sst = make_sst()
    sst.set("num", 11)
    mine = copy.deepcopy(sst.mine)
    got = tuple(sst.apply_remote_row(d) for d in case.deltas)
    assert got == case.accepted
    for r in range(N_ROWS):
        expected = mine if r == ME else row_with(**case.rows.get(r, {}))
        assert sst.rows[r] == expected, f"row {r}"
    assert sst.drain_push() == RowDelta(ME, 1, {"num": 11}), "merges must not mark our own row dirty"


@dataclass(frozen=True)
class BadDelta:
    name: str
    delta: RowDelta


BAD_DELTAS = [
    BadDelta("own row", RowDelta(ME, 2, {"num": 9})),
    BadDelta("negative rank", RowDelta(-1, 2, {"num": 9})),
    BadDelta("rank == n_rows", RowDelta(N_ROWS, 2, {"num": 9})),
    BadDelta("rank far out of range", RowDelta(10**6, 2, {"num": 9})),
    BadDelta("rank not an int", RowDelta("2", 2, {"num": 9})),  # type: ignore[arg-type]
    BadDelta("unknown column after valid ones", RowDelta(PEER, 2, {"num": 9, "recv": (5, 5, 5), "bogus": 1})),
    BadDelta("vector too short", RowDelta(PEER, 2, {"num": 9, "recv": (5, 5)})),
    BadDelta("vector too long", RowDelta(PEER, 2, {"num": 9, "recv": (5, 5, 5, 5)})),
    BadDelta("empty vector", RowDelta(PEER, 2, {"num": 9, "recv": ()})),
    BadDelta("non-monotonic vector wrong width", RowDelta(PEER, 2, {"num": 9, "vote": (1,)})),
    BadDelta("scalar given for a vector", RowDelta(PEER, 2, {"num": 9, "recv": 5})),
    BadDelta("str of the right length for a vector", RowDelta(PEER, 2, {"num": 9, "recv": "abc"})),
    BadDelta("bytes of the right length for a vector", RowDelta(PEER, 2, {"num": 9, "vote": b"abc"})),
    BadDelta("float scalar", RowDelta(PEER, 2, {"recv": (5, 5, 5), "num": 9.0})),
    BadDelta("str scalar", RowDelta(PEER, 2, {"num": 9, "epoch": "7"})),
    BadDelta("bytes scalar", RowDelta(PEER, 2, {"num": b"9"})),
    BadDelta("None for a monotonic scalar", RowDelta(PEER, 2, {"num": 9, "epoch": None})),
    BadDelta("bool is not an int", RowDelta(PEER, 2, {"num": True})),
    BadDelta("None inside a vector", RowDelta(PEER, 2, {"num": 9, "recv": (5, None, 5)})),
    BadDelta("float inside a vector", RowDelta(PEER, 2, {"recv": (5, 5.5, 5)})),
    BadDelta("bool inside a non-monotonic vector", RowDelta(PEER, 2, {"num": 9, "vote": (1, True, 0)})),
]


def assert_rejected_without_change(sst: SST, delta: RowDelta) -> None:
    """``delta`` raises SSTError and leaves rows, push counters and the change version alone."""
    rows = copy.deepcopy(sst.rows)
    fired: list[int] = []
    sst.register("watch", lambda s: True, lambda s: fired.append(1))
    sst.evaluate()
    fired.clear()
    with pytest.raises(SSTError):
        sst.apply_remote_row(delta)
    assert sst.rows == rows
    assert sst.evaluate() == 0 and not fired, "a rejected delta must not count as a change"
    assert not sst.has_changes()
    # The rejected delta's seq was not consumed: a valid delta with the same seq applies.
    assert sst.apply_remote_row(RowDelta(PEER, 2, {"num": 4})) is True
    assert sst.rows[PEER]["num"] == 4


@pytest.mark.parametrize("case", BAD_DELTAS, ids=ids(BAD_DELTAS))
def test_malformed_delta_rejected_and_table_unchanged(case: BadDelta) -> None:
    sst = make_sst()
    sst.set("num", 2)
    sst.drain_push()
    assert sst.apply_remote_row(RowDelta(PEER, 1, {"num": 3, "recv": (1, 1, 1), "vote": (2, 2, 2)}))
    assert_rejected_without_change(sst, case.delta)


BAD_HEADERS = [
    BadDelta("seq None", RowDelta(PEER, None, {"num": 9})),  # type: ignore[arg-type]
    BadDelta("seq str", RowDelta(PEER, "3", {"num": 9})),  # type: ignore[arg-type]
    BadDelta("seq float", RowDelta(PEER, 2.5, {"num": 9})),  # type: ignore[arg-type]
    BadDelta("values None", RowDelta(PEER, 2, None)),  # type: ignore[arg-type]
    BadDelta("values a list of pairs", RowDelta(PEER, 2, [("num", 9)])),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("case", BAD_HEADERS, ids=ids(BAD_HEADERS))
def test_malformed_delta_header_rejected_with_sst_error(case: BadDelta) -> None:
    sst = make_sst()
    assert sst.apply_remote_row(RowDelta(PEER, 1, {"num": 3}))
    assert_rejected_without_change(sst, case.delta)


# --------------------------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------------------------

Step = Write | RowDelta

# Predicate under test: row 2's num is at least 3.
PREDICATE_STEPS: list[tuple[str, Step | None]] = [
    ("peer below threshold", RowDelta(PEER, 1, {"num": 1})),
    ("peer reaches threshold", RowDelta(PEER, 2, {"num": 3})),
    ("peer grows further", RowDelta(PEER, 3, {"num": 4})),
    ("nothing happens", None),
    ("unrelated local write while it holds", Set("epoch", 1)),
    ("stale delta", RowDelta(PEER, 3, {"num": 9})),
    ("unrelated remote write while it holds", RowDelta(3, 1, {"tag": b"z"})),
]


@pytest.mark.parametrize(
    ("kind", "fires"),
    [
        (PredicateKind.RECURRENT, [0, 1, 1, 0, 1, 0, 1]),
        (PredicateKind.ONE_TIME, [0, 1, 0, 0, 0, 0, 0]),
    ],
    ids=["recurrent", "one-time"],
)
def test_recurrent_and_one_time_predicates(kind: PredicateKind, fires: list[int]) -> None:
    sst = make_sst()
    calls: list[int] = []
    sst.register("peer-at-3", lambda s: s.rows[PEER]["num"] >= 3, lambda s: calls.append(1), kind)  # type: ignore[operator]
    got: list[int] = []
    for _, step in PREDICATE_STEPS:
        before = len(calls)
        if isinstance(step, RowDelta):
            sst.apply_remote_row(step)
        elif step is not None:
            write(sst, step)
        n = sst.evaluate()
        assert n == len(calls) - before, "evaluate() must return the number of triggers fired"
        got.append(n)
    assert got == fires, list(zip([name for name, _ in PREDICATE_STEPS], got))
    if kind is PredicateKind.ONE_TIME:
        sst.register("peer-at-3", lambda s: True, lambda s: None)  # the fired one is gone
    else:
        with pytest.raises(ValueError):
            sst.register("peer-at-3", lambda s: True, lambda s: None)


@dataclass(frozen=True)
class ChainCase:
    """``stages`` predicates, each advancing ``epoch`` by one; registered so one fires per round."""

    name: str
    stages: int
    max_rounds: int
    fired: int  # by the first evaluate()
    epoch: int  # after it


CHAIN_CASES = [
    ChainCase("one stage", 1, 64, 1, 1),
    ChainCase("three stages need three rounds", 3, 64, 3, 3),
    ChainCase("ten stages", 10, 64, 10, 10),
    ChainCase("chain longer than max_rounds is cut", 10, 4, 4, 4),
    ChainCase("chain exactly max_rounds long", 5, 5, 5, 5),
]


@pytest.mark.parametrize("case", CHAIN_CASES, ids=ids(CHAIN_CASES))
def test_triggers_that_write_cause_reevaluation(case: ChainCase) -> None:
    sst = make_sst(max_rounds=case.max_rounds)

    def stage(i: int) -> tuple[Callable[[SST], bool], Callable[[SST], None]]:
        return (lambda s: s.mine["epoch"] == i), (lambda s: s.set("epoch", i + 1))

    for i in reversed(range(case.stages)):  # stage i+1 runs before stage i within a round
        sst.register(f"stage{i}", *stage(i))
    assert sst.evaluate() == case.fired
    assert sst.mine["epoch"] == case.epoch
    rest = sst.evaluate()  # a cut chain resumes on the next evaluation
    assert rest == min(case.stages - case.fired, case.max_rounds)
    assert sst.mine["epoch"] == case.epoch + rest


def _same_value(s: SST) -> None:
    s.set("num", s.mine["num"])  # type: ignore[arg-type]


def _refused_write(s: SST) -> None:
    with pytest.raises(SSTError):
        s.set("num", -1)


def _stale_delta(s: SST) -> None:
    assert s.apply_remote_row(RowDelta(PEER, 1, {"num": 50})) is False


def _drain(s: SST) -> None:
    s.drain_push()
    s.drain_push(full=True)


def _reads(s: SST) -> None:
    s.column_min("num")
    s.vector_min("recv", [0, 2])


QUIET: list[tuple[str, Callable[[SST], None], int]] = [
    ("no call in between", lambda s: None, 0),
    ("rewrite of the same value", _same_value, 0),
    ("refused monotonic write", _refused_write, 0),
    ("stale remote delta", _stale_delta, 0),
    ("drains", _drain, 0),
    ("reads", _reads, 0),
    ("control: a real local write", lambda s: s.set("epoch", 3), 1),
    ("control: a real remote delta", lambda s: s.apply_remote_row(RowDelta(3, 1, {"num": 1})), 1),
]


@pytest.mark.parametrize(("action", "fires"), [q[1:] for q in QUIET], ids=[q[0] for q in QUIET])
def test_evaluate_does_nothing_when_nothing_changed(action: Callable[[SST], None], fires: int) -> None:
    sst = make_sst()
    sst.set("num", 2)
    sst.apply_remote_row(RowDelta(PEER, 1, {"num": 1}))
    tests: list[int] = []
    sst.register("always", lambda s: tests.append(1) or True, lambda s: None)
    assert sst.evaluate() == 1
    tests.clear()
    action(sst)
    assert sst.evaluate() == fires
    assert len(tests) == fires, "predicate tests must not even run when nothing changed"


@pytest.mark.parametrize("max_rounds", [1, 3, 64])
def test_trigger_writing_forever_stops_after_max_rounds(max_rounds: int) -> None:
    sst = make_sst(max_rounds=max_rounds)
    sst.register("runaway", lambda s: True, lambda s: s.set("num", s.mine["num"] + 1))  # type: ignore[operator]
    assert sst.evaluate() == max_rounds
    assert sst.mine["num"] == max_rounds
    assert sst.drain_push() == RowDelta(ME, 1, {"num": max_rounds})


# --------------------------------------------------------------------------------------------
# Reads over rows
# --------------------------------------------------------------------------------------------


def populated() -> SST:
    """Row 0: num 4, recv (4,1,9); row 1 (mine): 7, (2,8,3); row 2: 2, (5,5,5); row 3: untouched."""
    sst = make_sst()
    sst.set("num", 7)
    for i, v in enumerate((2, 8, 3)):
        sst.set_item("recv", i, v)
    assert sst.apply_remote_row(RowDelta(0, 1, {"num": 4, "recv": (4, 1, 9)}))
    assert sst.apply_remote_row(RowDelta(2, 1, {"num": 2, "recv": (5, 5, 5)}))
    return sst


MIN_CASES: list[tuple[str, Sequence[int] | None, int, list[int]]] = [
    ("all rows, an untouched row is zero", None, 0, [0, 0, 0]),
    ("all rows listed", [0, 1, 2, 3], 0, [0, 0, 0]),
    ("three touched rows", [0, 1, 2], 2, [2, 1, 3]),
    ("order does not matter", [2, 1, 0], 2, [2, 1, 3]),
    ("only my row", [ME], 7, [2, 8, 3]),
    ("one peer row", [0], 4, [4, 1, 9]),
    ("two peers", [0, 2], 2, [4, 1, 5]),
    ("mine and a peer", [1, 0], 4, [2, 1, 3]),
]


@pytest.mark.parametrize(("rows", "scalar", "vector"), [c[1:] for c in MIN_CASES], ids=[c[0] for c in MIN_CASES])
def test_column_min_and_vector_min(rows: Sequence[int] | None, scalar: int, vector: list[int]) -> None:
    sst = populated()
    assert sst.column_min("num", rows) == scalar
    assert sst.vector_min("recv", rows) == vector
