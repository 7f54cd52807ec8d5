"""Call routing: from a handle (or a client) to the replicas, and the answers back.

An ordered call from a member of the shard is multicast by that member; from a node outside
the shard it goes to one member of it (the *relay*, one per caller and shard, so calls from
one caller keep their order), which multicasts it. A P2P call goes to one replica. A client's
call comes to its contact, which runs or relays it as its own in the client's session and
forwards the answers. Replicas answer each caller with one ``ReplyBatch`` per delivered batch;
answers for this node's calls feed their ``QueryResults``.

Calls that may be sent twice (relayed calls, clients' calls) are numbered in a session
(``_sessions``): when a relay fails, the call goes again through another and is applied once.

P2P calls with read options (``_consistency``) are handled where they run: a linearizable
read is multicast by the replica that will answer it, a stable read waits at the replica for
the marks the engine reports through :meth:`CallRouter.on_stable`.

What the router keeps for clients is bounded per connection and per identity
(``_client_table``): calls in flight, watch polls, nothing once a connection closes; their
calls are taken at most ``CALLS_PER_TURN`` per loop turn; statistics count methods the types
define and every other name under one label. Parked watch polls expire from one timer heap.

Everything runs on the node's loop except :meth:`CallRouter.call` (any thread).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgpack

from derecho_actors import _codec
from derecho_actors._call_stats import UNKNOWN, CallStats
from derecho_actors._client_table import ClientState, ClientTable, Limit, Proxied, Relay
from derecho_actors._consistency import (
    LINEARIZABLE,
    LOCAL,
    OPTIONS_MARK,
    READ_IN_ORDER,
    STABLE,
    ReadOptions,
    StableReads,
    encode_read,
    split_read,
)
from derecho_actors._decorators import ORDERED, P2P, TypeSpec
from derecho_actors._events import (
    WATCH_POLL,
    PollArgs,
    PollCall,
    WatchExpire,
    WatchPoll,
    decode_answer,
    decode_poll,
    encode_poll,
)
from derecho_actors._messages import Call, Reply, ReplyBatch, ViewNotice, encode
from derecho_actors._replica import P2PRequest, StableMark, in_handler
from derecho_actors._results import PERSISTED_QUERY, QueryResults, ReplyEntry, take_entries
from runtime.config import LimitsSection
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import (
    ClientLimit,
    GroupClosed,
    NestedCallError,
    PayloadTooLarge,
    ReplicaLost,
    ShardUnavailable,
    UnknownMethod,
    WireError,
)
from runtime.node_api import NodeHandle, session_origin

log = logging.getLogger("derecho.routing")

CALLS_PER_TURN = 1024
"""Clients' calls this node takes per loop turn, all clients together (round-robin beyond):
a frame packed with thousands of calls cannot hold the loop (and members' heartbeats) up."""

INTERNAL_P2P = frozenset({WATCH_POLL, PERSISTED_QUERY})
"""The group's own P2P calls a client may make (a watch's poll, a persistence query)."""


HOLD_SLACK = 0.001
"""How early (s) a parked poll's hold may end: a loop may run a timer a little before its time
(asyncio: within its clock's resolution); the poll is then answered, not re-armed for an instant."""


@dataclass(order=True, slots=True)
class _Expiry:
    """A parked watch poll's end of hold, in the node's timer heap (ordered by time on the
    router's timer clock)."""

    deadline: float
    seq: int
    shard: ShardId = field(compare=False)
    call: PollCall = field(compare=False)


def unavailable(view: View, shard: ShardId) -> str:
    """Why ``shard`` has no replicas in ``view``, for people."""
    if not view.layout.adequate:
        return (
            f"view {view.vid} has {view.n} members {list(view.members)}, too few for the layout "
            f"({view.layout.describe_shortfall()}); no shard runs until nodes join"
        )
    known = sorted(str(s) for s in view.layout.shards if s.type_name == shard.type_name)
    return f"the layout of view {view.vid} has no shard {shard} (shards of {shard.type_name}: {', '.join(known) or 'none'})"


class CallRouter:
    def __init__(
        self,
        node: NodeHandle,
        max_payload: int,
        view: Callable[[], View | None],
        stopped: Callable[[], str | None],
        host: Any,
        tracker: Any,
        why_waiting: Callable[[ShardId], str | None],
        specs: Mapping[str, TypeSpec],
        limits: LimitsSection | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``host``: the replica host (``holds``, ``tell``); ``tracker``: persistence (its
        ``query`` answers ``persisted()``); ``why_waiting(shard)``: what else may hold a
        call up (a state transfer); ``specs``: the group's types by name (a client's call to
        a method its type does not define is refused here, and counted under one label);
        ``limits``: the node's per-client limits (``[limits]``); ``clock``: the clock
        ``node.call_later`` runs on, in seconds (``node.monotonic`` if not given)."""
        self.node = node
        self.node_id = node.node_id
        self.max_payload = max_payload
        self.view = view
        self.stopped = stopped
        self.host = host
        self.tracker = tracker
        self.why_else = why_waiting
        self.calls: dict[int, tuple[QueryResults, int | None]] = {}  # call id -> (results, relay node)
        self.relayed: dict[int, tuple[ShardId, str, bytes]] = {}  # this node's relayed calls, to retry
        self._oldest_relayed = 1
        self.specs = specs
        lim = limits or LimitsSection()
        # Clients this node serves: their calls whose answers it forwards, and those it relayed
        # (retried through another member if that one fails before answering).
        self.clients = ClientTable(lim.client_max_in_flight, lim.max_watch_polls_per_client, node.wall_ns)
        self.proxies = self.clients.proxies
        self.client_relays = self.clients.relays
        # Parked watch polls' ends of hold, soonest first: one timer for the soonest, and all
        # polls due at once expire in one message per shard (no scan of the parked polls).
        self._expiries: list[_Expiry] = []
        self._expiry_seq = itertools.count()
        self._clock = clock or node.monotonic
        # The pending expiry timer, while the heap is not empty: (its deadline, its token). A
        # timer set for an earlier deadline supersedes it; a superseded timer does nothing.
        self._timer: tuple[float, int] | None = None
        self._timer_tokens = itertools.count(1)
        self._client_out: dict[Any, list[bytes]] = {}
        self._refused: dict[Any, list[tuple[int, ReplyEntry]]] = {}  # per client: (vid, refusal)
        self._refusals: dict[tuple[str, str], bytes] = {}  # encoded refusals, reused while they repeat
        self._flush_scheduled = False
        self._turn_calls = 0  # clients' calls taken this loop turn
        self._turn_scheduled = False
        self._waiting: collections.deque[ClientState] = collections.deque()  # clients with calls waiting
        self._outgoing: dict[ShardId, list[_codec.PendingCall]] = {}  # ordered calls to multicast this loop turn
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        # This node's own session, for calls it relays through another member: a retry
        # through a new relay after a failure is applied once (as for Clients).
        self.session_ns = node.wall_ns()
        self.origin = session_origin(f"node:{self.node_id}", node.incarnation)
        self._stable: dict[ShardId, StableReads] = {}  # per shard: marks heard, stable reads waiting
        self.call_stats = CallStats()  # clients' calls through this node (status, metrics)

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
        if in_handler():
            raise NestedCallError(
                f"{spec.name}.{method} was called from inside a replicated method; the replica runs one "
                "call at a time, so this could deadlock it"
            )
        stopped = self.stopped()
        if stopped is not None:
            raise GroupClosed(f"node {self.node_id} stopped: {stopped}")
        kind = spec.methods[method]
        data = _codec.encode_args(args, kwargs, spec.serializer)
        if read is not None:
            data = encode_read(read, data)
        self.check_size(f"{spec.name}.{method}", method, data)
        serializer = spec.serializer
        results = self._issue(
            shard,
            method,
            kind,
            data,
            node,
            f"{spec.name}.{method}",
            lambda b: _codec.decode_result(b, serializer),
            spec.on_divergence if kind == ORDERED else None,
        )
        if spec.persistent and kind == ORDERED:
            results._persist_query = lambda version, replica: self._issue(
                shard,
                PERSISTED_QUERY,
                P2P,
                msgpack.packb(version),
                replica,
                f"persistence of {spec.name}.{method}",
                msgpack.unpackb,
            )
        return results

    def check_size(self, what: str, method: str, args: bytes) -> None:
        size = _codec.call_size(method, args)
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"{what}: the call takes {size} bytes (arguments {len(args)}); the group's limit is "
                f"{self.max_payload} (multicast.max_message_size): send less per call"
            )

    def _issue(
        self,
        shard: ShardId,
        method: str,
        kind: str,
        data: bytes,
        node: int | None,
        what: str,
        decode: Callable[[bytes], Any],
        compare: str | None = None,
    ) -> QueryResults:
        call_id = next(self._ids)
        results = QueryResults(f"{what} (call {call_id})", decode)
        results.ordered = kind == ORDERED
        results._compare = compare
        results._why_waiting = lambda: self.why_waiting(shard)
        with self.lock:
            self.calls[call_id] = (results, None)
        if not self.node.call_soon(self._dispatch, call_id, shard, method, kind, data, node):
            results._fail_all(GroupClosed(f"node {self.node_id} has stopped"))
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
    def _dispatch(self, call_id: int, shard: ShardId, method: str, kind: str, data: bytes, node: int | None) -> None:
        view = self.view()
        entry = self.calls.get(call_id)
        if entry is None or view is None:
            return
        results = entry[0]
        members = view.layout.members_of(shard)
        if not members:
            with self.lock:
                self.calls.pop(call_id, None)
            results._fail_all(ShardUnavailable(f"{results.description} was not sent: {unavailable(view, shard)}"))
            return
        if kind == ORDERED:
            if self.node_id in members:
                self.submit(shard, _codec.PendingCall(self.node_id, call_id, method, data))
            else:
                relay = self._relay_for(members)
                with self.lock:
                    self.calls[call_id] = (results, relay)
                    self.relayed[call_id] = (shard, method, data)
                self.node.send_app(relay, encode(self._relayed_call(call_id, shard, method, data)))
            return
        target = (
            node if node is not None else (self.node_id if self.node_id in members else members[call_id % len(members)])
        )
        if target not in members:
            results._fail_all(
                ReplicaLost(
                    f"node {target} holds no replica of {shard} in view {view.vid} (its replicas: {list(members)}); "
                    "the call was not sent",
                    applied=False,
                )
            )
            return
        results._expect((target,))
        if target == self.node_id:
            self.p2p_here(shard, view.vid, self.node_id, call_id, method, data, 0)
        else:
            self.node.send_app(target, encode(Call(call_id, self.node_id, shard, method, False, data)))

    def _relayed_call(self, call_id: int, shard: ShardId, method: str, data: bytes) -> Call:
        """An ordered call of this node's own, to multicast through a member of ``shard``:
        numbered in this node's session, so a retry through another relay applies once."""
        return Call(call_id, self.node_id, shard, method, True, data, self.origin, self.session_ns, self._floor())

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

    def p2p_here(
        self, shard: ShardId, vid: int, caller: int, call_id: int, method: str, args: bytes, origin: int
    ) -> None:
        """Run a P2P call on this node's replica; persistence queries are answered here. A read
        with options goes its own way (see ``_consistency``)."""
        if method == PERSISTED_QUERY:
            self.tracker.query(shard, vid, caller, call_id, args, origin)
            return
        if method == WATCH_POLL:
            self._watch_here(shard, vid, caller, call_id, args, origin)
            return
        read = None
        if args and args[0] == OPTIONS_MARK:
            try:
                read, args = split_read(args)
            except WireError as exc:
                err = _codec.encode_error(exc)
                self.route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])
                return
        if read is not None and read.level != LOCAL:
            self._read_here(shard, vid, caller, call_id, method, args, origin, read)
            return
        if not self.host.tell(shard, P2PRequest(vid, caller, call_id, method, args, origin, read)):
            self._no_replica(shard, vid, caller, call_id, origin)

    def _watch_here(self, shard: ShardId, vid: int, caller: int, call_id: int, args: bytes, origin: int) -> None:
        """A watch's poll: the replica answers at once if it has events after the watch's
        position, else holds the poll; after the hold time it answers with none."""
        try:
            poll = decode_poll(args)
        except WireError as exc:
            err = _codec.encode_error(exc)
            self.route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])
            return
        if not self.host.tell(shard, WatchPoll(vid, caller, call_id, origin, poll)):
            self._no_replica(shard, vid, caller, call_id, origin)
            return
        if poll.hold > 0:
            deadline = self._clock() + poll.hold
            heapq.heappush(
                self._expiries, _Expiry(deadline, next(self._expiry_seq), shard, PollCall(caller, call_id, origin))
            )
            if self._timer is None or deadline < self._timer[0]:
                self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        """Set the expiry timer for ``deadline`` (on the timer clock), superseding any other."""
        token = next(self._timer_tokens)
        self._timer = (deadline, token)
        self.node.call_later(max(0.0, deadline - self._clock()), self._expire_due, token)

    def _expire_due(self, token: int) -> None:
        """The timer of the soonest hold: answer every poll whose hold has ended, one message
        per shard, and set the timer for the next; while any poll is in the heap one timer is
        pending, even if this one ran before its time. (A poll answered earlier leaves its
        entry here until its time; the replica ignores what is no longer parked.)"""
        if self._timer is None or self._timer[1] != token:
            return  # superseded by a timer for an earlier deadline, which re-arms
        self._timer = None
        now = self._clock()
        heap = self._expiries
        due: dict[ShardId, list[PollCall]] = {}
        while heap and heap[0].deadline <= now + HOLD_SLACK:
            e = heapq.heappop(heap)
            due.setdefault(e.shard, []).append(e.call)
        if heap:
            self._arm(heap[0].deadline)  # before telling: re-armed whatever the replicas do
        for shard, calls in due.items():
            self.host.tell(shard, WatchExpire(tuple(calls)))

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        """Send one poll of a watch (``_watch.Watch``) from this node."""
        return self._issue(shard, WATCH_POLL, P2P, encode_poll(poll), node, what, decode_answer)

    def _no_replica(self, shard: ShardId, vid: int, caller: int, call_id: int, origin: int) -> None:
        why = self.host.refusal(shard) or ReplicaLost(f"node {self.node_id} holds no replica of {shard}", applied=False)
        err = _codec.encode_refusal(why)
        self.route_replies([(caller, Reply(call_id, self.node_id, vid, (self.node_id,), False, err, origin))])

    # ------------------------------------------------------------------ reads (loop)
    def _read_here(
        self,
        shard: ShardId,
        vid: int,
        caller: int,
        call_id: int,
        method: str,
        args: bytes,
        origin: int,
        read: ReadOptions,
    ) -> None:
        """A linearizable read goes into the order, multicast by this node, which alone runs
        it when it is delivered; a stable read goes to the replica with the latest mark."""
        if not self.host.holds(shard):
            self._no_replica(shard, vid, caller, call_id, origin)
            return
        if read.level == LINEARIZABLE:
            self.submit(shard, _codec.PendingCall(caller, call_id, method, args, origin, READ_IN_ORDER, self.node_id))
            return
        assert read.level == STABLE
        stable = self._stable.get(shard)
        if stable is None:
            stable = self._stable[shard] = StableReads()
        seq = stable.issue()
        if not self.host.tell(
            shard, P2PRequest(vid, caller, call_id, method, args, origin, read, stable.mark, seq, stable)
        ):
            stable.finished(1)
            self._no_replica(shard, vid, caller, call_id, origin)
            return
        if not stable.timer:
            stable.timer = True
            self.node.call_later(StableReads.SYNC_AFTER, self._stable_tick, shard)

    def on_stable(self, shard: ShardId, vid: int, index: int) -> None:
        """The engine's ``AppHooks.on_stable``: every member of ``shard`` has delivered view
        ``vid``'s messages of global index below ``index``. Passed on to the replica only while
        stable reads wait there."""
        stable = self._stable.get(shard)
        if stable is None:
            stable = self._stable[shard] = StableReads()
        if stable.moved(vid, index) and stable.waiting > 0:
            self.host.tell(shard, StableMark(vid, index))

    def _stable_tick(self, shard: ShardId) -> None:
        """While stable reads wait: an empty multicast, so every member's delivered count moves
        past what the replica applied even if no call comes; reads waiting too long fail."""
        stable = self._stable.get(shard)
        if stable is None:
            return
        expire = stable.tick()
        if stable.waiting <= 0 or not self.host.holds(shard):
            stable.timer = False
            return
        self.node.send_ordered(shard, [_codec.empty_ordered(self.node.wall_ns())])
        self.host.tell(shard, StableMark(*stable.mark, expire))
        self.node.call_later(StableReads.SYNC_AFTER, self._stable_tick, shard)

    def submit(self, shard: ShardId, call: _codec.PendingCall) -> None:
        """Queue an ordered call for multicast; everything queued in one loop turn goes out in
        as few multicast messages as the size limit allows."""
        queued = self._outgoing.get(shard)
        if queued is not None:
            queued.append(call)
            return
        self._outgoing[shard] = [call]
        if len(self._outgoing) == 1:
            self.node.call_later(0, self._flush_outgoing)

    def _flush_outgoing(self) -> None:
        out, self._outgoing = self._outgoing, {}
        now = self.node.wall_ns()
        for shard, calls in out.items():
            self.node.send_ordered(shard, _codec.encode_ordered(calls, self.max_payload, now))

    # ------------------------------------------------------------------ calls from members
    def on_member_call(self, sender: int, msg: Call) -> None:
        """A member's call to run here: a P2P call, or an ordered call to multicast for it."""
        view = self.view()
        vid = view.vid if view is not None else 0
        refusal: Exception | None = None
        size = _codec.call_size(msg.method, msg.args)
        if view is None or not self.host.holds(msg.shard):
            refusal = self.host.refusal(msg.shard) or ReplicaLost(
                f"node {self.node_id} holds no replica of {msg.shard}", applied=False
            )
        elif size > self.max_payload:  # a member whose limit differs from ours: refuse, never drop
            refusal = PayloadTooLarge(
                f"call {msg.call_id} takes {size} bytes; node {self.node_id}'s limit is "
                f"{self.max_payload} (multicast.max_message_size): members should share one limit"
            )
        if refusal is not None:
            err = _codec.encode_refusal(refusal)  # type: ignore[arg-type]
            self.node.send_app(
                sender, encode(Reply(msg.call_id, self.node_id, vid, (self.node_id,), False, err, msg.origin))
            )
            return
        if msg.ordered:
            self.submit(
                msg.shard,
                _codec.PendingCall(
                    sender, msg.call_id, msg.method, msg.args, msg.origin, msg.session_ns, msg.floor, msg.owner
                ),
            )
        else:
            self.p2p_here(msg.shard, vid, sender, msg.call_id, msg.method, msg.args, msg.origin)

    # ------------------------------------------------------------------ calls from clients
    def on_client_calls(self, conn: Any, calls: tuple[Call, ...]) -> None:
        """A client's calls as they arrive: taken now while this loop turn's budget
        (``CALLS_PER_TURN``) lasts and none of its calls wait, else queued in order and taken on
        later turns, round-robin among clients. A client with more than twice
        ``limits.client_max_in_flight`` calls waiting sends faster than any honest client could
        be served: it is cut off, with a WARNING naming it."""
        if getattr(conn, "closed", False):  # frames read before it closed: nobody to answer
            return
        client = self.clients.state(conn)
        if not client.inbox and self._turn_calls < CALLS_PER_TURN:
            room = CALLS_PER_TURN - self._turn_calls
            self._spend(min(room, len(calls)))
            for call in calls[:room]:
                self.on_client_call(conn, call)
            calls = calls[room:]
            if not calls or client.closed:
                return
        client.inbox.extend(calls)
        waiting = len(client.inbox)
        if waiting > 2 * self.clients.max_in_flight:
            self.clients.warn(
                client,
                Limit.WAITING,
                f"it sent calls faster than they are taken ({waiting} waiting); its connection is cut off",
                cut_off=True,
            )
            conn.close()
            self.on_client_closed(conn)
            return
        if not client.waiting:
            client.waiting = True
            self._waiting.append(client)
        self._spend(0)

    def _spend(self, calls: int) -> None:
        self._turn_calls += calls
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self.node.call_later(0, self._next_turn)

    def _next_turn(self) -> None:
        """A new loop turn: the budget is whole again; clients with calls waiting take turns,
        up to 64 calls each per round."""
        self._turn_scheduled = False
        self._turn_calls = 0
        waiting = self._waiting
        budget = CALLS_PER_TURN
        while waiting and budget > 0:
            client = waiting.popleft()
            if client.closed:
                continue
            inbox = client.inbox
            n = min(len(inbox), 64, budget)
            budget -= n
            try:
                for _ in range(n):
                    self.on_client_call(client.conn, inbox.popleft())
                    if client.closed:
                        break
            except Exception:  # a bug: this client is cut off, the others keep their turn
                log.exception("node %d: taking a call of %s failed; its connection is closed", self.node_id, client.who)
                client.waiting = False
                self._close_client(client.conn)
                continue
            if inbox and not client.closed:
                waiting.append(client)
            else:
                client.waiting = False
        self._turn_calls = CALLS_PER_TURN - budget
        if waiting:
            self._spend(0)

    def _close_client(self, conn: Any) -> None:
        """Close a client's connection and forget what is kept for it (a failure is logged)."""
        try:
            conn.close()
        except Exception:
            log.exception("node %d: closing the connection of a failed client failed", self.node_id)
        try:
            self.on_client_closed(conn)
        except Exception:
            log.exception("node %d: forgetting a failed client failed", self.node_id)

    def on_client_call(self, conn: Any, msg: Call) -> None:
        """A call from an external client on its connection to this node: run or relay it as
        our own, in the client's session, and forward the replicas' answers. The session's
        origin is the one the node derived from the client's authenticated identity (whatever
        the message says), so no client can act in another's session; so is the owner its
        ordered calls carry (whatever the message says), which replicas bound sessions by."""
        origin = conn.origin
        session_ns = conn.incarnation or 0
        view = self.view()
        if not origin or view is None:
            return
        clients = self.clients
        client = clients.state(conn)
        label = self._label(msg)
        members = view.layout.members_of(msg.shard)
        poll = msg.method == WATCH_POLL and not msg.ordered
        refusal: Exception | None = None
        size = _codec.call_size(msg.method, msg.args)
        if size > self.max_payload:
            refusal = PayloadTooLarge(
                f"call {msg.call_id} takes {size} bytes; the group's limit is {self.max_payload} "
                "(multicast.max_message_size); it was not run"
            )
        elif not members:
            refusal = ShardUnavailable(f"call {msg.call_id} was not run: {unavailable(view, msg.shard)}")
        elif label == UNKNOWN:
            refusal = self._unknown_method(client, msg)
        elif not msg.ordered and msg.target and msg.target not in members:
            refusal = ReplicaLost(
                f"node {msg.target} holds no replica of {msg.shard} in view {view.vid} (its replicas: {list(members)}); "
                "the call was not run",
                applied=False,
            )
        else:
            limit = clients.admit(client, poll)
            if limit is not None:
                clients.warn(client, limit[0], limit[1])
                refusal = ClientLimit(f"refused by node {self.node_id}: {limit[1]}")
        if refusal is not None:
            self.call_stats.done(label, "refused", None)
            self._refuse_client(conn, msg.call_id, origin, view.vid, refusal)
            return
        key = (origin, msg.call_id)
        proxy = Proxied(client, label, self.node.wall_ns(), poll=poll)
        clients.add(client, key, proxy)
        if not msg.ordered and msg.target:
            target = msg.target  # the client asked for this replica (P2P node=)
        elif self.node_id in members:
            target = self.node_id
        else:
            target = members[origin % len(members)]
        owner = client.owner
        if target == self.node_id:
            if msg.ordered:
                self.submit(
                    msg.shard,
                    _codec.PendingCall(
                        self.node_id, msg.call_id, msg.method, msg.args, origin, session_ns, msg.floor, owner
                    ),
                )
            else:
                if poll:
                    proxy.local = msg.shard  # freed here at once if the client goes away
                self.p2p_here(msg.shard, view.vid, self.node_id, msg.call_id, msg.method, msg.args, origin)
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
        )
        # Until an answer comes, remember where it went: if that member fails first, the call
        # goes again through another (ordered: applied once, by the session table) or, for
        # P2P, the client is told at once.
        clients.relay(key, Relay(target, call, client))
        self.node.send_app(target, encode(call))

    def refuse_overflow(self, conn: Any, call_ids: tuple[int, ...]) -> None:
        """Calls of one frame beyond what a client may have unanswered: refused unread."""
        view = self.view()
        origin = conn.origin
        if not origin or view is None or not call_ids or getattr(conn, "closed", False):
            return
        client = self.clients.state(conn)
        detail = (
            f"it sent {self.clients.max_in_flight + len(call_ids)} calls in one frame, more than it may have "
            f"unanswered ({Limit.IN_FLIGHT.value} = {self.clients.max_in_flight}); the calls beyond were not run"
        )
        self.clients.warn(client, Limit.IN_FLIGHT, detail)
        refusal = ClientLimit(
            f"refused by node {self.node_id}: more calls in one frame than a client may have unanswered "
            f"({Limit.IN_FLIGHT.value} = {self.clients.max_in_flight}); not run: wait for answers, then retry"
        )
        for call_id in call_ids:
            self._refuse_client(conn, call_id, origin, view.vid, refusal)
        self.call_stats.done(UNKNOWN, "refused", None, len(call_ids))

    def _label(self, msg: Call) -> str:
        """The method as statistics count it: its name if its type defines it with this kind
        (or it is one of the group's own P2P calls), else :data:`UNKNOWN`, so what clients
        send cannot grow the statistics."""
        spec = self.specs.get(msg.shard.type_name)
        if spec is None:
            return UNKNOWN
        kind = spec.methods.get(msg.method)
        if kind is None:
            return msg.method if not msg.ordered and msg.method in INTERNAL_P2P else UNKNOWN
        return msg.method if (kind == ORDERED) == msg.ordered else UNKNOWN

    def _unknown_method(self, client: ClientState, msg: Call) -> Exception:
        """A call to a method its type does not define (a client built against another
        version of the type, or one probing): refused here, before it costs an ordered slot."""
        spec = self.specs.get(msg.shard.type_name)
        shown = msg.method if len(msg.method) <= 64 else msg.method[:64] + "..."
        kind = spec.methods.get(msg.method) if spec is not None else None
        if spec is None:
            why = f"this node hosts no type {msg.shard.type_name!r}"
        elif kind is None:
            why = f"{spec.name} has no @ordered or @p2p method {shown!r}"
        else:
            why = f"{spec.name}.{shown} is {kind}, but it was sent as {'ordered' if msg.ordered else 'p2p'}"
        self.clients.warn(client, Limit.UNKNOWN_METHOD, f"it called methods its types do not define (first: {why})")
        return UnknownMethod(f"not run: {why}")

    def _refuse_client(self, conn: Any, call_id: int, origin: int, vid: int, refusal: Exception) -> None:
        """Tell a client this node refused its call. A client's refusals of one loop turn go in
        one ReplyBatch, and a refusal repeated word for word is encoded once: a burst of
        refused calls costs the loop little more per call than reading it."""
        key = (type(refusal).__name__, str(refusal))
        value = self._refusals.get(key)
        if value is None:
            if len(self._refusals) >= 256:
                self._refusals.clear()
            value = self._refusals[key] = _codec.encode_refusal(refusal)  # type: ignore[arg-type]
        queued = self._refused.get(conn)
        if queued is None:
            queued = self._refused[conn] = []
            self._schedule_flush()
        queued.append((vid, (call_id, False, value, origin, -1)))

    def _to_client(self, conn: Any, data: bytes) -> None:
        """Queue a message for a client connection; all queued in one loop turn go together."""
        queued = self._client_out.get(conn)
        if queued is not None:
            queued.append(data)
            return
        self._client_out[conn] = [data]
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.node.call_later(0, self._flush_clients)

    def _flush_clients(self) -> None:
        self._flush_scheduled = False
        refused, self._refused = self._refused, {}
        for conn, items in refused.items():
            by_vid: dict[int, list[ReplyEntry]] = {}
            for vid, entry in items:
                by_vid.setdefault(vid, []).append(entry)
            queued = self._client_out.setdefault(conn, [])
            for vid, entries in by_vid.items():
                queued.append(encode(ReplyBatch(self.node_id, vid, (self.node_id,), tuple(entries))))
        out, self._client_out = self._client_out, {}
        for conn, messages in out.items():
            self.node.reply_client(conn, *messages)

    # ------------------------------------------------------------------ answers
    def send_replies(self, replies: list[tuple[int, Reply]]) -> None:
        """From a replica's thread: one hand-off per batch to the node's loop."""
        self.node.call_soon(self.route_replies, replies)

    def route_replies(self, replies: list[tuple[int, Reply]]) -> None:
        """A replica's answers (one delivered batch): one ReplyBatch per caller and view."""
        groups: dict[tuple[int, int, int, tuple[int, ...]], list[ReplyEntry]] = {}
        for caller, r in replies:
            key = (caller, r.node, r.vid, r.replicas)
            entry = (r.call_id, r.ok, r.value, r.origin, r.version)
            group = groups.get(key)
            if group is None:
                groups[key] = [entry]
            else:
                group.append(entry)
        for (caller, node, vid, replicas), entries in groups.items():
            batch = ReplyBatch(node, vid, replicas, tuple(entries))
            if caller == self.node_id:
                self.take_batch(batch)
            else:
                self.node.send_app(caller, encode(batch))

    def take_reply(self, reply: Reply) -> None:
        self.take_batch(
            ReplyBatch(
                reply.node,
                reply.vid,
                reply.replicas,
                ((reply.call_id, reply.ok, reply.value, reply.origin, reply.version),),
            )
        )

    def take_batch(self, batch: ReplyBatch) -> None:
        """Answers for this node's calls go to their results; answers for clients this node
        serves go on to them, one ReplyBatch per client."""
        node, replicas = batch.node, batch.replicas
        mine = self.origin
        for_clients: dict[Any, list[ReplyEntry]] = {}
        own: list[ReplyEntry] = []
        for entry in batch.entries:
            call_id, _ok, _value, origin, _version = entry
            if not origin or origin == mine:
                own.append(entry)
                continue
            key = (origin, call_id)
            proxy = self.proxies.get(key)
            if proxy is not None:
                relay = self.client_relays.get(key)
                if relay is not None and relay.client is proxy.client:
                    del self.client_relays[key]  # answered: delivered, no resend needed
                for_clients.setdefault(proxy.client.conn, []).append(entry)
                if proxy.left < 0:  # the first answer: outcome and latency
                    if not proxy.label.startswith("__"):
                        ms = (self.node.wall_ns() - proxy.started_ns) / 1e6
                        self.call_stats.done(proxy.label, "ok" if _ok else "error", ms)
                    if not _ok:
                        self._check_refusal(proxy.client, _value)
                self.clients.answer(key, proxy, node, replicas)
        finished = take_entries(self.calls, node, replicas, own) if own else []
        if finished:
            with self.lock:
                for call_id in finished:
                    self.calls.pop(call_id, None)
                    self.relayed.pop(call_id, None)
        for conn, entries in for_clients.items():
            self._to_client(conn, encode(ReplyBatch(node, batch.vid, replicas, tuple(entries))))

    def _check_refusal(self, client: ClientState, value: bytes) -> None:
        """The replicas refused a client's call for its identity's session bound: name the
        client in a WARNING here, where its identity is known (replicas know only a digest)."""
        try:
            name = msgpack.unpackb(value, raw=False)[0]
        except Exception:
            return
        if name == "SessionLimit":
            self.clients.warn(client, Limit.SESSIONS, "the replicas refused a new session of it (SessionLimit)")

    # ------------------------------------------------------------------ clients going away
    def on_client_closed(self, conn: Any) -> None:
        """``AppHooks.on_client_closed``: forget everything kept for the connection (its
        calls' proxies and relays, its watch polls, its queued replies), so nothing of it
        stays; its polls parked at replicas here are answered at once, freeing them too.
        Answers that still come for its calls find no proxy and go nowhere."""
        self._client_out.pop(conn, None)
        self._refused.pop(conn, None)
        parked = self.clients.forget(conn)
        by_shard: dict[ShardId, list[PollCall]] = {}
        for shard, (origin, call_id) in parked:
            by_shard.setdefault(shard, []).append(PollCall(self.node_id, call_id, origin))
        for shard, calls in by_shard.items():
            self.host.tell(shard, WatchExpire(tuple(calls)))

    # ------------------------------------------------------------------ views
    def on_view(self, previous: View | None, view: View) -> None:
        if previous is None:
            return
        gone = set(previous.members) - set(view.members)
        if (gone or not view.layout.adequate or not previous.layout.adequate) and self.clients.clients:
            # Clients cannot see views: tell them who left, so their calls stop waiting, and
            # whether shards cannot run, so a call that waits says why.
            note = encode(
                ViewNotice(
                    view.vid,
                    view.members,
                    tuple(sorted(gone)),
                    "" if view.layout.adequate else unavailable(view, ShardId("", 0, 0)),
                )
            )
            for conn in list(self.clients.clients):
                if getattr(conn, "closed", False):
                    self.on_client_closed(conn)
                else:
                    self.node.reply_client(conn, note)
        if not gone:
            return
        with self.lock:
            entries = list(self.calls.items())
        retry = []
        for call_id, (results, relay) in entries:
            results._lost(gone, f"left the group in view {view.vid}")
            if relay in gone and not results.done():
                retry.append(call_id)
        self._retry_relayed(sorted(retry), view)
        self._retry_client_relays(gone, view)
        self.clients.depart(gone)

    def _retry_relayed(self, call_ids: list[int], view: View) -> None:
        """Send relayed calls whose relay left to a new relay, in their order. Replicas know
        this node's session and the call numbers: one that was applied is not applied again,
        its first reply comes back instead."""
        for call_id in call_ids:
            with self.lock:
                entry, spec = self.calls.get(call_id), self.relayed.get(call_id)
            if entry is None or spec is None:
                continue
            results = entry[0]
            shard, method, data = spec
            members = view.layout.members_of(shard)
            if not members:
                results._fail_all(ReplicaLost(f"shard {shard} has no members in view {view.vid}"))
                continue
            results._restart()
            if self.node_id in members:
                self.submit(
                    shard,
                    _codec.PendingCall(
                        self.node_id, call_id, method, data, self.origin, self.session_ns, self._floor()
                    ),
                )
                continue
            relay = self._relay_for(members)
            with self.lock:
                self.calls[call_id] = (results, relay)
            self.node.send_app(relay, encode(self._relayed_call(call_id, shard, method, data)))

    def _retry_client_relays(self, gone: set[int], view: View) -> None:
        """Clients' calls this node relayed to members that left before answering."""
        for key, relay in list(self.client_relays.items()):
            target, call, client = relay.target, relay.call, relay.client
            if target not in gone:
                continue
            origin = key[0]
            members = view.layout.members_of(call.shard)
            refusal: Exception | None = None
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
                self.clients.drop(key)
                self.client_relays.pop(key, None)
                self._refuse_client(client.conn, call.call_id, origin, view.vid, refusal)
                continue
            if self.node_id in members:
                del self.client_relays[key]
                self.submit(
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
            self.node.send_app(relay.target, encode(call))

    def fail_pending(self, exc: BaseException) -> None:
        with self.lock:
            entries, self.calls = list(self.calls.values()), {}
        for results, _ in entries:
            results._fail_all(exc)
