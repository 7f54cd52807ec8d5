"""What a replica hands its node (``ReplicaEnv.send_replies``), one answer at a time, for tests
that look at answers by call: the ordered path hands a ``ReplyBatch`` per caller, everything
else one ``Reply`` per answer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from derecho_actors.wire.messages import Reply, ReplyBatch


def one_by_one(handed: Iterable[tuple[int, Reply | ReplyBatch]]) -> Iterator[tuple[int, Reply]]:
    """``(caller, reply)`` for every answer in ``handed``, in order."""
    for caller, item in handed:
        if isinstance(item, ReplyBatch):
            for call_id, ok, value, origin, version in item.entries:
                yield caller, Reply(call_id, item.node, item.vid, item.replicas, ok, value, origin, version)
        else:
            yield caller, item
