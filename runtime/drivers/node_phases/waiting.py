"""A running node without a core yet: its frames wait for the core; the hellos of restarting
and bootstrapping nodes tell it where they listen.

The phase of a node while its transport starts, and after a restart that ended without a core
(refused, or its storage failed: the node stops). Bootstrapping and restarting are waiting
phases too, each with its coordinator (``bootstrapping``, ``restarting``); the member phase
(``member``) follows them.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from runtime.core.layout import ShardId
from runtime.core.status import CoreStatus
from runtime.drivers.client_door import not_serving
from runtime.drivers.node_phases.context import NodeContext
from runtime.drivers.node_phases.phase import RESTART_MESSAGES, NodePhase, PhaseStatus
from runtime.drivers.node_phases.trust import forgery, leader_frame_allowed
from runtime.wire.control import BootstrapHello, GroupRunning, RestartHello

log = logging.getLogger("derecho.node")

MAX_EARLY_FRAMES = 10_000  # frames kept for a core not created yet (a restarting node)
BUSY_REPORT_EVERY = 10.0  # seconds between reports of busy contacts while restarting or bootstrapping


class WaitingPhase:
    core: None = None
    restarting = False

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.successor: NodePhase | None = None  # the phase this one ended in
        self._busy_report_at = 0.0  # loop time of the next report of busy contacts

    # ------------------------------------------------------------------ inputs
    def on_frames(self, sender: int, frames: list[Any]) -> None:
        early = self.ctx.early
        for i, msg in enumerate(frames):
            if isinstance(msg, RESTART_MESSAGES):
                why = forgery(sender, msg)
                if why is not None:
                    self.cut_off(sender, why)
                    return  # the rest of what it sent is not to be trusted either
                self.on_restart_message(sender, msg)
                if self.successor is not None:  # it ended this phase: the rest is the next one's
                    if i + 1 < len(frames):
                        self.successor.on_frames(sender, frames[i + 1 :])
                    return
            elif len(early) < MAX_EARLY_FRAMES:
                # A restarting node's peers may install the restart view, and push their rows
                # (which they send only when they change), before this node has its core: kept
                # for the core, or an idle shard would never hear of them.
                early.append((sender, msg))

    def on_restart_message(self, sender: int, msg: Any) -> None:
        """A restarting or bootstrapping node's frame, or an answer to one (``sender`` proven)."""
        if isinstance(msg, (BootstrapHello, RestartHello)):
            self.ctx.io.transport.learn(sender, msg.address)  # no view here: nobody is a member

    def on_peer_lost(self, node: int) -> None:
        pass  # no view: no member to suspect

    def on_client(self, handle: Any, msg: Any) -> None:
        ctx = self.ctx
        ctx.clients.on_frame(handle, msg, not_serving(ctx.node_id, ctx.rejoin_reason, self.restarting))

    def flush(self) -> None:
        pass  # no core: nothing to carry out

    def tick(self) -> None:
        pass

    def send(self, shard: ShardId, payloads: Sequence[bytes]) -> None:
        self.ctx.queue.add(shard, payloads)  # until the core takes them

    def offer(self, shard: ShardId) -> None:
        pass

    def persisted(self, shard: ShardId, version: int) -> None:
        pass

    def leave(self) -> None:
        pass

    def cut_off(self, node: int, reason: str) -> None:
        self.ctx.io.transport.disconnect(node, reason)  # not a member: nothing to suspect

    def status(self) -> PhaseStatus:
        return PhaseStatus(CoreStatus(joining=True), restarting=self.restarting)

    # ------------------------------------------------------- for the coordinated phases
    def become(self, phase: NodePhase) -> None:
        """End this phase in ``phase``."""
        self.successor = phase
        self.ctx.enter(phase)

    @property
    def ended(self) -> bool:
        """Whether this phase is over: its timers then do nothing."""
        return self.successor is not None or self.ctx.io.stopped.is_set()

    def take_leader_frame(self, sender: int, msg: Any) -> bool:
        """Whether a ``GroupRunning`` or ``RestartDecision`` may be taken from ``sender``
        (``runtime.drivers.leader_word``); a running group's address is then one to ask."""
        ctx = self.ctx
        if not leader_frame_allowed(ctx.leader_word, ctx.io.transport, sender, msg):
            return False
        if isinstance(msg, GroupRunning):
            ctx.leader_word.ask([msg.address])  # where a trusted member says the group runs
        return True

    def report_busy_contacts(self, phase: str, addresses: Sequence[str]) -> None:
        """While restarting or bootstrapping (which retry their contacts until they hear
        enough), say every ``BUSY_REPORT_EVERY`` s which contacts are up but let no handshake
        finish: the reason this node may be waiting longer than it should."""
        io = self.ctx.io
        now = io.now()
        if now < self._busy_report_at:
            return
        problems = io.transport.contact_problems
        busy = [(a, p) for a in addresses if (p := problems.get(a)) is not None and p.answered]
        if busy:
            self._busy_report_at = now + BUSY_REPORT_EVERY
            log.warning(
                "node %s, %s: %s %s up but let no handshake finish (%s); busy (its limit of connections in their "
                "handshake reached?) or overloaded: still trying",
                self.ctx.node_id,
                phase,
                ", ".join(a for a, _ in busy),
                "is" if len(busy) == 1 else "are",
                "; ".join(f"{a}: {p.reason}" for a, p in busy),
            )
