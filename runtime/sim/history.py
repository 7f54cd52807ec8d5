"""Linearizability of client histories: did a replicated object behave like one object?

The simulator records what its clients *observed* while calling a replicated object under
crashes, partitions and restarts: each call's invocation and reply times on the virtual clock
and the value it returned. The history is linearizable when every call can be given a single
instant inside its own interval such that the calls, executed one by one in that order on a
single copy of the object, return exactly what the clients saw. That is the guarantee a
state machine replicated with atomic multicast promises, and this checker trusts nothing but
the clients' observations to judge it.

Three sequential models are understood: ``"register"`` (write a value, read the last one
written), ``"append"`` (append an element, read the whole sequence: catches lost, duplicated
and reordered appends) and ``"counter"`` (add an amount, optionally returning the new total;
read the total).

Semantics, precisely:

* a call with a reply (``completed`` set) took effect once, atomically, at some instant
  between ``invoked`` and ``completed``;
* a call whose outcome is unknown (``completed=None``: timed out, reply lost, caller gave up)
  either took effect at some instant after ``invoked`` -- however late -- or never. A
  mutation of unknown outcome may therefore be placed anywhere after its invocation or left
  out; a read of unknown outcome observed nothing and constrains nothing, so it is dropped;
* a call the system reported as failed (``failed=True``) did not take effect and is dropped;
* real time: a call precedes another when its reply came strictly before the other was
  invoked; equal instants count as concurrent.

Keys are independent objects, so each key's history is checked alone (P-compositionality:
a history is linearizable iff every key's sub-history is) and the first failing key, in
the order of ``repr(key)``, is reported.

The search is Wing & Gong's, with Lowe's memoization: depth first over "which call takes
effect next", where only *minimal* calls qualify (no unplaced completed call replied before
they were invoked), remembering every (set of placed calls, object state) pair already
explored so that equivalent prefixes reached in different orders are not explored twice. Two
rules that cannot change the answer keep it small: a read that matches the current state is
placed at once without branching (moving a read earlier, to a point where it was already
allowed and sees the same state, never disturbs the others), and the search stops with
success as soon as every call that observed something is placed (the remaining mutations of
these models are always accepted, in any real-time order). Before searching, a mutation of
unknown outcome that no observation can depend on is left out: one invoked after the last
observation replied, a register write whose value no read returned, an append whose element
no read contains, an add of zero. In the append model a next element is only tried if it
agrees with the earliest-replying read still to be placed, since the sequence only grows.

The search is exponential in the worst case (linearizability checking is NP-complete), so
the number of states explored per key is bounded by ``max_states``: past it
:class:`HistoryTooComplex` is raised rather than a guess returned, so the caller can shrink
the workload. When a key fails, the verdict explains the deepest point the search reached:
how many calls could be ordered, what the object then held, and why none of the calls that
could come next fits -- naming the reads involved and the writes behind the values they
could have seen.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

MODELS = ("register", "append", "counter")
_MUTATION = {"register": "write", "append": "append", "counter": "add"}
_NOUN = {"register": "register", "append": "list", "counter": "counter"}
_WITNESS_MAX = 24  # ops in a failing verdict's witness
_SEEN_MAX = 4  # alternative states listed in a problem text
_REJECT = object()  # a model step's answer when the op cannot take effect in that state


class HistoryTooComplex(Exception):
    """The search for one key exceeded its state budget; shrink the workload or raise the bound."""

    def __init__(self, key: Hashable, ops: int, unknown: int, states: int) -> None:
        self.key = key
        self.ops = ops
        self.states = states
        super().__init__(
            f"key {key!r}: the linearizability search explored more than {states} states over "
            f"{ops} ops ({unknown} with unknown outcome) without an answer; check fewer concurrent "
            f"clients or fewer unknown-outcome ops per key, or raise max_states"
        )


@dataclass(frozen=True, slots=True)
class Op:
    client: int  # which client issued it (a client has at most one op in flight)
    kind: str  # "write" | "read" (register); "append" | "read" (append); "add" | "read" (counter)
    key: Hashable  # the object the op touches; ops on different keys are independent
    value: Any  # write: the value written; append: the element; add: the amount; read: unused
    invoked: float  # when the call was issued (virtual seconds)
    completed: float | None  # when its reply arrived; None: outcome unknown
    result: Any = None  # read: the value read; add: the new total if returned, else None
    failed: bool = False  # True: the call definitely did not take effect; dropped before checking


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    model: str
    ops: int  # ops checked (after dropping failed ops and reads of unknown outcome)
    keys: int
    problem: str | None  # None when ok; else one paragraph naming the key and the offending op(s)
    witness: tuple[Op, ...] = ()  # when not ok: the ops of the failing key involved


def check_history(ops: Iterable[Op], model: str, *, initial: Any = None, max_states: int = 2_000_000) -> Verdict:
    """Whether ``ops`` is linearizable under ``model``; raises :class:`HistoryTooComplex` if a
    key needs more than ``max_states`` explored states, ``ValueError`` on a malformed op."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    start = _initial_state(model, initial)
    by_key: dict[Hashable, list[Op]] = {}
    failed: dict[Hashable, list[Op]] = {}
    for op in ops:
        _validate(op, model)
        if op.failed:
            failed.setdefault(op.key, []).append(op)
        elif op.kind != "read" or op.completed is not None:
            by_key.setdefault(op.key, []).append(_normalised(op, model))
    total = sum(len(v) for v in by_key.values())
    for key in sorted(by_key, key=repr):
        search = _KeySearch(key, by_key[key], model, start, max_states)
        stuck = search.run()
        if stuck is not None:
            problem, witness = _explain(search, stuck, failed.get(key, []))
            return Verdict(False, model, total, len(by_key), problem, witness)
    return Verdict(True, model, total, len(by_key), None)


