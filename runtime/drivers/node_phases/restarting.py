"""A node restarting from its data folder: it reports its last view and logs to the others
until they agree on a restart view (or a member says the group runs: then it joins), as
``runtime.drivers.restart`` describes; this phase keeps its timer and frames.
"""

from __future__ import annotations

import logging
from typing import Any

from runtime.core.view import View, ViewFormatError
from runtime.drivers.node_phases.context import NodeContext
from runtime.drivers.node_phases.member import MemberPhase
from runtime.drivers.node_phases.waiting import WaitingPhase
from runtime.drivers.restart import Outcome, RestartCoordinator, SavedState
from runtime.wire.control import BootstrapHello, GroupRunning, RestartDecision, RestartHello

log = logging.getLogger("derecho.node")


class RestartPhase(WaitingPhase):
    restarting = True

    def __init__(self, ctx: NodeContext, saved: SavedState, contacts: list[str]) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        log.info(
            "node %s listening on %s, restarting from its data (last view %d)", ctx.node_id, cfg.address, saved.view.vid
        )
        self.coordinator = RestartCoordinator(
            ctx.node_id,
            cfg.address,
            saved,
            contacts,
            cfg.layout,
            cfg.persistence.restart_quorum_wait_ms / 1000,
            ctx.io.send_to_address,
            ctx.io.now(),
            accept_loss=ctx.accept_loss,
            on_accept=ctx.hooks.on_accepted,
        )

    def advance(self) -> None:
        """Let the coordinator resend and decide; end the phase once it has, else come back
        when it asks."""
        if self.ended:
            return
        r = self.coordinator
        io = self.ctx.io
        try:
            nxt = r.on_tick(io.now())
        except OSError as exc:  # recording the accepted restart view failed
            self._storage_failed(exc)
            return
        if r.outcome is not None:
            self._finish(r.outcome)
            return
        self.report_busy_contacts("restarting", r.targets)
        io.loop.call_at(nxt, self.advance)

    def _finish(self, outcome: Outcome) -> None:
        ctx = self.ctx
        if outcome.refused is not None:
            self.become(WaitingPhase(ctx))
            ctx.stop(f"restart refused: {outcome.refused}")
            return
        lost = dict(outcome.lost)
        if outcome.lost and ctx.hooks.on_lost is not None:
            ctx.hooks.on_lost(outcome.lost)
        if outcome.view is not None:
            member = MemberPhase.install(ctx, outcome.view, lost)
        else:
            member = MemberPhase.join(ctx, list(outcome.contacts or ()))
        self.become(member)
        member.begin()

    def _storage_failed(self, exc: OSError) -> None:
        self.become(WaitingPhase(self.ctx))
        self.ctx.stop(f"storage failure: recording the restart view failed: {exc}")

    def on_restart_message(self, sender: int, msg: Any) -> None:
        super().on_restart_message(sender, msg)
        if isinstance(msg, (GroupRunning, RestartDecision)) and not self.take_leader_frame(sender, msg):
            return
        word = self.ctx.leader_word
        if (
            isinstance(msg, RestartHello)
            and isinstance(msg.view, dict)
            and isinstance(msg.view.get("vid"), int)
            and msg.view["vid"] > word.last_vid
            and word.allows(sender)
        ):
            # A member of the last view we know reports a later one: its members may lead the restart.
            try:
                word.know_view(View.from_wire(msg.view))
            except ViewFormatError:
                pass  # the coordinator logs a bad report
        r = self.coordinator
        if isinstance(msg, BootstrapHello):  # we hold data of a group: it must not found another
            self.ctx.io.send_to_address(msg.address, r.hello())
            return
        if isinstance(msg, RestartHello):
            r.on_hello(msg)
        elif isinstance(msg, RestartDecision):
            try:
                r.on_decision(msg)
            except OSError as exc:
                self._storage_failed(exc)
                return
        elif isinstance(msg, GroupRunning):
            r.on_running(msg)
        self.advance()
