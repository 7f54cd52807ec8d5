"""Digests of large payloads, computed off the node's loop, in each shard's submit order.

A payload above the large-object threshold goes as an object whose descriptor carries a
blake2b digest of all of it (receivers check it before delivery). That digest is the one pass
a sender makes over the whole object: ~0.1-0.2 s per 40 MB on the bench machine, so a GiB
digested on the node's event loop would stall heartbeats past ``timeouts.suspicion_ms``.

So the driver digests each large payload on a worker thread (``hashlib`` releases the GIL on
buffers of more than 2 KiB, so the loop keeps turning while it hashes) and hands the core a
:class:`~runtime.core.rdmc_descriptor.Digested` in the payload's place; the core stays pure
and deterministic (the simulator digests inline). Ordering: the app queue
(:mod:`runtime.drivers.app_queue`) keeps a :class:`Pending` in the payload's place and offers
the core only what lies before the first payload still being digested, so a small message
submitted after a large object never overtakes it. One worker thread: digests finish in the
order they were asked for, and two cores are not both taken by hashing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from runtime.core.layout import ShardId
from runtime.core.rdmc_descriptor import Digested

__all__ = ["ObjectDigests", "Pending"]

log = logging.getLogger("derecho.objects")


class Pending:
    """A large payload in the app queue whose digest is being computed (``done`` is None
    until then). The worker thread sets ``done``; the loop reads it (one reference store:
    atomic under the GIL)."""

    __slots__ = ("data", "done")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.done: Digested | None = None

    def __len__(self) -> int:
        return len(self.data)


class ObjectDigests:
    """Digests payloads above ``above`` bytes on one worker thread.

    ``post(fn, *args)`` runs ``fn`` on the node's loop (thread-safe; False once the node has
    stopped); ``landed(shard)`` is called there when a digest of ``shard`` is done, so the
    queue offers the core what it was holding back."""

    def __init__(self, above: int, post: Callable[..., bool], landed: Callable[[ShardId], Any]) -> None:
        self.above = above
        self._post = post
        self._landed = landed
        self._pool: ThreadPoolExecutor | None = None
        # The transport's ``prepare(size)``, if it has one (shared memory: a segment reserved for
        # the object): run on the worker after the digest; what it returns runs on the loop
        # before the object can start.
        self.prepare: Callable[[int], Callable[[], None] | None] | None = None
        self.digested = 0  # payloads digested (status, tests)
        self.seconds = 0.0  # worker time spent digesting

    def wants(self, payloads: Any) -> bool:
        """Whether any of ``payloads`` is large (one C-level pass over their lengths)."""
        return bool(payloads) and max(map(len, payloads)) > self.above

    def wrap(self, shard: ShardId, payloads: Any) -> list[Any]:
        """``payloads`` with each large one replaced by a :class:`Pending` whose digest is
        under way (the others as they are)."""
        out: list[Any] = []
        for p in payloads:
            if len(p) > self.above and type(p) in (bytes, bytearray):  # (others: the core digests)
                pending = Pending(p)
                self._submit(shard, pending)
                out.append(pending)
            else:
                out.append(p)
        return out

    def _submit(self, shard: ShardId, pending: Pending) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="object-digest")
        self._pool.submit(self._digest, shard, pending)

    def _digest(self, shard: ShardId, pending: Pending) -> None:
        """On the worker thread: one pass over the payload, then tell the loop."""
        t = time.perf_counter()
        try:
            done = Digested.of(pending.data)
        except Exception:  # a bug: say it loudly, the queue would wait on this payload forever
            log.exception("digesting a payload of %d bytes failed", len(pending.data))
            return
        self.seconds += time.perf_counter() - t
        self.digested += 1
        prepare = self.prepare
        if prepare is not None:
            try:
                ready = prepare(len(pending.data))
            except Exception:  # the object then goes without it: say so, and go on
                log.exception("preparing for a payload of %d bytes failed", len(pending.data))
                ready = None
            if ready is not None:
                self._post(ready)  # before ``landed``: posts run in order
        pending.done = done  # last: the queue may offer the object to the core from now on
        self._post(self._landed, shard)

    def close(self) -> None:
        """Stop the worker (digests under way finish; their results are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
