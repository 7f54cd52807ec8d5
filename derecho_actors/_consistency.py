"""Read consistency of P2P calls: the options a caller gives, how they travel with the call,
and what the replica and its node do for each level.

A P2P call reads one replica. Its keyword options (``kv.get(k, consistency="stable")``) say
what the answer may reflect:

- ``"local"`` (default): the chosen replica's current state. It may lag the others by the
  calls it has not applied yet, or lead some of them.
- ``"stable"``: only calls every replica of the shard has delivered. The engine reports how
  far every member has delivered (``AppHooks.on_stable``); a replica cannot undo a call, so it
  answers once that frontier covers everything it has applied, holding further ordered calls
  until then (a lazy push, ~20 ms). :class:`StableReads` (node side) and :class:`StableGate`
  (replica side) do this.
- ``"linearizable"``: the read goes through the total order (the chosen replica multicasts it
  like an ordered call) and runs at its place in it, at that replica only; every other replica
  skips it. So it sees every call that completed before it started, whichever replica answers.
- ``at_version=V`` / ``at_time=T_ns`` (persistent types): the method runs against the
  persistent fields as of that version (:class:`PastView`); only versions on disk at every
  replica can be read, so every replica gives the same answer.

Options travel in front of the call's encoded arguments, marked by the byte 0xC1, which
neither msgpack nor pickle ever starts with: a call without options carries and costs nothing.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from derecho_actors._persistent import STORE_ATTR, at_time, at_version
from runtime.errors import NotPersistent, ReadOptionError, WireError

if TYPE_CHECKING:
    from derecho_actors._decorators import TypeSpec

LOCAL, STABLE, LINEARIZABLE = "local", "stable", "linearizable"
LEVELS = (LOCAL, STABLE, LINEARIZABLE)
_CODE = {LOCAL: 0, STABLE: 1, LINEARIZABLE: 2}
_LEVEL = {code: level for level, code in _CODE.items()}

OPTIONS_MARK = 0xC1
"""First byte of a call's arguments that carry read options (never the first byte of msgpack
or pickle data)."""

READ_IN_ORDER = -1
"""The ``session_ns`` of a linearizable read multicast in the order (never a real session's,
which is a time): replicas skip it, except the one its ``floor`` names, which runs it."""

_INT64 = 1 << 63


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """A P2P call's read options (see the module's docstring)."""

    level: str = LOCAL
    at_version: int | None = None
    at_time: int | None = None

    @property
    def past(self) -> bool:
        return self.at_version is not None or self.at_time is not None


def read_options(
    spec: TypeSpec, method: str, kind: str, consistency: Any, version: Any, time_ns: Any
) -> ReadOptions | None:
    """Check a call's options at the caller; None when they ask for nothing but a local read."""
    from derecho_actors._decorators import P2P

    what = f"{spec.name}.{method}"
    if kind != P2P:
        raise ReadOptionError(
            f"{what} is @ordered: it runs in the total order at every replica; consistency=, "
            "at_version= and at_time= apply to @p2p methods"
        )
    level = LOCAL if consistency is None else consistency
    if level not in LEVELS:
        raise ReadOptionError(f"{what}: consistency={consistency!r}; choose one of {', '.join(map(repr, LEVELS))}")
    if version is None and time_ns is None:
        return None if level == LOCAL else ReadOptions(level)
    if not spec.persistent:
        raise NotPersistent(
            f"{what}: at_version= and at_time= read the past of persistent types only; give "
            f"{spec.name} Persistent fields or @replicated(delivery='persistent')"
        )
    if version is not None and time_ns is not None:
        raise ReadOptionError(f"{what}: give at_version= or at_time=, not both")
    if level != LOCAL:
        raise ReadOptionError(
            f"{what}: a read of the past is the same at every replica (only versions on disk at "
            f"every replica are read), so consistency={level!r} does not apply; leave it out"
        )
    if version is not None and not (type(version) is int and 0 <= version < _INT64):
        raise ReadOptionError(
            f"{what}: at_version must be a version (an int >= 0, as QueryResults.version or "
            f"da.current_version give), got {version!r}"
        )
    if time_ns is not None and not (type(time_ns) is int and -_INT64 <= time_ns < _INT64):
        raise ReadOptionError(
            f"{what}: at_time must be a wall-clock time in ns (an int, as time.time_ns() gives), got {time_ns!r}"
        )
    return ReadOptions(LOCAL, version, time_ns)


def encode_read(read: ReadOptions, args: bytes) -> bytes:
    """``args`` with ``read`` in front of them."""
    body = msgpack.packb([_CODE[read.level], read.at_version, read.at_time])
    return bytes((OPTIONS_MARK, len(body))) + body + args


def split_read(args: bytes) -> tuple[ReadOptions | None, bytes]:
    """The read options in front of a call's arguments (None if it has none) and the
    arguments themselves; ``WireError`` for options :func:`encode_read` could not have made."""
    if not args or args[0] != OPTIONS_MARK:
        return None, args
    try:
        n = args[1]
        code, version, time_ns = msgpack.unpackb(args[2 : 2 + n], raw=False)
    except Exception as exc:
        raise WireError(f"malformed read options: {type(exc).__name__}") from None
    level = _LEVEL.get(code) if type(code) is int else None
    if (
        level is None
        or not (version is None or (type(version) is int and version >= 0))
        or not (time_ns is None or type(time_ns) is int)
        or (version is not None and time_ns is not None)
        or (level != LOCAL and (version is not None or time_ns is not None))
    ):
        raise WireError(f"malformed read options {[code, version, time_ns]!r:.80}")
    return ReadOptions(level, version, time_ns), args[2 + n :]


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


class StableReads:
    """One shard's stable reads, on the node's loop: the latest mark the engine reported, and
    whether reads wait at the replica (only then are marks passed on to it, so a shard without
    stable reads pays one dict update per mark). Thread-safe :meth:`finished` is called by
    the replica as reads stop waiting."""

    SYNC_AFTER = 0.05
    """Seconds after which a read still waiting sends an empty multicast: it moves every
    member's delivered count (and so the mark) past what the replica applied, even when no
    other call comes (an idle shard, or a new view without traffic yet)."""
    GIVE_UP_TICKS = 200
    """Sync periods (10 s) after which a waiting read fails instead of holding the replica."""

    def __init__(self) -> None:
        self.mark: Mark = (-1, 0)
        self._lock = threading.Lock()
        self.waiting = 0
        self.seq = 0
        self.ticks = 0
        self.issued: collections.deque[tuple[int, int]] = collections.deque()  # (seq, tick) of reads sent
        self.timer = False

    def moved(self, vid: int, index: int) -> bool:
        """Note a mark; True if it is new."""
        if (vid, index) > self.mark:
            self.mark = (vid, index)
            return True
        return False

    def issue(self) -> int:
        """A read goes to the replica: its number."""
        with self._lock:
            self.waiting += 1
        self.seq += 1
        self.issued.append((self.seq, self.ticks))
        return self.seq

    def finished(self, n: int = 1) -> None:
        with self._lock:
            self.waiting -= n

    def tick(self) -> int:
        """One sync period passed: the highest read number that has waited too long (0: none)."""
        self.ticks += 1
        issued = self.issued
        if not self.waiting:
            issued.clear()
            return 0
        expire = 0
        while issued and self.ticks - issued[0][1] >= self.GIVE_UP_TICKS:
            expire = issued.popleft()[0]
        return expire


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
