"""``QueryResults``: the replies to one call, one per replica, arriving as they come; here what
a caller reads of them.

What ``get`` reports follows virtual synchrony: an ordered call delivered in a view is applied
at every replica of that view that survives it, so once any replica answered, the call took
effect; replicas that left before answering are named in ``lost`` and do not make ``get``
fail. ``get`` raises only when no replica can answer, saying whether the call may have been
applied (Jepsen's rule: an unknown outcome is never reported as a failure).

Every replica runs an ordered call, so their answers must agree: ``get`` compares them (one
bytes comparison per reply; the decoded values only when bytes differ, ``caller.divergence``)
and raises ``DivergenceError`` (or, with ``on_divergence="warn"``, logs it) when they do not.

The caller implementation (a client's ``ClientSession``, a member's caller) feeds the answers
in through the producer's side, ``results_feed.ResultsFeed``, which ``QueryResults`` extends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator

from derecho_actors.caller.divergence import answers_or_raise, call_timeout, check_divergence
from derecho_actors.caller.persisted import wait_persisted
from derecho_actors.caller.results_feed import ResultsFeed
from runtime.errors import NotPersistent, ReplicaLost

log = logging.getLogger("derecho.results")


class QueryResults(ResultsFeed):
    """Replies of one call. ``get`` returns ``{node id: value}`` (raising the first remote
    error), ``wait_all`` waits without raising, iteration yields ``(node, value or error)``
    as replies arrive, ``await results`` works in asyncio, and ``done()`` says whether every
    replica answered (or the call failed), without waiting."""

    __slots__ = ()  # ``ResultsFeed``'s

    # ------------------------------------------------------------------- users
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

    @property
    def pending(self) -> tuple[int, ...]:
        with self._lock:
            if self._expected is None:
                return ()
            return tuple(sorted(self._expected - self._answered_nodes()))

    def wait_all(self, timeout: float | None = None) -> dict[int, Any]:
        """Wait for every replica; returns ``{node: value or exception}`` without raising
        remote errors. Raises ``CallTimeout`` naming the nodes still pending."""
        finished = self._finished or self._wait_for(lambda: self._finished, timeout)
        if not finished:
            pending = self.pending if self._expected is not None else None
            raise call_timeout(self.description, timeout, pending, self._why_waiting) from None
        with self._lock:
            out = self._values_copy()
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
        if self._finished and not self._differ:
            with self._lock:
                if not self._errors:  # the common case: every replica answered alike
                    return self._values_copy() if self._anodes else self._values.copy()
        out = self.wait_all(timeout)
        if self._differ:
            warning = check_divergence(self.description, out, self._compare)
            if warning is not None and not self._warned:  # on_divergence="warn": said once
                self._warned = True
                log.warning("%s", warning)
        return answers_or_raise(self.description, self.ordered, self._order, out, self._gone)

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
            versions = self._version_of()
            return max(versions.values()) if versions else None

    def persisted(self, timeout: float | None = None) -> int:
        """Wait until this call's version is on disk at every replica of its shard; returns
        the version. Raises ``NotPersistent`` for a type in atomic delivery mode and
        ``CallTimeout`` if it takes longer than ``timeout`` seconds."""
        if self._persist_query is None:
            raise NotPersistent(
                f"{self.description}: only ordered calls of persistent types are persisted; give the class "
                "Persistent fields or @replicated(delivery='persistent')"
            )
        return wait_persisted(self, self._persist_query, timeout)

    def versioned(self, timeout: float | None) -> tuple[list[int], int | None]:
        """Wait until a replica reported this call's version (or every answer came): the
        replicas that reported one, in the order they answered, and the version (None: none
        reported within ``timeout``)."""
        self._wait_for(lambda: bool(self._versions or self._vnodes) or self._finished, timeout)
        with self._lock:
            versions = self._version_of()
            # In the order they answered (a resent call may have forgotten the order, not the versions).
            holders = [n for n in self._order if n in versions]
            holders += [n for n in versions if n not in holders]
            return holders, max(versions.values()) if versions else None

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        seen = 0
        while True:
            with self._lock:
                while seen >= len(self._order) and not self._finished:
                    self._condition().wait(0.1)
                batch = self._order[seen:]
                agreed, anodes = self._agreed, self._anodes
                values = {n: agreed if n in anodes else self._values.get(n, self._errors.get(n)) for n in batch}
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
        return f"<QueryResults {self.description}: {len(self._anodes) + len(self._values)} replies, pending {list(self.pending)}>"
