"""``AnswerReader``: how a ``ClientSession`` reads what its contact sends on a connection
besides control frames: answers (merged, or each replica's), offers of features, view
notices. Apart from the session, which keeps its connections and calls; a mixin, so reading an
answer costs no more than it did as the session's own method."""

from __future__ import annotations

import logging
from typing import Any

from derecho_actors.caller.answers import Answer, Departed, MergedAnswers, ReplicaAnswers
from derecho_actors.caller.results import QueryResults
from derecho_actors.wire.messages import AnswerBatch, Features, Reply, ReplyBatch, ViewNotice, decode, encode
from derecho_actors.wire.replies import client_answers
from runtime.errors import WireError
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage

__all__ = ["AnswerReader"]

log = logging.getLogger("derecho.client")


class AnswerReader:
    """The part of ``ClientSession`` that turns the contact's messages into ``answers``."""

    pending: dict[int, QueryResults]  # calls waiting for answers
    _answers: list[Answer]  # what ``answers`` hands out next
    _control: list[bytes]  # frames of our own to send
    _unavailable: str  # why the group's shards cannot run, as the contact last said

    def _on_message(self, data: bytes) -> None:
        try:
            rows = client_answers(data)  # most of what comes, read apart: no tuple per answer
            msg = decode(data) if rows is None else None
        except WireError as exc:
            log.warning("dropped a bad message from the contact: %s", exc)
            return
        t = type(msg)
        if t is AnswerBatch:  # not read apart (an encoder other than the contact's own)
            rows = (msg.vid, msg.replicas, msg.entries)  # type: ignore[union-attr]
        if rows is not None:
            pending, entries = self.pending, rows[2]
            self._answers.append(MergedAnswers(rows[1], rows[0], entries, [pending.get(e[0]) for e in entries]))
        elif t is ReplyBatch:
            batch: ReplyBatch = msg  # type: ignore[assignment]
            self._match(batch.node, batch.replicas, batch.vid, batch.entries)
        elif t is Features:
            if msg.merged_answers:  # type: ignore[union-attr]
                self._control.append(frame(AppMessage(encode(Features(merged_answers=True)))))
        elif t is Reply:
            r: Reply = msg  # type: ignore[assignment]
            self._match(r.node, r.replicas, r.vid, ((r.call_id, r.ok, r.value, r.origin, r.version),))
        elif t is ViewNotice:
            notice: ViewNotice = msg  # type: ignore[assignment]
            self._unavailable = notice.unavailable
            if notice.departed:  # replicas among them will not answer
                why, calls = f"left the group in view {notice.vid}", list(self.pending.items())
                self._answers.append(Departed(set(notice.departed), why, notice.vid, calls))

    def _match(self, node: int, replicas: tuple[int, ...], vid: int, entries: Any) -> None:
        """One replica's answers (a refusal is one too: an error in its call's place), matched
        to the calls waiting for them; answers to calls not waiting (answered already) go."""
        pending = self.pending
        matched = [(e[0], pending[e[0]], e[1], e[2], e[4]) for e in entries if e[0] in pending]
        if matched:
            self._answers.append(ReplicaAnswers(node, replicas, vid, matched))
