"""``Client``: call a group's replicated objects from outside the group.

A client is not a member: it holds one connection to one member (any contact), which runs or
relays its calls and forwards the replicas' answers. If that member fails, the client
reconnects to another contact and sends its unanswered calls again under the same numbers;
replicas remember, per client, the last call they applied and its reply, so a retried
ordered call is never applied twice (exactly once).
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from typing import Any, Callable, Sequence

import msgpack

from derecho_actors import _codec
from derecho_actors._decorators import ORDERED, TypeSpec, method_caller, spec_of
from derecho_actors._results import PERSISTED_QUERY, QueryResults, take_entries
from runtime.errors import GroupClosed, NotRegistered, PayloadTooLarge
from runtime.core.layout import ShardId
from runtime.drivers.tcp import split_address
from runtime.wire.codec import FrameDecoder, frame, frames
from runtime.wire.control import Call, Goodbye, Hello, Reply, ReplyBatch, StatusReply

log = logging.getLogger("derecho.client")

MAX_PAYLOAD = 1 << 20


class Client:
    """``Client(contacts=["127.0.0.1:7001", ...])``; then ``client.handle(KV, shard=1)``."""

    def __init__(
        self, contacts: Sequence[str], cluster: str = "derecho", retry_for: float = 30.0, max_outstanding: int = 4096,
    ) -> None:
        """``max_outstanding``: calls in flight at once; a call beyond it waits for room (flow
        control, so a pipelining caller cannot swamp its contact node)."""
        if not contacts:
            raise GroupClosed("a Client needs at least one contact address")
        for c in contacts:
            split_address(c)
        self.contacts = list(contacts)
        self.cluster = cluster
        self.retry_for = retry_for
        self.client_id = random.getrandbits(62) | 1
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[QueryResults, Call]] = {}
        self.max_outstanding = max(1, max_outstanding)
        self._room = threading.Condition(self._lock)
        self._blocked = 0  # callers waiting for room
        self._sock: socket.socket | None = None
        self._closed = False
        self._contact = 0
        self._connected = threading.Event()
        # Calls go out through one writer thread, many per write: in Python the cost is per
        # system call, so a pipelining caller gets its calls coalesced.
        self._outbox: list[bytes] = []
        self._out_ready = threading.Condition(self._lock)
        self._writer = threading.Thread(target=self._write_loop, name="derecho-client-writer", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._run, name="derecho-client", daemon=True)
        self._thread.start()
        if not self._connected.wait(10):
            raise GroupClosed(f"no contact reachable among {', '.join(self.contacts)}")

    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> ClientHandle:
        spec = spec_of(cls)
        if spec is None:
            raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
        return ClientHandle(self, spec, ShardId(spec.name, subgroup, shard))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._out_ready.notify_all()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread's recv
                sock.close()
            except OSError:
                pass
        self._thread.join(5)
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            self._room.notify_all()
        for results, _ in pending:
            results._fail_all(GroupClosed("the client was closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- calling
    def _call(
        self, spec: TypeSpec, shard: ShardId, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        ordered: bool, target: int = 0,
    ) -> QueryResults:
        if self._closed:
            raise GroupClosed("the client was closed")
        data = _codec.encode_args(args, kwargs, spec.serializer)
        if len(data) + 64 > MAX_PAYLOAD:
            raise PayloadTooLarge(f"{spec.name}.{method} arguments encode to {len(data)} bytes; the limit is {MAX_PAYLOAD}")
        serializer = spec.serializer
        results = self._send(shard, method, data, ordered, target, f"{spec.name}.{method}", lambda b: _codec.decode_result(b, serializer))
        if ordered and spec.persistent:
            results._persist_query = lambda version, replica: self._send(
                shard, PERSISTED_QUERY, msgpack.packb(version), False, replica, f"persistence of {spec.name}.{method}",
                msgpack.unpackb,
            )
        return results

    def _send(
        self, shard: ShardId, method: str, data: bytes, ordered: bool, target: int, what: str, decode: Callable[[bytes], Any]
    ) -> QueryResults:
        if self._closed:
            raise GroupClosed("the client was closed")
        with self._lock:
            while len(self._pending) >= self.max_outstanding and not self._closed:
                self._blocked += 1
                try:
                    self._room.wait(0.5)
                finally:
                    self._blocked -= 1
            call_id = next(self._ids)
            results = QueryResults(f"{what} (client call {call_id})", decode)
            # A client's Call names, in place of a caller, the replica it wants (0: any).
            call = Call(call_id, target, shard, method, ordered, data, self.client_id)
            self._pending[call_id] = (results, call)
            if self._sock is not None:
                self._outbox.append(frame(call))
                if len(self._outbox) == 1:
                    self._out_ready.notify()
        return results

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closed:
                    self._out_ready.wait()
                if self._closed:
                    return
                batch, self._outbox = self._outbox, []
                sock = self._sock
            if sock is None:
                continue  # a reconnect sends every pending call again
            try:
                sock.sendall(b"".join(batch))
            except OSError:
                pass  # the reader notices, reconnects and sends every pending call again

    # -------------------------------------------------------------- connection
    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self.retry_for
        while not self._closed and time.monotonic() < deadline:
            address = self.contacts[self._contact % len(self.contacts)]
            self._contact += 1
            host, port = split_address(address)
            try:
                sock = socket.create_connection((host, port), timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._outbox.clear()  # every pending call goes again below, in order
                resend = [call for _, call in self._pending.values()]
                for results, _ in self._pending.values():
                    results._restart()
                try:
                    sock.sendall(frames([Hello(self.client_id, self.cluster, "client"), *resend]))
                except OSError:
                    sock.close()
                    continue
                self._sock = sock
            log.info("client %x connected to %s (%d calls resent)", self.client_id, address, len(resend))
            return sock
        return None

    def _run(self) -> None:
        while not self._closed:
            sock = self._connect()
            if sock is None:
                break
            self._connected.set()
            decoder = FrameDecoder()
            while not self._closed:
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, ReplyBatch):
                        self._take_batch(item)
                    elif isinstance(item, Reply):
                        self._take(item)
                    elif isinstance(item, StatusReply):
                        self._view_changed(item.status)
                    elif isinstance(item, Goodbye):
                        log.error("contact refused the client: %s", item.reason)
            with self._lock:
                self._sock = None
            try:
                sock.close()
            except OSError:
                pass
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            self._room.notify_all()
        for results, _ in pending:
            results._fail_all(GroupClosed(f"no member of the group reachable among {', '.join(self.contacts)}"))

    def _view_changed(self, status: dict[str, Any]) -> None:
        """The member serving us saw nodes leave: replicas among them will not answer."""
        departed = status.get("departed")
        if not isinstance(departed, list):
            return
        gone = {n for n in departed if type(n) is int}
        with self._lock:
            entries = list(self._pending.items())
        for call_id, (results, _) in entries:
            results._lost(gone, f"left the group in view {status.get('vid')}")
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
        self._take_batch(ReplyBatch(reply.node, reply.vid, reply.replicas,
                                    ((reply.call_id, reply.ok, reply.value, reply.origin, reply.version),)))


class ClientHandle:
    def __init__(self, client: Client, spec: TypeSpec, shard: ShardId) -> None:
        self._client = client
        self._spec = spec
        self.shard = shard

    def __getattr__(self, method: str) -> Callable[..., QueryResults]:
        spec, client = self._spec, self._client
        return method_caller(
            spec, method, lambda m, kind, a, kw, node: client._call(spec, self.shard, m, a, kw, kind == ORDERED, node or 0)
        )
