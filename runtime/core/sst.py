"""The shared state table (SST): one row per member, each member writes only its own row.

Derecho builds every protocol as monotonic predicates over this table. A member changes its
own row with local writes; the changed columns are *pushed* to its peers, who merge them into
their copy of that row. Reads are always local, so a copy may be stale; because the protocol
columns only grow, a stale copy can delay a decision but never make a wrong one.

Here the table is a pure data structure: :meth:`SST.drain_push` hands out what must be sent
(the changed columns since the last drain, coalesced into one :class:`RowDelta`), and
:meth:`SST.apply_remote_row` merges a peer's delta. No I/O happens in this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter, itemgetter
from typing import Callable, Iterable, Sequence

from runtime.core.sst_rows import RowDelta, Value

__all__ = ["SST", "Column", "PredicateKind", "RowDelta", "Schema", "SSTError", "Value"]

_INT_ONLY = frozenset({int})
_DELTA_FIELDS = attrgetter("rank", "seq", "values")


class SSTError(ValueError):
    """A delta that cannot be merged: wrong row, unknown column, bad shape or type."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the table.

    ``width == 0`` makes a scalar int column; ``width > 0`` a vector of that many ints (for
    example ``received_num``, one entry per sender). A monotonic column may only grow, both
    locally (a write that lowers it is a bug) and when merged (the larger value wins). A
    non-monotonic column (``monotonic=False``) holds an arbitrary msgpack-able value that is
    overwritten on merge; the row's push counter still keeps merges in order.

    A ``lazy`` column's writes do not make a push due by themselves: they ride along with
    the next push that something else makes due, or with one the owner asks for
    (``drain_push(lazy=True)``). For columns peers only report (counts for a status view),
    so that changing them does not cost every peer a frame and a wake-up.
    """

    name: str
    width: int = 0
    monotonic: bool = True
    default: Value = 0
    lazy: bool = False

    def initial(self) -> Value | list[int]:
        if self.width:
            return [0] * self.width
        return self.default


@dataclass(frozen=True, slots=True)
class Schema:
    """The ordered set of columns every row of a table has."""

    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate SST column names in {names}")

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def extended(self, extra: Iterable[Column]) -> Schema:
        return Schema(self.columns + tuple(extra))


class PredicateKind(Enum):
    ONE_TIME = "one_time"  # removed after its trigger first fires
    RECURRENT = "recurrent"  # fires every evaluation in which the predicate holds


@dataclass(slots=True)
class _Predicate:
    name: str
    test: Callable[["SST"], bool]
    trigger: Callable[["SST"], None]
    kind: PredicateKind


@dataclass(slots=True)
class SST:
    """A table of ``len(members)`` rows; this member owns row ``my_rank``.

    Rows are dicts from column name to value (vectors are lists, copied on push), which keeps
    reads in protocol code short and cheap.
    """

    schema: Schema
    n_rows: int
    my_rank: int
    rows: list[dict[str, Value | list[int]]] = field(init=False)
    # This member's row, ``rows[my_rank]`` (never replaced: writes and merges change rows in
    # place). A plain attribute, not a property: the protocol reads it ~25-35 times per
    # serial call at each node, and a property is a Python call each time.
    mine: dict[str, Value | list[int]] = field(init=False, repr=False, compare=False)
    _dirty: set[str] = field(init=False, default_factory=set)
    _urgent: bool = field(init=False, default=False)  # a non-lazy column is in _dirty
    _push_seq: int = field(init=False, default=0)
    _applied_seq: list[int] = field(init=False)
    _predicates: list[_Predicate] = field(init=False, default_factory=list)
    _active: tuple[_Predicate, ...] = field(init=False, default=())  # snapshot evaluate() walks
    # Bumped by every change of the table (a local write, a merged row, a new predicate):
    # the predicates run only when it moved, and readers cache what they derive from the
    # table against it (``ShardMulticast``'s null and window figures, read on every flush).
    version: int = field(init=False, default=0)
    _evaluated_version: int = field(init=False, default=-1)
    _columns: dict[str, Column] = field(init=False, default_factory=dict)
    max_rounds: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.my_rank < self.n_rows:
            raise ValueError(f"my_rank {self.my_rank} outside a table of {self.n_rows} rows")
        self.rows = [{c.name: c.initial() for c in self.schema.columns} for _ in range(self.n_rows)]
        self.mine = self.rows[self.my_rank]
        self._applied_seq = [0] * self.n_rows
        self._columns = {c.name: c for c in self.schema.columns}

    # ----------------------------------------------------------------- local writes
    def set(self, name: str, value: Value) -> None:
        """Write a scalar (or opaque) column of this member's row."""
        col = self._columns[name]
        row = self.mine
        if col.width:
            raise SSTError(f"column {name!r} is a vector; use set_item")
        if col.monotonic and value < row[name]:  # type: ignore[operator]
            raise SSTError(f"column {name!r} is monotonic: {row[name]!r} -> {value!r}")
        if row[name] != value:
            row[name] = value
            self._dirty.add(name)
            if not col.lazy:
                self._urgent = True
            self.version += 1

    def set_item(self, name: str, index: int, value: int, urgent: bool = True) -> None:
        """Write one entry of a vector column of this member's row.

        ``urgent=False``: this write alone does not make a push due (as if the column were
        lazy): the owner knows no peer waits for it now. It rides along with the next push,
        or with one the owner asks for (``drain_push(lazy=True)``)."""
        col = self._columns[name]
        vec = self.mine[name]
        if not col.width:
            raise SSTError(f"column {name!r} is a scalar; use set")
        if col.monotonic and value < vec[index]:  # type: ignore[index]
            raise SSTError(f"column {name!r}[{index}] is monotonic: {vec[index]} -> {value}")  # type: ignore[index]
        if vec[index] != value:  # type: ignore[index]
            vec[index] = value  # type: ignore[index]
            self._dirty.add(name)
            if urgent and not col.lazy:
                self._urgent = True
            self.version += 1

    def has_changes(self) -> bool:
        """A push is due: a column that is not lazy changed since the last drain."""
        return self._urgent

    def lazy_pending(self) -> bool:
        """Only lazy columns changed since the last drain (no push is due for them alone)."""
        return bool(self._dirty) and not self._urgent

    def drain_push(self, full: bool = False, lazy: bool = False) -> RowDelta | None:
        """Everything written since the last drain, as one delta (``None`` if nothing).

        Changes of lazy columns alone give ``None`` unless ``lazy=True``; any delta carries
        them. ``full=True`` sends the whole row, as needed when a peer (re)connects.
        """
        if not full and not self._urgent and not (lazy and self._dirty):
            return None
        names: Iterable[str] = self._columns if full else self._dirty
        row = self.rows[self.my_rank]
        values: dict[str, Value] = {}
        for name in names:
            v = row[name]
            values[name] = tuple(v) if isinstance(v, list) else v
        self._dirty = set()
        self._urgent = False
        self._push_seq += 1
        return RowDelta(self.my_rank, self._push_seq, values)

    # ---------------------------------------------------------------- remote merges
    def apply_remote_row(self, delta: RowDelta) -> bool:
        """Merge a peer's push into our copy of its row.

        Returns False for a stale or repeated delta (its push counter is not newer), which is
        dropped. Raises :class:`SSTError` if the delta is malformed; nothing is changed then.
        """
        # Read untyped: the fields hold what a peer sent until checked here (a compiled build
        # would otherwise check them against the annotations first, raising TypeError
        # instead of this module's SSTError).
        rank, seq, values = _DELTA_FIELDS(delta)
        if type(rank) is not int or not 0 <= rank < self.n_rows:
            raise SSTError(f"delta for row {rank!r} outside a table of {self.n_rows} rows")
        if rank == self.my_rank:
            raise SSTError("a peer may not write this member's own row")
        if type(seq) is not int:
            raise SSTError(f"delta push counter must be an int, got {seq!r:.40}")
        if not isinstance(values, dict):
            raise SSTError(f"delta values must be a mapping, got {type(values).__name__}")
        if seq <= self._applied_seq[rank]:
            return False
        for name, value in values.items():
            self._check(name, value)
        row = self.rows[rank]
        for name, value in values.items():
            col = self._columns[name]
            if col.width:
                cur = row[name]
                if col.monotonic:
                    row[name] = list(map(max, cur, value))  # type: ignore[arg-type]
                else:
                    row[name] = list(value)
            elif col.monotonic:
                if value > row[name]:
                    row[name] = value
            else:
                row[name] = value
        self._applied_seq[rank] = seq
        self.version += 1
        return True

    def _check(self, name: object, value: object) -> None:
        col = self._columns.get(name) if type(name) is str else None
        if col is None:
            raise SSTError(f"unknown SST column {name!r}")
        if col.width:
            if not isinstance(value, (tuple, list)) or len(value) != col.width:
                raise SSTError(f"column {name!r} needs {col.width} values, got {value!r:.80}")
            if not _INT_ONLY.issuperset(map(type, value)):
                raise SSTError(f"column {name!r} holds ints only")
        elif col.monotonic and type(value) is not int:
            raise SSTError(f"column {name!r} holds an int, got {type(value).__name__}")

    # ----------------------------------------------------------------- reads
    def column_min(self, name: str, rows: Sequence[int] | None = None) -> int:
        rs = self.rows if rows is None else [self.rows[r] for r in rows]
        return min(map(itemgetter(name), rs))

    def vector_min(self, name: str, rows: Sequence[int] | None = None) -> list[int]:
        """Entry-wise minimum of a vector column over the given rows (all rows by default)."""
        rs = self.rows if rows is None else [self.rows[r] for r in rows]
        vectors = list(map(itemgetter(name), rs))
        if len(vectors) <= 1:
            return list(vectors[0]) if vectors else []
        return list(map(min, *vectors))

    # ------------------------------------------------------------ predicates
    def register(
        self,
        name: str,
        test: Callable[["SST"], bool],
        trigger: Callable[["SST"], None],
        kind: PredicateKind = PredicateKind.RECURRENT,
    ) -> None:
        """Run ``trigger`` whenever ``test`` holds during an evaluation."""
        if any(p.name == name for p in self._predicates):
            raise ValueError(f"predicate {name!r} already registered")
        self._predicates.append(_Predicate(name, test, trigger, kind))
        self._active = tuple(self._predicates)
        self.version += 1  # the new predicate must see the table at the next evaluation

    def unregister(self, name: str) -> None:
        self._predicates = [p for p in self._predicates if p.name != name]
        self._active = tuple(self._predicates)

    def evaluate(self) -> int:
        """Evaluate predicates until the table stops changing; returns triggers fired.

        The owner calls this after each event it applied: the writes of one event are one
        atomic change, so predicates see each event's result whole. A trigger that writes
        makes the table change, so predicates run again, at most ``max_rounds`` times.
        """
        fired = 0
        for _ in range(self.max_rounds):
            if self.version == self._evaluated_version:
                break
            self._evaluated_version = self.version
            for pred in self._active:  # a snapshot: triggers may (un)register predicates
                if pred.test(self):
                    fired += 1
                    pred.trigger(self)
                    if pred.kind is PredicateKind.ONE_TIME:
                        self.unregister(pred.name)
        return fired
