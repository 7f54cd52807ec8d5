"""``Client``: call a group's replicated objects from outside the group.

A client is not a member: it holds one connection to one member (any contact), which runs or
relays its calls and forwards the replicas' answers. The connection is mutual TLS: the client
presents a client certificate of the cluster's CA and checks that the contact presents a node
certificate (``insecure=True`` turns this off, loudly). The contact derives the client's
exactly-once session from that identity, so no other client can act in it.

If the contact fails (its connection closes, or it stops answering pings) the client
reconnects to another contact, backing off with jitter, and sends its unanswered calls again
under the same numbers; replicas remember, per session, the calls they applied and their
replies, so a retried ordered call is never applied twice. A refusal (a wrong certificate,
another cluster) is final and raised at once with the reason.

The protocol (calls, answers, failover, backoff) is a ``ClientSession``, which owns no socket;
this module is the thin socket loop around it (``caller.socket_loop``) and the public face.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from derecho_actors.caller.aio import AsyncLifecycle
from derecho_actors.caller.calls import (
    Request,
    method_requests,
    persist_request,
    poll_request,
    refuse_nested,
)
from derecho_actors.caller.handles import Handle, spec_checked
from derecho_actors.caller.large_calls import StreamingSession
from derecho_actors.caller.results import QueryResults
from derecho_actors.caller.session import Dial, Stop, Wait
from derecho_actors.caller.socket_loop import SocketLoop
from derecho_actors.caller.watch import Watch
from derecho_actors.model.context import in_handler
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.reads import ReadOptions
from derecho_actors.wire.events import PollArgs, WatchEvent
from runtime.core.layout import ShardId
from runtime.drivers.dial import client_credentials
from runtime.drivers.tcp import split_address
from runtime.errors import ConfigError, GroupClosed
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials

log = logging.getLogger("derecho.client")


class Client(AsyncLifecycle):
    """``Client(contacts=["10.0.0.1:7001", ...], certs_dir="certs", name="alice")``; then
    ``client.handle(KV, shard=1)``."""

    def __init__(
        self,
        contacts: Sequence[str],
        cluster: str = "derecho",
        *,
        certs_dir: str | Path | None = None,
        name: str | None = None,
        credentials: TlsCredentials | LoadedCredentials | None = None,
        insecure: bool = False,
        retry_for: float = 30.0,
        max_outstanding: int = 4096,
        liveness_timeout: float = 2.0,
        connect_timeout: float = 10.0,
    ) -> None:
        """``certs_dir`` and ``name``: the client certificate ``client-<name>.crt`` (with its
        key and the CA's ``ca.crt``) made by ``derecho-actors certs create-client NAME``; or
        ``credentials`` naming the three files. ``insecure=True`` connects without TLS, to a
        group that runs with ``security.insecure``. ``retry_for``: how long to keep trying to
        reach some contact before failing the calls waiting. ``max_outstanding``: calls in
        flight at once; a call beyond it waits for room (the contact's
        ``limits.client_max_in_flight`` lowers it, as its Welcome says). ``liveness_timeout``: a contact that
        sends nothing (not even a pong) for this long is given up for another."""
        if not contacts:
            raise GroupClosed("a Client needs at least one contact address")
        for c in contacts:
            split_address(c)
        self.contacts = list(contacts)
        self.cluster = cluster
        self.retry_for = retry_for
        self.liveness_timeout = liveness_timeout
        self.max_outstanding = max(1, max_outstanding)
        credentials = self._load_credentials(certs_dir, name, credentials, insecure)
        self._session = StreamingSession(  # calls too large for a frame stream in blocks (large_calls)
            self.contacts,
            cluster,
            session_ns=time.time_ns(),
            retry_for=retry_for,
            liveness_timeout=liveness_timeout,
            max_outstanding=self.max_outstanding,
        )
        # One lock over the session; callers wait on _room for the window, and the socket
        # thread wakes when a caller queues the first call of a turn.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._blocked = 0  # callers waiting for room
        self._connected = threading.Event()  # the first Welcome, a refusal, or giving up
        self._loop = SocketLoop(self._session, self._lock, credentials, self._on_progress)
        self._thread = threading.Thread(target=self._run, name="derecho-client", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise GroupClosed(f"no contact reachable among {', '.join(self.contacts)} within {connect_timeout} s")
        error = self._session.error
        if error is not None:
            self.close()
            raise error

    @staticmethod
    def _load_credentials(
        certs_dir: str | Path | None,
        name: str | None,
        credentials: TlsCredentials | LoadedCredentials | None,
        insecure: bool,
    ) -> LoadedCredentials | None:
        if insecure:
            if certs_dir is not None or credentials is not None:
                raise ConfigError("Client(insecure=True) contradicts the certificates given; pass one or the other")
            log.warning("client in INSECURE mode: no TLS; the contact is not authenticated and the traffic is readable")
            return None
        if isinstance(credentials, LoadedCredentials):
            return credentials
        if isinstance(credentials, TlsCredentials):
            return load_credentials(credentials, "client", name=name)
        if certs_dir is None:
            raise ConfigError(
                "a Client needs a client certificate: Client(contacts, certs_dir=DIR, name=NAME) with a certificate "
                "made by `derecho-actors certs create-client NAME`; or insecure=True for a group running with "
                "security.insecure"
            )
        return client_credentials(certs_dir, name)

    # ---------------------------------------------------------------- what the session knows
    @property
    def session(self) -> int:
        """The exactly-once session number (the same on every contact)."""
        return self._session.session

    @property
    def session_ns(self) -> int:
        return self._session.session_ns

    @property
    def max_message_size(self) -> int:
        """The group's limit on a call's encoded arguments, as the contact's Welcome said."""
        return self._session.max_message_size

    @property
    def max_frame(self) -> int:
        return self._session.max_frame

    @property
    def window(self) -> int:
        """Calls in flight at once: ``max_outstanding``, or the contact's limit
        (``limits.client_max_in_flight``, its Welcome) if lower."""
        return self._session.window

    @property
    def connected_to(self) -> str | None:
        """The contact of the current (or last) connection."""
        return self._session.connected_to

    @property
    def connections(self) -> int:
        """Connections made so far (more than one: the client failed over)."""
        return self._session.connections

    # ---------------------------------------------------------------- the public face
    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> Handle:
        spec = spec_checked(cls)
        return Handle(self, spec, ShardId(spec.name, subgroup, shard))

    def watch(
        self,
        cls: type,
        shard: int = 0,
        subgroup: int = 0,
        *,
        since: int | tuple[int, int] | WatchEvent | None = None,
        hold: float = 5.0,
    ) -> Watch:
        """The change events (``da.emit``) of a shard after ``since`` (a version, a position or
        an event; None: from now on), in order; iterate it, or ``async for``. It survives the
        loss of a contact or replica: it asks again from where it stood."""
        spec = spec_checked(cls)
        return Watch.over(self, spec, ShardId(spec.name, subgroup, shard), since, hold=hold)

    def close(self) -> None:
        """Fail every call still waiting and close the connection (on the socket thread, the
        only one that touches it)."""
        with self._lock:
            self._session.close(time.monotonic())
            self._room.notify_all()
        self._loop.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_for_room(self, timeout: float) -> bool:
        """Block until fewer than the window's calls (``max_outstanding``, or the contact's
        limit if lower) are in flight (True) or
        ``timeout`` passes (False). Thread-safe."""
        session = self._session
        with self._lock:
            self._blocked += 1
            try:
                return self._room.wait_for(
                    lambda: session.in_flight < session.window or session.error is not None, timeout
                )
            finally:
                self._blocked -= 1

    # ---------------------------------------------------------------- calling (the Caller protocol)
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
        """Issue one call, waiting for room if ``max_outstanding`` calls are in flight."""
        results = self.prepare_method(spec, shard, method)(args, kwargs, node, read)
        assert results is not None  # a blocking call always sends
        return results

    def try_call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        node: int | None,
        read: ReadOptions | None = None,
    ) -> QueryResults | None:
        """``call``, or None instead of waiting when the window is full (asyncio awaits room)."""
        return self.prepare_method(spec, shard, method, False)(args, kwargs, node, read)

    def watch_poll(self, shard: ShardId, what: str, poll: PollArgs, node: int | None) -> QueryResults:
        return self._send(poll_request(shard, what, poll, node))

    def prepare_method(
        self, spec: TypeSpec, shard: ShardId, method: str, block: bool = True
    ) -> Callable[[tuple[Any, ...], dict[str, Any], int | None, ReadOptions | None], QueryResults | None]:
        """``call`` (``try_call`` if not ``block``) of one method of one shard, with what is
        the same for every call worked out once: a handle prepares its method when first
        used, and a call then costs only what differs per call."""
        session = self._session
        make = method_requests(spec, shard, method)
        send = self._try_send
        persistent = spec.persistent
        query = self._persist_query

        def issue(
            args: tuple[Any, ...], kwargs: dict[str, Any], node: int | None, read: ReadOptions | None
        ) -> QueryResults | None:
            if in_handler():
                refuse_nested(spec, method, "through a Client")
            error = session.error
            if error is not None:
                raise error
            request = make(args, kwargs, node, read, session.max_message_size)
            results = send(request, block)
            if persistent and results is not None and request.ordered:
                # Can be asked whether it is on disk (``QueryResults.persisted``): one partial
                # per call, not a closure and its cells (thousands in flight feed the collector).
                results.set_persist_query(partial(query, request))
            return results

        return issue

    def _persist_query(self, request: Request, version: int, replica: int) -> QueryResults:
        """The query ``persisted`` sends for the ordered call ``request`` of a persistent type."""
        return self._send(persist_request(request, version, replica))

    def _send(self, request: Request) -> QueryResults:
        results = self._try_send(request, True)
        assert results is not None  # a blocking send always sends
        return results

    def _try_send(self, request: Request, block: bool) -> QueryResults | None:
        session = self._session
        with self._lock:
            if len(session.pending) >= session.window:
                if not block:
                    return None
                while session.in_flight >= session.window and session.error is None:
                    self._blocked += 1
                    try:
                        self._room.wait(0.5)
                    finally:
                        self._blocked -= 1
            if session.has_output():  # the socket thread was woken for what is queued: it takes this too
                return session.call(request)
            quiet = not session.pending  # nothing on its way either: a call made alone
            results = session.call(request)
            if not session.has_output():  # not connected: sent once connected
                return results
            if not quiet:
                self._loop.wake_locked()  # the first call of the socket thread's next turn
                return results
        # A call made alone is written from this thread, sparing the socket thread's wake-up
        # (socket_loop).
        self._loop.send_now()
        return results

    # ---------------------------------------------------------------- the socket thread
    def _on_progress(self, finished: bool) -> None:
        """From the socket thread, under the lock: the first Welcome, or calls finished."""
        if not self._connected.is_set() and (self._session.welcomed or self._session.error is not None):
            self._connected.set()
        if finished and self._blocked:
            self._room.notify_all()

    def _run(self) -> None:
        session, loop = self._session, self._loop
        try:
            while True:
                with self._lock:
                    step = session.next_step(time.monotonic())
                if isinstance(step, Stop):
                    break
                if isinstance(step, Wait):
                    loop.sleep(step.until - time.monotonic())
                elif isinstance(step, Dial):
                    loop.connect(step.address)
        except BaseException as exc:  # a bug: fail every call with it, never leave them waiting
            log.exception("the client's socket thread failed; its calls fail with the reason")
            with self._lock:
                session.broken(GroupClosed(f"the client's socket thread failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._room.notify_all()
            self._connected.set()  # the constructor raises the session's error
            loop.shut()
