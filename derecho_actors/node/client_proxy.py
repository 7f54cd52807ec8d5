"""The client proxy: a client's calls, taken by its contact (this node) as its own.

A call from an external client is run or relayed by its contact in the client's session and
the replicas' answers are forwarded to the client (``client_answers``). The session's origin
is the one the node derived from the client's authenticated identity (whatever the message
says), so no client can act in another's session; so is the owner its ordered calls carry,
which replicas bound sessions by. A call this node cannot take (too large, a shard that
cannot run, a method its type does not define, a limit reached) is refused at once, with
the reason (``client_checks``).

What is kept per client is bounded (``client_table``); statistics count the methods the types
define and every other name under one label (``client_checks``, ``call_stats``). Clients
cannot see views: on a view change they are told who left, and calls relayed to a member that
left go again through another (ordered: applied once) or, for P2P, are answered at once. Runs
on the node's loop.
"""

from __future__ import annotations

from typing import Callable, Final, Mapping, Sequence

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.node.answer_queue import AnswerQueue, member_queue
from derecho_actors.node.call_stats import UNKNOWN, CallStats
from derecho_actors.node.client_answers import ClientAnswers, merged_entry
from derecho_actors.node.client_checks import ClientChecks
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_stream_calls import proxy_streams
from derecho_actors.node.client_table import ClientTable, Proxied, Relay
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.inbound_calls import InboundCalls
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.unavailable import unavailable
from derecho_actors.replica.events import PollCall, WatchExpire
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import (
    AnswerBatch,
    Call,
    CallKind,
    Features,
    MergedEntry,
    ReplyBatch,
    ReplyEntry,
    ReplyTo,
    ViewNotice,
    encode,
)
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import DerechoError, ReplicaLost, ShardUnavailable
from runtime.node_api import ClientConn, NodeHandle

# Enum members as globals: read off their class each costs ~10x a global's in Python 3.11.
_METHOD: Final = CallKind.METHOD

_new_pending: Final = tuple.__new__
"""Builds a ``PendingCall`` from a tuple of its fields: a quarter of the cost of calling the
named tuple's class (its ``__new__`` is Python), once per client call on the contact's loop."""


