"""Where the actor layer's messages go once they arrive through the node.

Every message is decoded and checked first (``wire.messages``); one from a member that claims
to come from another member cuts that member off; the rest go to the part of the group they are
for: members' calls to the inbound calls, replies to the reply routes, clients' calls to their
turns (then the client proxy), signed marks and state digests to the persistence tracker,
state transfer messages to the transfer service. A client may only send calls.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from derecho_actors.node.call_paths import CallPaths
from derecho_actors.node.client_table import describe
from derecho_actors.node.frontiers import PersistenceTracker
from derecho_actors.node.transfer import TransferService
from derecho_actors.wire.messages import (
    Call,
    CallBatch,
    Features,
    OverfullBatch,
    Reply,
    ReplyBatch,
    SignedMark,
    StateAck,
    StateChunk,
    StateDigest,
    StateRequest,
    claimed_sender,
    decode,
    decode_from_client,
)
from derecho_actors.wire.streams import STREAM_MARK
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.errors import WireError
from runtime.node_api import ClientConn, NodeHandle

log = logging.getLogger("derecho.group")
STREAM_BYTE = bytes((STREAM_MARK,))


class MessageDispatch:
    def __init__(
        self, node: NodeHandle, calls: CallPaths, tracker: PersistenceTracker, transfer: TransferService
    ) -> None:
        self.node = node
        # What a member sends that we drop can come as fast as it writes: a few lines per
        # node and kind per interval, never one per message (that filled a disk at 16 MB/s).
        self._warnings = RateLimitedLog(log)
        replies = calls.replies
        self._by_type: dict[type, Callable[[int, Any], None]] = {
            ReplyBatch: lambda sender, msg: replies.take_batch(msg),
            Call: calls.inbound.on_member_call,
            Reply: lambda sender, msg: replies.take_reply(msg),
            SignedMark: tracker.on_mark,
            StateDigest: tracker.on_digest,
            StateRequest: transfer.on_request,
            StateChunk: transfer.on_chunk,
            StateAck: transfer.on_ack,
        }
        self.calls = calls

    def from_member(self, sender: int, data: bytes) -> None:
        if data[:1] == STREAM_BYTE:  # a client's streamed call relayed by its contact (stream_relay)
            relayed = self.calls.clients.streams.relayed_in
            if relayed is not None:
                relayed.on_data(sender, data)
            return
        try:
            msg = decode(data)
        except WireError as exc:
            self._warnings.warning(("bad message", str(sender)), "dropped a bad message from node %s: %s", sender, exc)
            return
        claimed = claimed_sender(msg)
        if claimed is not None and claimed != sender:
            self.node.cut_off(sender, f"it sent a {type(msg).__name__} in the name of node {claimed}")
            return
        handler = self._by_type.get(type(msg))
        if handler is None:
            kind = type(msg).__name__
            self._warnings.warning(
                (kind, str(sender)), "node %s sent a %s, which members do not send; ignored", sender, kind
            )
            return
        handler(sender, msg)

    def from_client(self, conn: ClientConn, data: bytes) -> None:
        """Only calls (the contact derives the caller's session itself); of one frame, calls
        beyond ``limits.client_max_in_flight`` are refused undecoded."""
        turns = self.calls.turns
        if data[:1] == STREAM_BYTE:  # a call too large for a frame, streamed in (client_streams)
            self.calls.clients.streams.on_data(conn, data)
            return
        try:
            msg = decode_from_client(data, self.calls.clients.table.max_in_flight)
        except WireError as exc:
            log.warning("closing the connection of %s: it sent a bad message: %s", describe(conn)[0], exc)
            conn.close()
            return
        if type(msg) is Call:
            turns.on_calls(conn, (msg,))
        elif type(msg) is CallBatch:
            turns.on_calls(conn, msg.calls)
        elif type(msg) is OverfullBatch:
            turns.on_calls(conn, msg.calls)
            self.calls.clients.refuse_overflow(conn, msg.overflow)
        elif type(msg) is Features:
            self.calls.clients.accept_features(conn, msg)
        else:
            log.warning(
                "closing the connection of %s: it sent a %s, which clients may not send",
                describe(conn)[0],
                type(msg).__name__,
            )
            conn.close()
