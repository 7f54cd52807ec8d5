"""A simulated client process: the shipped ``ClientSession`` driven by the scheduler over the
simulated network (``runtime.sim.client_net``), so its contact can crash, be partitioned away,
stall or turn it away, and the session fails over and resends as a user's ``Client`` does.

Kept apart from the pool of clients (``clients``) that decides what they call and checks what
comes back: this is only the process, the socket loop's part.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from derecho_actors.caller.calls import method_request, persist_request, poll_request
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session import ClientSession, Dial, Disconnect, Phase, Wait
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.reads import ReadOptions
from derecho_actors.wire.events import PollArgs
from runtime.core.layout import ShardId
from runtime.sim.client_net import Link, SimClientNet, node_of
from runtime.sim.scheduler import Scheduler


class SessionCaller:
    """One simulated client process: a ``ClientSession`` driven by the scheduler over the
    simulated network; the ``Caller`` its handles call through (``caller.handles.Caller``)."""

    def __init__(self, net: SimClientNet, sched: Scheduler, session: ClientSession, say: Callable[[str], None]) -> None:
        self.net, self.sched, self.session, self.say = net, sched, session, say
        self.link: Link | None = None
        self.stopped: Exception | None = None  # the session gave up, or was refused
        self._timer: float | None = None
        self._flush_due = False
        sched.at(sched.now, self._step)

    # ------------------------------------------------------------------ the Caller protocol
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
        request = method_request(spec, shard, method, args, kwargs, node, read, self.session.max_message_size)
        results = self._send(request)
        if request.ordered and spec.persistent:
            results.set_persist_query(lambda version, replica: self._send(persist_request(request, version, replica)))
        return results

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        return self._send(poll_request(shard, what, poll, node))

    def close(self) -> None:
        self.session.close(self.sched.now)
        link, self.link = self.link, None
        if link is not None:
            link.close()

    def _send(self, request: Any) -> QueryResults:
        results = self.session.call(request)
        if self.session.has_output() and not self._flush_due:
            self._flush_due = True  # one write per turn, whatever the calls in it (as the socket loop)
            self.sched.at(self.sched.now, self._flush)
        return results

    # ------------------------------------------------------------------ the process
    def _step(self) -> None:
        """Between connections: do what the session says."""
        if self.link is not None:
            return
        step = self.session.next_step(self.sched.now)
        if isinstance(step, Dial):
            self.net.dial(
                node_of(step.address), functools.partial(self._dialed, step.address), self._data, self._closed
            )
        elif isinstance(step, Wait):
            self.sched.at(step.until, self._step)
        else:
            self.stopped = step.error

    def _dialed(self, address: str, link: Link, why: str) -> None:
        session = self.session
        if why:
            self.say(f"cannot reach {address}: {why}")
            session.dial_failed(self.sched.now, address, why)
            self._step()
        elif session.phase is not Phase.DIALING:  # closed meanwhile
            link.close()
        else:
            self.link = link
            waiting = session.in_flight
            link.send(session.connected(self.sched.now, address))
            self.say(f"connected to {address}" + (f", {waiting} calls sent again" if session.connections > 1 else ""))
            self._arm()

    def _data(self, link: Link, data: bytes) -> None:
        if link is self.link:
            session = self.session
            ended = session.receive_data(self.sched.now, data)
            answers = session.answers()
            if answers is not None:
                session.answered(answers.deliver())
            self._after(ended)

    def _closed(self, link: Link, why: str) -> None:
        if link is self.link:
            self.link = None
            self.say(f"connection to {self.session.connected_to} {why}")
            self.session.connection_lost(self.sched.now, why)
            self._step()

    def _after(self, ended: Disconnect | None) -> None:
        if ended is not None:
            link, self.link = self.link, None
            self.say(f"leaves {self.session.connected_to}: {ended.why}")
            if link is not None:
                link.close()
            self._step()
            return
        self._flush()
        self._arm()

    def _flush(self) -> None:
        self._flush_due = False
        if self.link is not None:
            data = self.session.data_to_send()
            if data:
                self.link.send(data)

    def _arm(self) -> None:
        due = self.session.next_timer()
        if due is not None and self._timer is None:
            self._timer = due
            self.sched.at(due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.link is not None:
            self._after(self.session.tick(self.sched.now))
