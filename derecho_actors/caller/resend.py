"""``HeldCalls``: a client's calls held back on a new connection until its contact's
``Welcome`` says how many calls it takes in flight, then let go, oldest first, as room allows.

Why: after a failover every unanswered call goes again. Sent all at once with the Hello,
before the new contact says its limit (``limits.client_max_in_flight``), the calls past that
limit would be refused with ``ClientLimit`` whenever the new contact allows fewer than the old
one did. So a new connection sends its Hello alone; the calls waiting (and any made meanwhile,
behind them: a session's calls keep their order) go once the Welcome comes, at most the
session's ``window`` on the connection, the rest as answers free room. A connection lost
meanwhile leaves them all waiting, as every unanswered call does, for the next one.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from derecho_actors.caller.calls import Outbound

__all__ = ["HeldCalls"]


class HeldCalls:
    """Calls not yet sent on the current connection, in call order. A call answered while
    held (a view notice can resolve one) is forgotten: ``take`` skips it."""

    __slots__ = ("_calls", "_ids")

    def __init__(self, calls: Iterable[Outbound] = ()) -> None:
        self._calls: deque[Outbound] = deque(calls)
        self._ids: set[int] = {call[0] for call in self._calls}

    def __len__(self) -> int:
        return len(self._ids)

    def hold(self, call: Outbound) -> None:
        """Hold ``call`` (made after every call held so far) behind them."""
        self._calls.append(call)
        self._ids.add(call[0])

    def forget(self, call_ids: Iterable[int]) -> None:
        """These calls are answered: they need not go."""
        self._ids.difference_update(call_ids)
        if not self._ids:
            self._calls.clear()

    def take(self, n: int) -> list[Outbound]:
        """Up to ``n`` of the oldest calls held, in order, no longer held."""
        calls, ids = self._calls, self._ids
        out: list[Outbound] = []
        while calls and len(out) < n:
            call = calls.popleft()
            if call[0] in ids:
                ids.discard(call[0])
                out.append(call)
        if not ids:
            calls.clear()
        return out

    def take_last(self) -> Outbound:
        """The call held last, no longer held (a streaming session holds it itself, behind a
        stream)."""
        call = self._calls.pop()
        self._ids.discard(call[0])
        return call
