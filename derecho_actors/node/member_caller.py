"""This node's own calls: what a ``Handle`` or a ``Watch`` of a ``Group`` calls through.

An ordered call from a member of the shard goes into this node's outbox; from a node outside
the shard it goes to one member of it (the *relay*, one per caller and shard, so calls from
one caller keep their order), which multicasts it. A P2P call goes to one replica: ours if we
hold one, else one of the shard's. The answers feed the call's ``QueryResults``.

Relayed calls are numbered in this node's own session (``replica.sessions``): when a relay
leaves before answering, the call goes again through another and is applied once.

:meth:`MemberCaller.call` and :meth:`MemberCaller.watch_poll` run on any thread (the table
of calls is under a lock); the rest on the node's loop.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

import msgpack

from derecho_actors.caller.calls import refuse_nested
from derecho_actors.caller.results import QueryResults
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.kinds import ORDERED
from derecho_actors.model.reads import ReadOptions
from derecho_actors.node.inbound_calls import InboundCalls
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.unavailable import unavailable
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import PollArgs, decode_answer, encode_poll
from derecho_actors.wire.messages import Call, CallKind, ReplyEntry, ReplyTo, encode
from derecho_actors.wire.read_options import encode_read
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import GroupClosed, ReplicaLost, ShardUnavailable
from runtime.node_api import NodeHandle, session_origin


class OwnCall(NamedTuple):
    """A call of this node's waiting for answers: its results and the member relaying it
    (None: not relayed)."""

    results: QueryResults
    relay: int | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A call on its way from the caller's thread to the node's loop."""

    shard: ShardId
    method: str
    ordered: bool
    kind: CallKind
    args: bytes
    target: int | None  # the replica a P2P call asks for (None: any)


@dataclass(frozen=True, slots=True)
class Relayed:
    """An ordered call of this node's sent through a relay: what to send again if it leaves."""

    shard: ShardId
    method: str
    args: bytes


