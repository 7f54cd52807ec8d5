"""The call paths of one node, put together: what a ``Group`` builds to carry calls and answers.

Each part has one job (see its module): :class:`MemberCaller` (this node's own calls),
:class:`InboundCalls` (P2P calls, the group's own requests and members' ordered calls taken on
here), :class:`ClientProxy` with :class:`ClientTurns`, ``ClientAnswers`` and
:class:`ClientOutbox` (clients' calls and their answers), :class:`Outbox` (what this node
multicasts), :class:`ReplyRoutes` (answers), :class:`WatchHolds` and :class:`StableReadBook`
(polls and reads that wait). This module only builds them and passes the node's hooks on; it
decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.node.answer_queue import member_queue
from derecho_actors.node.call_limits import CallLimits
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_proxy import ClientProxy
from derecho_actors.node.client_turns import ClientTurns
from derecho_actors.node.frontiers import PersistenceTracker
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.inbound_calls import InboundCalls
from derecho_actors.node.member_caller import MemberCaller
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.reply_routes import ReplyRoutes
from derecho_actors.node.result_limits import ResultLimits
from derecho_actors.node.stable_reads import StableReadBook
from derecho_actors.node.watch_holds import WatchHolds
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.node_api import NodeHandle


@dataclass(frozen=True, slots=True)
class CallPaths:
    outbox: Outbox
    member: MemberCaller
    inbound: InboundCalls
    clients: ClientProxy
    turns: ClientTurns
    replies: ReplyRoutes
    stable: StableReadBook
    holds: WatchHolds

    @classmethod
    def build(
        cls,
        node: NodeHandle,
        call_limits: CallLimits,
        view: Callable[[], View | None],
        stopped: Callable[[], str | None],
        host: ReplicaHost,
        tracker: PersistenceTracker,
        why_waiting: Callable[[ShardId], str | None],
        specs: Mapping[str, TypeSpec],
        limits: LimitsSection | None = None,
        clock: Callable[[], float] | None = None,
        result_limits: ResultLimits | None = None,
    ) -> CallPaths:
        """``call_limits``: how large a call may be (``CallLimits.of(config)``); ``stopped()``: why the node
        stopped (None while it runs); ``why_waiting(shard)``: what else may hold a call up (a
        state transfer); ``specs``: the group's types by name; ``limits``: the node's
        per-client limits; ``clock``: the clock ``node.call_later`` runs on, in seconds
        (``node.monotonic`` if not given); ``result_limits``: how large a result's answer may
        be (``ResultLimits.of(config)``; the config's defaults if not given)."""
        outbox = Outbox(node, call_limits)
        host.decode = outbox.sent.decode  # this node's own payloads: their calls as sent
        holds = WatchHolds(node, host, clock)
        stable = StableReadBook(node, host, outbox)
        # The answers this node makes itself go out (or back in) through the reply routes,
        # built last: they deliver to the caller and the clients, which take calls inbound.
        inbound = InboundCalls(node, view, host, tracker, outbox, holds, stable, lambda r: replies.route(r))
        member = MemberCaller(node, view, stopped, why_waiting, outbox, inbound)
        to_members = member_queue(node)  # answers and relayed calls, paced by the members' links
        limits = limits or LimitsSection()
        clients = ClientProxy(node, view, specs, limits, host, outbox, inbound, ClientOutbox(node), to_members)
        turns = ClientTurns(
            node, clients.table, clients.take_calls, clients.on_closed, outbox.flush, outbox.hold, outbox.release
        )
        replies = ReplyRoutes(node, member, clients, to_members, result_limits)
        return cls(outbox, member, inbound, clients, turns, replies, stable, holds)

    def on_view(self, previous: View | None, view: View) -> None:
        """A new view: clients told of it; calls waiting on members that left go again
        through others, or are answered."""
        if previous is None:
            return
        gone = set(previous.members) - set(view.members)
        self.clients.notify_view(previous, view, gone)
        if gone:
            self.member.on_departed(gone, view)
        # Clients' streamed calls relayed to members that left go again first, each with its
        # session's other calls relayed there in call order; then the client proxy's others.
        self.clients.streams.on_view(gone, view)
        if gone:
            self.clients.on_departed(gone, view)
