"""Reads at the replica: a method run against the past (:class:`PastView`, ``at_version`` /
``at_time``) and the gate that holds stable reads until every member has delivered what the
replica applied (:class:`StableGate`; ``node.stable_reads`` is the node's side)."""

from __future__ import annotations

import collections
from typing import Any

from derecho_actors.model.fields import STORE_ATTR, at_time, at_version
from derecho_actors.model.reads import ReadOptions


# ---------------------------------------------------------------------------- the past
class PastView:
    """What ``self`` is in a method run ``at_version``/``at_time``: the persistent fields as
    of that version (read-only, as ``da.at_version`` gives them), the class's methods and
    constants; anything else (non-persistent attributes have no history) is an error."""

    __slots__ = ("_obj", "_snapshot", "_seen")

    def __init__(self, obj: Any, read: ReadOptions) -> None:
        snapshot = at_version(obj, read.at_version) if read.at_version is not None else at_time(obj, read.at_time)  # type: ignore[arg-type]
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_snapshot", snapshot)
        object.__setattr__(self, "_seen", {})

    @property
    def version(self) -> int:
        """The version this view shows (-1: before the first one)."""
        return self._snapshot.version

    def __getattr__(self, name: str) -> Any:
        obj = self._obj
        store = getattr(obj, STORE_ATTR)
        if name in store.fields:
            seen = self._seen
            if name not in seen:  # one record read per field and call
                seen[name] = getattr(self._snapshot, name)
            return seen[name]
        if name == STORE_ATTR:
            return store  # so da.at_version(self, v) works in the method too
        cls = type(obj)
        attr = getattr(cls, name, _MISSING)
        if attr is _MISSING:
            raise AttributeError(
                f"{cls.__name__}.{name} is not a Persistent field: a call with at_version=/at_time= sees only the "
                "persistent fields as of that version (other attributes have no history)"
            )
        get = getattr(type(attr), "__get__", None)
        return get(attr, self, cls) if get is not None else attr

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a call with at_version=/at_time= reads the past: it cannot set {name!r}")

    def __repr__(self) -> str:
        return f"<{type(self._obj).__name__} as of {self._snapshot!r}>"


_MISSING = object()


# ------------------------------------------------------------------------- stable reads
Mark = tuple[int, int]
"""``(vid, n)``: every member has delivered view ``vid``'s messages of global index below n."""


class StableGate:
    """At one replica: how far its state goes (``applied``: the view and delivered count of
    the last batch it applied), the latest mark, the stable reads waiting for the mark to
    cover ``applied``, and the ordered messages held behind them (so ``applied`` stays put)."""

    def __init__(self) -> None:
        self.applied: Mark = (-1, 0)
        self.mark: Mark = (-1, 0)
        self.waiting: list[Any] = []  # P2PRequests
        self.held: collections.deque[Any] = collections.deque()

    def note(self, mark: Mark) -> None:
        if mark > self.mark:
            self.mark = mark

    def covered(self) -> bool:
        """Every member has delivered everything this replica applied."""
        va, fa = self.applied
        vs, s = self.mark
        return vs > va or (vs == va and s >= fa)

    def take_due(self, expire_upto: int = 0) -> tuple[list[Any], list[Any]]:
        """``(reads to answer now, reads that waited too long)``."""
        if not self.waiting:
            return [], []
        if self.covered():
            due, self.waiting = self.waiting, []
            return due, []
        if expire_upto <= 0:
            return [], []
        late = [r for r in self.waiting if r.seq <= expire_upto]
        self.waiting = [r for r in self.waiting if r.seq > expire_upto]
        return [], late