class HistoryRecorder:
    """Builds a history as calls are issued and answered; calls never answered end up with an
    unknown outcome (``completed=None``)."""

    def __init__(self) -> None:
        self._calls: list[_Call] = []

    def invoke(self, client: int, kind: str, key: Hashable, value: Any, now: float) -> int:
        self._calls.append(_Call(client, kind, key, value, now))
        return len(self._calls) - 1

    def complete(self, handle: int, result: Any, now: float) -> None:
        call = self._open(handle, now)
        call.completed, call.result = now, result

    def fail(self, handle: int, now: float) -> None:
        """The call definitely did not take effect (the system said so)."""
        call = self._open(handle, now)
        call.completed, call.failed = now, True

    def ops(self) -> list[Op]:
        return [Op(c.client, c.kind, c.key, c.value, c.invoked, c.completed, c.result, c.failed) for c in self._calls]

    def _open(self, handle: int, now: float) -> _Call:
        if not 0 <= handle < len(self._calls):
            raise ValueError(f"no call with handle {handle}")
        call = self._calls[handle]
        if call.completed is not None:
            raise ValueError(f"call {handle} ({call.kind} by client {call.client}) already closed")
        if now < call.invoked:
            raise ValueError(f"call {handle} closed at {now}, before it was invoked at {call.invoked}")
        return call


@dataclass(slots=True)
class _Call:
    client: int
    kind: str
    key: Hashable
    value: Any
    invoked: float
    completed: float | None = None
    result: Any = None
    failed: bool = False


# --------------------------------------------------------------------------- input
def _initial_state(model: str, initial: Any) -> Any:
    if model == "append":
        return () if initial is None else tuple(initial)
    if model == "counter":
        return 0 if initial is None else initial
    return initial


def _validate(op: Op, model: str) -> None:
    if op.kind not in ("read", _MUTATION[model]):
        raise ValueError(f"op {op!r} has kind {op.kind!r}; the {model} model knows 'read' and {_MUTATION[model]!r}")
    if op.completed is not None and op.completed < op.invoked:
        raise ValueError(f"op {op!r} completed before it was invoked")
    checked = "value" if op.kind != "read" else "result" if model == "register" else None
    if checked is not None:
        try:
            hash(getattr(op, checked))
        except TypeError:
            raise ValueError(f"op {op!r}: its {checked} must be hashable") from None


def _normalised(op: Op, model: str) -> Op:
    """Append reads as tuples (a list or None from the caller means the same sequence)."""
    if model == "append" and op.kind == "read" and not isinstance(op.result, tuple):
        return Op(
            op.client,
            op.kind,
            op.key,
            op.value,
            op.invoked,
            op.completed,
            () if op.result is None else tuple(op.result),
            op.failed,
        )
    return op


