"""Which frames a node takes from whom: none that names another sender than the connection's
proven speaker, and the leader's frames, before it is a member, only as ``LeaderWord`` says."""

from __future__ import annotations

import logging
from typing import Any

from runtime.core.messages import ViewAnnouncement
from runtime.drivers.leader_word import LeaderWord
from runtime.drivers.transport import Transport
from runtime.wire.claims import claimed_sender

log = logging.getLogger("derecho.node")


def forgery(sender: int, msg: Any) -> str | None:
    """Why ``msg`` cannot have come from ``sender``: it names another node as its sender (an
    honest node never does, so its connections are to be closed); None if it does not."""
    claimed = claimed_sender(msg)
    if claimed is None or claimed == sender:
        return None
    return f"it sent a {type(msg).__name__} in the name of node {claimed}"


def leader_frame_allowed(word: LeaderWord, transport: Transport, sender: int, msg: Any) -> bool:
    """Whether ``msg``, one of the frames only the leader (or the node asked) may send a
    node that is not a member yet, may be taken from ``sender``; if not, a rate-limited
    WARNING names the sender and the frame is dropped."""
    if word.allows(sender):
        return True
    if isinstance(msg, ViewAnnouncement) and isinstance(msg.view, dict):
        named = msg.view.get("members", ())
        if isinstance(named, list) and sender in named and word.asked_nodes() & set(named):
            # Every member of the view that admits a joiner announces it; the joiner takes
            # the word of the one it asked. Another member's copy (it names itself and the
            # node asked) is no news: dropped without a warning.
            log.debug("a copy of view %s from node %s; taken from the nodes asked", msg.view.get("vid"), sender)
            return False
    transport.warn(
        "leader-word",
        str(sender),
        "refused a %s from node %s: a node that is not a member yet takes it %s",
        type(msg).__name__,
        sender,
        word.describe(),
    )
    return False
