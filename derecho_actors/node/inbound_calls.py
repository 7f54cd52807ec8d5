"""Calls this node takes on for its replicas: P2P calls to run here, the group's own requests
(watch polls, persistence queries), reads with options, and members' ordered calls to relay.

A P2P call reaches here from this node's own callers, from a client through this node, or
from a member (a :class:`Call`); each names who gets its answer (a ``ReplyTo``). What it asks
is its kind, never its name: a persistence query is answered by the persistence tracker, a
watch's poll is parked at the replica (its hold timed by ``WatchHolds``), a user's method runs
on the replica. A read with options goes its own way: a linearizable read into the order,
multicast by this node, which alone runs it when it is delivered; a stable read to the replica
with the latest mark (``StableReadBook``). A member's ordered call goes into the outbox, as
ours, in the member's session. Whatever cannot be taken is answered here at once with the
reason (never dropped). Runs on the node's loop.
"""

from __future__ import annotations

from typing import Callable

from derecho_actors.model.reads import LINEARIZABLE, LOCAL, ReadOptions
from derecho_actors.node.frontiers import PersistenceTracker, RouteReplies
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.stable_reads import StableReadBook
from derecho_actors.node.watch_holds import WatchHolds
from derecho_actors.replica.events import PollCall, WatchPoll
from derecho_actors.replica.replica import P2PRequest
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import decode_poll
from derecho_actors.wire.messages import Call, CallKind, Reply, ReplyTo, encode
from derecho_actors.wire.read_options import OPTIONS_MARK, READ_IN_ORDER, split_read
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import DerechoError, ReplicaLost, WireError
from runtime.node_api import NodeHandle


class InboundCalls:
    def __init__(
        self,
        node: NodeHandle,
        view: Callable[[], View | None],
        host: ReplicaHost,
        tracker: PersistenceTracker,
        outbox: Outbox,
        holds: WatchHolds,
        stable: StableReadBook,
        route_replies: RouteReplies,
    ) -> None:
        """``route_replies``: where this node's own answers go (as a replica's do)."""
        self.node = node
        self.node_id = node.node_id
        self.view = view
        self.host = host
        self.tracker = tracker
        self.outbox = outbox
        self.holds = holds
        self.stable = stable
        self.route_replies = route_replies

    # ------------------------------------------------------------------ P2P calls
    def run_p2p(self, shard: ShardId, to: ReplyTo, kind: CallKind, method: str, args: bytes) -> None:
        """Run a P2P call of ``kind`` on this node's replica of ``shard``, answering ``to``."""
        if kind is CallKind.PERSISTED_QUERY:
            self.tracker.query(shard, to, args)
            return
        if kind is CallKind.WATCH_POLL:
            self._watch(shard, to, args)
            return
        read = None
        if args and args[0] == OPTIONS_MARK:
            try:
                read, args = split_read(args)
            except WireError as exc:
                self._answer(to, to.failed(self.node_id, exc))
                return
        if read is not None and read.level != LOCAL:
            self._read(shard, to, method, args, read)
            return
        if not self.host.tell(shard, P2PRequest(to.vid, to.caller, to.call_id, method, args, to.origin, read)):
            self.no_replica(shard, to)

    def _watch(self, shard: ShardId, to: ReplyTo, args: bytes) -> None:
        """A watch's poll: the replica answers at once if it has events after the watch's
        position, else holds the poll; after the hold time it answers with none."""
        try:
            poll = decode_poll(args)
        except WireError as exc:
            self._answer(to, to.failed(self.node_id, exc))
            return
        if not self.host.tell(shard, WatchPoll(to.vid, to.caller, to.call_id, to.origin, poll)):
            self.no_replica(shard, to)
            return
        if poll.hold > 0:
            self.holds.park(shard, PollCall(to.caller, to.call_id, to.origin), poll.hold)

    def _read(self, shard: ShardId, to: ReplyTo, method: str, args: bytes, read: ReadOptions) -> None:
        """A linearizable read goes into the order, multicast by this node, which alone runs
        it when it is delivered; a stable read goes to the replica with the latest mark."""
        if not self.host.holds(shard):
            self.no_replica(shard, to)
            return
        if read.level == LINEARIZABLE:
            self.outbox.submit(
                shard, _codec.PendingCall(to.caller, to.call_id, method, args, to.origin, READ_IN_ORDER, self.node_id)
            )
        elif not self.stable.read(shard, to, method, args, read):
            self.no_replica(shard, to)

    def no_replica(self, shard: ShardId, to: ReplyTo) -> None:
        """Answer ``to``: this node runs no replica of ``shard`` (and why, if it knows more)."""
        self._answer(to, to.refused(self.node_id, self._why_none(shard)))

    def _why_none(self, shard: ShardId) -> DerechoError:
        return self.host.refusal(shard) or ReplicaLost(
            f"node {self.node_id} holds no replica of {shard}", applied=False
        )

    def _answer(self, to: ReplyTo, reply: Reply) -> None:
        self.route_replies([(to.caller, reply)])

    # ------------------------------------------------------------------ calls from members
    def on_member_call(self, sender: int, msg: Call) -> None:
        """A member's call to run here: a P2P call, or an ordered call to multicast for it.
        One this node cannot take is refused to the member (never dropped)."""
        view = self.view()
        to = ReplyTo(sender, msg.call_id, view.vid if view is not None else 0, msg.origin)
        refusal: DerechoError | None = None
        if view is None or not self.host.holds(msg.shard):
            refusal = self._why_none(msg.shard)
        elif (size := self.outbox.too_large(msg.method, msg.args)) is not None:
            # A member whose limit differs from ours: refuse, never drop.
            refusal = self.outbox.refusal(
                f"call {msg.call_id} relayed to node {self.node_id} (members should share one limit)",
                size,
                len(msg.args),
            )
        if refusal is not None:
            self.node.send_app(sender, encode(to.refused(self.node_id, refusal)))
        elif msg.ordered:
            self.outbox.submit(
                msg.shard,
                _codec.PendingCall(
                    sender, msg.call_id, msg.method, msg.args, msg.origin, msg.session_ns, msg.floor, msg.owner
                ),
            )
        else:
            self.run_p2p(msg.shard, to, msg.kind, msg.method, msg.args)
