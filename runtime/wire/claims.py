"""Which node a frame says it comes from.

A frame travels on a connection whose speaker the transport has proven (TLS) or at least
named (Hello); some frames also name a node in a field of their own. Those two must agree, or
a member could make its frames count as another's: a join or restart report for another id.
Rank fields (pushes) are checked by the core, which knows the ranks; the actor layer checks
its own messages (replies, calls) the same way; this covers the engine's frames that name a
node id directly.
"""

from __future__ import annotations

from runtime.core.messages import JoinRequest
from runtime.wire.control import BootstrapHello, RestartDecision, RestartHello


def claimed_sender(msg: object) -> int | None:
    """The node id ``msg`` names as its sender, or None if it names none."""
    t = type(msg)
    if t is JoinRequest:
        return msg.node_id  # type: ignore[attr-defined]
    if t is RestartHello or t is BootstrapHello:
        return msg.node  # type: ignore[attr-defined]
    if t is RestartDecision:
        return msg.leader  # type: ignore[attr-defined]
    return None
