"""What a client's streamed calls may hold at a node: the bounds a contact applies to the calls
streamed to it (``client_streams``) and a member to those relayed to it (``relayed_streams``),
per client identity and node-wide, each refused with a typed error that says what to do. Pure.
"""

from __future__ import annotations

from typing import NamedTuple

from derecho_actors.node.client_table import describe
from derecho_actors.wire.streams import StreamStart
from runtime.config import LimitsSection
from runtime.errors import ClientLimit, DerechoError, PayloadTooLarge
from runtime.node_api import ClientConn

__all__ = ["MAX_ARGS", "StreamBytes", "budget_of", "stream_bound"]

MAX_ARGS = (1 << 32) - 1  # bin32


class CallerSession(NamedTuple):
    """Who a client's streamed call is from, as its contact knows it (not as the client says):
    the session's origin id, its incarnation, and the identity that owns it; the multicast
    payload ends with them, and relays carry them to the member."""

    origin: int
    session_ns: int
    owner: int


class StreamBytes:
    """Bytes held for clients' streamed calls at one node, per budget (``budget_of``) and in
    all: one count shared by the calls streamed to the node (``client_streams``) and those
    relayed to it (``relayed_streams``), so an identity and the node are held to their bounds
    once, not once per path (each kept its own, and a client could hold twice its bound)."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.total = 0

    def hold(self, budget: str, size: int) -> None:
        self.held[budget] = self.held.get(budget, 0) + size
        self.total += size

    def release(self, budget: str, size: int) -> None:
        left = self.held.get(budget, 0) - size
        if left > 0:
            self.held[budget] = left
        else:
            self.held.pop(budget, None)
        self.total -= size


def stream_bound(
    node_id: int, limits: LimitsSection, start: StreamStart, mine: int, held: int, total: int
) -> DerechoError | None:
    """Why a streamed call may not be taken by node ``node_id`` now, given what its client's
    identity streams (``mine`` calls) and holds (``held`` bytes) there, and what every client
    holds (``total``); None: it may. Shared by a contact and the member it relays to."""
    size = start.size
    if size > MAX_ARGS:
        return PayloadTooLarge(f"call {start.call_id}: {size} bytes of arguments; one call takes at most {MAX_ARGS}")
    if mine >= limits.client_max_streams:
        return ClientLimit(
            f"refused by node {node_id}: this client streams {mine} large calls at once, the limit "
            f"(limits.client_max_streams); the call was not run: wait for a large call's answer before the next"
        )
    if held + size > limits.client_stream_bytes:
        return ClientLimit(
            f"refused by node {node_id}: this client's large calls hold {held} bytes here and this one "
            f"needs {size}, over the limit of {limits.client_stream_bytes} (limits.client_stream_bytes); the call "
            "was not run: wait for earlier large calls' answers, send less per call, or raise the limit"
        )
    if total + size > limits.client_streams_total_bytes:
        return ClientLimit(
            f"refused by node {node_id}: large calls of all clients hold {total} bytes here, and "
            f"this one needs {size} more than limits.client_streams_total_bytes "
            f"({limits.client_streams_total_bytes}) allows; the call was not run: retry later"
        )
    return None


def budget_of(conn: ClientConn) -> str:
    """Whose bytes a stream uses: the client's identity (its certificate's name, over all its
    connections); without TLS there is none, so its host (all its connections and ports): an
    unauthenticated peer gets no more by opening more connections."""
    identity = describe(conn)[1]
    if identity:
        return "identity " + identity
    address = str(getattr(conn, "address", "?"))
    return "host " + (address.rsplit(":", 1)[0] if ":" in address else address)
