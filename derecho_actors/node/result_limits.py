"""How large one call's result may be, by where its answer goes, and the typed error that
takes the place of one too large.

A replica's answer to a member (the caller, or the contact of a client) travels in one frame,
which the receiver drops with the whole connection when it is over ``multicast.max_frame_bytes``
(the stream can no longer be trusted): the group lost its links and stopped. A contact's answer
to a client is cut off with the client when it passes ``limits.client_max_backlog_bytes`` of
unread replies: the client reconnected and retried the call for ever. So a result that cannot
be carried is replaced, before it is sent, by a ``ResultTooLarge`` the caller gets at once. The
check depends only on the result's bytes and the group's config, so every replica (and every
answer of a call at the contact) replaces it alike: their answers stay equal, and the call,
applied once, is not run again.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable, Final, Sequence

from derecho_actors.exceptions import ResultTooLarge
from derecho_actors.node.answer_queue import PIECE_BYTES
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Reply, ReplyBatch, ReplyEntry
from runtime.config import LimitsSection, MulticastSection, NodeConfig

__all__ = ["ANSWER_ROOM", "CLIENT_ROOM", "ResultLimits"]

log = logging.getLogger(__name__)

ANSWER_ROOM: Final = 4 << 10
"""Room in a frame for everything of an answer but its value (tag, ids, the replicas, the
entry's framing): an answer alone in a frame (``answer_queue.pieces`` puts any answer over a
piece alone) is at most this much larger than its value."""

CLIENT_ROOM: Final = PIECE_BYTES + ANSWER_ROOM
"""What a client may still have unread when a large answer is written to it: the piece before
it (answers go in pieces of ``PIECE_BYTES``), and the answer's own framing."""

_value: Callable[[ReplyEntry], bytes] = itemgetter(2)  # an answer's value in a ReplyEntry


@dataclass(frozen=True, slots=True)
class ResultLimits:
    """``member``: the largest value of an answer to a member (one frame); ``client``: the
    largest value of an answer a contact forwards to a client (its unread backlog)."""

    member: int = MulticastSection().max_frame_bytes - ANSWER_ROOM
    client: int = LimitsSection().client_max_backlog_bytes - CLIENT_ROOM
    member_key: str = "multicast.max_frame_bytes"
    client_key: str = "limits.client_max_backlog_bytes"

    @classmethod
    def of(cls, config: NodeConfig) -> ResultLimits:
        backlog = config.limits.client_max_backlog_bytes
        return cls(
            max(1, config.multicast.max_frame_bytes - ANSWER_ROOM),
            max(backlog // 2, backlog - CLIENT_ROOM),
        )

    def error(self, call_id: int, size: int, limit: int, key: str, to: str) -> bytes:
        """The encoded ``ResultTooLarge`` of call ``call_id`` whose encoded result is ``size``
        bytes: the same bytes at every replica for the same result."""
        return _codec.encode_refusal(
            ResultTooLarge(
                f"the result of call {call_id} is {size} bytes encoded, over the {limit} bytes an answer to "
                f"{to} may carry ({key}); the call was applied (its effects stay), only its result is "
                f"replaced by this error, so do not retry it: return a smaller value (a part, or a "
                f"reference such as a path), use a large object or a stream, or raise {key}"
            )
        )


class ResultCheck:
    """Replaces the too large results of a replica's answers (:meth:`replies`, on the
    replica's thread) and of answers a contact forwards to its clients (:meth:`for_clients`,
    on the node's loop), logging each call once at this node."""

    def __init__(self, limits: ResultLimits | None = None) -> None:
        self.limits = limits if limits is not None else ResultLimits()
        # Calls whose answer to a client was replaced: each of their replicas' answers is, and
        # only the first is logged (bounded: only recent calls can still be answered).
        self._told: deque[tuple[int, int]] = deque(maxlen=256)

    def replies(self, replies: Sequence[tuple[int, Reply | ReplyBatch]]) -> Sequence[tuple[int, Reply | ReplyBatch]]:
        """``replies`` with every value over the member limit replaced by its error (the list
        itself when none is: a sum over the values' lengths, in C, tells)."""
        limit = self.limits.member
        total = 0
        for _, r in replies:
            total += len(r.value) if isinstance(r, Reply) else sum(map(len, map(_value, r.entries)))
        if total <= limit:
            return replies
        out: list[tuple[int, Reply | ReplyBatch]] = []
        for caller, r in replies:
            if isinstance(r, Reply):
                if len(r.value) > limit:
                    error = self._too_large(r.call_id, len(r.value))
                    r = Reply(r.call_id, r.node, r.vid, r.replicas, False, error, r.origin, r.version)
            elif any(len(e[2]) > limit for e in r.entries):
                r = ReplyBatch(r.node, r.vid, r.replicas, tuple(self._fit_entry(e) for e in r.entries))
            out.append((caller, r))
        return out

    def _fit_entry(self, entry: ReplyEntry) -> ReplyEntry:
        call_id, _, value, origin, version = entry
        if len(value) <= self.limits.member:
            return entry
        return (call_id, False, self._too_large(call_id, len(value)), origin, version)

    def _too_large(self, call_id: int, size: int) -> bytes:
        limits = self.limits
        log.warning(
            "the result of call %d is %d bytes, over the %d an answer between members may carry (%s): "
            "its caller gets ResultTooLarge",
            call_id,
            size,
            limits.member,
            limits.member_key,
        )
        return limits.error(call_id, size, limits.member, limits.member_key, "a member")

    def for_clients(self, entries: list[ReplyEntry]) -> list[ReplyEntry]:
        """Answers for clients with every value over the client limit replaced by its error."""
        limit = self.limits.client
        if sum(map(len, map(_value, entries))) <= limit:
            return entries
        return [e if len(e[2]) <= limit else self._client_error(e) for e in entries]

    def _client_error(self, entry: ReplyEntry) -> ReplyEntry:
        call_id, _, value, origin, version = entry
        limits = self.limits
        if (origin, call_id) not in self._told:
            self._told.append((origin, call_id))
            log.warning(
                "the result of client call %d is %d bytes, over the %d an answer to a client may carry (%s): "
                "the client gets ResultTooLarge",
                call_id,
                len(value),
                limits.client,
                limits.client_key,
            )
        error = limits.error(call_id, len(value), limits.client, limits.client_key, "a client")
        return (call_id, False, error, origin, version)
