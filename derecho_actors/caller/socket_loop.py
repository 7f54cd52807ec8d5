"""The ``Client``'s one socket thread: it dials a contact (TCP, then the TLS handshake), then
serves the connection for the ``ClientSession`` until it ends: bytes read go into the session,
the frames it has to send go out, its timer is kept.

Every operation on a connection's socket, from the handshake to the close, happens on this one
thread, in a poll loop over the socket (non-blocking) and a wake-up socket pair the callers'
threads write one byte to when they queue the first call of a turn. Why: an ``SSLSocket`` is
one OpenSSL ``SSL`` object, and OpenSSL does not make an ``SSL`` object safe to use from two
threads at once (``SSL_read`` and ``SSL_write`` share its record layer and error state), which
the client's former reader and writer threads did. A lock making the SSL calls exclusive would
have been the smaller change, but a blocking read would hold it while waiting for bytes, and a
write blocked on a full socket would stop the reading the contact needs from us before it can
read on: with both sides' buffers full, a deadlock. The poll loop reads and writes as each
becomes possible. Closing is plain too: the thread that uses a socket closes it after its last
call, so its descriptor can never be closed (and reused by the next connection or file of the
process) under an ``SSL_read`` or ``SSL_write`` in progress.

One exception, for latency: a call made while the client has nothing in flight (calls made
one at a time) is written by the caller's thread itself (``send_now``), sparing the wake-up of
the socket thread and the hand-over of the GIL to it (tens to hundreds of microseconds on a
busy machine, per call). Every SSL call on the socket, from either thread, is made under one
I/O lock (``_io``), held only for non-blocking calls, never while waiting: so two threads
never use the ``SSL`` object at once, and neither waits for bytes holding it. Whoever writes
takes the session's output and queues it under that lock, so frames go out in the order the
session made them. A pipelined caller (calls in flight) never writes itself: its calls go in
the socket thread's frames, many per frame.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from collections import deque
from typing import Callable

from derecho_actors.caller.large_calls import StreamingSession
from derecho_actors.caller.session import Phase, encode_output
from runtime.drivers.dial import dial, is_refusal
from runtime.drivers.tcp import split_address
from runtime.errors import Refused
from runtime.security.tls import LoadedCredentials

DIAL_TIMEOUT = 2.0  # seconds for TCP and the TLS handshake with one contact
CHUNK = 256 << 10  # bytes handed to one send
READS_PER_TURN = 16  # recv calls before the loop turns (a flood of answers cannot starve writes)
RECV_SIZE = 64 << 10
"""Bytes asked of one recv: more than a TLS record holds (16 KiB), so one SSL_read takes a whole
record and OpenSSL (its read-ahead off, as Python leaves it) never keeps decrypted bytes from us
between turns: the poll's "readable" is the whole truth, no ``pending()`` needed (each call into
the ssl module lets the GIL go, and getting it back from a busy caller thread costs up to a switch
interval)."""
SHORT_READ = 16 << 10  # a read shorter than a full TLS record: the socket had no more for now


class Outgoing:
    """Bytes queued for the contact. A TLS write that could not complete must be retried with
    the same bytes (OpenSSL's rule), so the chunk being written stays apart until it is out."""

    __slots__ = ("_queue", "_chunk")

    def __init__(self) -> None:
        # A streamed call's blocks are memoryviews of the caller's bytes: written, never copied.
        self._queue: deque[bytes | memoryview] = deque()
        self._chunk: bytes | memoryview = b""

    def add(self, data: bytes | memoryview) -> None:
        if data:
            self._queue.append(data)

    @property
    def pending(self) -> bool:
        return bool(self._chunk or self._queue)

    def flush(self, sock: socket.socket) -> None:
        """Write what the socket takes now. Raises ``BlockingIOError`` or ``SSLWantWriteError``
        (``SSLWantReadError``) when it takes no more until writable (readable), ``OSError`` when
        the connection is gone."""
        while True:
            if not self._chunk:
                if not self._queue:
                    return
                self._chunk = self._next()
            sent = sock.send(self._chunk)
            self._chunk = self._chunk[sent:]

    def _next(self) -> bytes | memoryview:
        queue = self._queue
        parts = [queue.popleft()]
        size = len(parts[0])
        while queue and size + len(queue[0]) <= CHUNK:
            part = queue.popleft()
            parts.append(part)
            size += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class SocketLoop:
    """Runs on the client's socket thread, except ``wake``/``wake_locked`` (any thread).
    Everything it learns goes into the session under ``lock``; ``on_progress(finished)``
    (under the lock too) tells the client a Welcome or refusal came, or calls finished."""

    def __init__(
        self,
        session: StreamingSession,
        lock: threading.Lock,
        credentials: LoadedCredentials | None,
        on_progress: Callable[[bool], None],
    ) -> None:
        self._session = session
        self._lock = lock
        self._credentials = credentials
        self._on_progress = on_progress
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False  # a wake byte is in the pair (under the lock)
        self._io = threading.Lock()  # every SSL call on the socket, and the queue of bytes to it
        self._sock: socket.socket | None = None  # the connection being served (under _io)
        self._out: Outgoing | None = None
        self._shut = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._read_wants_write = False  # TLS must write (a key update) before it can read on
        # TLS must read (a renegotiation) before it can write on: wait for readable, not
        # writable, or the loop would spin on a socket that is always writable.
        self._write_wants_read = False

    # ------------------------------------------------------------------ any thread
    def wake_locked(self) -> None:
        """Under the lock: make the socket thread turn now (one byte per turn at most)."""
        if not self._woken and not self._shut:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except OSError:  # full: the thread is waking anyway
                pass

    def wake(self) -> None:
        with self._lock:
            self.wake_locked()

    def send_now(self) -> None:
        """From a caller's thread, not holding the session's lock: write what the session has
        to send now (see the module's docstring). What the socket does not take at once, or
        anything amiss, is left to the socket thread, woken for it."""
        with self._io:
            sock, out = self._sock, self._out
            if sock is None or out is None:
                self.wake()
                return
            with self._lock:
                output = self._session.output()
                parts = self._session.stream_output() if not out.pending else []
            out.add(encode_output(output))
            for part in parts:
                out.add(part)
            try:
                out.flush(sock)
            except (OSError, ssl.SSLError):  # would block, TLS wants to read first, or broken
                pass
            if not out.pending and not parts:  # (after a stream's window, the socket thread goes on)
                return
        self.wake()

    # ------------------------------------------------------------------ the socket thread
    def sleep(self, seconds: float) -> None:
        """Back off for ``seconds`` (a wake, such as ``close``, ends it early)."""
        if seconds > 0 and self._selector.select(seconds):
            with self._lock:
                self._drain_locked()

    def shut(self) -> None:
        """The thread is done: release the wake-up pair."""
        with self._lock:
            self._shut = True
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def connect(self, address: str) -> None:
        """Dial ``address`` and serve the connection until it ends; the session hears of each."""
        session, lock = self._session, self._lock
        host, port = split_address(address)
        try:
            sock = dial(host, port, DIAL_TIMEOUT, self._credentials)
        except Refused as exc:
            with lock:
                session.refuse(exc)
                self._on_progress(True)
            return
        except OSError as exc:
            with lock:
                session.dial_failed(time.monotonic(), address, exc.strerror or str(exc))
            return
        try:
            why = self._serve(sock, address)
        finally:
            try:
                sock.close()  # here, on the thread that used it, after its last call
            except OSError:
                pass
        with lock:
            session.connection_lost(time.monotonic(), why)

    def _drain_locked(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # empty (BlockingIOError)
            pass
        self._woken = False

    def _serve(self, sock: socket.socket, address: str) -> str:
        """Until the connection ends: why it ended ("" when the session ended it)."""
        session, lock, selector, io = self._session, self._lock, self._selector, self._io
        peer = _peer_name(sock)
        sock.setblocking(False)
        out = Outgoing()
        with self._io, lock:
            if session.phase is not Phase.DIALING:  # closed while dialing
                return ""
            out.add(session.connected(time.monotonic(), address, peer))
            self._sock, self._out = sock, out
        self._read_wants_write = self._write_wants_read = False
        mask = selectors.EVENT_READ
        selector.register(sock, mask)
        try:
            wake = readable = False
            while True:
                with io:
                    with lock:
                        if wake:
                            self._drain_locked()
                        if session.phase is not Phase.CONNECTED or session.tick(time.monotonic()) is not None:
                            return ""
                        output = session.output()
                        # A streamed call's next window once the last is written; more: a turn
                        # as soon as the socket takes it, for the window after.
                        parts = session.stream_output() if not out.pending else []
                        more = session.has_output()
                        timer = session.next_timer()
                    out.add(encode_output(output))  # outside the session's lock: callers go on issuing
                    for part in parts:
                        out.add(part)
                if readable:
                    why = self._read(sock, peer)
                    if why is not None:
                        return why
                    with lock:  # the read may have let held calls go (a Welcome, answers freeing room)
                        more = more or session.has_output()
                if out.pending:
                    self._write_wants_read = False
                    with io:
                        try:
                            out.flush(sock)
                        except (BlockingIOError, ssl.SSLWantWriteError):
                            pass  # the rest when the socket takes it
                        except ssl.SSLWantReadError:
                            self._write_wants_read = True  # the rest once the peer has sent something
                        except OSError as exc:
                            return f"writing failed: {exc.strerror or exc}"
                want = selectors.EVENT_READ
                if ((out.pending or more) and not self._write_wants_read) or self._read_wants_write:
                    want |= selectors.EVENT_WRITE
                if want != mask:
                    selector.modify(sock, want)
                    mask = want
                timeout = None if timer is None else max(0.0, timer - time.monotonic())
                wake = readable = False
                for key, events in selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        wake = True
                    elif events & selectors.EVENT_READ or self._read_wants_write:
                        readable = True
        finally:
            with io:
                self._sock = self._out = None
            selector.unregister(sock)

    def _read(self, sock: socket.socket, peer: str) -> str | None:
        """Read what is there into the session; why the connection ended, if it did."""
        session, lock = self._session, self._lock
        self._read_wants_write = False
        for _ in range(READS_PER_TURN):
            try:
                with self._io:
                    data = sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return None
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                return None
            except ssl.SSLError as exc:
                if not is_refusal(exc):  # garbled or cut: fail over like any broken connection
                    return f"broke: {exc.reason or exc}"
                reason = exc.reason or str(exc)
                hint = " (check its client certificate)" if "CERTIFICATE" in reason.upper() else ""
                with lock:
                    session.refuse(Refused(f"{peer} refused the client: {reason}{hint}"))
                    self._on_progress(True)
                return ""
            except OSError as exc:
                return exc.strerror or str(exc)
            if not data:
                return "closed by the contact"
            with lock:
                ended = session.receive_data(time.monotonic(), data)
                answers = session.answers()
                self._on_progress(False)
            if answers is not None:  # fed to their results outside the lock: callers go on issuing
                done = answers.deliver()
                with lock:
                    session.answered(done)
                    self._on_progress(bool(done))
            if ended is not None:
                return ""
            if len(data) < SHORT_READ:
                return None  # most likely all there was: spare the recv that would say so (a poll will)
        return None


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "the contact"
