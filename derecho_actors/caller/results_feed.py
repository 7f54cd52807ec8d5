"""The producer's side of ``QueryResults``: how the caller implementation (a client's
``ClientSession``, a member's caller) feeds one call's answers in, from any thread, as they
come: ``expect`` (the replicas that will answer), ``add_reply`` (one replica's answer),
``add_agreed`` (the same answer from several, merged by a client's contact), ``mark_left``,
``sending_again`` (a failover), ``fail``. Users never need these; what they read of the
answers (``get``, ``wait_all``, iteration, ``await``, ``persisted``) is ``results``.

Which replicas answer is known once the call is delivered (a view change may move it to the
next view), so the first answer tells the expected set; one that leaves first resolves as
``ReplicaLost``. Answers to an ordered call are compared, as encoded, with the first (one bytes
comparison each): the users' side compares decoded values only when bytes differ.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from types import MappingProxyType
from typing import AbstractSet, Any, Callable, Iterable, Sequence, cast

from derecho_actors.caller.batch_decode import SKIP, SLOW, decode_batch
from derecho_actors.caller.divergence import outcome_unknown
from derecho_actors.caller.persisted import Answered
from derecho_actors.caller.sharing import SHAREABLE, replica_set
from derecho_actors.wire.codec import decode_error
from runtime.errors import ReplicaLost

NONE: dict[Any, Any] = cast("dict[Any, Any]", MappingProxyType({}))
"""The empty table every call's answers, errors, versions and departed nodes start from, shared
and read-only: a call's own dict is made only when something goes in (every dict per call of
thousands in flight feeds the collector, which walks them all: four per call made two-thirds of
a client's collections). A call answered alike by all keeps its value as one object (``_agreed``
for each of ``_anodes``) and its version as one int (``_version_of``): no dict until an answer
differs or a reader asks (a persistent put's dict of answers or versions: 20-30x the collections);
in a batch, a run of calls answered with the very same value shares one read-only table."""


class ResultsFeed:
    """One call's answers as they come in (``QueryResults`` is what users read of them)."""

    # Slots: thousands may be in flight at once, one per call (``QueryResults`` adds none).
    __slots__ = tuple(
        "_what _call_id _call_word _decode _lock _cond _expected _values _errors _order _gone _finished"
        " _future _versions _version _vnodes _agreed _anodes _persist_query _why_waiting ordered _compare _first _differ _warned _on_wire".split()
    )

    def __init__(
        self,
        description: str,
        decode: Callable[[bytes], Any],
        ordered: bool = True,
        compare: str | None = None,
        why_waiting: Callable[[], str | None] | None = None,
        persist_query: Callable[[int, int], Answered] | None = None,
        call_id: int | None = None,
        call_word: str = "call",
        lock: threading.Lock | None = None,
    ) -> None:
        """Made by the caller implementation: ``decode`` turns one encoded answer into a value;
        ``ordered`` False for a P2P call (it changes nothing: losing its replica means "not
        applied"); ``compare``: "raise" or "warn" when an ordered call's answers differ (None:
        no comparison); ``why_waiting()``: what may hold the call up, for a CallTimeout's
        message; ``persist_query(version, replica)``: the query ``persisted`` sends;
        ``call_id``: the caller's number for it, named in messages after ``description`` as
        ``call_word`` (a client's "client call 12", a member's "call 12"); ``lock``: shared with
        the caller's other results (no method holds it calling another's): one object less per call.
        Positional or by name: a client makes one per call, and arguments by position bind faster."""
        self._what, self._call_id, self._call_word, self._decode = description, call_id, call_word, decode
        # A plain lock guards the state; a Condition on it is made only if someone has to wait
        # (most calls are answered before anyone looks: no Condition, no notify).
        self._lock = lock or threading.Lock()
        self._cond: threading.Condition | None = None
        self._expected: AbstractSet[int] | None = None
        # Each NONE (shared, read-only) until something goes in: then the call's own dict (for
        # values, not while every answer is the one value ``_agreed`` of the nodes ``_anodes``).
        self._values: dict[int, Any] = NONE
        self._agreed, self._anodes = cast("Any", None), cast("tuple[int, ...]", ())
        self._errors: dict[int, BaseException] = NONE
        self._order: tuple[int, ...] = ()  # who answered, in order (a tuple: nothing made per call)
        self._gone: dict[int, tuple[str, int | None]] = NONE  # nodes known to have left: why, and in which view
        self._finished, self._future = False, cast("Future[None] | None", None)  # a Future made only if someone awaits
        self._versions: dict[int, int] = NONE  # node -> version of the call there (persistent types)
        self._version, self._vnodes = -1, cast("tuple[int, ...]", ())  # or: each of _vnodes made _version
        self._persist_query, self._why_waiting = persist_query, why_waiting  # the producer's settings (see above)
        self.ordered, self._compare = ordered, compare
        # The first answer as encoded: its bytes if a value, ``(False, bytes)`` if an error (a
        # value's needs no tuple made: most calls' only answer is a value).
        self._first: bytes | tuple[bool, bytes] | None = None
        self._differ = self._warned = False  # _differ: some answer's bytes differ from the first's (values may agree)
        self._on_wire = False  # was in flight on a connection that ended (``maybe_delivered``)

    def done(self) -> bool:
        """Whether every answer the call waits for came (or stands failed)."""
        return self._finished

    @property
    def description(self) -> str:
        """The call, for messages: "KV.put (client call 12)" (made when a message needs it)."""
        return self._what if self._call_id is None else f"{self._what} ({self._call_word} {self._call_id})"

    def set_persist_query(self, query: Callable[[int, int], Answered]) -> None:
        """The query ``persisted`` sends (for a producer that can make it only once the call exists)."""
        self._persist_query = query

    # ------------------------------------------------------------ the producer's side
    def expect(self, replicas: tuple[int, ...]) -> None:
        """The replicas that will answer (known once the call is delivered; the first word counts)."""
        with self._lock:
            if self._expected is None:
                self._set_expected(replicas)
                self._maybe_done()

    def _set_expected(self, replicas: tuple[int, ...], vid: int | None = None) -> None:
        """Under ``_lock``: the replicas that answer the delivery in view ``vid``; those known
        to have left since will not. (A node that left in an earlier view and answers in this
        one is back, under the same id: a node restarted, the call sent again after a failover.)"""
        expected = self._expected = set(replicas)
        for node, (why, left_in) in self._gone.items():
            if node in expected and not self._answered(node):
                if vid is None or left_in is None or vid < left_in:
                    self._own_errors()[node] = ReplicaLost(f"node {node} {why} before answering {self.description}")
                    self._order += (node,)

    def add_reply(
        self, node: int, replicas: tuple[int, ...], ok: bool, value: bytes, version: int = -1, vid: int | None = None
    ) -> None:
        """One replica's encoded answer, as it came off the wire (the hot path: one lock):
        ``replicas`` are those that answer the call (delivered in view ``vid``, if known),
        ``version`` its version there (-1: none). An answer counts once per replica."""
        result: Any
        good = ok
        if ok:
            try:
                result = self._decode(value)
            except Exception as exc:  # a result this side cannot decode is that replica's error
                good, result = False, exc
        else:
            result = decode_error(value, node)
        self._record((node,), ((good, result),), replicas, ok, value, version, vid)

    def add_agreed(
        self,
        nodes: tuple[int, ...],
        replicas: tuple[int, ...],
        ok: bool,
        value: bytes,
        version: int = -1,
        vid: int | None = None,
    ) -> bool:
        """The same encoded answer from every replica in ``nodes`` (their contact compared the bytes
        and merged them): decoded once, not once per replica. True once the call has every answer."""
        results: list[tuple[bool, Any]]
        if ok:
            try:
                first = self._decode(value)
            except Exception as exc:  # a result this side cannot decode is each replica's error
                results = [(False, exc)] * len(nodes)
            else:
                if type(first) not in SHAREABLE:
                    results = [(True, first)] + [(True, self._decode(value)) for _ in nodes[1:]]
                elif nodes == replicas and self._all_answered(nodes, first, value, version):
                    return True
                else:
                    results = [(True, first)] * len(nodes)
        else:
            results = [(False, decode_error(value, node)) for node in nodes]
        return self._record(nodes, results, replicas, ok, value, version, vid)

    def _all_answered(self, nodes: tuple[int, ...], value: Any, raw: bytes, version: int) -> bool:
        """``add_agreed``'s common case, a client's every call: the first news of the call is one
        answer from every replica, recorded wholesale (~3x cheaper than node by node); False,
        recording nothing, if answers came before, a node is known gone, or one is named twice."""
        with self._lock:
            if self._expected is not None or self._order or self._gone:
                return False
            expected = replica_set(nodes)
            if len(expected) != len(nodes):
                return False
            self._agreed, self._anodes, self._expected, self._order = value, nodes, expected, nodes
            if version >= 0:
                self._set_versions(nodes, version)
            self._first = raw if self._compare is not None else None
            self._finished = True  # every replica answered: ``_maybe_done`` without its set arithmetic
            if self._cond is not None or self._future is not None:  # ``_wake``, called only if someone waits
                self._wake()
            return True

    @staticmethod
    def add_agreed_all(
        entries: Sequence[Sequence[Any]],
        feeds: Sequence[ResultsFeed | None],
        replicas: tuple[int, ...],
        vid: int | None = None,
    ) -> list[int]:
        """``add_agreed`` of a client contact's whole batch, the ids of the calls it completes:
        ``entries`` are ``[call id, ok, value, version, answered]`` (``answered`` empty: all of
        ``replicas``), each feeding the results beside it in ``feeds`` (None: not waiting).

        Why a batch: this is a client's work per call (hundreds of answers come per frame). Answers
        that are a call's first news from every replica, with an immutable value (the common case),
        are recorded under one hold of the lock their results share (a client's session makes all
        its results with one), each distinct encoded value decoded once (``put``'s ``None``, say,
        once per run of them); the others go through ``add_agreed`` one by one, as they would
        have. Values are decoded outside the lock."""
        done: list[int] = []
        slow: list[tuple[Sequence[Any], ResultsFeed]] = []
        decoded, lock = decode_batch(entries, feeds, replicas)  # outside the lock: SLOW, SKIP or a value
        if lock is not None:
            nodes, expected = replicas, replica_set(replicas)
            # A run of answers decoded to the very same object (``put``'s None) shares one read-only
            # table of it (one dict per run: a reader's copy of it is fast); a lone value stays lazy.
            run_value: Any = SKIP
            run_first: ResultsFeed | None = None
            shared = NONE
            with lock:
                for entry, results, value in zip(entries, feeds, decoded):
                    if value is SKIP:
                        continue
                    assert results is not None
                    if (
                        value is SLOW
                        or results._lock is not lock
                        or results._expected is not None
                        or results._order
                        or results._gone
                    ):
                        slow.append((entry, results))
                        continue
                    # ``_all_answered``, inlined: the value kept once for all (no dict: see NONE)
                    if value is not run_value:
                        run_value, run_first = value, results
                        results._agreed, results._anodes = value, nodes
                    else:
                        if run_first is not None:  # the run's second: its table, the first's too
                            shared = cast("dict[Any, Any]", MappingProxyType({node: value for node in nodes}))
                            run_first._values, run_first._agreed, run_first._anodes, run_first = shared, None, (), None
                        results._values = shared
                    results._expected, results._order = expected, nodes
                    if entry[3] >= 0:
                        results._set_versions(nodes, entry[3])
                    results._first = entry[2] if results._compare is not None else None
                    results._finished = True
                    if results._cond is not None or results._future is not None:
                        results._wake()
                    done.append(entry[0])
        else:
            slow = [(e, r) for e, r, v in zip(entries, feeds, decoded) if r is not None and v is not SKIP]
        for entry, results in slow:
            call_id, ok, raw, version, answered = entry
            if results.add_agreed(answered or replicas, replicas, ok, raw, version, vid):
                done.append(call_id)
        return done

    def _record(
        self,
        nodes: tuple[int, ...],
        results: Iterable[tuple[bool, Any]],
        replicas: tuple[int, ...],
        ok: bool,
        value: bytes,
        version: int,
        vid: int | None,
    ) -> bool:
        """Under one lock: each of ``nodes`` answered with its ``(good, value or error)`` of
        ``results``, decoded from ``(ok, value)`` as it came off the wire (compared with the
        first answer's bytes). An answer counts once per replica, even if it left since.
        True once the call has every answer it waits for."""
        with self._lock:
            for node, (good, result) in zip(nodes, results):
                if version >= 0:
                    self._set_versions((node,), version)
                if self._answered(node):
                    continue
                if good:
                    self._own_values()[node] = result
                else:
                    if self._on_wire and self.ordered and getattr(result, "applied", None) is False:
                        result = outcome_unknown(result)
                    self._own_errors()[node] = result
                if self._compare is not None:
                    held, answer = self._first, value if ok else (False, value)
                    if held is None:
                        self._first = answer
                    elif held != answer:  # bytes against bytes, or an error's tuple
                        self._differ = True
                self._order += (node,)
            if self._expected is None:
                self._set_expected(replicas, vid)
            self._maybe_done()
            return self._finished

    def mark_left(self, nodes: set[int], why: str, vid: int | None = None) -> None:
        """These nodes left the group (in view ``vid``, if known): those that did not answer
        never will, unless they come back (the same id in a later view)."""
        with self._lock:
            if self._gone is NONE:
                self._gone = {}
            for node in nodes:
                self._gone[node] = (why, vid)
                if node in (self._expected or ()) and not self._answered(node):
                    self._own_errors()[node] = ReplicaLost(f"node {node} {why} before answering {self.description}")
                    self._order += (node,)
            self._maybe_done()

    def maybe_delivered(self) -> None:
        """The call was in flight on a connection that ended: a copy may have been delivered
        (and applied) though no answer came. A refusal of the call sent again ("not run") is
        then about that copy only, and reported as an unknown outcome."""
        self._on_wire = True

    def sending_again(self) -> None:
        """The call is being sent again (a failover): forget partial replies, whose replica
        set may not be the one that answers the retry."""
        with self._lock:
            if not self._finished:
                self._expected = None  # nodes known gone stay gone: a late reply may name them
                self._values = self._errors = NONE
                self._agreed, self._anodes, self._order = None, (), ()
                self._first, self._differ = None, False

    def fail(self, exc: BaseException) -> None:
        """No (further) answer will come: ``exc`` stands for every replica still to answer
        (for the whole call if none is known yet)."""
        with self._lock:
            if self._expected is None:
                self._expected = set()
                self._own_errors()[-1] = exc
            for node in self._expected - self._answered_nodes():
                self._own_errors()[node] = exc
                self._order += (node,)
            self._maybe_done()

    # Under ``_lock``: the call's own table to write to (until then ``NONE``, a run's or the agreed value).
    def _own_values(self) -> dict[int, Any]:
        values = self._values
        if type(values) is not dict:
            values = self._values = self._values_copy()
            self._agreed, self._anodes = None, ()
        return values

    def _values_copy(self) -> dict[int, Any]:
        """Under ``_lock``: node -> value, a new dict (what a reader gets is its own to change)."""
        if not self._anodes:
            return self._values.copy()  # not dict(): see NONE
        values, agreed = {}, self._agreed  # a loop: ~2x faster than a comprehension (3.11)
        for node in self._anodes:
            values[node] = agreed
        return values

    def _answered(self, node: int) -> bool:  # under ``_lock``: whether ``node``'s answer (value or error) is in
        return node in self._anodes or node in self._values or node in self._errors

    def _answered_nodes(self) -> set[int]:  # under ``_lock``: the nodes whose answer is in (a new set)
        return {*self._anodes, *self._values, *self._errors}

    def _own_errors(self) -> dict[int, BaseException]:
        if self._errors is NONE:
            self._errors = {}
        return self._errors

    def _set_versions(self, nodes: tuple[int, ...], version: int) -> None:
        """Each of ``nodes`` made the call ``version``: the first news kept as the two (no dict
        per call: see ``NONE``), any later in a table (a call sent again keeps those before)."""
        if self._versions is NONE and not self._vnodes:
            self._version, self._vnodes = version, nodes
            return
        versions = self._versions = self._version_of()
        self._vnodes = ()
        for node in nodes:
            versions[node] = version

    def _version_of(self) -> dict[int, int]:
        """Node -> the version the call made there (a new table, or the call's own)."""
        if self._vnodes:
            return {node: self._version for node in self._vnodes}
        return {} if self._versions is NONE else self._versions

    def _maybe_done(self) -> None:
        """Under ``_lock``: mark done once every expected replica answered; wake waiters."""
        expected, answered = self._expected, len(self._anodes) + len(self._values) + len(self._errors)
        if not self._finished and expected is not None and answered >= len(expected):
            self._finished = expected <= self._answered_nodes()
        self._wake()

    def _wake(self) -> None:
        if self._cond is not None:
            self._cond.notify_all()
        if self._finished and self._future is not None and not self._future.done():
            self._future.set_result(None)