def _observes(op: Op, model: str) -> bool:
    """Whether the op returned something the model must reproduce."""
    if op.completed is None:
        return False
    return op.kind == "read" or (model == "counter" and op.result is not None)


def _relevant(op: Op, model: str, reads: list[Op], last_observation: float) -> bool:
    """False for a mutation of unknown outcome that no observation can depend on (so leaving
    it out is always allowed, and some linearization exists with it iff one exists without)."""
    if op.completed is not None or op.kind == "read":
        return True
    if op.invoked > last_observation:
        return False  # it can only take effect after everything that observed anything
    if model == "register":
        return any(r.result == op.value for r in reads)
    if model == "append":
        return any(op.value in r.result for r in reads)
    return op.value != 0


# -------------------------------------------------------------------------- search
@dataclass(frozen=True, slots=True)
class _Stuck:
    """The deepest point the search reached: ops placed (a bitmask), the state, the last op placed."""

    depth: int
    mask: int
    cmask: int
    rmask: int
    state: Any
    last: int  # index of the last op placed, -1 if none


@dataclass(slots=True)
class _KeySearch:
    key: Hashable
    given: list[Op]
    model: str
    initial: Any
    max_states: int
    ops: list[Op] = field(init=False)
    inv: list[float] = field(init=False)  # ascending
    comp: list[float] = field(init=False)  # math.inf for unknown outcome
    by_completion: list[int] = field(init=False)  # completed ops, by reply time
    reads: list[int] = field(init=False)  # observing reads, by reply time
    cbit: list[int] = field(init=False)  # bit of op i in the by_completion mask (0 if unknown)
    rbit: list[int] = field(init=False)  # bit of op i in the reads mask (0 if not an observing read)
    observers: int = field(init=False)  # mask of ops that must all be placed
    # (placed completed ops, state) -> the sets of unknown-outcome ops placed with them
    visited: dict[tuple[int, Any], list[int]] = field(init=False)

    def __post_init__(self) -> None:
        model = self.model
        reads = [o for o in self.given if o.kind == "read"]
        last = max(
            (o.completed for o in self.given if _observes(o, model) and o.completed is not None), default=-math.inf
        )
        kept = [o for o in self.given if _relevant(o, model, reads, last)]
        kept.sort(key=_order)
        self.ops = kept
        self.inv = [o.invoked for o in kept]
        self.comp = [math.inf if o.completed is None else o.completed for o in kept]
        n = len(kept)
        self.by_completion = sorted(
            (i for i in range(n) if kept[i].completed is not None), key=lambda i: (self.comp[i], i)
        )
        self.reads = [i for i in self.by_completion if kept[i].kind == "read"]
        self.cbit, self.rbit = [0] * n, [0] * n
        for pos, i in enumerate(self.by_completion):
            self.cbit[i] = 1 << pos
        for pos, i in enumerate(self.reads):
            self.rbit[i] = 1 << pos
        self.observers = sum(1 << i for i in range(n) if _observes(kept[i], model))
        self.visited = {}

    def step(self) -> Callable[[int, Any, Any], Any]:
        """The model's mutation: (op index, state, result of the next read to place) -> new
        state, or _REJECT."""
        ops = self.ops
        values = [o.value for o in ops]
        if self.model == "register":
            return lambda i, state, _next: values[i]
        if self.model == "append":

            def append(i: int, state: tuple, next_read: tuple | None) -> Any:
                x, n = values[i], len(state)
                if next_read is not None and (len(next_read) <= n or next_read[n] != x):
                    return _REJECT  # that read must still be placed, and the list only grows
                return state + (x,)

            return append
        returns = [o.result if o.completed is not None else None for o in ops]

        def add(i: int, state: int, _next: Any) -> Any:
            new = state + values[i]
            return _REJECT if returns[i] is not None and returns[i] != new else new

        return add

    def needed_by(self) -> list[int | None]:
        """Per append of unknown outcome, the mask of reads holding its element: once all of
        them are placed the append is never placed (leaving it out is then always allowed).
        None for the other ops."""
        ops = self.ops
        out: list[int | None] = [None] * len(ops)
        if self.model == "append":
            for i, op in enumerate(ops):
                if op.completed is None:
                    out[i] = sum(1 << j for j in self.reads if op.value in ops[j].result)
        return out

    def candidates(self, mask: int, cmask: int) -> list[int]:
        """Unplaced ops that may take effect next: invoked no later than the earliest reply
        among unplaced completed ops."""
        pos = (~cmask & (cmask + 1)).bit_length() - 1
        limit = self.comp[self.by_completion[pos]] if pos < len(self.by_completion) else math.inf
        free = ~mask & ((1 << bisect_right(self.inv, limit)) - 1)
        out = []
        while free:
            low = free & -free
            out.append(low.bit_length() - 1)
            free ^= low
        return out

    def next_read(self, rmask: int) -> tuple | None:
        if self.model != "append":
            return None
        pos = (~rmask & (rmask + 1)).bit_length() - 1
        return self.ops[self.reads[pos]].result if pos < len(self.reads) else None

    def run(self) -> _Stuck | None:
        """None if the key's history is linearizable, else the deepest point reached."""
        ops, comp, cbit, rbit = self.ops, self.comp, self.cbit, self.rbit
        observers, step, visited = self.observers, self.step(), self.visited
        is_read = [o.kind == "read" for o in ops]
        results = [o.result for o in ops]
        values = [o.value for o in ops]
        observing = [_observes(o, self.model) for o in ops]
        unknown = [o.completed is None for o in ops]
        needed_by = self.needed_by()
        register = self.model == "register"
        lazy = self.model != "append"
        candidates, next_read = self.candidates, self.next_read

        def expand(mask: int, cmask: int, rmask: int, state: Any) -> list[tuple[int, Any]] | None:
            if mask & observers == observers:
                return None
            ready = candidates(mask, cmask)
            waiting: set[Any] = set()  # register: the values the reads that could go next returned
            observer_ready = False
            for i in ready:
                if is_read[i] and results[i] == state:
                    return [(i, state)]
                if observing[i]:
                    observer_ready = True
                    if register:
                        waiting.add(results[i])
            nxt = next_read(rmask)
            children = []
            twins: set[Any] = set()  # values of the unknown-outcome mutations tried here
            for i in ready:
                if is_read[i]:
                    continue
                if unknown[i]:
                    # Only the first of several with the same value is tried (they are
                    # interchangeable); a write or an add only when an op that could go right
                    # after it observes it (see _KeySearch).
                    if lazy and (not observer_ready or (register and values[i] not in waiting)):
                        continue
                    wanted = needed_by[i]
                    if (wanted is not None and not wanted & ~mask) or values[i] in twins:
                        continue
                    twins.add(values[i])
                new = step(i, state, nxt)
                if new is not _REJECT:
                    children.append((i, new))
            children.sort(key=lambda c: (comp[c[0]], c[0]), reverse=True)  # pop(): earliest reply first
            return children

        known = sum(1 << i for i in range(len(ops)) if not unknown[i])
        visited[(0, self.initial)] = [0]
        explored = 1
        best = _Stuck(0, 0, 0, 0, self.initial, -1)
        first = expand(0, 0, 0, self.initial)
        if first is None:
            return None
        stack = [(0, 0, 0, self.initial, 0, first)]
        while stack:
            mask, cmask, rmask, state, depth, children = stack[-1]
            if not children:
                stack.pop()
                continue
            i, new_state = children.pop()
            new_mask = mask | (1 << i)
            # Explored already, or dominated: the same completed ops and state were reached
            # with fewer unknown-outcome ops placed, and those can always be left out.
            extra = new_mask & ~known
            placed = visited.setdefault((new_mask & known, new_state), [])
            if any(not other & ~extra for other in placed):
                continue
            placed.append(extra)
            explored += 1
            if explored > self.max_states:
                n_unknown = sum(1 for o in ops if o.completed is None)
                raise HistoryTooComplex(self.key, len(ops), n_unknown, self.max_states)
            new_cmask, new_rmask = cmask | cbit[i], rmask | rbit[i]
            if depth + 1 > best.depth:
                best = _Stuck(depth + 1, new_mask, new_cmask, new_rmask, new_state, i)
            kids = expand(new_mask, new_cmask, new_rmask, new_state)
            if kids is None:
                return None
            stack.append((new_mask, new_cmask, new_rmask, new_state, depth + 1, kids))
        return best

    def states_seen_by(self, i: int) -> list[Any]:
        """The states, over the whole search, in which op i was allowed to take effect next."""
        before = sum(1 << j for j in range(len(self.ops)) if self.comp[j] < self.inv[i])
        bit = 1 << i
        out: dict[Any, None] = {}
        for (mask, state), extras in self.visited.items():
            for extra in extras:
                if not (mask | extra) & bit and mask & before == before:
                    out[state] = None
        return list(out)


