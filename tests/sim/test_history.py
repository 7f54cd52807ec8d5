"""The linearizability checker must accept every history a single object could produce and
reject planted anomalies (stale reads, lost writes, lost/duplicated/reordered appends,
impossible counter values), naming the key and the op at fault."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.sim.history import (
    MODELS,
    HistoryRecorder,
    HistoryTooComplex,
    Op,
    Verdict,
    check_history,
)

pytestmark = pytest.mark.timeout(60)

_MUTATION = {"register": "write", "append": "append", "counter": "add"}


def W(
    client: int, value: Any, invoked: float, completed: float | None, key: Hashable = "k", failed: bool = False
) -> Op:
    return Op(client, "write", key, value, invoked, completed, failed=failed)


def R(client: int, result: Any, invoked: float, completed: float | None, key: Hashable = "k") -> Op:
    return Op(client, "read", key, None, invoked, completed, result)


def A(
    client: int, element: Any, invoked: float, completed: float | None, key: Hashable = "k", failed: bool = False
) -> Op:
    return Op(client, "append", key, element, invoked, completed, failed=failed)


def D(
    client: int, amount: int, invoked: float, completed: float | None, result: int | None = None, key: Hashable = "k"
) -> Op:
    return Op(client, "add", key, amount, invoked, completed, result)


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    ops: tuple[Op, ...]
    ok: bool
    mentions: tuple[str, ...] = ()  # substrings the problem text must contain (failures only)
    culprit: Op | None = None  # an op the witness must contain (failures only)
    initial: Any = None


_STALE = R(3, 1, 4, 5)
_LOST_1, _LOST_2, _LOST_3 = R(1, 1, 4, 5), R(2, 1, 6, 7), R(3, 1, 8, 9)
_PHANTOM = R(2, 9, 2, 3)
_FLIP = R(4, 1, 5, 6)
_UNDONE = R(2, 1, 12, 13)
_FAILED_READ = R(2, 1, 3, 4)
_CROSS = R(2, "a", 2, 3, key="b")

REGISTER = [
    Case(
        "sequential", "register", (R(1, None, 0, 1), W(1, 1, 2, 3), R(2, 1, 4, 5), W(2, 2, 6, 7), R(1, 2, 8, 9)), True
    ),
    Case("initial value", "register", (R(1, 0, 0, 1), W(2, 5, 2, 3), R(1, 5, 4, 5)), True, initial=0),
    Case(
        "concurrent writes, read sees first",
        "register",
        (W(1, 1, 0, 2), W(2, 2, 0, 2), R(3, 1, 3, 4), R(1, 1, 5, 6)),
        True,
    ),
    Case(
        "concurrent writes, read sees second",
        "register",
        (W(1, 1, 0, 2), W(2, 2, 0, 2), R(3, 2, 3, 4), R(2, 2, 5, 6)),
        True,
    ),
    Case("read during write sees old", "register", (W(1, 1, 0, 1), W(2, 2, 2, 5), R(3, 1, 3, 4)), True),
    Case("read during write sees new", "register", (W(1, 1, 0, 1), W(2, 2, 2, 5), R(3, 2, 3, 4)), True),
    Case(
        "reply and invocation at the same instant are concurrent",
        "register",
        (W(1, 1, 0, 1), W(2, 2, 2, 3), R(3, 1, 3, 4)),
        True,
    ),
    Case(
        "unknown-outcome write later read",
        "register",
        (W(1, 1, 0, 1), W(2, 2, 2, None), R(3, 1, 3, 4), R(1, 2, 10, 11)),
        True,
    ),
    Case(
        "unknown-outcome write never read",
        "register",
        (W(1, 1, 0, 1), W(2, 2, 2, None), R(3, 1, 3, 4), R(1, 1, 10, 11)),
        True,
    ),
    Case("unknown-outcome read dropped", "register", (W(1, 1, 0, 1), R(2, 42, 2, None)), True),
    Case("failed write never read", "register", (W(1, 1, 0, 1), W(2, 2, 2, 3, failed=True), R(3, 1, 4, 5)), True),
    Case(
        "keys are independent objects",
        "register",
        (W(1, "a", 0, 1, key="a"), W(2, "b", 0, 1, key="b"), R(3, "a", 2, 3, key="a"), R(3, "b", 4, 5, key="b")),
        True,
    ),
    Case(
        "stale read",
        "register",
        (W(1, 1, 0, 1), W(2, 2, 2, 3), _STALE),
        False,
        ("key 'k'", "read by client 3 (invoked 4, completed 5) returned 1", "held only 2", "written by client 2"),
        _STALE,
    ),
    Case(
        "lost write",
        "register",
        (W(1, 1, 0, 1), W(2, 2, 2, 3), _LOST_1, _LOST_2, _LOST_3),
        False,
        ("key 'k'", "read by client 1 (invoked 4, completed 5) returned 1", "held only 2"),
        _LOST_1,
    ),
    Case(
        "read of a value never written",
        "register",
        (W(1, 1, 0, 1), _PHANTOM),
        False,
        ("key 'k'", "read by client 2 (invoked 2, completed 3) returned 9", "No write of 9"),
        _PHANTOM,
    ),
    Case(
        "reads flip-flop after concurrent writes",
        "register",
        (W(1, 1, 0, 2), W(2, 2, 0, 2), R(3, 2, 3, 4), _FLIP),
        False,
        ("key 'k'", "read by client 4 (invoked 5, completed 6) returned 1"),
        _FLIP,
    ),
    Case(
        "unknown-outcome write cannot be undone",
        "register",
        (W(1, 1, 0, 1), W(3, 2, 2, None), R(1, 2, 10, 11), _UNDONE),
        False,
        ("key 'k'", "read by client 2 (invoked 12, completed 13) returned 1"),
        _UNDONE,
    ),
    Case(
        "read of a failed write",
        "register",
        (W(1, 1, 0, 1, failed=True), _FAILED_READ),
        False,
        ("key 'k'", "returned 1", "reported failed"),
        _FAILED_READ,
    ),
    Case(
        "value from another key",
        "register",
        (W(1, "a", 0, 1, key="a"), _CROSS),
        False,
        ("key 'b'", "read by client 2 (invoked 2, completed 3) returned 'a'"),
        _CROSS,
    ),
]

_LOST_APPEND = R(3, ("x",), 5, 6)
_DUPLICATE = R(2, ("x", "y", "x"), 4, 5)
_SWAPPED = R(4, ("y", "x"), 5, 6)
_SWAPPED_CONCURRENT = R(4, ("y", "x"), 3, 6)
_SHRUNK = R(1, ("x",), 6, 7)

APPEND = [
    Case(
        "sequential",
        "append",
        (R(1, (), 0, 1), A(1, "x", 2, 3), R(2, ("x",), 4, 5), A(2, "y", 6, 7), R(1, ("x", "y"), 8, 9)),
        True,
    ),
    Case(
        "concurrent appends, either order",
        "append",
        (A(1, "x", 0, 2), A(2, "y", 0, 2), R(3, ("y", "x"), 3, 4), R(1, ("y", "x"), 5, 6)),
        True,
    ),
    Case(
        "read during append",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 2, 5), R(3, ("x",), 3, 4), R(1, ("x", "y"), 6, 7)),
        True,
    ),
    Case(
        "unknown-outcome append observed",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 2, None), R(3, ("x",), 3, 4), R(1, ("x", "y"), 10, 11)),
        True,
    ),
    Case(
        "unknown-outcome append never observed",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 2, None), R(3, ("x",), 3, 4), R(1, ("x",), 10, 11)),
        True,
    ),
    Case("read results given as lists", "append", (A(1, "x", 0, 1), R(2, ["x"], 2, 3)), True),
    Case(
        "lost append",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 2, 3), R(1, ("x", "y"), 3.5, 4), _LOST_APPEND),
        False,
        ("key 'k'", "read by client 3 (invoked 5, completed 6) returned ('x',)", "lacks 'y'"),
        _LOST_APPEND,
    ),
    Case(
        "append lost from the start",
        "append",
        (A(1, "x", 0, 1), R(2, (), 2, 3)),
        False,
        ("key 'k'", "append of 'x' by client 1", "read by client 2 (invoked 2, completed 3)", "lacks 'x'"),
    ),
    Case(
        "duplicated append",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 2, 3), _DUPLICATE),
        False,
        ("key 'k'", "read by client 2 (invoked 4, completed 5)", "'x' 2 times"),
        _DUPLICATE,
    ),
    Case(
        "appends seen in different orders",
        "append",
        (A(1, "x", 0, 2), A(2, "y", 0, 2), R(3, ("x", "y"), 3, 4), _SWAPPED),
        False,
        ("key 'k'", "read by client 4 (invoked 5, completed 6) returned ('y', 'x')", "position 0"),
        _SWAPPED,
    ),
    Case(
        "concurrent reads see different orders",
        "append",
        (A(1, "x", 0, 2), A(2, "y", 0, 2), R(3, ("x", "y"), 3, 6), _SWAPPED_CONCURRENT),
        False,
        ("key 'k'", "('y', 'x')"),
    ),
    Case(
        "list shrinks",
        "append",
        (A(1, "x", 0, 1), A(2, "y", 0, 1), R(3, ("x", "y"), 2, 3), _SHRUNK),
        False,
        ("key 'k'", "read by client 1 (invoked 6, completed 7) returned ('x',)"),
        _SHRUNK,
    ),
]

_BAD_ADD = D(2, 1, 0, 2, 1)
_BACKWARDS = R(3, 1, 6, 7)
_TOO_HIGH = R(1, 5, 4, 5)

COUNTER = [
    Case("sequential", "counter", (R(1, 0, 0, 1), D(1, 2, 2, 3, 2), R(2, 2, 4, 5), D(2, 3, 6, 7)), True),
    Case(
        "concurrent adds return distinct totals", "counter", (D(1, 1, 0, 2, 2), D(2, 1, 0, 2, 1), R(3, 2, 3, 4)), True
    ),
    Case("read during adds", "counter", (D(1, 1, 0, 3), D(2, 1, 0, 3), R(3, 1, 1, 2), R(3, 2, 4, 5)), True),
    Case("unknown-outcome add observed", "counter", (D(1, 1, 0, 1), D(2, 5, 2, None), R(3, 6, 8, 9)), True),
    Case("unknown-outcome add not observed", "counter", (D(1, 1, 0, 1), D(2, 5, 2, None), R(3, 1, 8, 9)), True),
    Case("initial counter", "counter", (R(1, 10, 0, 1), D(1, 1, 2, 3, 11)), True, initial=10),
    Case(
        "impossible add result",
        "counter",
        (D(1, 1, 0, 2, 1), _BAD_ADD),
        False,
        ("key 'k'", "add of 1 by client", "returned 1", "would then be 2"),
    ),
    Case(
        "read goes backwards",
        "counter",
        (D(1, 1, 0, 1), D(2, 1, 2, 3), R(3, 2, 4, 5), _BACKWARDS),
        False,
        ("key 'k'", "read by client 3 (invoked 6, completed 7) returned 1", "held only 2"),
        _BACKWARDS,
    ),
    Case(
        "read above every total",
        "counter",
        (D(1, 1, 0, 1), D(2, 1, 2, 3), _TOO_HIGH),
        False,
        ("key 'k'", "read by client 1 (invoked 4, completed 5) returned 5"),
        _TOO_HIGH,
    ),
]


@pytest.mark.parametrize("case", REGISTER + APPEND + COUNTER, ids=lambda c: f"{c.model}: {c.name}")
def test_table(case: Case) -> None:
    verdict = check_history(case.ops, case.model, initial=case.initial)
    assert verdict.ok is case.ok, verdict.problem
    assert verdict.model == case.model
    if case.ok:
        assert verdict.problem is None and verdict.witness == ()
        return
    assert verdict.problem is not None
    assert "\n" not in verdict.problem
    for text in case.mentions:
        assert text.lower() in verdict.problem.lower()
    if case.culprit is not None:
        assert case.culprit in verdict.witness


@pytest.mark.parametrize(
    "case", [c for c in REGISTER + APPEND + COUNTER if not c.ok], ids=lambda c: f"{c.model}: {c.name}"
)
def test_verdict_does_not_depend_on_input_order(case: Case) -> None:
    first = check_history(case.ops, case.model, initial=case.initial)
    for seed in range(3):
        shuffled = list(case.ops)
        random.Random(seed).shuffle(shuffled)
        assert check_history(shuffled, case.model, initial=case.initial) == first


def test_counts_and_first_failing_key_in_repr_order() -> None:
    ops = [
        W(1, 1, 0, 1, key="b"),
        R(2, 7, 2, 3, key="b"),
        W(1, 1, 0, 1, key="a"),
        R(2, 7, 2, 3, key="a"),
        R(3, 1, 5, None, key="c"),
        W(1, 1, 0, 1, key="d", failed=True),
    ]
    verdict = check_history(ops, "register")
    assert (verdict.ok, verdict.ops, verdict.keys) == (False, 4, 2)
    assert verdict.problem is not None and verdict.problem.startswith("key 'a'")
    assert all(op.key == "a" for op in verdict.witness)
    assert check_history([], "register") == Verdict(True, "register", 0, 0, None)


def test_malformed_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        check_history([], "queue")
    with pytest.raises(ValueError, match="kind 'append'"):
        check_history([A(1, "x", 0, 1)], "register")
    with pytest.raises(ValueError, match="completed before it was invoked"):
        check_history([W(1, 1, 2, 1)], "register")
    with pytest.raises(ValueError, match="hashable"):
        check_history([W(1, [1], 0, 1)], "register")


def test_too_complex() -> None:
    writes = [W(c, c, 0, 10) for c in range(8)]
    ops = writes + [R(9, -1, 11, 12)]  # no order works, so the search has to try them all
    with pytest.raises(HistoryTooComplex, match=r"key 'k'.*9 ops") as raised:
        check_history(ops, "register", max_states=20)
    assert raised.value.key == "k" and raised.value.ops == 9
    assert not check_history(ops, "register").ok


def test_recorder() -> None:
    rec = HistoryRecorder()
    w = rec.invoke(1, "write", "k", "v", 0.5)
    r = rec.invoke(2, "read", "k", None, 0.6)
    lost = rec.invoke(3, "write", "k", "u", 0.7)
    failed = rec.invoke(4, "write", "k", "z", 0.8)
    rec.complete(w, None, 1.0)
    rec.complete(r, "v", 1.1)
    rec.fail(failed, 1.2)
    assert rec.ops() == [
        Op(1, "write", "k", "v", 0.5, 1.0),
        Op(2, "read", "k", None, 0.6, 1.1, "v"),
        Op(3, "write", "k", "u", 0.7, None),
        Op(4, "write", "k", "z", 0.8, 1.2, failed=True),
    ]
    assert lost == 2 and check_history(rec.ops(), "register").ok
    with pytest.raises(ValueError, match="already closed"):
        rec.complete(w, None, 2.0)
    with pytest.raises(ValueError, match="before it was invoked"):
        rec.complete(lost, None, 0.1)
    with pytest.raises(ValueError, match="no call"):
        rec.fail(99, 2.0)


# ------------------------------------------------------------ generated histories
def random_history(
    rng: random.Random, model: str, *, ops: int, keys: int, clients: int, values: int, unknown: int
) -> list[Op]:
    """A history a single object could produce: clients issue calls one at a time, each call
    takes effect at a random instant inside its interval, and the results come from running
    the model in that order. ``unknown`` mutations lose their reply (half of them still take
    effect, possibly after the caller gave up); a few more calls fail, and a few reads are
    abandoned."""
    calls: list[tuple[float, Op, bool]] = []  # (instant it takes effect, call, takes effect)
    clock = [rng.uniform(0, 1) for _ in range(clients)]
    for n in range(ops):
        client = n % clients
        invoked = clock[client]
        completed = invoked + rng.uniform(0.05, 2.0)
        clock[client] = completed + rng.uniform(0, 0.3)
        key = f"k{rng.randrange(keys)}"
        if rng.random() < 0.5:
            value = rng.randrange(1, 6) if model == "counter" else f"v{rng.randrange(values)}"
            op = Op(client, _MUTATION[model], key, value, invoked, completed)
        else:
            op = Op(client, "read", key, None, invoked, completed)
        calls.append((rng.uniform(invoked, completed), op, True))
    mutations = [n for n, (_, op, _) in enumerate(calls) if op.kind != "read"]
    for n in rng.sample(mutations, min(unknown, len(mutations))):
        at, op, _ = calls[n]
        applies = rng.random() < 0.5
        late = at + rng.uniform(0, 5) if applies else at
        calls[n] = (late, replace(op, completed=None), applies)
    for n in rng.sample(range(len(calls)), len(calls) // 20):
        at, op, applies = calls[n]
        if op.completed is not None and op.kind != "read":
            calls[n] = (at, replace(op, failed=True), False)
        elif op.kind == "read":
            calls[n] = (at, replace(op, completed=None, result="abandoned"), True)
    state: dict[Hashable, Any] = {}
    initial: Any = {"register": None, "append": (), "counter": 0}[model]
    out = []
    for _, op, applies in sorted(calls, key=lambda c: c[0]):
        now = state.get(op.key, initial)
        if applies and op.kind == "read" and op.result is None:
            op = replace(op, result=now)
        elif applies and op.kind != "read":
            now = op.value if model == "register" else now + (op.value,) if model == "append" else now + op.value
            state[op.key] = now
            if model == "counter" and op.completed is not None and rng.random() < 0.5:
                op = replace(op, result=now)
        out.append(op)
    rng.shuffle(out)
    return out


def impossible(model: str, result: Any, rng: random.Random) -> Any:
    """A read result no order of the writes can produce."""
    if model == "register":
        return "never written"
    if model == "append":
        at = rng.randrange(len(result) + 1)
        return result[:at] + ("never appended",) + result[at:]
    return -1  # amounts are positive and the counter starts at 0


@settings(derandomize=True, max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    model=st.sampled_from(MODELS),
    ops=st.integers(1, 40),
    clients=st.integers(1, 6),
    unknown=st.integers(0, 3),
)
def test_generated_histories_pass_and_a_corrupted_read_fails(
    seed: int, model: str, ops: int, clients: int, unknown: int
) -> None:
    rng = random.Random(seed)
    history = random_history(rng, model, ops=ops, keys=2, clients=clients, values=3, unknown=unknown)
    verdict = check_history(history, model)
    assert verdict.ok, verdict.problem
    reads = [n for n, op in enumerate(history) if op.kind == "read" and op.completed is not None]
    if not reads:
        return
    n = rng.choice(reads)
    bad = replace(history[n], result=impossible(model, history[n].result, rng))
    history[n] = bad
    verdict = check_history(history, model)
    assert not verdict.ok
    assert verdict.problem is not None and verdict.problem.startswith(f"key {bad.key!r}")
    assert all(op.key == bad.key for op in verdict.witness)


def test_large_history_over_many_keys() -> None:
    history = random_history(random.Random(7), "register", ops=2000, keys=20, clients=8, values=1000, unknown=6)
    verdict = check_history(history, "register")
    assert verdict.ok, verdict.problem
    checked = [op for op in history if not op.failed and (op.kind != "read" or op.completed is not None)]
    assert verdict.keys == 20 and verdict.ops == len(checked) > 1800


@pytest.mark.parametrize("model", MODELS)
def test_hundreds_of_ops_on_one_hot_key(model: str) -> None:
    rng = random.Random(11)
    history = random_history(rng, model, ops=400, keys=1, clients=8, values=6, unknown=3)
    assert check_history(history, model).ok
    n = max(
        (n for n, op in enumerate(history) if op.kind == "read" and op.completed is not None),
        key=lambda n: history[n].invoked,
    )
    history[n] = replace(history[n], result=impossible(model, history[n].result, rng))
    assert not check_history(history, model).ok
