"""Where the actor layer's messages go once they arrive through the node.

Every message is decoded and checked first (``_messages``); one from a member that claims to
come from another member cuts that member off; the rest go to the part of the group they are
for: calls and replies to the router, signed marks and state digests to the persistence
tracker, state transfer messages to the transfer service. A client may only send calls.
"""

from __future__ import annotations

import logging
from typing import Any

from derecho_actors._client_table import describe
from derecho_actors._frontiers import PersistenceTracker
from derecho_actors._messages import (
    Call,
    CallBatch,
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
from derecho_actors._routing import CallRouter
from derecho_actors._transfer import TransferService
from runtime.errors import WireError
from runtime.node_api import NodeHandle

log = logging.getLogger("derecho.group")


class MessageDispatch:
    def __init__(
        self, node: NodeHandle, router: CallRouter, tracker: PersistenceTracker, transfer: TransferService
    ) -> None:
        self.node = node
        self._by_type: dict[type, Any] = {
            ReplyBatch: lambda sender, msg: router.take_batch(msg),
            Call: router.on_member_call,
            Reply: lambda sender, msg: router.take_reply(msg),
            SignedMark: tracker.on_mark,
            StateDigest: tracker.on_digest,
            StateRequest: transfer.on_request,
            StateChunk: transfer.on_chunk,
            StateAck: transfer.on_ack,
        }
        self.router = router

    def from_member(self, sender: int, data: bytes) -> None:
        try:
            msg = decode(data)
        except WireError as exc:
            log.warning("dropped a bad message from node %s: %s", sender, exc)
            return
        claimed = claimed_sender(msg)
        if claimed is not None and claimed != sender:
            self.node.cut_off(sender, f"it sent a {type(msg).__name__} in the name of node {claimed}")
            return
        handler = self._by_type.get(type(msg))
        if handler is None:
            log.warning("node %s sent a %s, which members do not send; ignored", sender, type(msg).__name__)
            return
        handler(sender, msg)

    def from_client(self, conn: Any, data: bytes) -> None:
        """Only calls (the contact derives the caller's session itself); of one frame, calls
        beyond ``limits.client_max_in_flight`` are refused undecoded."""
        try:
            msg = decode_from_client(data, self.router.clients.max_in_flight)
        except WireError as exc:
            log.warning("closing the connection of %s: it sent a bad message: %s", describe(conn)[0], exc)
            conn.close()
            return
        if type(msg) is Call:
            self.router.on_client_calls(conn, (msg,))
        elif type(msg) is CallBatch:
            self.router.on_client_calls(conn, msg.calls)
        elif type(msg) is OverfullBatch:
            self.router.on_client_calls(conn, msg.calls)
            self.router.refuse_overflow(conn, msg.overflow)
        else:
            log.warning(
                "closing the connection of %s: it sent a %s, which clients may not send",
                describe(conn)[0],
                type(msg).__name__,
            )
            conn.close()
