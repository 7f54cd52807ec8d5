"""Which phase a node starts in, once it listens."""

from __future__ import annotations

from runtime.drivers.node_phases.bootstrapping import BootstrapPhase
from runtime.drivers.node_phases.context import NodeContext
from runtime.drivers.node_phases.member import MemberPhase
from runtime.drivers.node_phases.restarting import RestartPhase


def enter_first_phase(ctx: NodeContext) -> None:
    """Restart from the data folder (it holds a view), bootstrap (it is empty and
    ``node.bootstrap_expect`` is set), join through the contacts, or found a group."""
    cfg = ctx.config
    contacts = [c for c in cfg.contact_addresses() if c != cfg.address]
    if ctx.saved is not None:
        restart = RestartPhase(ctx, ctx.saved, contacts)
        ctx.enter(restart)
        ctx.io.loop.call_soon(restart.advance)
    elif cfg.node.bootstrap_expect > 1:
        bootstrap = BootstrapPhase(ctx, contacts)
        ctx.enter(bootstrap)
        ctx.io.loop.call_soon(bootstrap.advance)
    elif contacts:
        member = MemberPhase.join(ctx, contacts)
        ctx.enter(member)
        member.begin()
    else:
        member = MemberPhase.found(ctx)
        ctx.enter(member)
        member.begin(replay=False)
