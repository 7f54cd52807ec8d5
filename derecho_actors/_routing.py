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

Everything runs on the node's loop except :meth:`CallRouter.call` (any thread).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any, Callable

import msgpack

from derecho_actors import _codec
from derecho_actors._call_stats import CallStats
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
from derecho_actors._events import WATCH_POLL, PollArgs, WatchExpire, WatchPoll, decode_answer, decode_poll, encode_poll
from derecho_actors._messages import Call, Reply, ReplyBatch, ViewNotice, encode
from derecho_actors._replica import P2PRequest, StableMark, in_handler
from derecho_actors._results import PERSISTED_QUERY, QueryResults, ReplyEntry, take_entries
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import GroupClosed, NestedCallError, PayloadTooLarge, ReplicaLost, ShardUnavailable, WireError
from runtime.node_api import NodeHandle, session_origin

log = logging.getLogger("derecho.routing")

MAX_PROXIED = 200_000  # client calls a node forwards replies for (or relays), at most


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
    ) -> None:
        """``host``: the replica host (``holds``, ``tell``); ``tracker``: persistence (its
        ``query`` answers ``persisted()``); ``why_waiting(shard)``: what else may hold a
        call up (a state transfer)."""
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
        # (client origin, call id) -> [client connection, replies still to forward]; oldest first.
        self.proxies: collections.OrderedDict[tuple[int, int], list[Any]] = collections.OrderedDict()
        # (client origin, call id) -> (member it was relayed to, the Call, client connection),
        # until the first answer: retried through another member if that one fails.
        self.client_relays: dict[tuple[int, int], tuple[int, Call, Any]] = {}
        self.clients: set[Any] = set()  # client connections this node serves
        self._client_out: dict[Any, list[bytes]] = {}
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
                self.submit(shard, (self.node_id, call_id, method, data, 0, 0, 0))
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
            self.node.call_later(poll.hold, self.host.tell, shard, WatchExpire(caller, call_id, origin))

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        """Send one poll of a watch (``_watch.Watch``) from this node."""
        return self._issue(shard, WATCH_POLL, P2P, encode_poll(poll), node, what, decode_answer)

    def _no_replica(self, shard: ShardId, vid: int, caller: int, call_id: int, origin: int) -> None:
        err = _codec.encode_refusal(ReplicaLost(f"node {self.node_id} holds no replica of {shard}", applied=False))
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
            self.submit(shard, (caller, call_id, method, args, origin, READ_IN_ORDER, self.node_id))
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
            refusal = ReplicaLost(f"node {self.node_id} holds no replica of {msg.shard}", applied=False)
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
            self.submit(msg.shard, (sender, msg.call_id, msg.method, msg.args, msg.origin, msg.session_ns, msg.floor))
        else:
            self.p2p_here(msg.shard, vid, sender, msg.call_id, msg.method, msg.args, msg.origin)

    # ------------------------------------------------------------------ calls from clients
    def on_client_call(self, conn: Any, msg: Call) -> None:
        """A call from an external client on its connection to this node: run or relay it as
        our own, in the client's session, and forward the replicas' answers. The session's
        origin is the one the node derived from the client's authenticated identity (whatever
        the message says), so no client can act in another's session."""
        origin = conn.origin
        session_ns = conn.incarnation or 0
        view = self.view()
        if not origin or view is None:
            return
        self.clients.add(conn)
        members = view.layout.members_of(msg.shard)
        refusal: Exception | None = None
        size = _codec.call_size(msg.method, msg.args)
        if size > self.max_payload:
            refusal = PayloadTooLarge(
                f"call {msg.call_id} takes {size} bytes; the group's limit is {self.max_payload} "
                "(multicast.max_message_size); it was not run"
            )
        elif not members:
            refusal = ShardUnavailable(f"call {msg.call_id} was not run: {unavailable(view, msg.shard)}")
        elif not msg.ordered and msg.target and msg.target not in members:
            refusal = ReplicaLost(
                f"node {msg.target} holds no replica of {msg.shard} in view {view.vid} (its replicas: {list(members)}); "
                "the call was not run",
                applied=False,
            )
        if refusal is not None:
            self.call_stats.done(msg.method, "refused", None)
            self._refuse_client(conn, msg.call_id, origin, view.vid, refusal)
            return
        self.proxies[(origin, msg.call_id)] = [conn, -1, msg.method, self.node.wall_ns()]
        if len(self.proxies) > MAX_PROXIED:  # calls whose replies never all came (replicas lost)
            self.proxies.popitem(last=False)
        if not msg.ordered and msg.target:
            target = msg.target  # the client asked for this replica (P2P node=)
        elif self.node_id in members:
            target = self.node_id
        else:
            target = members[origin % len(members)]
        if target == self.node_id:
            if msg.ordered:
                self.submit(msg.shard, (self.node_id, msg.call_id, msg.method, msg.args, origin, session_ns, msg.floor))
            else:
                self.p2p_here(msg.shard, view.vid, self.node_id, msg.call_id, msg.method, msg.args, origin)
            return
        call = Call(
            msg.call_id, self.node_id, msg.shard, msg.method, msg.ordered, msg.args, origin, session_ns, msg.floor
        )
        # Until an answer comes, remember where it went: if that member fails first, the call
        # goes again through another (ordered: applied once, by the session table) or, for
        # P2P, the client is told at once.
        self.client_relays[(origin, msg.call_id)] = (target, call, conn)
        if len(self.client_relays) > MAX_PROXIED:
            self.client_relays.pop(next(iter(self.client_relays)))
        self.node.send_app(target, encode(call))

    def _refuse_client(self, conn: Any, call_id: int, origin: int, vid: int, refusal: Exception) -> None:
        reply = Reply(call_id, self.node_id, vid, (self.node_id,), False, _codec.encode_refusal(refusal), origin)  # type: ignore[arg-type]
        self._to_client(conn, encode(reply))

    def _to_client(self, conn: Any, data: bytes) -> None:
        """Queue a message for a client connection; all queued in one loop turn go together."""
        queued = self._client_out.get(conn)
        if queued is not None:
            queued.append(data)
            return
        self._client_out[conn] = [data]
        if len(self._client_out) == 1:
            self.node.call_later(0, self._flush_clients)

    def _flush_clients(self) -> None:
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
                self.client_relays.pop(key, None)  # answered: delivered, no resend needed
                for_clients.setdefault(proxy[0], []).append(entry)
                if proxy[1] < 0 and not proxy[2].startswith("__"):  # the first answer: outcome and latency
                    ms = (self.node.wall_ns() - proxy[3]) / 1e6
                    self.call_stats.done(proxy[2], "ok" if _ok else "error", ms)
                left = proxy[1] = (len(replicas) if proxy[1] < 0 else proxy[1]) - 1
                if left <= 0:
                    del self.proxies[key]
        finished = take_entries(self.calls, node, replicas, own) if own else []
        if finished:
            with self.lock:
                for call_id in finished:
                    self.calls.pop(call_id, None)
                    self.relayed.pop(call_id, None)
        for conn, entries in for_clients.items():
            self._to_client(conn, encode(ReplyBatch(node, batch.vid, replicas, tuple(entries))))

    # ------------------------------------------------------------------ views
    def on_view(self, previous: View | None, view: View) -> None:
        if previous is None:
            return
        gone = set(previous.members) - set(view.members)
        if (gone or not view.layout.adequate or not previous.layout.adequate) and self.clients:
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
            for conn in list(self.clients):
                if getattr(conn, "closed", False):
                    self.clients.discard(conn)
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
                self.submit(shard, (self.node_id, call_id, method, data, self.origin, self.session_ns, self._floor()))
                continue
            relay = self._relay_for(members)
            with self.lock:
                self.calls[call_id] = (results, relay)
            self.node.send_app(relay, encode(self._relayed_call(call_id, shard, method, data)))

    def _retry_client_relays(self, gone: set[int], view: View) -> None:
        """Clients' calls this node relayed to members that left before answering."""
        for key, (target, call, conn) in list(self.client_relays.items()):
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
                del self.client_relays[key]
                self.proxies.pop(key, None)
                self._refuse_client(conn, call.call_id, origin, view.vid, refusal)
                continue
            if self.node_id in members:
                del self.client_relays[key]
                self.submit(
                    call.shard,
                    (self.node_id, call.call_id, call.method, call.args, origin, call.session_ns, call.floor),
                )
                continue
            relay = members[origin % len(members)]
            self.client_relays[key] = (relay, call, conn)
            self.node.send_app(relay, encode(call))

    def fail_pending(self, exc: BaseException) -> None:
        with self.lock:
            entries, self.calls = list(self.calls.values()), {}
        for results, _ in entries:
            results._fail_all(exc)