class ClientProxy:
    def __init__(
        self,
        node: NodeHandle,
        view: Callable[[], View | None],
        specs: Mapping[str, TypeSpec],
        limits: LimitsSection,
        host: ReplicaHost,
        outbox: Outbox,
        inbound: InboundCalls,
        out: ClientOutbox,
        to_members: AnswerQueue[int] | None = None,
    ) -> None:
        """``specs``: the group's types by name (a call to a method its type does not define is
        refused here); ``limits``: the node's per-client limits (``[limits]``); ``out``: where
        messages to clients go; ``to_members``: calls relayed to members (in order per member)."""
        self.node = node
        self.node_id = node.node_id
        self.view = view
        self.specs = specs
        self.host = host
        self.outbox = outbox
        self.inbound = inbound
        self.out = out
        self.to_members = to_members if to_members is not None else member_queue(node)
        # Clients this node serves: their calls whose answers it forwards, and those it relayed
        # (retried through another member if that one fails before answering).
        self.table = ClientTable(
            limits.client_max_in_flight,
            limits.max_watch_polls_per_client,
            node.wall_ns,
            max_held_bytes=limits.client_max_backlog_bytes,
        )
        self.stats = CallStats()  # clients' calls through this node (status, metrics)
        self.checks = ClientChecks(self.node_id, specs, outbox, self.table)
        self.check = self.checks.check  # whether a call is taken here (its streamed calls' too)
        # The view as this proxy sees it (``self.view`` may be replaced: tests, the simulator).
        self.answers = ClientAnswers(node, lambda: self.view(), self.table, self.stats, out)
        self.streams = proxy_streams(self, limits)  # calls too large for a frame, streamed in

    # ------------------------------------------------------------------ calls
    def take_call(self, conn: ClientConn, msg: Call) -> None:
        """A call from a client on its connection to this node: run or relay it as our own, in
        the client's session, and forward the replicas' answers."""
        origin = conn.origin
        session_ns = conn.incarnation or 0
        view = self.view()
        if not origin or view is None:
            return
        table = self.table
        client = table.state(conn)
        if not client.offered:  # a client of this release reads merged answers: offer them
            client.offered = True
            self.out.send(conn, encode(Features(merged_answers=True)))
        label, members, refusal = self.check(client, msg, view)
        if refusal is not None:
            self.stats.done(label, "refused", None)
            self.out.refuse(conn, ReplyTo(self.node_id, msg.call_id, view.vid, origin), refusal)
            return
        key = (origin, msg.call_id)
        proxy = Proxied(client, label, self.node.wall_ns(), kind=msg.kind)
        table.add(client, key, proxy)
        if not msg.ordered and msg.target:
            target = msg.target  # the client asked for this replica (P2P node=)
        else:
            target = self.node_id if self.node_id in members else members[origin % len(members)]
            if msg.ordered and client.relayed:  # its latest relayed call unanswered: there too
                pinned = table.pinned(client, msg.shard, members)
                target = target if pinned is None else pinned
            relay = self.streams.relay
            if msg.ordered and relay is not None and relay.relays:
                # After the session's streamed call relayed to a member chosen before a view
                # added one, or before this node became one: to that member too, so it is
                # ordered after it (``StreamRelay.pinned``).
                pinned = relay.pinned(origin, msg.shard, members)
                target = target if pinned is None else pinned
        owner = client.owner
        if target == self.node_id:
            if msg.ordered:
                self.outbox.submit(
                    msg.shard,
                    _codec.PendingCall(
                        self.node_id, msg.call_id, msg.method, msg.args, origin, session_ns, msg.floor, owner
                    ),
                )
            else:
                if proxy.poll:
                    proxy.local = msg.shard  # freed here at once if the client goes away
                to = ReplyTo(self.node_id, msg.call_id, view.vid, origin)
                self.inbound.run_p2p(msg.shard, to, msg.kind, msg.method, msg.args)
            return
        call = Call(
            msg.call_id,
            self.node_id,
            msg.shard,
            msg.method,
            msg.ordered,
            msg.args,
            origin,
            session_ns,
            msg.floor,
            owner=owner,
            kind=msg.kind,
        )
        # Until an answer comes, remember where it went: if that member fails first, the call
        # goes again through another (ordered: applied once, by the session table) or, for
        # P2P, the client is told at once.
        table.relay(key, Relay(target, call, client))
        self.to_members.offer(target, encode(call))

    def take_calls(self, conn: ClientConn, calls: Sequence[Call]) -> None:
        """A client's calls in the order they came (a frame's, or its share of a loop turn),
        each taken as :meth:`take_call` takes it. What the calls share is looked up once: the
        session, the view, the clock, and per shard and method whether such a call runs here
        and how large it may be. The common call (an ordered method of a shard this node
        holds, within the limits) is taken in a few steps; any other goes through
        :meth:`take_call`, which refuses or relays it as always. Stops if the client is
        forgotten meanwhile (its connection closed).

        Why: a pipelined client's frames carry ~60-120 calls; taking each alone was ~12% of
        its contact's loop (the session, view, shard members and limits looked up per call)."""
        origin = conn.origin
        view = self.view()
        if not calls or not origin or view is None:
            return
        client = self.table.state(conn)
        node_id, owner, session_ns = self.node_id, client.owner, conn.incarnation or 0
        in_flight, most = client.calls, self.table.max_in_flight
        add, now, method_kind = self.table.add, self.node.wall_ns(), _METHOD
        shard: ShardId | None = None  # the shard and method of the calls before, and what they get
        method = ""
        fast: tuple[str, int] | None = None
        pending: list[_codec.PendingCall] = []  # ordered calls of ``shard`` to submit, in order
        relay = self.streams.relay if self.streams.relay is not None and self.streams.relay.relays else None
        for msg in calls:
            if client.closed:
                break
            if msg.ordered and msg.kind is method_kind:
                if msg.shard is not shard or msg.method != method:
                    if pending and msg.shard is not shard:
                        self.outbox.submit_all(shard, pending)  # type: ignore[arg-type]
                        pending = []
                    shard, method = msg.shard, msg.method
                    fast = self.checks.runs_here(view, shard, method)
                    if (
                        fast is not None
                        and client.relayed
                        and self.table.pinned(client, shard, view.layout.members_of(shard)) is not None
                    ):
                        fast = None  # after its small calls relayed before this node held the shard: there too
                    if (
                        fast is not None
                        and relay is not None
                        and relay.pinned(origin, shard, view.layout.members_of(shard)) is not None
                    ):
                        fast = None  # after the session's streamed call relayed to a member: there too
                if fast is not None and len(msg.args) <= fast[1] and len(in_flight) < most and client.offered:
                    call_id = msg.call_id
                    add(client, (origin, call_id), Proxied(client, fast[0], now))
                    pending.append(
                        _new_pending(
                            _codec.PendingCall,
                            (node_id, call_id, method, msg.args, origin, session_ns, msg.floor, owner),
                        )
                    )
                    continue
            if pending:  # submitted before the call taken the long way, so they stay in order
                self.outbox.submit_all(shard, pending)  # type: ignore[arg-type]
                pending = []
            self.take_call(conn, msg)
        if pending:
            self.outbox.submit_all(shard, pending)  # type: ignore[arg-type]

    def refuse_overflow(self, conn: ClientConn, call_ids: tuple[int, ...]) -> None:
        """Calls of one frame beyond what a client may have unanswered: refused unread."""
        view = self.view()
        origin = conn.origin
        if not origin or view is None or not call_ids or getattr(conn, "closed", False):
            return
        refusal = self.checks.overflow(self.table.state(conn), len(call_ids))
        for call_id in call_ids:
            self.out.refuse(conn, ReplyTo(self.node_id, call_id, view.vid, origin), refusal)
        self.stats.done(UNKNOWN, "refused", None, len(call_ids))

    # ------------------------------------------------------------------ answers
    def accept_features(self, conn: ClientConn, features: Features) -> None:
        """The client says what it reads (after our offer): merged answers, from now on."""
        self.table.state(conn).merged = features.merged_answers

    def forward(self, batch: ReplyBatch, entries: list[ReplyEntry]) -> None:
        """Answers in ``batch`` for clients' calls: on to each client (``ClientAnswers``)."""
        streams = self.streams
        if streams.sent or streams.relaying:  # a streamed call in flight: its bytes may be freed now
            streams.replied(entries)  # (not called per batch otherwise: a dict look-up per answer for nothing)
        self.answers.forward(batch, entries)

    # ------------------------------------------------------------------ clients going away
    def on_closed(self, conn: ClientConn) -> None:
        """``AppHooks.on_client_closed``: forget everything kept for the connection (its
        calls' proxies and relays, its watch polls, its queued replies), so nothing of it
        stays; its polls parked at replicas here are answered at once, freeing them too.
        Answers that still come for its calls find no proxy and go nowhere."""
        self.out.forget(conn)
        self.streams.forget(conn)
        parked = self.table.forget(conn)
        by_shard: dict[ShardId, list[PollCall]] = {}
        for shard, (origin, call_id) in parked:
            by_shard.setdefault(shard, []).append(PollCall(self.node_id, call_id, origin))
        for shard, calls in by_shard.items():
            self.host.tell(shard, WatchExpire(tuple(calls)))

    # ------------------------------------------------------------------ views
    def notify_view(self, previous: View, view: View, gone: set[int]) -> None:
        """Clients cannot see views: tell them who left, so their calls stop waiting, and
        whether shards cannot run, so a call that waits says why."""
        if not (gone or not view.layout.adequate or not previous.layout.adequate) or not self.table.clients:
            return
        note = encode(
            ViewNotice(
                view.vid,
                view.members,
                tuple(sorted(gone)),
                "" if view.layout.adequate else unavailable(view, ShardId("", 0, 0)),
            )
        )
        for conn in list(self.table.clients):
            if getattr(conn, "closed", False):
                self.on_closed(conn)
            else:
                self.out.send(conn, note)  # behind the answers queued for it

    def on_departed(self, gone: set[int], view: View) -> None:
        """Members left in ``view``: clients' calls relayed to them go again through another
        member or are answered, and calls waiting only for their answers are done."""
        for node in gone:
            self.to_members.forget(node)  # what still waited for it would go nowhere
        self._retry_relays(gone, view)
        held: dict[tuple[ClientConn, int, tuple[int, ...]], list[MergedEntry]] = {}
        for (_origin, call_id), proxy in self.table.depart(gone):
            if proxy.value is not None:  # answers held until every replica gave them: what came goes
                held.setdefault((proxy.client.conn, proxy.vid, proxy.replicas), []).append(merged_entry(proxy, call_id))
        for (conn, vid, replicas), merged in held.items():
            self.out.send(conn, AnswerBatch(vid, replicas, tuple(merged)))

    def _retry_relays(self, gone: set[int], view: View) -> None:
        """Clients' calls this node relayed to members that left before answering."""
        relays = self.table.relays
        for key, relay in list(relays.items()):
            target, call, client = relay.target, relay.call, relay.client
            if target not in gone:
                continue
            origin = key[0]
            members = view.layout.members_of(call.shard)
            refusal: DerechoError | None = None
            if not call.ordered:
                refusal = ReplicaLost(
                    f"node {target} left the group before answering; a P2P call changes nothing, so "
                    "it is safe to call again",
                    applied=False,
                )
            elif not members:
                refusal = ShardUnavailable(
                    f"call {call.call_id} may or may not have been applied (node {target} left "
                    f"while relaying it) and cannot be retried now: {unavailable(view, call.shard)}"
                )
            if refusal is not None:
                self.table.drop(key)
                relays.pop(key, None)
                self.out.refuse(client.conn, ReplyTo(self.node_id, call.call_id, view.vid, origin), refusal)
                continue
            if self.node_id in members:
                del relays[key]
                self.outbox.submit(
                    call.shard,
                    _codec.PendingCall(
                        self.node_id,
                        call.call_id,
                        call.method,
                        call.args,
                        origin,
                        call.session_ns,
                        call.floor,
                        call.owner,
                    ),
                )
                continue
            relay.target = members[origin % len(members)]
            self.to_members.offer(relay.target, encode(call))
