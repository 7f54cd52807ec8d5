"""``Group``, ``Layout`` and handles: a node of a replicated group, seen from user code.

A ``Group`` runs this process's node (the protocol on its own thread, see
``runtime.drivers.node``) and one pykka actor per replica this node holds. Handles turn method
calls into ordered multicasts or P2P requests and return ``QueryResults`` at once.

Calls from a node outside the target shard are relayed: the call goes to a shard member,
which multicasts it; the replicas answer the caller directly.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pykka

from derecho_actors import _codec
from derecho_actors._decorators import ORDERED, TypeSpec, method_caller, spec_of
from derecho_actors._replica import ReplicaActor, in_handler
from derecho_actors._results import QueryResults
from derecho_actors.exceptions import (
    ConfigError,
    GroupClosed,
    NestedCallError,
    NotRegistered,
    PayloadTooLarge,
    ReplicaLost,
    UnknownMethod,
)
from runtime.config import NodeConfig, load_config
from runtime.core.effects import Delivery
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy
from runtime.core.view import View
from runtime.drivers.node import AppHooks, NodeDriver
from runtime.wire.codec import frame, frames
from runtime.wire.control import Call, Reply, StatusReply

__all__ = ["Group", "Handle", "Layout", "ShardPolicy"]


class Layout:
    """Which replicated types the group runs and how each is split into shards."""

    def __init__(self, policies: Mapping[type, ShardPolicy]) -> None:
        specs = {}
        for cls, policy in policies.items():
            spec = spec_of(cls)
            if spec is None:
                raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
            if not isinstance(policy, ShardPolicy):
                raise ConfigError(f"the layout of {spec.name} must be a ShardPolicy, got {policy!r}")
            specs[spec.name] = policy
        self.policy = LayoutPolicy.of(specs)
        self.types = [cls for cls in policies]


class Group:
    """Start (or join) a group and host this node's replicas. Use as a context manager."""

    def __init__(
        self,
        config: str | Path | NodeConfig | None = None,
        types: Sequence[type] = (),
        layout: Layout | None = None,
        overrides: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if layout is None:
            layout = Layout({cls: ShardPolicy() for cls in types})
        self._specs: dict[str, TypeSpec] = {}
        for cls in list(types) + layout.types:
            spec = spec_of(cls)
            if spec is None:
                raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
            self._specs[spec.name] = spec
        missing = [n for n in self._specs if n not in dict(layout.policy.types)]
        if missing:
            raise ConfigError(f"no layout policy for replicated type(s) {', '.join(missing)}")
        cfg = config if isinstance(config, NodeConfig) else load_config(str(config) if config else None, dict(overrides or {}))
        self.config = dataclasses.replace(cfg, layout=layout.policy)
        self.node_id = self.config.node.id
        self._max_payload = self.config.multicast.max_message_size
        self._driver = NodeDriver(
            self.config,
            AppHooks(
                on_deliver=self._on_deliver, on_view=self._on_view, on_direct=self._on_direct,
                on_stop=self._on_stop, on_client=self._on_client,
            ),
        )
        self._replicas: dict[ShardId, pykka.ActorRef[ReplicaActor]] = {}
        self._views: dict[int, View] = {}
        self._view: View | None = None
        self._view_callbacks: list[Callable[[View], None]] = []
        self._calls: dict[int, tuple[QueryResults, int | None]] = {}  # call id -> (results, relay node)
        self._proxies: dict[tuple[int, int], Any] = {}  # (client id, call id) -> client connection
        self._clients: set[Any] = set()  # client connections this node serves
        self._relayed: dict[int, tuple[ShardId, str, bytes]] = {}  # relayed calls, to retry
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Calls this node relays through another member carry this id and their number, so a
        # retry through a new relay after a failure is applied once (as for Clients).
        self._origin = random.getrandbits(62) | 1
        self._first_view = threading.Event()
        self._stopped: str | None = None
        self._driver.start_in_thread()
        if not self._first_view.wait(start_timeout):
            self.close()
            raise GroupClosed(f"node {self.node_id} joined no view within {start_timeout} s; check node.contacts")
        if self._stopped is not None:
            raise GroupClosed(f"node {self.node_id} stopped: {self._stopped}")

    # ------------------------------------------------------------------ public
    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> Handle:
        spec = spec_of(cls)
        if spec is None or spec.name not in self._specs:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a replicated type of this group")
        return Handle(self, spec, ShardId(spec.name, subgroup, shard))

    @property
    def members(self) -> list[int]:
        view = self._view
        return list(view.members) if view is not None else []

    @property
    def view(self) -> View | None:
        return self._view

    def my_shards(self) -> list[ShardId]:
        view = self._view
        return list(view.my_shards(self.node_id)) if view is not None else []

    def on_view(self, fn: Callable[[View], None]) -> None:
        """Call ``fn(view)`` on every view installed from now on (on the protocol thread:
        keep it short)."""
        self._view_callbacks.append(fn)

    def leave(self, timeout: float = 10.0) -> None:
        """Leave the group gracefully (a view change without suspicion), then close."""
        if self._stopped is None:
            self._driver.leave()
            self._driver.join_thread(timeout)
        self.close()

    def close(self) -> None:
        """Stop this node at once (others see it fail) and its replicas."""
        self._driver.stop("closed")
        self._driver.join_thread(10)
        for ref in list(self._replicas.values()):
            ref.stop(block=False)
        self._replicas.clear()
        self._fail_pending(GroupClosed(f"node {self.node_id} closed its group"))

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------- calling
    def _call(self, spec: TypeSpec, shard: ShardId, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], node: int | None) -> QueryResults:
        if in_handler():
            raise NestedCallError(
                f"{spec.name}.{method} was called from inside a replicated method; the replica runs one "
                "call at a time, so this could deadlock it"
            )
        if self._stopped is not None:
            raise GroupClosed(f"node {self.node_id} stopped: {self._stopped}")
        kind = spec.methods.get(method)
        if kind is None:
            raise UnknownMethod(
                f"{spec.name} has no @ordered or @p2p method {method!r} (known: {', '.join(sorted(spec.methods))})"
            )
        data = _codec.encode_args(args, kwargs, spec.serializer)
        if len(data) + 64 > self._max_payload:
            raise PayloadTooLarge(
                f"{spec.name}.{method} arguments encode to {len(data)} bytes; the limit is "
                f"{self._max_payload} (multicast.max_message_size)"
            )
        call_id = next(self._ids)
        serializer = spec.serializer
        results = QueryResults(f"{spec.name}.{method} (call {call_id})", lambda b: _codec.decode_result(b, serializer))
        with self._lock:
            self._calls[call_id] = (results, None)
        if not self._driver.in_loop(self._dispatch, call_id, shard, method, kind, data, node):
            results._fail_all(GroupClosed(f"node {self.node_id} has stopped"))
        return results

    def _dispatch(self, call_id: int, shard: ShardId, method: str, kind: str, data: bytes, node: int | None) -> None:
        """On the protocol thread: send the call on its way."""
        view = self._view
        entry = self._calls.get(call_id)
        if entry is None or view is None:
            return
        results = entry[0]
        members = view.layout.members_of(shard)
        if not members:
            why = "the view is too small for the layout" if not view.layout.adequate else "no such shard"
            results._fail_all(ReplicaLost(f"shard {shard} has no members in view {view.vid} ({why})"))
            return
        if kind == ORDERED:
            if self.node_id in members:
                self._driver.submit(shard, [_codec.encode_ordered(self.node_id, call_id, method, data)])
            else:
                relay = self._relay_for(members)
                with self._lock:
                    self._calls[call_id] = (results, relay)
                    self._relayed[call_id] = (shard, method, data)
                self._driver.send_direct(relay, frame(Call(call_id, self.node_id, shard, method, True, data, self._origin)))
            return
        target = node if node is not None else (self.node_id if self.node_id in members else members[call_id % len(members)])
        if target not in members:
            results._fail_all(ReplicaLost(f"node {target} holds no replica of {shard} in view {view.vid}"))
            return
        results._expect((target,))
        if target == self.node_id:
            self._replicas[shard].tell(("p2p", view.vid, self.node_id, call_id, method, data, 0))
        else:
            self._driver.send_direct(target, frame(Call(call_id, self.node_id, shard, method, False, data)))

    # ----------------------------------------------------- protocol-thread hooks
    def _on_view(self, view: View) -> None:
        previous = self._view
        self._view = view
        self._views[view.vid] = view
        self._views.pop(view.vid - 3, None)
        mine = set(view.my_shards(self.node_id))
        for sid in list(self._replicas):
            if sid not in mine:
                self._replicas.pop(sid).stop(block=False)
        for sid in mine:
            if sid not in self._replicas:
                spec = self._specs.get(sid.type_name)
                if spec is not None:
                    self._replicas[sid] = ReplicaActor.start(spec, self.node_id, self._send_replies)
        for ref in self._replicas.values():
            ref.tell(("view", view.vid, tuple(view.members)))
        if previous is not None:
            gone = set(previous.members) - set(view.members)
            if gone and self._clients:
                # Clients cannot see views: tell them who left, so their calls stop waiting.
                note = frame(StatusReply({"vid": view.vid, "members": list(view.members), "departed": sorted(gone)}))
                for handle in list(self._clients):
                    if getattr(handle, "closed", False):
                        self._clients.discard(handle)
                    elif self._driver.transport is not None:
                        self._driver.transport.reply(handle, note)
            if gone:
                with self._lock:
                    entries = list(self._calls.items())
                retry = []
                for call_id, (results, relay) in entries:
                    results._lost(gone, f"left the group in view {view.vid}")
                    if relay in gone and not results.done():
                        retry.append(call_id)
                self._retry_relayed(sorted(retry), view)
        self._first_view.set()
        for fn in self._view_callbacks:
            fn(view)

    def _relay_for(self, members: tuple[int, ...]) -> int:
        """One relay per caller and shard, so calls from one caller keep their order."""
        return members[self.node_id % len(members)]

    def _retry_relayed(self, call_ids: list[int], view: View) -> None:
        """Send relayed calls whose relay left to a new relay, in their order. Replicas know
        this node's origin id and the call numbers: one that was applied is not applied again,
        its first reply comes back instead."""
        for call_id in call_ids:
            with self._lock:
                entry, spec = self._calls.get(call_id), self._relayed.get(call_id)
            if entry is None or spec is None:
                continue
            results = entry[0]
            shard, method, data = spec
            members = view.layout.members_of(shard)
            if not members:
                results._fail_all(ReplicaLost(f"shard {shard} has no members in view {view.vid}"))
                continue
            if self.node_id in members:
                results._restart()
                self._driver.submit(shard, [_codec.encode_ordered(self.node_id, call_id, method, data, self._origin)])
                continue
            relay = self._relay_for(members)
            results._restart()
            with self._lock:
                self._calls[call_id] = (results, relay)
            self._driver.send_direct(relay, frame(Call(call_id, self.node_id, shard, method, True, data, self._origin)))

    def _on_deliver(self, d: Delivery) -> None:
        ref = self._replicas.get(d.shard)  # type: ignore[arg-type]
        view = self._views.get(d.vid)
        if ref is None or view is None:
            return
        replicas = view.layout.members_of(d.shard)  # type: ignore[arg-type]
        calls = []
        for _, _, _, payload in d.messages:
            call = _codec.decode_ordered(payload)
            if call is not None:
                calls.append(call)
        if calls:
            ref.tell(("ordered", d.vid, tuple(replicas), calls))

    def _on_direct(self, sender: int, msg: Any) -> None:
        if isinstance(msg, Reply):
            self._take_reply(msg)
            return
        view = self._view
        ref = self._replicas.get(msg.shard)
        if view is None or ref is None:
            err = _codec.encode_error(ReplicaLost(f"node {self.node_id} holds no replica of {msg.shard}"))
            vid = view.vid if view is not None else 0
            reply = Reply(msg.call_id, self.node_id, vid, (self.node_id,), False, err, msg.origin)
            self._driver.send_direct(msg.caller, frame(reply))
            return
        if msg.ordered:
            self._driver.submit(msg.shard, [_codec.encode_ordered(msg.caller, msg.call_id, msg.method, msg.args, msg.origin)])
        else:
            ref.tell(("p2p", view.vid, msg.caller, msg.call_id, msg.method, msg.args, msg.origin))

    def _on_client(self, handle: Any, msg: Any) -> None:
        """A call from an external client on its connection to this node: run or relay it as
        our own, with the client's id as origin, and forward the replicas' answers."""
        origin = getattr(handle, "speaker", None)
        view = self._view
        if not isinstance(msg, Call) or not origin or view is None:
            return
        self._proxies[(origin, msg.call_id)] = handle
        self._clients.add(handle)
        while len(self._proxies) > 100_000:
            self._proxies.pop(next(iter(self._proxies)))
        members = view.layout.members_of(msg.shard)
        if not members:
            err = _codec.encode_error(ReplicaLost(f"shard {msg.shard} has no members in view {view.vid}"))
            self._driver.transport.reply(handle, frame(Reply(msg.call_id, self.node_id, view.vid, (), False, err, origin)))  # type: ignore[union-attr]
            return
        if not msg.ordered and msg.caller in members:
            target = msg.caller  # the client asked for this replica (P2P node=)
        elif self.node_id in members:
            target = self.node_id
        else:
            target = members[origin % len(members)]
        if target == self.node_id:
            if msg.ordered:
                self._driver.submit(msg.shard, [_codec.encode_ordered(self.node_id, msg.call_id, msg.method, msg.args, origin)])
            else:
                self._replicas[msg.shard].tell(("p2p", view.vid, self.node_id, msg.call_id, msg.method, msg.args, origin))
        else:
            call = Call(msg.call_id, self.node_id, msg.shard, msg.method, msg.ordered, msg.args, origin)
            self._driver.send_direct(target, frame(call))

    def _send_replies(self, replies: list[tuple[int, Reply]]) -> None:
        """From a replica's thread: one hand-off per batch to the protocol thread."""
        self._driver.in_loop(self._route_replies, replies)

    def _route_replies(self, replies: list[tuple[int, Reply]]) -> None:
        by_caller: dict[int, list[Reply]] = {}
        for caller, reply in replies:
            if caller == self.node_id:
                self._take_reply(reply)
            else:
                by_caller.setdefault(caller, []).append(reply)
        for caller, batch in by_caller.items():
            self._driver.send_direct(caller, frames(batch))

    def _take_reply(self, reply: Reply) -> None:
        if reply.origin and reply.origin != self._origin:
            handle = self._proxies.get((reply.origin, reply.call_id))
            if handle is not None and self._driver.transport is not None:
                self._driver.transport.reply(handle, frame(reply))
            return
        with self._lock:
            entry = self._calls.get(reply.call_id)
        if entry is None:
            return
        results = entry[0]
        results._take(reply.node, reply.replicas, reply.ok, reply.value)
        if results.done():
            with self._lock:
                self._calls.pop(reply.call_id, None)
                self._relayed.pop(reply.call_id, None)

    def _on_stop(self, reason: str) -> None:
        self._stopped = reason
        self._first_view.set()
        self._fail_pending(GroupClosed(f"node {self.node_id} stopped: {reason}"))

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            entries, self._calls = list(self._calls.values()), {}
        for results, _ in entries:
            results._fail_all(exc)


class Handle:
    """Calls the methods of one shard's replicas: ``handle.put(k, v)`` returns QueryResults.
    P2P methods take an optional ``node=`` keyword choosing the replica."""

    def __init__(self, group: Group, spec: TypeSpec, shard: ShardId) -> None:
        self._group = group
        self._spec = spec
        self.shard = shard

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        spec, group = self._spec, self._group
        return method_caller(spec, method, lambda m, kind, a, kw, node: group._call(spec, self.shard, m, a, kw, node))

    def __repr__(self) -> str:
        return f"<Handle {self.shard}>"
