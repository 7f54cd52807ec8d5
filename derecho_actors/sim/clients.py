"""The simulator's clients: the shipped ``ClientSession``, and members' handles.

Most simulated clients are external clients as users run them: a ``ClientSession`` (the very
class inside ``Client``; or a subclass a test plants through ``@sim_workload(session=...)``)
driven by the scheduler over the simulated network (``runtime.sim.client_net``), so its
contact crashes, is partitioned away, stalls or turns it away while it is out of the group;
the session fails over, backs off and resends its unanswered calls in the same session, and
the replicas must apply each once: the history check sees a call applied twice. The others
call through a member's ``Handle`` (a node's own calls, relayed when it holds no replica).

Each client makes its share of the run's calls one at a time, with think times, and records
what it observed for the history check; a client whose member died, or whose session gave up
reaching any contact, retires (its call in flight has an unknown outcome) and a new client
takes over its remaining calls.

The process that drives a session is ``session_caller.SessionCaller`` (importable from here).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from derecho_actors.caller.handles import Handle
from derecho_actors.caller.session import ClientSession
from derecho_actors.model.decorators import spec_of
from derecho_actors.node.group import Group
from derecho_actors.sim.api import SimCall, SimWorkload
from derecho_actors.sim.checks import is_forgotten
from derecho_actors.sim.session_caller import SessionCaller
from runtime.core.layout import ShardId
from runtime.errors import DerechoError, ReplicaLost
from runtime.sim.app_node import WALL_CLOCK_START_NS
from runtime.sim.cluster import SimCluster, address_of
from runtime.sim.history import HistoryRecorder
from runtime.sim.runner import FAULT_SPAN

POLL_EVERY = 0.0002  # virtual seconds between a client's looks at its call
SESSION_SHARE = 0.75  # the share of clients that are external clients (ClientSession); the rest are members
RETRY_FOR = 5.0  # virtual seconds a session tries to reach some contact before it gives up
DEPTHS = (1, 1, 2, 4)  # calls a session client makes at a time (pipelining), picked per client
STREAM_SHARE = 0.5  # the share of session clients that keep calls going (see ``ClientPool._stream``)
STREAM_DEPTHS = (4, 8, 16)  # calls such a client leaves unanswered at most, picked per client
HURRY_FOR = 0.004  # virtual seconds after a node wedges or installs a view in which streaming clients hurry
HURRY_GAP = 0.0004  # the longest gap between a streaming client's calls meanwhile
LIVENESS = (0.2, 0.4, 1.0)  # a session's liveness timeout (s), picked per client (pings every quarter)

__all__ = ["ClientPool", "InFlight", "SessionCaller", "SimClient"]


@dataclass(slots=True, eq=False)
class InFlight:
    """A call a client made and has not seen answered yet."""

    call: SimCall
    cls: type
    op: int | None  # its history handle
    results: Any
    issued: float
    restarts: int = 0  # total restarts of the group before it was made


@dataclass(slots=True)
class SimClient:
    cid: int
    left: int  # calls still to make
    node: int | None = None  # a member client: the node whose handle it calls through
    group: Group | None = None  # ... in that node's incarnation (the client lives and dies with it)
    caller: SessionCaller | None = None  # an external client: its session
    pace: float = 0.006  # the longest think time between two bursts of calls
    depth: int = 1  # calls per burst: a pipelining client has several in flight at once
    stream: bool = False  # calls one by one at its pace, up to ``depth`` unanswered (no bursts)
    closed: bool = False  # its session was closed (done or retired)
    flying: list[InFlight] = field(default_factory=list)

    def where(self) -> str:
        return f"node {self.node}" if self.caller is None else f"contact {self.caller.session.connected_to}"


class ClientPool:
    """The run's clients, and the counts of their calls."""

    def __init__(
        self,
        cluster: SimCluster,
        groups: dict[int, Group],
        workloads: list[SimWorkload],
        shards: dict[str, int],
        histories: dict[str, HistoryRecorder],
        rng: random.Random,
        say: Callable[[str], None],
        violation: Callable[[str, str, int | None], None],
    ) -> None:
        self.cluster, self.sched, self.groups = cluster, cluster.sched, groups
        self.workloads, self.shards, self.histories = workloads, shards, histories
        self.rng, self.say, self.violation = rng, say, violation
        self.session_class = next((w.session for w in workloads if w.session is not None), ClientSession)
        self.clients: list[SimClient] = []
        self.next_cid = 0
        self.pending = 0  # clients scheduled to start
        self.calls = self.answered = self.unknown = 0
        self.hurry_until = 0.0  # streaming clients call densely until then (``changing``)

    def changing(self, *_: object) -> None:
        """A node wedged or installed a view (the cluster's hooks): streaming clients call
        densely for a while, so that a session's calls are unanswered at its contact while the
        shard's members change under them, whatever the seed's pace."""
        self.hurry_until = max(self.hurry_until, self.sched.now + HURRY_FOR)

    def schedule(self, at: float, left: int) -> None:
        self.pending += 1
        self.sched.at(at, self._new_client, left)

    def done(self) -> bool:
        return all(c.left <= 0 and not c.flying for c in self.clients) and self.pending == 0

    def stuck(self) -> list[str]:
        return [
            f"client {c.cid} at {c.where()}: {f.call.method} since {f.issued:.4f}"
            for c in self.clients
            for f in c.flying
        ]

    def failovers(self) -> tuple[int, int]:
        """(connections after the first, calls sent again on them) over the run's sessions."""
        sessions = [c.caller.session for c in self.clients if c.caller is not None]
        return sum(max(0, s.connections - 1) for s in sessions), sum(s.resent for s in sessions)

    def close(self) -> None:
        for client in self.clients:
            if client.caller is not None:
                client.caller.close()

    # ------------------------------------------------------------------ a client's life
    def _say_of(self, cid: int, text: str) -> None:
        self.say(f"client {cid} {text}")

    def _new_client(self, left: int) -> None:
        self.pending -= 1
        live = sorted(n for n, g in self.groups.items() if self.cluster.nodes[n].alive and g.view is not None)
        if not live:  # no node serves right now (a total restart): try again soon
            self.schedule(self.sched.now + 0.005, left)
            return
        self.next_cid += 1
        # Calls spread over the span in which faults strike, so that they meet them.
        client = SimClient(self.next_cid, left, pace=max(0.006, 2 * (FAULT_SPAN[1] - self.sched.now) / left))
        if self.rng.random() < SESSION_SHARE:
            contacts = [address_of(n) for n in self.rng.sample(live, len(live))]
            session = self.session_class(
                contacts,
                "sim",
                session_ns=WALL_CLOCK_START_NS + int(self.sched.now * 1e9),
                retry_for=RETRY_FOR,
                liveness_timeout=self.rng.choice(LIVENESS),
                rng=random.Random(self.rng.getrandbits(64)),
            )
            say = functools.partial(self._say_of, client.cid)
            client.caller = SessionCaller(self.cluster.client_net, self.sched, session, say)
            client.stream = self.rng.random() < STREAM_SHARE
            client.depth = self.rng.choice(STREAM_DEPTHS if client.stream else DEPTHS)
            self.say(
                f"client {client.cid} is a Client of contacts {contacts} ({left} calls, {client.depth} at a time"
                + (", streamed)" if client.stream else ")")
            )
        else:
            client.node = self.rng.choice(live)
            client.group = self.groups[client.node]
            self.say(f"client {client.cid} calls through node {client.node} ({left} calls)")
        self.clients.append(client)
        self.sched.at(self.sched.now + self.rng.random() * 0.003, self._issue, client)

    def _handle(self, client: SimClient, cls: type, shard: int) -> Handle | None:
        """Where the client's next call goes; None if the client cannot go on."""
        if client.caller is not None:
            if client.caller.stopped is not None:
                return None
            spec = spec_of(cls)
            assert spec is not None
            return Handle(client.caller, spec, ShardId(spec.name, 0, shard))
        group = client.group
        if group is None or not self._member_alive(client) or group.stopped is not None:
            return None  # its node's process is gone (crashed, stopped; restarted is another process)
        return group.handle(cls, shard)

    def _member_alive(self, client: SimClient) -> bool:
        """The member client's process (its node's incarnation) still runs."""
        return client.node is not None and self.groups.get(client.node) is client.group

    def _issue(self, client: SimClient) -> None:
        """A burst of calls (one, unless the client pipelines), made without waiting."""
        if client.stream:
            self._stream(client)
            return
        for _ in range(min(client.depth, client.left)):
            if not self._issue_one(client):
                return
        if not client.flying:
            self._next(client)

    def _stream(self, client: SimClient) -> None:
        """A streaming client's next call, if fewer than ``depth`` are unanswered, and its next
        turn. A burst's calls reach the contact in one frame and the next burst waits for all
        of them, so a view change never falls between two calls of a session that both wait:
        here one always can. That is what a contact relaying a session's calls to a member
        must survive when a view changes the shard's members (or makes the contact one): its
        next call must follow the unanswered one, or be ordered first and that one lost."""
        if client.left <= 0:
            if not client.flying:
                self._close(client)
            return
        if len(client.flying) < client.depth and not self._issue_one(client):
            return  # retired
        now = self.sched.now
        gap = HURRY_GAP if now < self.hurry_until else client.pace
        self.sched.at(now + self.rng.random() * gap, self._stream, client)

    def _close(self, client: SimClient) -> None:
        """Done: its connection closes, as a user's Client would (once)."""
        if client.caller is not None and not client.closed:
            client.closed = True
            client.caller.close()

    def _issue_one(self, client: SimClient) -> bool:
        workload = self.rng.choice(self.workloads)
        call = workload.ops(self.rng)
        spec = spec_of(workload.cls)
        assert spec is not None
        shard = call.shard % self.shards[spec.name]
        handle = self._handle(client, workload.cls, shard)
        if handle is None:
            self._retire(client)
            return False
        client.left -= 1
        self.calls += 1
        history = self.histories.get(spec.name)
        op = (
            history.invoke(client.cid, call.kind, (shard, call.key), call.value, self.sched.now)
            if history is not None and call.kind is not None
            else None
        )
        try:
            results = getattr(handle, call.method)(*call.args, **call.kwargs)
        except DerechoError as exc:  # refused before it left: it did not happen
            self.say(f"client {client.cid}: {spec.name}.{call.method} refused at once: {exc}")
            if op is not None and history is not None:
                history.fail(op, self.sched.now)
            return True
        flight = InFlight(call, workload.cls, op, results, self.sched.now, len(self.cluster.trace.restarts))
        client.flying.append(flight)
        self.sched.at(self.sched.now + POLL_EVERY, self._poll, client, flight)
        return True

    def _poll(self, client: SimClient, flight: InFlight) -> None:
        if flight not in client.flying:
            return
        if client.caller is None and not self._member_alive(client):  # its node died meanwhile
            self._retire(client)
            return
        if not flight.results.done():
            self.sched.at(self.sched.now + POLL_EVERY, self._poll, client, flight)
            return
        try:
            replies = flight.results.wait_all(0)
        except DerechoError as exc:  # the whole call failed (its node stopped, its session gave up, ...)
            replies = {-1: exc}
        client.flying.remove(flight)
        self._finish(client, flight, replies)
        if not client.flying and (not client.stream or client.left <= 0):
            self._next(client)

    def _finish(self, client: SimClient, flight: InFlight, replies: dict[int, Any]) -> None:
        call, spec = flight.call, spec_of(flight.cls)
        assert spec is not None
        ok = {n: v for n, v in replies.items() if not isinstance(v, BaseException)}
        errors = {n: v for n, v in replies.items() if isinstance(v, BaseException) and not isinstance(v, ReplicaLost)}
        what = f"{spec.name}.{call.method}{call.args or ''}"
        if ok and (len({repr(v) for v in ok.values()}) > 1 or errors):
            shown = "; ".join(f"node {n}: {v!r}"[:120] for n, v in sorted({**ok, **errors}.items()))
            self.violation("replies-differ", f"replicas answered {what} differently: {shown}", client.node)
        forgotten = [n for n, e in errors.items() if is_forgotten(e)]
        if forgotten and len(self.cluster.trace.restarts) == flight.restarts:
            # (A total restart keeps the calls in the logs but not their replies: a call sent
            # again after one may have run, its reply gone; an unknown outcome, as it says.)
            self.violation(
                "call-forgotten",
                f"client {client.cid} ({client.where()}): {what} answered ReplyForgotten ('applied already, reply no longer kept') "
                f"by nodes {sorted(forgotten)} while it waited for it: the replicas took it as applied (a later "
                "call of its session ordered first?), and it may never have run",
                client.node,
            )
        history = self.histories.get(spec.name)
        if not ok:
            self.unknown += 1  # lost with its replicas, or refused: whether it took effect is not known
            self.say(
                f"client {client.cid}: {what} -> no answer ({'; '.join(f'{n}: {e}' for n, e in replies.items())[:200]})"
            )
            return
        self.answered += 1
        value = next(iter(ok.values()))
        if flight.op is not None and history is not None:
            history.complete(flight.op, call.result(value) if call.result is not None else value, self.sched.now)
        self.say(f"client {client.cid}: {what} -> {value!r}"[:200])

    def _next(self, client: SimClient) -> None:
        if client.left > 0:
            self.sched.at(self.sched.now + self.rng.random() * client.pace, self._issue, client)
        else:
            self._close(client)

    def _retire(self, client: SimClient) -> None:
        """The client's node is gone, or its session gave up: its calls in flight have an
        unknown outcome; a new client takes over its remaining calls."""
        self.unknown += len(client.flying)
        client.flying.clear()
        left, client.left = client.left, 0
        if client.caller is not None:
            self.say(f"client {client.cid} retires: {client.caller.stopped}")
            self._close(client)
        if left > 0:
            self.schedule(self.sched.now, left)