def _order(op: Op) -> tuple:
    """A total order on ops (by invocation), so the verdict never depends on input order."""
    done = math.inf if op.completed is None else op.completed
    return (op.invoked, done, op.client, op.kind, repr(op.value), repr(op.result))


# --------------------------------------------------------------------- explanation
def _explain(search: _KeySearch, stuck: _Stuck, failed: list[Op]) -> tuple[str, tuple[Op, ...]]:
    """One paragraph on why the search could go no further than ``stuck``, and its witness."""
    ops, model, noun = search.ops, search.model, _NOUN[search.model]
    step, nxt = search.step(), search.next_read(stuck.rmask)
    blocked = [
        i
        for i in search.candidates(stuck.mask, stuck.cmask)
        if ops[i].kind == "read" or step(i, stuck.state, nxt) is _REJECT
    ]
    # The call that had to come next: the first to reply among those that cannot.
    blocked.sort(key=lambda i: (search.comp[i], i))
    text = (
        f"key {search.key!r} is not linearizable under the {model} model ({len(ops)} ops on it): "
        f"the longest prefix that can be ordered consistently with real time places "
        f"{stuck.depth} op{'s' if stuck.depth != 1 else ''}"
    )
    if stuck.last >= 0:
        text += f", the last being {_describe(ops[stuck.last])}"
    text += f", and leaves the {noun} at {_short(stuck.state)}; no op can take effect next."
    involved: list[int] = [] if stuck.last < 0 else [stuck.last]
    for i in blocked[:2]:
        reason, related = _why(search, stuck, i, failed)
        text += f" {reason}"
        involved += [i, *related]
    if len(blocked) > 2:
        text += f" ({len(blocked) - 2} more ops are blocked likewise.)"
    return text, _witness(search, blocked[0] if blocked else stuck.last, involved)


