"""Delivered ordered calls that are answered instead of run: the calls of a shard that lost its
state or waits for its log (``hosting``), and those of a multicast message that fails to decode.

:func:`refusals` is the one rule of who answers such a call: every replica answers a write
(as it would its result), and only the replica a linearizable read names answers the read.

A message that fails to decode (a member of another release, or a bug) is not dropped in
silence: :class:`UndecodableBatches` logs a WARNING naming its sender (at most one a minute per
sender, counting the others), and its calls whose callers could be read from it are failed at
those callers with ``WireError`` and the reason, rather than left to time out. When none can
be read, the WARNING says so. Runs on the node's loop.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from derecho_actors.wire.codec import IdentifiedCall, UndecodableBatch
from derecho_actors.wire.messages import Reply, ReplyTo
from runtime.core.layout import ShardId
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.errors import DerechoError, WireError

log = logging.getLogger("derecho.hosting")

WARN_EVERY = 60.0
"""Seconds between two WARNINGs about one sender's undecodable messages (the others counted)."""


def refusals(
    me: int, vid: int, replicas: tuple[int, ...], calls: Iterable[IdentifiedCall], why: DerechoError
) -> list[tuple[int, Reply]]:
    """Node ``me``'s answers to delivered ``calls`` it refuses with ``why``: a write is answered
    by each of ``replicas``, a linearizable read (session < 0) by the one replica it names."""
    out = []
    for call in calls:
        write = call.session_ns >= 0
        if write or call.floor == me:
            to = ReplyTo(call.caller, call.call_id, vid, call.origin)
            out.append((call.caller, to.refused(me, why, replicas if write else (me,))))
    return out


class UndecodableBatches:
    def __init__(self, node_id: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self._log = RateLimitedLog(log, interval=WARN_EVERY, burst=1, clock=clock)

    def refusals(
        self, shard: ShardId, vid: int, replicas: tuple[int, ...], sender: int, batch: UndecodableBatch
    ) -> list[tuple[int, Reply]]:
        """A message ``sender`` multicast in ``shard`` that failed to decode: logged, and the
        answers that fail its calls that could be identified."""
        why = WireError(
            f"the multicast message carrying this call (from node {sender}, in view {vid}) could not be decoded at "
            f"node {self.node_id}: {batch.reason}; the call was not run there (members of different releases?)"
        )
        out = refusals(self.node_id, vid, replicas, batch.calls, why)
        self._warn(shard, vid, sender, batch, len(out))
        return out

    def _warn(self, shard: ShardId, vid: int, sender: int, batch: UndecodableBatch, answered: int) -> None:
        if batch.calls:
            fate = (
                f"its {len(batch.calls)} calls that could be identified are failed at their callers with WireError "
                f"({answered} answered by this replica)"
            )
        else:
            fate = "none of its calls could be identified, so their callers are not told (they time out)"
        self._log.warning(
            ("undecodable multicast", str(sender)),
            "node %s multicast a message in shard %s (view %d) that node %s cannot decode (%s): %s",
            sender,
            shard,
            vid,
            self.node_id,
            batch.reason,
            fate,
        )
