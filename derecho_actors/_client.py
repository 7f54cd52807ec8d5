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
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack

from derecho_actors import _codec
from derecho_actors._aio import AsyncHandle, AsyncLifecycle
from derecho_actors._consistency import ReadOptions, encode_read
from derecho_actors._decorators import ORDERED, TypeSpec, method_caller, spec_of
from derecho_actors._events import WATCH_POLL, PollArgs, WatchEvent, decode_answer, encode_poll
from derecho_actors._messages import Call, CallBatch, Reply, ReplyBatch, ViewNotice, decode, encode
from derecho_actors._replica import in_handler
from derecho_actors._results import PERSISTED_QUERY, QueryResults, take_entries
from derecho_actors._watch import Watch, start_position
from runtime.core.layout import ShardId
from runtime.drivers.dial import client_credentials, dial, is_refusal
from runtime.drivers.tcp import split_address
from runtime.errors import ConfigError, GroupClosed, NestedCallError, NotRegistered, PayloadTooLarge, Refused, WireError
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import PROTOCOL_VERSION, AppMessage, Goodbye, Hello, Ping, Pong, Welcome

log = logging.getLogger("derecho.client")

DEFAULT_MAX_PAYLOAD = 1 << 20  # until the contact's Welcome says otherwise
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def _shutdown(sock: socket.socket) -> None:
    """Wake the threads blocked on ``sock`` (the descriptor stays open: no other connection
    can take its number while they still use it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _backoff(round_: int) -> float:
    """Seconds to wait after ``round_`` failed rounds over every contact: exponential, capped,
    with jitter so many clients do not reconnect in step."""
    return min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(round_, 16))) * random.uniform(0.5, 1.5)


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
        flight at once; a call beyond it waits for room. ``liveness_timeout``: a contact that
        sends nothing (not even a pong) for this long is given up for another."""
        if not contacts:
            raise GroupClosed("a Client needs at least one contact address")
        for c in contacts:
            split_address(c)
        self.contacts = list(contacts)
        self.cluster = cluster
        self.retry_for = retry_for
        self.liveness_timeout = liveness_timeout
        self._credentials = self._load_credentials(certs_dir, name, credentials, insecure)
        # The session: the contact derives the origin of our calls from our identity and
        # this number; the same on every contact, so retries after failover apply once.
        self.session = random.getrandbits(62) | 1
        self.session_ns = time.time_ns()
        self.max_message_size = DEFAULT_MAX_PAYLOAD
        self.max_frame = DEFAULT_MAX_PAYLOAD  # the contact's limit on a frame from us (its Welcome says)
        self._ids = itertools.count(1)
        self._oldest = 1  # no call below this one waits for an answer
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[QueryResults, Call]] = {}
        self.max_outstanding = max(1, max_outstanding)
        self._room = threading.Condition(self._lock)
        self._blocked = 0  # callers waiting for room
        self._sock: socket.socket | None = None
        self._closed = False
        self._refusal: Refused | None = None
        self._contact = 0
        self.connected_to: str | None = None  # the contact of the current (or last) connection
        self.connections = 0  # connections made so far (more than one: the client failed over)
        self._connected = threading.Event()
        self._pings = itertools.count(1)
        self._unavailable = ""  # why the group's shards cannot run, as the contact last said
        self._answered = False  # the current contact sent an answer (not only a goodbye)
        self._goodbye = ""  # why the current contact closed the connection, if it said
        self._turned_away_for = ""  # the last goodbye when every contact turned the client away
        self._idle_ping = 10.0  # seconds between pings while no call waits (a third of the contact's idle timeout)
        # Calls go out through one writer thread, many per message and write: in Python the
        # cost is per call and per system call, so a pipelining caller gets them coalesced.
        self._outbox: list[Call] = []
        self._control: list[bytes] = []  # frames of our own (pings) for the writer
        self._out_ready = threading.Condition(self._lock)
        # The socket the writer is sending on, outside the lock. Only the reader thread closes
        # a socket, and only once the writer is done with it: a descriptor closed under a
        # thread still in SSL_read/SSL_write (which use the descriptor number, not the Python
        # object) is reused at once by the next connection or file of this process, and the
        # stale call then reads or writes that one's bytes (a handshake seeing
        # WRONG_VERSION_NUMBER, a node DECRYPTION_FAILED_OR_BAD_RECORD_MAC).
        self._writing: socket.socket | None = None
        self._written = threading.Condition(self._lock)
        self._writer = threading.Thread(target=self._write_loop, name="derecho-client-writer", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._run, name="derecho-client", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise GroupClosed(f"no contact reachable among {', '.join(self.contacts)} within {connect_timeout} s")
        if self._refusal is not None:
            self.close()
            raise self._refusal

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

    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> ClientHandle:
        spec = spec_of(cls)
        if spec is None:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
        return ClientHandle(self, spec, ShardId(spec.name, subgroup, shard))

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
        spec = spec_of(cls)
        if spec is None:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
        sid = ShardId(spec.name, subgroup, shard)
        what = f"watch of {sid}"

        def send(poll: PollArgs) -> QueryResults:
            results = self._send(sid, WATCH_POLL, encode_poll(poll), False, 0, what, decode_answer)
            assert results is not None  # a blocking send always sends
            return results

        return Watch(send, spec.serializer, what, start_position(since), hold=hold)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._out_ready.notify_all()
            sock = self._sock
        if sock is not None:
            _shutdown(sock)  # wakes the reader thread, which closes it (see _writing)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._fail_pending(GroupClosed("the client was closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- asyncio

    def wait_for_room(self, timeout: float) -> bool:
        """Block until fewer than ``max_outstanding`` calls are in flight (True) or
        ``timeout`` passes (False). Thread-safe."""
        with self._lock:
            return self._room.wait_for(lambda: len(self._pending) < self.max_outstanding or self._closed, timeout)

    # ---------------------------------------------------------------- calling
    def _call(
        self,
        spec: TypeSpec,
        shard: ShardId,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ordered: bool,
        target: int = 0,
        read: ReadOptions | None = None,
        block: bool = True,
    ) -> QueryResults | None:
        """Issue one call. ``block=False``: None instead of waiting when ``max_outstanding``
        calls are already in flight (the asyncio side then awaits room elsewhere)."""
        if in_handler():
            raise NestedCallError(
                f"{spec.name}.{method} was called through a Client from inside a replicated method; the replica runs "
                "one call at a time and would wait for itself (or for a call ordered after the one it is running). "
                "Do the call from outside the method (for example after its result arrives)"
            )
        if self._closed:
            raise self._refusal or GroupClosed("the client was closed")
        data = _codec.encode_args(args, kwargs, spec.serializer)
        if read is not None:
            data = encode_read(read, data)
        if len(data) + 64 > self.max_message_size:
            raise PayloadTooLarge(
                f"{spec.name}.{method} arguments encode to {len(data)} bytes; the group's limit is "
                f"{self.max_message_size} (multicast.max_message_size): send less per call"
            )
        serializer = spec.serializer
        results = self._send(
            shard,
            method,
            data,
            ordered,
            target,
            f"{spec.name}.{method}",
            lambda b: _codec.decode_result(b, serializer),
            block,
        )
        if results is None:
            return None
        if ordered:
            results._compare = spec.on_divergence
        if ordered and spec.persistent:

            def persist_query(version: int, replica: int) -> QueryResults:
                query = self._send(
                    shard,
                    PERSISTED_QUERY,
                    msgpack.packb(version),
                    False,
                    replica,
                    f"persistence of {spec.name}.{method}",
                    msgpack.unpackb,
                )
                assert query is not None  # a blocking send always sends
                return query

            results._persist_query = persist_query
        return results

    def _send(
        self,
        shard: ShardId,
        method: str,
        data: bytes,
        ordered: bool,
        target: int,
        what: str,
        decode: Callable[[bytes], Any],
        block: bool = True,
    ) -> QueryResults | None:
        if self._closed:
            raise self._refusal or GroupClosed("the client was closed")
        with self._lock:
            if not block and len(self._pending) >= self.max_outstanding:
                return None
            while len(self._pending) >= self.max_outstanding and not self._closed:
                self._blocked += 1
                try:
                    self._room.wait(0.5)
                finally:
                    self._blocked -= 1
            call_id = next(self._ids)
            results = QueryResults(f"{what} (client call {call_id})", decode)
            results.ordered = ordered and method != PERSISTED_QUERY
            results._why_waiting = self._why_waiting
            floor = self._floor(call_id)
            # The contact fills in the session (origin) from our authenticated identity, and
            # answers on our connection (no caller id: a client is not a member).
            call = Call(call_id, 0, shard, method, ordered, data, 0, 0, floor, target)
            self._pending[call_id] = (results, call)
            if self._sock is not None:
                self._outbox.append(call)
                if len(self._outbox) == 1:
                    self._out_ready.notify()
        return results

    def _floor(self, next_id: int) -> int:
        """The oldest call still waiting for an answer (under ``_lock``): call numbers only
        grow, so the hint only moves up, each number passed once."""
        oldest = self._oldest
        pending = self._pending
        while oldest < next_id and oldest not in pending:
            oldest += 1
        self._oldest = oldest
        return oldest

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._control and not self._closed:
                    self._out_ready.wait()
                if self._closed:
                    return
                batch, self._outbox = self._outbox, []
                control, self._control = self._control, []
                sock = self._sock
                if sock is None:
                    continue  # a reconnect sends every pending call again
                self._writing = sock  # _drop_socket does not close it until we are done
            try:
                data = b"".join(control)
                if batch:
                    data += _calls_frame(batch, self.max_frame)
                sock.sendall(data)
            except OSError:
                pass  # the reader notices, reconnects and sends every pending call again
            finally:
                with self._lock:
                    self._writing = None
                    self._written.notify_all()

    def _queue(self, data: bytes) -> None:
        with self._lock:
            if self._sock is not None:
                self._control.append(data)
                self._out_ready.notify()

    # -------------------------------------------------------------- connection
    def _connect(self) -> socket.socket | None:
        started = time.monotonic()
        deadline = started + self.retry_for
        failures = 0
        last_error = ""
        while not self._closed and time.monotonic() < deadline:
            address = self.contacts[self._contact % len(self.contacts)]
            self._contact += 1
            host, port = split_address(address)
            try:
                sock = dial(host, port, 2.0, self._credentials)
            except Refused as exc:
                self._refused(exc)
                return None
            except OSError as exc:
                failures += 1
                last_error = f"{address}: {exc.strerror or exc}"
                if failures == 1 or failures % 20 == 0:
                    log.info("client cannot reach %s (%s); trying the next contact", address, exc.strerror or exc)
                if failures % len(self.contacts) == 0:
                    time.sleep(_backoff(failures // len(self.contacts)))
                continue
            sock.settimeout(None)
            with self._lock:
                self._outbox.clear()  # every pending call goes again below, in order
                resend = [call for _, call in self._pending.values()]
                for results, _ in self._pending.values():
                    results._restart()
                try:
                    hello = frame(Hello(self.session, self.cluster, "client", self.session_ns, PROTOCOL_VERSION))
                    sock.sendall(hello + (_calls_frame(resend, self.max_frame) if resend else b""))
                except OSError:
                    sock.close()
                    continue
                self._sock = sock
                self._unavailable = ""
                self.connected_to = address
                self.connections += 1
            log.info("client connected to %s (%d calls resent)", address, len(resend))
            return sock
        if last_error:
            # The time it really tried: a client closed early (its connect_timeout passed)
            # stops before retry_for, and a log line must not claim more.
            tried = time.monotonic() - started
            if self._closed:
                log.info("client stopped trying to reach the group after %.1f s: closed (last: %s)", tried, last_error)
            else:
                log.warning("client gave up reaching the group after %.1f s (last: %s)", tried, last_error)
        return None

    def _refused(self, exc: Refused) -> None:
        """Final: no contact will think better of it. Fail everything with the reason."""
        log.error("%s", exc)
        self._refusal = exc
        self._closed = True
        self._connected.set()
        with self._lock:
            self._out_ready.notify_all()
        self._fail_pending(exc)

    def _run(self) -> None:
        turned_away = 0  # contacts in a row that said goodbye before any answer (not in a view)
        while not self._closed:
            sock = self._connect()
            if sock is None:
                break
            self._answered = False
            self._goodbye = ""
            try:
                self._serve(sock)  # sets _connected once the contact's Welcome arrives
            except OSError:  # the socket was closed under us (close(), or a reset)
                pass
            self._drop_socket()
            if self._goodbye and not self._answered:
                turned_away += 1
                if turned_away % len(self.contacts) == 0:  # every contact turned us away: wait a little
                    self._turned_away_for = self._goodbye
                    deadline = time.monotonic() + _backoff(turned_away // len(self.contacts))
                    while not self._closed and time.monotonic() < deadline:
                        time.sleep(0.05)
            else:
                turned_away = 0
                self._turned_away_for = ""
        last = f" (last: {self._turned_away_for})" if self._turned_away_for else ""
        self._fail_pending(
            self._refusal or GroupClosed(f"no member of the group reachable among {', '.join(self.contacts)}{last}")
        )

    def _serve(self, sock: socket.socket) -> None:
        """Read from one contact until it closes, refuses us or goes silent."""
        decoder = FrameDecoder()
        interval = max(0.05, self.liveness_timeout / 4)
        sock.settimeout(interval)
        heard = pinged = time.monotonic()
        where = self._peer_name(sock)
        while not self._closed:
            try:
                data = sock.recv(1 << 16)
            except (socket.timeout, TimeoutError):
                # While calls wait, a contact that says nothing (not even a pong) for
                # liveness_timeout is frozen or cut off: fail over. While idle, ping only to
                # stay clear of the contact's idle timeout.
                now = time.monotonic()
                busy = bool(self._pending)
                limit = self.liveness_timeout if busy else self.liveness_timeout + 2 * self._idle_ping
                if now - heard > limit:
                    log.warning(
                        "contact %s sent nothing for %.1f s (frozen or cut off): failing over", where, now - heard
                    )
                    return
                if busy or now - pinged >= self._idle_ping:
                    pinged = now
                    self._queue(frame(Ping(next(self._pings))))
                continue
            except ssl.SSLError as exc:
                if is_refusal(exc):
                    reason = exc.reason or str(exc)
                    hint = " (check its client certificate)" if "CERTIFICATE" in reason.upper() else ""
                    self._refused(Refused(f"{where} refused the client: {reason}{hint}"))
                else:  # garbled or cut: fail over like any broken connection
                    log.info("connection to %s broke: %s; failing over", where, exc.reason or exc)
                return
            except OSError:
                return
            if not data:
                return
            heard = time.monotonic()
            for item in decoder.feed(data):
                t = type(item)
                if t is AppMessage:
                    self._answered = True
                    self._on_message(item.data)  # type: ignore[union-attr]
                elif t is Pong:
                    pass
                elif t is Welcome:
                    self.max_message_size = item.max_message_size  # type: ignore[union-attr]
                    self.max_frame = item.max_frame  # type: ignore[union-attr]
                    self._connected.set()  # accepted: not refused for cluster or identity
                    self._idle_ping = max(0.05, min(10.0, item.idle_timeout_ms / 3000))  # type: ignore[union-attr]
                elif t is Goodbye:
                    reason = item.reason  # type: ignore[union-attr]
                    if reason.startswith("refused"):
                        self._refused(Refused(f"{where} {reason}"))
                        return
                    self._goodbye = reason
                    log.info("contact %s closed the connection: %s", where, reason)
            if decoder.broken:
                return

    @staticmethod
    def _peer_name(sock: socket.socket) -> str:
        try:
            host, port = sock.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "the contact"

    def _drop_socket(self) -> None:
        """On the reader thread (the only one that closes sockets): close the connection once
        the writer is no longer sending on it."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            _shutdown(sock)  # ends a send in progress
            with self._lock:
                self._written.wait_for(lambda: self._writing is not sock)
            try:
                sock.close()
            except OSError:
                pass

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            self._room.notify_all()
        for results, _ in pending:
            results._fail_all(exc)

    def _why_waiting(self) -> str | None:
        if self._refusal is not None:
            return str(self._refusal)
        turned = f"; the last contact said: {self._turned_away_for}" if self._turned_away_for else ""
        if self._sock is None:
            return f"no contact connected (trying {', '.join(self.contacts)}){turned}"
        return self._unavailable or turned[2:] or None

    def _on_message(self, data: bytes) -> None:
        try:
            msg = decode(data)
        except WireError as exc:
            log.warning("dropped a bad message from the contact: %s", exc)
            return
        t = type(msg)
        if t is ReplyBatch:
            self._take_batch(msg)  # type: ignore[arg-type]
        elif t is Reply:
            self._take(msg)  # type: ignore[arg-type]
        elif t is ViewNotice:
            self._view_changed(msg)  # type: ignore[arg-type]

    def _view_changed(self, notice: ViewNotice) -> None:
        """The member serving us saw nodes leave: replicas among them will not answer."""
        self._unavailable = notice.unavailable
        gone = set(notice.departed)
        if not gone:
            return
        with self._lock:
            entries = list(self._pending.items())
        for call_id, (results, _) in entries:
            results._lost(gone, f"left the group in view {notice.vid}")
            if results.done():
                with self._lock:
                    self._pending.pop(call_id, None)
                    self._room.notify_all()

    def _take_batch(self, batch: ReplyBatch) -> None:
        finished = take_entries(self._pending, batch.node, batch.replicas, batch.entries)
        if finished:
            with self._lock:
                for call_id in finished:
                    self._pending.pop(call_id, None)
                if self._blocked:
                    self._room.notify(len(finished))

    def _take(self, reply: Reply) -> None:
        self._take_batch(
            ReplyBatch(
                reply.node,
                reply.vid,
                reply.replicas,
                ((reply.call_id, reply.ok, reply.value, reply.origin, reply.version),),
            )
        )


def _calls_frame(calls: list[Call], max_frame: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Frames carrying ``calls``, as few as the contact's frame limit allows (one message
    each, whatever the number of calls in it)."""
    out: list[bytes] = []
    batch: list[Call] = []
    size = 0
    budget = max(1, max_frame - 4096)
    for call in calls:
        need = _codec.call_size(call.method, call.args) + len(str(call.shard)) + 32
        if batch and size + need > budget:
            out.append(_one_frame(batch))
            batch, size = [], 0
        batch.append(call)
        size += need
    if batch:
        out.append(_one_frame(batch))
    return b"".join(out)


def _one_frame(calls: list[Call]) -> bytes:
    msg = calls[0] if len(calls) == 1 else CallBatch(tuple(calls))
    return frame(AppMessage(encode(msg)))


class ClientHandle:
    def __init__(self, client: Client, spec: TypeSpec, shard: ShardId) -> None:
        self._client = client
        self._spec = spec
        self.shard = shard

    @property
    def aio(self) -> AsyncHandle:
        """The same calls for asyncio code: ``await h.aio.put(k, v)``; waiting for room in
        the client's window (``max_outstanding``) is an ``await``, never a blocked loop."""
        return AsyncHandle(lambda method: self._method(method, block=False), self._client.wait_for_room)

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        return self._method(method, block=True)

    def _method(self, method: str, block: bool) -> Callable[..., Any]:
        """``handle.<method>``: with ``block=False`` a call returns None instead of waiting
        when the client's window is full (the asyncio side awaits room elsewhere)."""
        spec, client, shard = self._spec, self._client, self.shard
        return method_caller(
            spec,
            method,
            lambda m, kind, a, kw, node, read: client._call(
                spec, shard, m, a, kw, kind == ORDERED, node or 0, read, block=block
            ),
        )
