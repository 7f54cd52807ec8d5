"""TLS on an asyncio socket with ``ssl.SSLObject`` and memory BIOs: fewer steps per frame.

asyncio's own TLS layer (``loop.start_tls``, ``create_connection(ssl=...)``) runs each read
and each write through a stack of Python methods and state checks, and on a loop that
handles one small frame per turn that, not the cipher, is most of what a frame costs
(``bench/tls_frames.py`` measures both). ``TlsStream`` is the socket's own protocol
(``asyncio.BufferedProtocol``, so the kernel copies into one preallocated buffer) and does
TLS itself:

* in: what a read brought goes into the incoming BIO and every whole record is decrypted
  into a second preallocated buffer, handed to the application as one ``bytes``;
* out: frames written while a read is being handled are encrypted together when it ends,
  one ``SSLObject.write`` and one socket write; a write from anywhere else goes at once.

To the application it looks like a transport (``write``, ``writelines``, ``close``,
``abort``, pause and resume of reading, write-buffer limits and size, ``get_extra_info``
with ``"ssl_object"``), and it calls the application's ``asyncio.Protocol`` methods.
Differences from asyncio's TLS transport, on purpose:

* ``connection_made`` comes when the TCP connection exists, before the handshake (a server
  can count a connection before spending a handshake on it); ``handshake`` is a future that
  ends with the handshake (its exception: why it failed, ``TimeoutError`` after
  ``handshake_timeout``). Data arrives and ``connection_lost`` is called only after a
  handshake that succeeded; one that fails aborts the socket and says so only through the
  future.
* Everything written is encrypted at once and held by the socket's transport, so
  ``get_write_buffer_size`` and ``pause_writing``/``resume_writing`` see all of it.
* ``close`` sends close_notify and closes without waiting for the peer's.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

READ_BUFFER = 256 << 10  # what one socket read may bring (the kernel's usual burst)
_PLAIN_ROOM = READ_BUFFER + (64 << 10)  # decrypted bytes of one read; records shrink, never grow
JOIN_LIMIT = 64 << 10  # writes of one turn joined before encryption while they total at most this
_RECORD_ROOM = 17 << 10  # a TLS record's plaintext fits (16 KiB); less room left: hand on first


class _Buffers(threading.local):
    """The read buffer and the decrypted-bytes buffer, one pair per thread (per event loop)
    and shared by all its streams: a read is handled to its end before the next begins,
    and what is handed on is a copy. Per stream they would cost ~600 KiB each, which a
    flood of half-open connections would multiply."""

    def __init__(self) -> None:
        self.raw = memoryview(bytearray(READ_BUFFER))
        self.plain = memoryview(bytearray(_PLAIN_ROOM))


_buffers = _Buffers()


def _retrieve(fut: asyncio.Future[None]) -> None:
    """A failed handshake nobody awaited is not an "exception never retrieved"."""
    if not fut.cancelled():
        fut.exception()


class TlsStream(asyncio.BufferedProtocol):
    """See the module docstring. Create it in the protocol factory of ``create_server`` or
    ``create_connection``, on the loop."""

    def __init__(
        self,
        app: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float = 5.0,
    ) -> None:
        self.app: Any = app
        self._into_app = isinstance(app, asyncio.BufferedProtocol)  # decrypt into its buffers
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.handshake_timeout = handshake_timeout
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.handshake.add_done_callback(_retrieve)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object: ssl.SSLObject = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # Reads and writes go to the ssl module's own object: ``SSLObject.read``/``write`` only
        # forward to it, one Python frame more per record (the same methods, same arguments).
        self._tls: Any = getattr(self.ssl_object, "_sslobj", self.ssl_object)
        self._view = _buffers.raw
        self._plain_view = _buffers.plain
        self._raw: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ready = False  # handshake done
        self._closing = False
        self._lost = False
        self._in_read = False  # writes wait for the end of the read being handled
        self._held: list[bytes | bytearray | memoryview] = []  # those writes
        self._reading_paused = False

    # ------------------------------------------------------------ socket side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.handshake_timeout, self._handshake_timed_out)
        self.app.connection_made(self)
        if not self.server_side and not self._closing:
            self._step_handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        # An application may read less per socket read (``read_limit``: a peer flooding tiny
        # frames is read a little per loop turn, so decoding them cannot hold the loop).
        limit = getattr(self.app, "read_limit", None)
        return self._view[:limit] if limit else self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._incoming.write(self._view[:nbytes])
        if not self._ready:
            self._step_handshake()
            if not self._ready:
                return
        self._in_read = True
        try:
            self._read_records()
        finally:
            self._in_read = False
            if self._held:
                self._flush()

    def eof_received(self) -> bool | None:
        if not self._ready:
            self._fail_handshake(ConnectionResetError("the peer closed the connection during the TLS handshake"))
            return None
        if not self._closing:
            self.app.eof_received()
        return None  # the socket's transport closes itself (after what it still has to send)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._ready:
            self._fail_handshake(exc or ConnectionResetError("connection lost during the TLS handshake"))
            return
        self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._ready:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self.app.resume_writing()

    # ------------------------------------------------------------ TLS
    def _step_handshake(self) -> None:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._send_outgoing()
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._send_outgoing()  # the alert, if any, tells the peer why
            self._fail_handshake(exc)
            return
        self._send_outgoing()
        self._ready = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._held:
            self._flush()
        if self._incoming.pending:  # application data that came with the handshake's end
            self._in_read = True
            try:
                self._read_records()
            finally:
                self._in_read = False
                if self._held:
                    self._flush()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self._ready:
            self._fail_handshake(TimeoutError(f"TLS handshake did not finish within {self.handshake_timeout:g} s"))

    def _fail_handshake(self, exc: BaseException) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self._raw is not None and not self._lost:
            self._raw.abort()

    def _read_records(self) -> None:
        """Decrypt every whole record the incoming BIO holds. An application that is a
        ``BufferedProtocol`` gets them in its own buffers (``get_buffer``), as asyncio's TLS
        layer does it: the node's connections give the place of a large object's block while
        its body arrives, so those bytes are decrypted where they belong. Any other gets them
        as one ``bytes`` (several, if they overflow the shared buffer).

        The records of one read are decrypted one after the other into the same buffer and
        handed on with one ``buffer_updated`` (one ``data_received``), as plain TCP hands on
        one read: a sender joins a turn's frames into records of at most 16 KiB, so a read
        holds several, and one call per record made the node's decoder and core step once per
        record instead of once per read (measured: ``bench/tls_frames.py``, burst pattern)."""
        incoming, app = self._incoming, self.app
        read, pending = self._tls.read, self._tls.pending  # the ssl module's object, not its wrapper
        into_app = self._into_app
        eof = False
        error: BaseException | None = None
        more = True
        while more and not self._closing:
            buf = app.get_buffer(-1) if into_app else self._plain_view
            room = len(buf)
            filled = 0
            while True:
                try:
                    n = read(room - filled, buf[filled:] if filled else buf)
                except ssl.SSLWantReadError:
                    more = False
                    break
                except ssl.SSLZeroReturnError:  # close_notify
                    eof, more = True, False
                    break
                except (ssl.SSLError, OSError) as exc:
                    error, more = exc, False
                    break
                if not n:  # close_notify (the ssl module reports it as a read of nothing)
                    eof, more = True, False
                    break
                filled += n
                if not incoming.pending and not pending():
                    more = False
                    break
                if room - filled < _RECORD_ROOM:  # hand on what we have, then ask for room again
                    break
            if filled:
                if into_app:
                    app.buffer_updated(filled)
                else:
                    self._deliver(bytes(buf[:filled]))
        if self._outgoing.pending:  # a key update or a ticket answered while reading
            self._send_outgoing()
        if error is not None:
            self._fatal(error)
        elif eof and not self._closing:
            self.app.eof_received()
            self.close()

    def _deliver(self, data: bytes) -> None:
        if not self._closing:
            self.app.data_received(data)

    def _fatal(self, exc: BaseException) -> None:
        """A record failed its check (bytes garbled or forged on the way): nothing after it
        can be trusted, so the connection ends at once."""
        self._closing = True
        if self._raw is not None and not self._lost:
            self._raw.abort()

    def _send_outgoing(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._lost:
            self._raw.write(self._outgoing.read())

    def _flush(self) -> None:
        """Encrypt what was written, then hand the ciphertext to the socket in one write.
        Small pieces are joined first (one record, one ``SSLObject.write``); a large one (a
        block of an object) is encrypted where it is, not copied into a join."""
        held, self._held = self._held, []
        if self._closing:
            return
        write = self._tls.write
        try:
            if len(held) == 1:
                write(held[0])
            elif sum(len(part) for part in held) <= JOIN_LIMIT:
                write(b"".join(held))
            else:
                for part in held:
                    write(part)
        except (ssl.SSLError, OSError) as exc:
            self._fatal(exc)
            return
        self._send_outgoing()

    # ------------------------------------------------------------ transport side
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return
        if not data:
            return
        self._held.append(data)
        if not self._in_read and self._ready:
            self._flush()

    def writelines(self, parts: Any) -> None:
        if self._closing or self._lost:
            return
        self._held.extend(part for part in parts if part)
        if not self._in_read and self._ready and self._held:
            self._flush()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._lost or (self._raw is not None and self._raw.is_closing())

    def close(self) -> None:
        """Send what is written, then close_notify, then close the socket once its transport
        has sent it all."""
        if self._closing or self._raw is None:
            return
        if self._ready and self._held:
            self._flush()
        self._closing = True
        self._held = []
        if self._ready and not self._lost:
            try:
                self.ssl_object.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass  # the peer's close_notify is not awaited
            self._send_outgoing()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._held = []
        if self._raw is not None:
            self._raw.abort()

    def pause_reading(self) -> None:
        if self._raw is not None and not self._reading_paused:
            self._reading_paused = True
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None and self._reading_paused:
            self._reading_paused = False
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return not self._reading_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        held = sum(len(part) for part in self._held) if self._held else 0
        return held + (self._raw.get_write_buffer_size() if self._raw is not None else 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        if name == "peercert":
            return self.ssl_object.getpeercert() if self._ready else default
        if name == "cipher":
            return self.ssl_object.cipher() if self._ready else default
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)
