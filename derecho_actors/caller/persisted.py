"""``QueryResults.persisted``: wait until an ordered call's version is on disk at every replica
of its shard, by asking the replicas that reported the version, one after another until one
confirms (a replica that leaves meanwhile is replaced by the next). Runs on the caller's
thread; it only reads the results through their public side."""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from runtime.errors import CallTimeout, RemoteError, ReplicaLost


class Answered(Protocol):
    """What of a call's ``QueryResults`` this module reads (they import it: no circle)."""

    @property
    def description(self) -> str: ...

    @property
    def pending(self) -> tuple[int, ...]: ...

    def done(self) -> bool: ...

    def get(self, timeout: float | None = None) -> dict[int, Any]: ...

    def versioned(self, timeout: float | None) -> tuple[list[int], int | None]: ...


def wait_persisted(results: Answered, query: Callable[[int, int], Answered], timeout: float | None) -> int:
    """The call's version once on disk at every replica; ``query(version, replica)`` asks one
    replica. ``CallTimeout`` past ``timeout`` seconds; ``ReplicaLost`` if no replica that
    answered can confirm; the call's own error if it failed."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    holders, version = results.versioned(left())
    if version is None:
        if results.done():
            results.get(0)  # raises the call's own error
            raise ReplicaLost(f"{results.description}: no replica reported a version")
        raise CallTimeout(f"{results.description}: not delivered within {timeout} s", results.pending)
    last_error: BaseException | None = None
    for replica in holders:
        try:
            query(version, replica).get(left())
            return version
        except CallTimeout:
            raise CallTimeout(
                f"{results.description}: version {version} not on disk at every replica within {timeout} s", ()
            ) from None
        except (ReplicaLost, RemoteError) as exc:  # that replica left: ask another
            last_error = exc
    raise ReplicaLost(
        f"{results.description}: every replica that answered left before confirming persistence ({last_error})"
    )
