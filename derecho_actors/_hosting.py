"""Hosting: which replicas this node runs in each view, and what runs them.

A view says which shards this node holds; the host starts a replica for each new one (waiting
for its state if the view names another node as the shard's source), stops those it no
longer holds (keeping one that must still serve its state to new members), and hands every
replica its view boundary in view order. A *runner* decides how a replica executes:
:class:`ThreadRunner` gives each its own pykka actor thread (real nodes: user code never runs
on the node's loop), :class:`InlineRunner` runs it in the caller's thread at once (the
simulator: one thread, deterministic).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

import pykka

from derecho_actors import _codec
from derecho_actors._decorators import TypeSpec
from derecho_actors._replica import OrderedBatch, Replica, ReplicaActor, ReplicaEnv, ReplicaMessage, ViewBoundary
from runtime.core.effects import Delivery
from runtime.core.layout import ShardId
from runtime.core.view import View

log = logging.getLogger("derecho.hosting")


class ReplicaRef(Protocol):
    def tell(self, message: ReplicaMessage) -> None: ...

    def stop(self) -> Callable[[float], bool]:
        """Ask the replica to stop; returns a function that waits up to a timeout (seconds)
        for it to have stopped (its log closed); True if it has."""


class Runner(Protocol):
    def start(self, replica: Replica, shard: ShardId) -> ReplicaRef: ...


class _ActorRef:
    def __init__(self, ref: pykka.ActorRef[ReplicaActor]) -> None:
        self._ref = ref

    def tell(self, message: ReplicaMessage) -> None:
        try:
            self._ref.tell(message)
        except pykka.ActorDeadError:
            pass  # it failed (and reported why) or was stopped

    def stop(self) -> Callable[[float], bool]:
        stopping = self._ref.stop(block=False)

        def wait(timeout: float) -> bool:
            try:
                stopping.get(timeout=timeout)
                return True
            except pykka.Timeout:
                return False
            except pykka.ActorDeadError:
                return True

        return wait


class ThreadRunner:
    """Each replica on its own thread (pykka), one message at a time, in order."""

    def start(self, replica: Replica, shard: ShardId) -> ReplicaRef:
        return _ActorRef(ReplicaActor.start(replica))


class _InlineRef:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.alive = True

    def tell(self, message: ReplicaMessage) -> None:
        if not self.alive:
            return
        try:
            self.replica.receive(message)
        except Exception as exc:
            self.alive = False
            self.replica.failed_with(exc)

    def stop(self) -> Callable[[float], bool]:
        if self.alive:
            self.alive = False
            self.replica.stop()
        return lambda timeout: True


class InlineRunner:
    """Each replica runs in the caller's thread, at once (the simulator's way)."""

    inline = True  # replicas write their logs in place too (no writer thread)

    def start(self, replica: Replica, shard: ShardId) -> ReplicaRef:
        ref = _InlineRef(replica)
        try:
            replica.start()
        except Exception:
            ref.alive = False  # start() reported why (internal_error)
        return ref


MakeEnv = Callable[[ShardId, TypeSpec, int, "int | None"], ReplicaEnv]


class ReplicaHost:
    def __init__(self, node_id: int, specs: dict[str, TypeSpec], runner: Runner, make_env: MakeEnv) -> None:
        self.node_id = node_id
        self.specs = specs
        self.runner = runner
        self.make_env = make_env
        self.replicas: dict[ShardId, ReplicaRef] = {}
        self.retired: dict[ShardId, ReplicaRef] = {}  # no longer held, still a state source

    def holds(self, shard: ShardId) -> bool:
        return shard in self.replicas

    def update(self, view: View, dropped: Callable[[ShardId], None]) -> list[tuple[ShardId, int]]:
        """Follow ``view``; returns the shards whose replica starts waiting for state, with
        the node to get it from. ``dropped(shard)`` is told of each shard no longer held."""
        # In a view too small for the layout, replicas idle but keep their state (the view's
        # ``holders``), so the shard resumes from it once enough nodes are back.
        mine = set(view.my_shards(self.node_id)) if view.layout.adequate else set(self.replicas)
        # This node sends state to the shard's new members if the view names it as source;
        # the snapshot is taken by the replica when it reaches this view's boundary.
        sourcing = {sid for sid, src in view.sources if src == self.node_id}
        boundary = (view.vid, tuple(view.members))
        for sid in list(self.replicas):
            if sid not in mine:
                ref = self.replicas.pop(sid)
                dropped(sid)
                if sid in sourcing:  # moved to another shard but still the best source
                    ref.tell(ViewBoundary(*boundary, True))
                    self.retired[sid] = ref
                else:
                    ref.stop()
        awaiting: list[tuple[ShardId, int]] = []
        for sid in sorted(mine - set(self.replicas)):
            spec = self.specs.get(sid.type_name)
            if spec is None:
                continue
            src = view.source_of(sid)
            waits = src is not None and src != self.node_id
            if waits:
                awaiting.append((sid, src))  # type: ignore[arg-type]
            env = self.make_env(sid, spec, view.vid, src)
            fresh_at = view.vid if src is None else None
            self.replicas[sid] = self.runner.start(Replica(spec, env, waits, fresh_at), sid)
        for sid, ref in self.replicas.items():
            ref.tell(ViewBoundary(*boundary, sid in sourcing))
        return awaiting

    def deliver(self, d: Delivery, view: View) -> None:
        """One delivered batch of ordered calls to the shard's replica here (one message)."""
        ref = self.replicas.get(d.shard)
        if ref is None:
            return
        calls: list[_codec.OrderedCall] = []
        decode = _codec.decode_ordered
        for _, _, _, payload in d.messages:
            batch = decode(payload)
            if batch is not None:
                calls.extend(batch)
        if calls:
            ref.tell(OrderedBatch(d.vid, tuple(view.layout.members_of(d.shard)), calls, d.frontier))

    def status(self, view: View | None, why_waiting: Callable[[ShardId], str | None]) -> dict[str, str]:
        """Per shard held here: whether its replica serves, and if not, why."""
        shards: dict[str, str] = {}
        for sid in self.replicas:
            waiting = why_waiting(sid)
            if waiting is not None:
                shards[str(sid)] = f"waiting for its state ({waiting})"
            elif view is not None and not view.layout.adequate:
                shards[str(sid)] = "holding its state; the view is too small for the layout"
            else:
                shards[str(sid)] = "serving"
        return shards

    def tell(self, shard: ShardId, message: ReplicaMessage) -> bool:
        ref = self.replicas.get(shard)
        if ref is None:
            return False
        ref.tell(message)
        return True

    def retire(self, shard: ShardId) -> None:
        """The retired replica of ``shard`` is no longer needed as a state source."""
        ref = self.retired.pop(shard, None)
        if ref is not None:
            ref.stop()

    def stop_all(self, timeout: float) -> None:
        """Stop every replica and wait (up to ``timeout`` in all) until each closed its log."""
        refs = [*self.replicas.values(), *self.retired.values()]
        self.replicas.clear()
        self.retired.clear()
        waits = [ref.stop() for ref in refs]
        deadline = time.monotonic() + timeout
        for wait in waits:
            if not wait(max(0.0, deadline - time.monotonic())):
                log.warning("a replica did not stop within %.0f s (busy in a method?)", timeout)

    def __len__(self) -> int:
        return len(self.replicas)
