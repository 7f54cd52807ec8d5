"""Read consistency of P2P calls: the options a caller gives (``wire.read_options`` carries them,
``replica.reads`` and ``node.stable_reads`` serve them).

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

from dataclasses import dataclass
from typing import Any, Protocol

from derecho_actors.model.kinds import P2P
from runtime.errors import NotPersistent, ReadOptionError

LOCAL, STABLE, LINEARIZABLE = "local", "stable", "linearizable"
LEVELS = (LOCAL, STABLE, LINEARIZABLE)
_INT64 = 1 << 63


class _Spec(Protocol):
    """What a read's check needs of the type (a ``TypeSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def persistent(self) -> bool: ...


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
    spec: _Spec, method: str, kind: str, consistency: Any, version: Any, time_ns: Any
) -> ReadOptions | None:
    """Check a call's options at the caller; None when they ask for nothing but a local read."""
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
