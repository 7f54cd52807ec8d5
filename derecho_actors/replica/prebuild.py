"""A replica's persistent state rebuilt from its log before the replica exists (total restart).

At a restart the node reads and checks its logs first, to report their last versions to the
other nodes (``derecho_actors.node.disk_state``); its replicas are made only once a view is
installed, and each then rebuilt its object from its log (the checkpoint, then the records
after it). Every node of a total restart did that at the same moment, after the restart view
and before any replica could serve, while before the view a node that was back early had
nothing to do but wait for the others. :class:`Prebuild` does the rebuild in that wait, on a
thread of its own, from the log the node just opened; the replica takes the result when it
starts (``replica.state.open_store``) and only wires it to its group.

The result is what the replica would have built: the same steps (a fresh object, the store's
``restore_checkpoint`` then ``replay``) on the same log, which nothing else touches until the
replica takes it (the node holds the file's lock, and hands the log over once). Whatever the
group does to the log afterwards (a state transfer appending its tail or replacing it) the
replica applies as it would to a store it rebuilt itself. A rebuild that failed is not used:
the replica rebuilds from the log on its own thread, and meets the same error there if the
log is at fault. The object's constructor runs on the rebuild's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.fields import persistent_fields
from derecho_actors.replica.checkpoint import Restored
from derecho_actors.replica.sessions import table_for
from derecho_actors.replica.store import PersistentStore

log = logging.getLogger(__name__)


@dataclass
class Rebuilt:
    """A fresh object brought up to the end of its log, its store (not yet wired to a
    replica's group: ``replica.state`` does that), what the checkpoint restored (None: the
    log was replayed from its first record), how many records were replayed after it, and
    the seconds it took."""

    obj: Any
    store: PersistentStore
    restored: Restored | None
    replayed: int
    seconds: float


class Cancelled(Exception):
    """The rebuild was given up: nobody will take it (the node closes)."""


def rebuild(spec: TypeSpec, log_: Any, stop: threading.Event | None = None) -> Rebuilt:
    """Build ``spec``'s object from ``log_``: from its checkpoint if it has a valid one, then
    the records after it (all of them without one). ``stop``: give up between two batches
    of records once it is set (raises :class:`Cancelled`)."""
    obj = spec.cls()
    store = PersistentStore(
        obj, persistent_fields(spec.cls), spec.serializer, log_, lambda version: None, replayed=table_for(spec)
    )
    started = time.perf_counter()
    restored = store.restore_checkpoint()
    replayed = 0
    for calls in store.replay():
        replayed += len(calls)
        if stop is not None and stop.is_set():
            raise Cancelled(f"the rebuild of {spec.name} was given up")
    return Rebuilt(obj, store, restored, replayed, time.perf_counter() - started)


class Prebuild:
    """A log the node opened at start, and its object being rebuilt from it on a thread;
    handed to the shard's replica once (:meth:`take`), or closed if no replica takes it."""

    def __init__(self, spec: TypeSpec, log_: Any) -> None:
        self.spec = spec
        self.log = log_
        self.result: Rebuilt | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"derecho-prebuild-{spec.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = rebuild(self.spec, self.log, self._stop)
        except BaseException as exc:  # the replica rebuilds on its own and reports it there
            self.error = exc
            if not isinstance(exc, Cancelled):
                log.warning(
                    "rebuilding %s from its log ahead of the restart view failed (%s: %s); its "
                    "replica rebuilds it from the whole log instead",
                    self.spec.name,
                    type(exc).__name__,
                    exc,
                )

    def take(self) -> Rebuilt | None:
        """The rebuilt object once the rebuild has ended (None if it failed)."""
        self._thread.join()
        return self.result

    def close(self) -> None:
        """No replica took it: close the log once the rebuild no longer reads it (it stops
        at its next batch of records)."""
        self._stop.set()
        self._thread.join()
        self.log.close()