def _why(search: _KeySearch, stuck: _Stuck, i: int, failed: list[Op]) -> tuple[str, list[int]]:
    """Why op i cannot take effect at the stuck point, and the other ops that explain it."""
    ops, model, noun, op = search.ops, search.model, _NOUN[search.model], search.ops[i]
    if op.kind == "read":
        seen = search.states_seen_by(i)
        fits = op.result in seen
        others = [s for s in seen if s != op.result][:_SEEN_MAX] if fits else seen[:_SEEN_MAX]
        related = [j for s in others for j in _producers(search, s)]
        listed = "; ".join(f"{_short(s)}{_origin(search, s)}" for s in others)
        if fits:
            text = (
                f"{_cap(_describe(op))} returned {_short(op.result)}, a state it could "
                f"see only in orders that leave other ops impossible to place"
            )
            text += f" (otherwise it would see {listed})." if listed else "."
        else:
            text = (
                f"{_cap(_describe(op))} returned {_short(op.result)}, but at every point "
                f"where it could take effect the {noun} held {'only ' if len(seen) == 1 else ''}"
                f"{listed}{' among others' if len(seen) > _SEEN_MAX else ''}."
            )
        hint, more = _hint(search, op, stuck.state, failed)
        return text + hint, related + more
    if model == "append":
        read = search.reads[(~stuck.rmask & (stuck.rmask + 1)).bit_length() - 1]
        after = stuck.state + (op.value,)
        hint, more = _hint(search, ops[read], after, failed, subject=i)
        return (
            f"{_cap(_describe(op))} would make the list {_short(after)}, which "
            f"{_describe(ops[read])}, still to be placed, cannot see: it returned "
            f"{_short(ops[read].result)}.{hint}",
            [read, *more],
        )
    return (
        f"{_cap(_describe(op))} returned {_short(op.result)}, but the counter would "
        f"then be {_short(stuck.state + op.value)}.",
        [],
    )


