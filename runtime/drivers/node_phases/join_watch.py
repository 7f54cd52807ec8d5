"""A joiner's wait for its contacts: give up at once on addresses where nothing listens, keep
trying (saying why) those that answer but let no handshake finish, and never give up when the
node is joining again after the group removed it."""

from __future__ import annotations

import logging

from runtime.core.node_core import NodeCore
from runtime.drivers.node_phases.context import NodeContext
from runtime.errors import ConfigError

log = logging.getLogger("derecho.node")

BUSY_CONTACT_WAIT = 30.0  # seconds a joiner keeps trying contacts that are up but let no handshake finish
MAX_CONTACT_BACKOFF = 5.0  # seconds between its checks (and reports) then, at most


class JoinWatch:
    def __init__(self, ctx: NodeContext, core: NodeCore, contacts: list[str]) -> None:
        self.ctx = ctx
        self.core = core
        self.contacts = contacts

    def start(self) -> None:
        """The first check, ``connect_timeout_ms`` after the join began."""
        self.ctx.io.loop.call_later(self.ctx.config.timeouts.connect_timeout_ms / 1000, self.check)

    def check(self, started: float | None = None, wait: float = 0.0) -> None:
        """If no contact was reached, give up when nothing listens at any of them (a wrong
        address: exit 2); while some contact answers but lets no handshake finish (busy: its
        pool of unauthenticated connections full, or overloaded), keep trying with backoff,
        saying why, until ``busy_contact_wait`` (``BUSY_CONTACT_WAIT``, at least the connect
        timeout)."""
        ctx = self.ctx
        transport = ctx.io.transport
        if not self.core.joining or transport.contact_reached:
            return
        loop = ctx.io.loop
        now = loop.time()
        contacts = self.contacts
        connect_timeout = ctx.config.timeouts.connect_timeout_ms / 1000
        if started is None:
            started = now - connect_timeout
        problems = {a: transport.contact_problems[a] for a in contacts if a in transport.contact_problems}
        busy = {a: p for a, p in problems.items() if p.answered}
        limit = max(connect_timeout, ctx.busy_contact_wait)
        if busy and not transport.refusals and now - started < limit:
            wait = min(MAX_CONTACT_BACKOFF, max(connect_timeout, wait * 2), limit - (now - started) + 0.01)
            log.warning(
                "node %s: no contact reached yet after %.1f s: %s answer%s but let no handshake finish (%s); "
                "busy (its limit of connections in their handshake reached?) or overloaded: trying again, "
                "giving up after %.0f s",
                ctx.node_id,
                now - started,
                ", ".join(busy),
                "s" if len(busy) == 1 else "",
                "; ".join(f"{a}: {p.reason}" for a, p in busy.items()),
                limit,
            )
            loop.call_later(wait, self.check, started, wait)
            return
        if ctx.rejoin_reason is not None and not transport.refusals:
            # Cut off from the majority: never give up (it may come back at any time), never found.
            wait = min(MAX_CONTACT_BACKOFF, max(connect_timeout, wait * 2))
            log.warning(
                "node %s is out of the group (%s) and reaches none of its members after %.0f s (%s); it keeps "
                "trying, and tells clients to call another member meanwhile",
                ctx.node_id,
                ctx.rejoin_reason,
                now - started,
                "; ".join(f"{a}: {p.reason}" for a, p in problems.items()) or ", ".join(contacts),
            )
            loop.call_later(wait, self.check, started, wait)
            return
        why = "; ".join(f"{a}: {p.reason}" for a, p in problems.items())
        took = f"({', '.join(contacts)}) within {(now - started) * 1000:.0f} ms"
        if transport.refusals:  # refused for good (not allowed, revoked, another's certificate): a rejoin ends too
            text = f"node.contacts: refused ({transport.refusals[-1]}); no contact reachable {took}"
        else:
            text = f"node.contacts: no contact reachable {took}{f' ({why})' if why else ''}"
        ctx.fatal(ConfigError(text))
