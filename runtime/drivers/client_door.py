"""What a client's frames get from a node: calls go to the app only on a member of a view,
status requests are answered within the client's rate from a snapshot shared for a short
while, and anything else (a member's frame on a client connection) closes the connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from runtime.drivers.status import StatusLimiter, StatusVerdict
from runtime.drivers.transport import Transport
from runtime.node_api import AppHooks
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage, Goodbye, GoodbyeKind, RateLimited, StatusReply, StatusRequest

log = logging.getLogger("derecho.node")


def client_key(handle: Any) -> str:
    """Whom a client connection's limits count against: the identity its certificate proved
    (every connection of one certificate shares them), or without TLS its host."""
    identity = getattr(handle, "identity", None)
    if identity is not None:
        return str(identity.describe())
    address = str(getattr(handle, "address", "?"))
    return f"host {address.rpartition(':')[0] or address}"


def not_serving(node_id: int, rejoin_reason: str | None, restarting: bool) -> str:
    """Why a node outside any view answers no call (a client's Goodbye): the client fails
    over to another contact with its calls, in the same session."""
    if rejoin_reason is not None:
        return f"node {node_id} is out of the group ({rejoin_reason}) and joining it again; call another member"
    if restarting:
        return f"node {node_id} is restarting from its data folder and not in the group yet; call another member"
    return f"node {node_id} is joining the group and not in a view yet; call another member"


@dataclass(frozen=True, slots=True)
class _StatusCache:
    """A StatusReply frame as built at ``built_at`` (monotonic), after ``views_installed`` views."""

    data: bytes
    built_at: float
    views_installed: int


class ClientDoor:
    def __init__(
        self,
        transport: Transport,
        hooks: AppHooks,
        limiter: StatusLimiter,
        status: Callable[[], dict[str, Any]],
        views_installed: Callable[[], int],
        cache_seconds: float,
        schedule_flush: Callable[[], None],
    ) -> None:
        """``status``: the node's status (built on the loop); ``views_installed``: how many
        views it installed (a new one makes a new snapshot at once); ``cache_seconds``:
        ``limits.status_cache_ms``, how long a snapshot is shared."""
        self.transport = transport
        self.hooks = hooks
        self.limiter = limiter
        self._status = status
        self._views_installed = views_installed
        self._cache_seconds = cache_seconds
        self._schedule_flush = schedule_flush
        self._cache: _StatusCache | None = None

    def on_frame(self, handle: Any, msg: Any, refusal: str | None) -> None:
        """A frame from a client connection. ``refusal``: why this node runs no call now (it is
        not a member of any view), or None."""
        if type(msg) is AppMessage:
            if refusal is not None:
                # Not a member of any view (restarting, joining, or joining again after the
                # group removed it): no call can run here. Say why and close; the client fails
                # over to another contact with its calls, in the same session (so CLOSED: a
                # REFUSED goodbye would make it give up).
                self.transport.reply(handle, frame(Goodbye(refusal, GoodbyeKind.CLOSED)))
                handle.close()
                return
            if self.hooks.on_client_app is None:
                self.transport.reply(
                    handle,
                    frame(Goodbye("this node hosts no replicated types; it answers status requests only")),
                )
                handle.close()
                return
            self.hooks.on_client_app(handle, msg.data)
            self._schedule_flush()
        elif isinstance(msg, StatusRequest):
            self._on_status_request(handle)
        else:
            # A client may ask for status and send application messages; anything else (a
            # push, a join) is a member's frame, which no client connection may carry.
            self.transport.warn(
                "client-frame",
                handle.address,
                "closing %s: it sent a %s, which clients may not send",
                handle._where(),
                type(msg).__name__,
            )
            handle.close()

    def _on_status_request(self, handle: Any) -> None:
        """Answer a client's StatusRequest within its identity's rate, from a snapshot
        shared for ``limits.status_cache_ms`` (a new view makes a new one at once)."""
        transport = self.transport
        decision = self.limiter.check(handle, client_key(handle))
        verdict = decision.verdict
        if verdict is StatusVerdict.SERVE:
            transport.reply(handle, self._status_frame())
        elif verdict is StatusVerdict.REFUSE:
            retry_ms = max(1, int(decision.retry_after * 1000 + 0.999))
            transport.reply(handle, frame(RateLimited(retry_ms, decision.reason)))
        elif verdict is StatusVerdict.CUT:
            transport.warn(
                "status-rate",
                handle.address,
                "closing %s: %s",
                handle._where(),
                decision.reason,
            )
            transport.reply(handle, frame(Goodbye(f"status requests over the limit: {decision.reason}")))
            handle.close()

    def _status_frame(self) -> bytes:
        """The encoded StatusReply, rebuilt when older than ``limits.status_cache_ms`` or
        when a view was installed since."""
        now = time.monotonic()
        cache = self._cache
        views = self._views_installed()
        if cache is None or now - cache.built_at >= self._cache_seconds or cache.views_installed != views:
            cache = self._cache = _StatusCache(frame(StatusReply(self._status())), now, views)
        return cache.data
