"""``QueryResults``: the replies to one call, one per replica, arriving as they come.

Which replicas answer is only known once the call is delivered (a view change may move it to
the next view, with other members), so the first reply tells the expected set. A replica that
leaves the view before answering resolves as ``ReplicaLost`` instead of hanging the caller.

What ``get`` reports follows virtual synchrony: an ordered call delivered in a view is applied
at every replica of that view that survives it, so once any replica answered, the call took
effect; replicas that left before answering are named in ``lost`` and do not make ``get``
fail. ``get`` raises only when no replica can answer, saying whether the call may have been
applied (Jepsen's rule: an unknown outcome is never reported as a failure).

Every replica runs an ordered call, so their answers must agree: ``get`` compares them and
raises ``DivergenceError`` (or, for a type with ``on_divergence="warn"``, logs it) when they
do not. The comparison costs one bytes comparison per reply (the encoded values, which come
from one deterministic serializer); only when bytes differ are the decoded values compared
(``_digest.canonical``: a dict's key order or a set's iteration order is no divergence).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Mapping

from runtime.errors import DivergenceError, NotPersistent, RemoteError, ReplicaLost, TimeoutError

log = logging.getLogger("derecho.results")

PERSISTED_QUERY = "__persisted__"
"""The internal P2P method a replica answers once a version is on disk at every replica."""


class QueryResults:
    """Replies of one call. ``get`` returns ``{node id: value}`` (raising the first remote
    error), ``wait_all`` waits without raising, iteration yields ``(node, value or error)``
    as replies arrive, and ``await results`` works in asyncio."""

    def __init__(self, description: str, decode: Callable[[bytes], Any]) -> None:
        self.description = description
        self._decode = decode
        # A plain lock guards the state; a Condition on it is made only if someone has to wait
        # (most calls are answered before anyone looks: no Condition, no notify).
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._expected: set[int] | None = None
        self._values: dict[int, Any] = {}
        self._errors: dict[int, BaseException] = {}
        self._order: list[int] = []
        self._gone: dict[int, str] = {}  # nodes known to have left, and why
        self._finished = False
        self._future: Future[None] | None = None  # made only if someone awaits
        self._versions: dict[int, int] = {}  # node -> version of the call there (persistent types)
        # Set by the caller for ordered calls of persistent types: (version, replica) -> query.
        self._persist_query: Callable[[int, int], QueryResults] | None = None
        # Set by the caller: why the call may be waiting (a shard that cannot run, ...), for
        # the message of a TimeoutError; None when nothing is known to hold it up.
        self._why_waiting: Callable[[], str | None] | None = None
        self.ordered = True  # P2P calls change nothing: losing their replica means "not applied"
        # Set by the caller for ordered calls: "raise" or "warn" when replicas' answers differ.
        self._compare: str | None = None
        self._first: tuple[bool, bytes] | None = None  # the first answer, as encoded
        self._differ = False  # some answer's bytes differ from the first's (decoded values may still agree)
        self._warned = False

    # ------------------------------------------------------------ fed by the group
    def _expect(self, replicas: tuple[int, ...]) -> None:
        with self._lock:
            if self._expected is None:
                self._expected = set(replicas)
                for node, why in self._gone.items():
                    if node in self._expected and node not in self._values and node not in self._errors:
                        self._errors[node] = ReplicaLost(f"node {node} {why} before answering {self.description}")
                        self._order.append(node)
                self._maybe_done()

    def _reply(self, node: int, ok: bool, value: Any) -> None:
        with self._lock:
            if node in self._values or node in self._errors:
                return
            if ok:
                self._values[node] = value
            else:
                self._errors[node] = value
            self._order.append(node)
            self._maybe_done()

    def _take(self, node: int, replicas: tuple[int, ...], ok: bool, value: bytes, version: int = -1) -> None:
        """One replica's encoded answer, as it came off the wire (the hot path: one lock)."""
        result: Any
        wire_ok = ok
        if ok:
            try:
                result = self._decode(value)
            except Exception as exc:  # a result this side cannot decode is that replica's error
                ok, result = False, exc
        else:
            from derecho_actors._codec import decode_error

            result = decode_error(value, node)
        with self._lock:
            if version >= 0:
                self._versions[node] = version
            if self._expected is None:
                self._expected = set(replicas)
                for gone, why in self._gone.items():
                    if gone in self._expected and gone not in self._values and gone not in self._errors:
                        self._errors[gone] = ReplicaLost(f"node {gone} {why} before answering {self.description}")
                        self._order.append(gone)
            if node in self._values or node in self._errors:
                return
            if ok:
                self._values[node] = result
            else:
                self._errors[node] = result
            if self._compare is not None:
                first = self._first
                if first is None:
                    self._first = (wire_ok, value)
                elif first[1] != value or first[0] != wire_ok:
                    self._differ = True
            self._order.append(node)
            self._maybe_done()

    def _lost(self, nodes: set[int], why: str) -> None:
        """These nodes left before answering (called on view changes)."""
        with self._lock:
            for node in nodes:
                self._gone.setdefault(node, why)
                if (
                    self._expected is not None
                    and node in self._expected
                    and node not in self._values
                    and node not in self._errors
                ):
                    self._errors[node] = ReplicaLost(f"node {node} {why} before answering {self.description}")
                    self._order.append(node)
            self._maybe_done()

    def _restart(self) -> None:
        """The call is being sent again (a client's failover): forget partial replies, whose
        replica set may not be the one that answers the retry."""
        with self._lock:
            if not self._finished:
                self._expected = None  # nodes known gone stay gone: a late reply may name them
                self._values.clear()
                self._errors.clear()
                self._order.clear()
                self._first, self._differ = None, False

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            if self._expected is None:
                self._expected = set()
                self._errors[-1] = exc
            for node in self._expected - set(self._values) - set(self._errors):
                self._errors[node] = exc
                self._order.append(node)
            self._maybe_done()

    def _maybe_done(self) -> None:
        """Under ``_lock``: wake waiters; mark done once every expected replica answered."""
        if self._cond is not None:
            self._cond.notify_all()
        if (
            not self._finished
            and self._expected is not None
            and len(self._values) + len(self._errors) >= len(self._expected)
        ):
            if self._expected <= self._values.keys() | self._errors.keys():
                self._finished = True
                if self._future is not None and not self._future.done():
                    self._future.set_result(None)

    def _condition(self) -> threading.Condition:
        """Under ``_lock``: the condition waiters sleep on."""
        if self._cond is None:
            self._cond = threading.Condition(self._lock)
        return self._cond

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._lock:
            if predicate():
                return True
            return self._condition().wait_for(predicate, timeout)

    # ------------------------------------------------------------------- users
    @property
    def pending(self) -> tuple[int, ...]:
        with self._lock:
            if self._expected is None:
                return ()
            return tuple(sorted(self._expected - set(self._values) - set(self._errors)))

    def done(self) -> bool:
        return self._finished

    def wait_all(self, timeout: float | None = None) -> dict[int, Any]:
        """Wait for every replica; returns ``{node: value or exception}`` without raising
        remote errors. Raises ``TimeoutError`` naming the nodes still pending."""
        finished = self._wait_for(lambda: self._finished, timeout)
        if not finished:
            why = None
            if self._why_waiting is not None:
                try:
                    why = self._why_waiting()
                except Exception:  # a hint must never hide the timeout itself
                    why = None
            raise TimeoutError(
                f"{self.description}: no reply within {timeout} s from "
                f"{list(self.pending) if self._expected is not None else 'any replica (not delivered yet)'}"
                + (f"; {why}" if why else ""),
                self.pending,
            ) from None
        with self._lock:
            out: dict[int, Any] = dict(self._values)
            out.update({n: e for n, e in self._errors.items() if n >= 0})
            if -1 in self._errors:
                raise self._errors[-1]
            return out

    def get(self, timeout: float | None = None) -> dict[int, Any]:
        """``{node id: return value}`` of every replica that answered; raises the first
        remote error. Replicas that left before answering are left out and named in
        :attr:`lost`: the survivors' answers stand, since the call was applied at each of
        them. Raises ``ReplicaLost`` only if no replica answered at all; its ``applied``
        says what is known of the call's effect (False: it changed nothing, None: unknown,
        it may have been applied).

        Raises ``DivergenceError`` if the replicas' answers to an ordered call differ (unless
        the type has ``on_divergence="warn"``: then it logs that once and goes on)."""
        out = self.wait_all(timeout)
        if self._differ:
            self._check_divergence(out)
        lost: list[ReplicaLost] = []
        for node in self._order:
            value = out.get(node)
            if isinstance(value, ReplicaLost):
                if node not in self._gone:  # a replica's own answer (it holds no replica, ...)
                    raise value
                lost.append(value)
            elif isinstance(value, BaseException):
                raise value
        if lost and len(lost) == len(out):
            nodes = sorted(n for n, v in out.items() if isinstance(v, ReplicaLost))
            if self.ordered:
                raise ReplicaLost(
                    f"{self.description}: every replica that was to answer ({nodes}) left first; the call may or "
                    "may not have been applied: read the state to find out before calling again",
                    applied=None,
                ) from lost[0]
            raise ReplicaLost(
                f"{self.description}: replica {nodes[0]} left before answering; a P2P call changes nothing, so it is "
                "safe to call again",
                applied=False,
            ) from lost[0]
        return {n: v for n, v in out.items() if not isinstance(v, ReplicaLost)}

    def _check_divergence(self, out: dict[int, Any]) -> None:
        """Group the answers by value (errors by type; lost replicas left out); more than one
        group is divergence."""
        from derecho_actors._digest import canonical

        groups: dict[bytes, list[int]] = {}
        shown: dict[bytes, Any] = {}
        for node in sorted(out):
            value = out[node]
            if isinstance(value, ReplicaLost):
                continue
            if isinstance(value, BaseException):
                key = b"E" + _error_name(value).encode()
            else:
                try:
                    key = b"V" + canonical(value)
                except Exception:  # an object that cannot be taken apart: by its repr
                    key = b"R" + repr(value).encode()
            groups.setdefault(key, []).append(node)
            shown.setdefault(key, value)
        if len(groups) < 2:
            return
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1]))
        parts = []
        for key, nodes in ranked:
            who = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {', '.join(map(str, nodes))}"
            value = shown[key]
            did = (
                f"raised {_error_name(value)}: {_short(_error_text(value))}"
                if isinstance(value, BaseException)
                else f"returned {_short(repr(value))}"
            )
            parts.append(f"{who} {did}")
        message = (
            f"{self.description}: the replicas answered differently: {'; '.join(parts)}. An ordered call runs at "
            "every replica and must give the same result everywhere, so either the method is not deterministic (it "
            "reads a clock, random numbers, the process id, threads or I/O: pass such values in as arguments) or the "
            "replicas' states already differ (restart the replicas in the minority: they get the state again by "
            "transfer). The call was applied at every replica that answered. @replicated(on_divergence='warn') only "
            "logs this."
        )
        if self._compare == "raise":
            raise DivergenceError(message, tuple((tuple(nodes), shown[key]) for key, nodes in ranked))
        if not self._warned:
            self._warned = True
            log.warning("%s", message)

    @property
    def lost(self) -> dict[int, ReplicaLost]:
        """Replicas that left the group before answering (their error says when)."""
        with self._lock:
            return {n: e for n, e in self._errors.items() if n in self._gone and isinstance(e, ReplicaLost)}

    @property
    def version(self) -> int | None:
        """The version this ordered call created in a persistent shard (None until a replica
        answered, or for atomic types). ``da.format_version`` shows it as ``vid.index``."""
        with self._lock:
            return max(self._versions.values()) if self._versions else None

    def persisted(self, timeout: float | None = None) -> int:
        """Wait until this call's version is on disk at every replica of its shard; returns
        the version. Raises ``NotPersistent`` for a type in atomic delivery mode and
        ``TimeoutError`` if it takes longer than ``timeout`` seconds."""
        if self._persist_query is None:
            raise NotPersistent(
                f"{self.description}: only ordered calls of persistent types are persisted; give the class "
                "Persistent fields or @replicated(delivery='persistent')"
            )
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        ok = self._wait_for(lambda: bool(self._versions) or self._finished, left())
        with self._lock:
            # Replicas that answered with a version, in the order they answered (a resent call
            # may have forgotten the order, not the versions).
            candidates = [n for n in self._order if n in self._versions]
            candidates += [n for n in self._versions if n not in candidates]
            version = max(self._versions.values()) if self._versions else None
        if not ok or version is None:
            if self._finished:
                self.get(0)  # raises the call's own error
                raise ReplicaLost(f"{self.description}: no replica reported a version")
            raise TimeoutError(f"{self.description}: not delivered within {timeout} s", self.pending)
        last_error: BaseException | None = None
        for replica in candidates:
            query = self._persist_query(version, replica)
            try:
                query.get(left())
                return version
            except TimeoutError:
                raise TimeoutError(
                    f"{self.description}: version {version} not on disk at every replica within {timeout} s", ()
                ) from None
            except (ReplicaLost, RemoteError) as exc:  # that replica left: ask another
                last_error = exc
        raise ReplicaLost(
            f"{self.description}: every replica that answered left before confirming persistence ({last_error})"
        )

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        seen = 0
        while True:
            with self._lock:
                while seen >= len(self._order) and not self._finished:
                    self._condition().wait(0.1)
                batch = self._order[seen:]
                values = {n: self._values.get(n, self._errors.get(n)) for n in batch}
                finished = self._finished
            for node in batch:
                yield node, values[node]
            seen += len(batch)
            if finished and seen >= len(self._order):
                return

    async def persisted_async(self, timeout: float | None = None) -> int:
        """:meth:`persisted` for asyncio code: the wait runs on a worker thread, so the event
        loop goes on meanwhile."""
        return await asyncio.to_thread(self.persisted, timeout)

    def __await__(self) -> Any:
        """``await results``: every replica's answer, as :meth:`get` gives it (the loop goes
        on while they come)."""
        return self._await().__await__()

    async def _await(self) -> dict[int, Any]:
        with self._lock:
            if self._future is None:
                self._future = Future()
                if self._finished:
                    self._future.set_result(None)
            fut = self._future
        await asyncio.wrap_future(fut)
        return self.get(0)

    def __repr__(self) -> str:
        return f"<QueryResults {self.description}: {len(self._values)} replies, pending {list(self.pending)}>"


def _error_name(exc: BaseException) -> str:
    return exc.remote_type if isinstance(exc, RemoteError) else type(exc).__name__


def _error_text(exc: BaseException) -> str:
    return exc.remote_message if isinstance(exc, RemoteError) else str(exc)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


ReplyEntry = tuple[int, bool, bytes, int, int]
"""``(call_id, ok, value, origin, version)``: one answer of a ``ReplyBatch``."""


def take_entries(
    pending: Mapping[int, tuple[QueryResults, Any]], node: int, replicas: tuple[int, ...], entries: Iterable[ReplyEntry]
) -> list[int]:
    """Feed one replica's answers to the results they belong to (``pending`` maps a call id to
    a tuple whose first item is its results); returns the call ids now complete."""
    finished = []
    for call_id, ok, value, _origin, version in entries:
        found = pending.get(call_id)
        if found is None:
            continue
        results = found[0]
        results._take(node, replicas, ok, value, version)
        if results.done():
            finished.append(call_id)
    return finished