class MemberCaller:
    def __init__(
        self,
        node: NodeHandle,
        view: Callable[[], View | None],
        stopped: Callable[[], str | None],
        why_waiting: Callable[[ShardId], str | None],
        outbox: Outbox,
        inbound: InboundCalls,
    ) -> None:
        """``stopped()``: why the node stopped (None while it runs); ``why_waiting(shard)``:
        what else may hold a call up (a state transfer), for timeout messages."""
        self.node = node
        self.node_id = node.node_id
        self.view = view
        self.stopped = stopped
        self.why_else = why_waiting
        self.outbox = outbox
        self.inbound = inbound
        self.calls: dict[int, OwnCall] = {}
        self.relayed: dict[int, Relayed] = {}  # this node's relayed calls, to retry
        self._oldest_relayed = 1
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        # This node's own session, for calls it relays through another member: a retry
        # through a new relay after a failure is applied once (as for Clients).
        self.session_ns = node.wall_ns()
        self.origin = session_origin(f"node:{self.node_id}", node.incarnation)

    # ------------------------------------------------------------------ issuing (any thread)
    def call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        node: int | None,
        read: ReadOptions | None = None,
    ) -> QueryResults:
        refuse_nested(spec, method)
        stopped = self.stopped()
        if stopped is not None:
            raise GroupClosed(f"node {self.node_id} stopped: {stopped}")
        ordered = spec.methods[method] == ORDERED
        data = _codec.encode_args(args, kwargs, spec.serializer)
        if read is not None:
            data = encode_read(read, data)
        # A call of a shard member is multicast from here; any other goes in one frame to a
        # member that relays it (the view may change before it goes: _dispatch checks again).
        view = self.view()
        framed = view is None or self.node_id not in view.layout.members_of(shard)
        self.outbox.check_size(f"{spec.name}.{method}", method, data, framed=ordered and framed)
        if not ordered:
            self.outbox.check_p2p_size(f"{spec.name}.{method}", method, data)
        serializer = spec.serializer
        results = self._issue(
            Outgoing(shard, method, ordered, CallKind.METHOD, data, node),
            f"{spec.name}.{method}",
            lambda b: _codec.decode_result(b, serializer),
            spec.on_divergence if ordered else None,
        )
        if spec.persistent and ordered:
            results.set_persist_query(
                lambda version, replica: self._issue(
                    Outgoing(shard, "", False, CallKind.PERSISTED_QUERY, msgpack.packb(version), replica),
                    f"persistence of {spec.name}.{method}",
                    msgpack.unpackb,
                )
            )
        return results

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        """Send one poll of a watch (``caller.watch.Watch``) from this node."""
        return self._issue(
            Outgoing(shard, "", False, CallKind.WATCH_POLL, encode_poll(poll), node), what, decode_answer
        )

    def _issue(
        self, out: Outgoing, what: str, decode: Callable[[bytes], Any], compare: str | None = None
    ) -> QueryResults:
        call_id = next(self._ids)
        shard = out.shard
        results = QueryResults(
            what,
            decode,
            call_id=call_id,
            ordered=out.ordered,
            compare=compare,
            why_waiting=lambda: self.why_waiting(shard),
        )
        with self.lock:
            self.calls[call_id] = OwnCall(results)
        if not self.node.call_soon(self._dispatch, call_id, out):
            with self.lock:
                self.calls.pop(call_id, None)
            results.fail(GroupClosed(f"node {self.node_id} has stopped"))
        return results

    def why_waiting(self, shard: ShardId) -> str | None:
        """What is known to hold up calls to ``shard`` right now (for timeout messages)."""
        stopped = self.stopped()
        if stopped is not None:
            return f"node {self.node_id} stopped: {stopped}"
        view = self.view()
        if view is None:
            return f"node {self.node_id} is not in a view"
        if not view.layout.members_of(shard):
            return unavailable(view, shard)
        return self.why_else(shard)

    # ------------------------------------------------------------------ dispatch (loop)
    def _dispatch(self, call_id: int, out: Outgoing) -> None:
        view = self.view()
        entry = self.calls.get(call_id)
        if entry is None:
            return
        results, shard = entry.results, out.shard
        if view is None:  # joining (or out of the group): say so rather than leave the call hanging
            with self.lock:
                self.calls.pop(call_id, None)
            results.fail(
                ShardUnavailable(
                    f"{results.description} was not sent: node {self.node_id} is not in a view (joining the group); "
                    "call again once it is"
                )
            )
            return
        members = view.layout.members_of(shard)
        if not members:
            with self.lock:
                self.calls.pop(call_id, None)
            results.fail(ShardUnavailable(f"{results.description} was not sent: {unavailable(view, shard)}"))
            return
        if out.ordered:
            if self.node_id in members:
                self.outbox.submit(shard, _codec.PendingCall(self.node_id, call_id, out.method, out.args))
            else:
                size = self.outbox.too_large(out.method, out.args, framed=True)
                if size is not None:
                    with self.lock:
                        self.calls.pop(call_id, None)
                    results.fail(self.outbox.refusal(results.description, size, len(out.args), framed=True))
                    return
                relay = self._relay_for(members)
                with self.lock:
                    self.calls[call_id] = OwnCall(results, relay)
                    self.relayed[call_id] = Relayed(shard, out.method, out.args)
                self.node.send_app(relay, encode(self._relayed_call(call_id, shard, out.method, out.args)))
            return
        target = out.target
        if target is None:
            target = self.node_id if self.node_id in members else members[call_id % len(members)]
        if target not in members:
            with self.lock:
                self.calls.pop(call_id, None)
            results.fail(
                ReplicaLost(
                    f"node {target} holds no replica of {shard} in view {view.vid} (its replicas: {list(members)}); "
                    "the call was not sent",
                    applied=False,
                )
            )
            return
        results.expect((target,))
        if target == self.node_id:
            self.inbound.run_p2p(shard, ReplyTo(self.node_id, call_id, view.vid), out.kind, out.method, out.args)
        else:
            call = Call(call_id, self.node_id, shard, out.method, False, out.args, kind=out.kind)
            self.node.send_app(target, encode(call))

    def _relayed_call(self, call_id: int, shard: ShardId, method: str, args: bytes) -> Call:
        """An ordered call of this node's own, to multicast through a member of ``shard``:
        numbered in this node's session, so a retry through another relay applies once."""
        return Call(call_id, self.node_id, shard, method, True, args, self.origin, self.session_ns, self._floor())

    def _floor(self) -> int:
        """The oldest relayed call still waiting for answers (replicas may drop kept replies
        below it). Call numbers only grow: the hint moves up, each number passed once."""
        with self.lock:
            relayed = self.relayed
            if not relayed:
                return 0
            oldest = self._oldest_relayed
            while oldest not in relayed:
                oldest += 1
            self._oldest_relayed = oldest
            return oldest

    def _relay_for(self, members: tuple[int, ...]) -> int:
        """One relay per caller and shard, so calls from one caller keep their order."""
        return members[self.node_id % len(members)]

    # ------------------------------------------------------------------ answers (loop)
    def take(self, node: int, replicas: tuple[int, ...], entries: Iterable[ReplyEntry], vid: int | None = None) -> None:
        """One replica's answers (of a batch of view ``vid``) to this node's calls: to their
        results; finished calls go."""
        calls = self.calls
        finished = []
        for call_id, ok, value, _origin, version in entries:
            found = calls.get(call_id)
            if found is None:
                continue
            results = found.results
            results.add_reply(node, replicas, ok, value, version, vid)
            if results.done():
                finished.append(call_id)
        if finished:
            with self.lock:
                for call_id in finished:
                    self.calls.pop(call_id, None)
                    self.relayed.pop(call_id, None)

    def on_departed(self, gone: set[int], view: View) -> None:
        """Members left in ``view``: their answers will not come (the results say so), and
        calls they relayed go again through a new relay."""
        with self.lock:
            entries = list(self.calls.items())
        retry = []
        for call_id, (results, relay) in entries:
            results.mark_left(gone, f"left the group in view {view.vid}", view.vid)
            if relay in gone and not results.done():
                retry.append(call_id)
        self._retry_relayed(sorted(retry), view)

    def _retry_relayed(self, call_ids: list[int], view: View) -> None:
        """Send relayed calls whose relay left to a new relay, in their order. Replicas know
        this node's session and the call numbers: one that was applied is not applied again,
        its first reply comes back instead."""
        for call_id in call_ids:
            with self.lock:
                entry, sent = self.calls.get(call_id), self.relayed.get(call_id)
            if entry is None or sent is None:
                continue
            results, shard = entry.results, sent.shard
            members = view.layout.members_of(shard)
            if not members:
                results.fail(ReplicaLost(f"shard {shard} has no members in view {view.vid}"))
                continue
            results.sending_again()
            if self.node_id in members:
                self.outbox.submit(
                    shard,
                    _codec.PendingCall(
                        self.node_id, call_id, sent.method, sent.args, self.origin, self.session_ns, self._floor()
                    ),
                )
                continue
            relay = self._relay_for(members)
            with self.lock:
                self.calls[call_id] = OwnCall(results, relay)
            self.node.send_app(relay, encode(self._relayed_call(call_id, shard, sent.method, sent.args)))

    def fail_pending(self, exc: BaseException) -> None:
        """Every call still waiting fails with ``exc`` (the node stopped or the group closed)."""
        with self.lock:
            entries, self.calls = list(self.calls.values()), {}
        for own in entries:
            own.results.fail(exc)