def _hint(search: _KeySearch, read: Op, state: Any, failed: list[Op], subject: int = -1) -> tuple[str, list[int]]:
    """A model-specific pointer at the likely fault in a read's result (``subject``: the op
    the sentence is already about, if any)."""
    ops, result = search.ops, read.result
    mutations = [j for j, o in enumerate(ops) if o.kind != "read"]
    if search.model == "register":
        writers = [j for j in mutations if ops[j].value == result]
        if writers:
            origin = " or ".join(f"client {ops[j].client} ({_interval(ops[j])})" for j in writers[:2])
            return f" {_cap(_short(result))} was written by {origin}.", writers[:2]
        if result == search.initial:
            return f" {_cap(_short(result))} is the initial value.", []
        lost = [o for o in failed if o.kind == "write" and o.value == result]
        if lost:
            return (f" Its only write of that value, {_describe(lost[0])}, was reported failed.", [])
        return f" No write of {_short(result)} to this key exists.", []
    if search.model == "counter" or not isinstance(state, tuple):
        return "", []
    appended: dict[Any, list[int]] = {}
    for j in mutations:
        appended.setdefault(ops[j].value, []).append(j)
    appended_failed = {o.value for o in failed}
    for x in result:
        if x not in appended:
            why = "was reported failed" if x in appended_failed else "was never appended to this key"
            return f" It holds {_short(x)}, which {why}.", []
        if result.count(x) > len(appended[x]):
            return (
                f" It holds {_short(x)} {result.count(x)} times, but it was appended "
                f"{len(appended[x])} time{'s' if len(appended[x]) != 1 else ''}.",
                appended[x][:2],
            )
    for x in state:
        if x not in result:
            acked = next(
                (j for j in appended[x] if (done := ops[j].completed) is not None and done < read.invoked), None
            )
            if acked is not None:
                what = "that append" if acked == subject else _describe(ops[acked])
                return (f" It lacks {_short(x)}, though {what} was acknowledged before the read was invoked.", [acked])
            return f" It lacks {_short(x)}.", appended[x][:1]
    for pos, (a, b) in enumerate(zip(result, state)):
        if a != b:
            return (
                f" It has {_short(a)} at position {pos} where the list had {_short(b)}.",
                appended.get(a, [])[:1] + appended.get(b, [])[:1],
            )
    return "", []


def _producers(search: _KeySearch, state: Any) -> list[int]:
    """The ops that could have left the object in ``state`` (for the witness)."""
    ops = search.ops
    if search.model == "register":
        return [j for j, o in enumerate(ops) if o.kind == "write" and o.value == state][:2]
    if search.model == "append" and state:
        return [j for j, o in enumerate(ops) if o.kind == "append" and o.value == state[-1]][:1]
    return []


def _origin(search: _KeySearch, state: Any) -> str:
    if search.model != "register":
        return ""
    writers = [search.ops[j] for j in _producers(search, state)]
    if writers:
        return " (" + " or ".join(f"written by client {w.client}, {_when(w)}" for w in writers) + ")"
    return " (the initial value)" if state == search.initial else ""


def _witness(search: _KeySearch, focus: int, involved: list[int]) -> tuple[Op, ...]:
    """The focus op, the ops involved in the explanation, and the ops overlapping the focus in
    real time; at most _WITNESS_MAX of them, nearest the focus first, printed in invocation order."""
    if focus < 0:
        return ()
    inv, comp = search.inv, search.comp
    overlapping = [j for j in range(len(search.ops)) if inv[j] <= comp[focus] and inv[focus] <= comp[j]]
    chosen = dict.fromkeys([focus, *involved, *overlapping])
    picked = sorted(chosen, key=lambda j: (j not in involved and j != focus, abs(inv[j] - inv[focus]), j))
    return tuple(search.ops[j] for j in sorted(picked[:_WITNESS_MAX]))


def _describe(op: Op) -> str:
    what = op.kind if op.kind == "read" else f"{op.kind} of {_short(op.value)}"
    return f"{what} by client {op.client} ({_interval(op)})"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _interval(op: Op) -> str:
    end = "outcome unknown" if op.completed is None else f"completed {op.completed:g}"
    return f"invoked {op.invoked:g}, {end}"


def _when(op: Op) -> str:
    return "outcome unknown" if op.completed is None else f"completed {op.completed:g}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
