"""A node with an empty data folder and ``node.bootstrap_expect`` set, finding out whether its
group exists: it joins the group if one runs, and founds it only on positive evidence that it
is new (see ``runtime.drivers.bootstrap`` for the rule; this phase keeps its timer and frames).
"""

from __future__ import annotations

import logging
from typing import Any

from runtime.core.status import CoreStatus
from runtime.drivers.bootstrap import BootstrapCoordinator
from runtime.drivers.node_phases.context import NodeContext
from runtime.drivers.node_phases.member import MemberPhase
from runtime.drivers.node_phases.phase import PhaseStatus
from runtime.drivers.node_phases.waiting import WaitingPhase
from runtime.wire.control import BootstrapHello, GroupRunning, RestartDecision, RestartHello

log = logging.getLogger("derecho.node")


class BootstrapPhase(WaitingPhase):
    def __init__(self, ctx: NodeContext, contacts: list[str]) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        log.info(
            "node %s listening on %s with an empty data dir: looking for its group, or for %d nodes as new "
            "as itself, via %s",
            ctx.node_id,
            cfg.address,
            cfg.node.bootstrap_expect,
            ", ".join(contacts),
        )
        self.coordinator = BootstrapCoordinator(
            ctx.node_id, cfg.address, contacts, cfg.node.bootstrap_expect, ctx.io.send_to_address, ctx.io.now()
        )

    def advance(self) -> None:
        """Let the coordinator resend and decide; found or join once it has, else come back
        when it asks."""
        if self.ended:
            return
        b = self.coordinator
        io = self.ctx.io
        nxt = b.on_tick(io.now())
        outcome = b.outcome
        if outcome is None:
            self.report_busy_contacts("bootstrapping", b.contacts)
            io.loop.call_at(nxt, self.advance)
            return
        if outcome.found:
            member = MemberPhase.found(self.ctx)
            self.become(member)
            member.begin(replay=False)
        else:
            member = MemberPhase.join(self.ctx, list(outcome.contacts))
            self.become(member)
            member.begin()

    def on_restart_message(self, sender: int, msg: Any) -> None:
        super().on_restart_message(sender, msg)
        if isinstance(msg, (GroupRunning, RestartDecision)) and not self.take_leader_frame(sender, msg):
            return
        b = self.coordinator
        if isinstance(msg, BootstrapHello):
            b.on_hello(msg)
            self.advance()
        elif isinstance(msg, RestartHello):
            b.on_has_data(msg.node)
        elif isinstance(msg, GroupRunning):
            b.on_running(msg)
            self.advance()

    def status(self) -> PhaseStatus:
        return PhaseStatus(
            CoreStatus(joining=True), restarting=self.restarting, bootstrapping=self.coordinator.why_waiting()
        )
