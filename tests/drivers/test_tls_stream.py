"""``TlsStream`` on real loopback sockets: handshake and identities, refusals, frames of every
size, a 64 MB burst, a peer cut off mid-record, the handshake timeout, back-pressure and
close_notify."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import socket
import ssl
import termios
from pathlib import Path
from typing import Any

import pytest

from runtime.drivers.tls_stream import TlsStream
from runtime.security import create_ca, create_client, create_node
from runtime.security.tls import TlsCredentials, load_credentials, peer_identity


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    path = tmp_path / "certs"
    create_ca(path, cluster="test")
    create_node(path, 1)
    create_client(path, "alice")
    return path


@pytest.fixture
def other_certs(tmp_path: Path) -> Path:
    path = tmp_path / "other"
    create_ca(path, cluster="other")
    create_client(path, "alice")
    return path


def server_ctx(certs: Path) -> ssl.SSLContext:
    return load_credentials(TlsCredentials.for_node(certs, 1), "node").server_context()


def client_ctx(certs: Path) -> ssl.SSLContext:
    return load_credentials(TlsCredentials.for_client(certs, "alice"), "client").client_context()


class Recorder(asyncio.Protocol):
    """Keeps what arrives and what the stream told it."""

    def __init__(self) -> None:
        self.stream: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got_bytes: asyncio.Event = asyncio.Event()
        self.want = 0

    def connection_made(self, transport: Any) -> None:
        self.stream = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.data += data
        if len(self.data) >= self.want:
            self.got_bytes.set()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


async def pair(certs: Path, client_certs: Path | None = None, timeout: float = 5.0) -> tuple[Any, Recorder, Recorder]:
    """A server and a connected client, both on ``TlsStream``; the handshake done."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Recorder] = asyncio.Queue()
    sctx = server_ctx(certs)

    def serve() -> TlsStream:
        rec = Recorder()
        accepted.put_nowait(rec)
        return TlsStream(rec, sctx, server_side=True, handshake_timeout=timeout)

    server = await loop.create_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Recorder()
    cctx = client_ctx(client_certs or certs)
    _, stream = await loop.create_connection(
        lambda: TlsStream(client, cctx, server_side=False, server_hostname="127.0.0.1", handshake_timeout=timeout),
        "127.0.0.1",
        port,
    )
    await stream.handshake
    srv = await asyncio.wait_for(accepted.get(), 5)
    await asyncio.wait_for(srv.stream.handshake, 5)
    return server, srv, client


@pytest.mark.timeout(20)
def test_handshake_proves_both_identities_and_frames_of_every_size_arrive_whole(certs: Path) -> None:
    async def main() -> None:
        server, srv, client = await pair(certs)
        assert peer_identity(srv.stream.get_extra_info("ssl_object")).name == "alice"
        assert peer_identity(client.stream.get_extra_info("ssl_object")).node_id == 1
        sizes = [1, 100, 4000, 16383, 16384, 16385, 100_000, 1 << 20]
        payload = b"".join(bytes([i % 251]) * n for i, n in enumerate(sizes))
        for i, n in enumerate(sizes):  # one write each, and several in a row
            client.stream.write(bytes([i % 251]) * n)
        srv.want = len(payload)
        await asyncio.wait_for(srv.got_bytes.wait(), 10)
        assert bytes(srv.data) == payload
        # The other way, through writelines.
        client.want = 3 + 20_000
        srv.stream.writelines([b"abc", memoryview(b"z" * 20_000)])
        await asyncio.wait_for(client.got_bytes.wait(), 10)
        assert bytes(client.data) == b"abc" + b"z" * 20_000
        client.stream.close()
        srv.stream.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_certificate_of_another_ca_is_refused_on_both_sides(certs: Path, other_certs: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[TlsStream] = []
        sctx = server_ctx(certs)

        def serve() -> TlsStream:
            stream = TlsStream(Recorder(), sctx, server_side=True)
            made.append(stream)
            return stream

        server = await loop.create_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cctx = client_ctx(other_certs)
        client = Recorder()
        _, stream = await loop.create_connection(
            lambda: TlsStream(client, cctx, server_side=False, server_hostname="127.0.0.1"), "127.0.0.1", port
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await stream.handshake
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(made[0].handshake, 5)
        assert client.events == [] and not client.data  # nothing after a failed handshake
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_64_mb_burst_arrives_intact(certs: Path) -> None:
    async def main() -> None:
        server, srv, client = await pair(certs)
        block = bytes(range(256)) * 4096  # 1 MiB
        want = hashlib.sha256()
        for i in range(64):
            piece = bytes([i]) + block[1:]
            want.update(piece)
            client.stream.write(piece)
        srv.want = 64 << 20
        await asyncio.wait_for(srv.got_bytes.wait(), 50)
        assert len(srv.data) == 64 << 20
        assert hashlib.sha256(srv.data).digest() == want.digest()
        client.stream.close()
        await asyncio.wait_for(srv.lost, 10)
        assert srv.events[-2:] == ["eof", "lost"]  # close_notify, then the end
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_peer_cut_off_mid_record_delivers_nothing_of_it(certs: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[Recorder] = asyncio.Queue()
        sctx = server_ctx(certs)

        def serve() -> TlsStream:
            rec = Recorder()
            got.put_nowait(rec)
            return TlsStream(rec, sctx, server_side=True)

        server = await loop.create_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client_side() -> None:  # a blocking client that sends half a record and leaves
            sock = socket.create_connection(("127.0.0.1", port))
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = client_ctx(certs).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            sock.sendall(outgoing.read())
            obj.write(b"whole")
            sock.sendall(outgoing.read())
            obj.write(b"x" * 5000)
            record = outgoing.read()
            sock.sendall(record[: len(record) // 2])
            sock.close()

        await loop.run_in_executor(None, client_side)
        rec = await asyncio.wait_for(got.get(), 5)
        exc = await asyncio.wait_for(rec.lost, 10)
        assert bytes(rec.data) == b"whole"
        assert rec.events[-1] == "lost"
        del exc  # the end of the socket, with or without an error: both end the connection
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_silent_peer_fails_the_handshake_after_the_timeout(certs: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[TlsStream] = []
        sctx = server_ctx(certs)

        def serve() -> TlsStream:
            stream = TlsStream(Recorder(), sctx, server_side=True, handshake_timeout=0.3)
            made.append(stream)
            return stream

        server = await loop.create_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP, says nothing
        started = loop.time()
        while not made:
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(made[0].handshake, 5)
        assert 0.25 <= loop.time() - started < 3
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server dropped it
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_peer_that_does_not_read_pauses_the_writer_until_it_drains(certs: Path) -> None:
    async def main() -> None:
        server, srv, client = await pair(certs)
        srv.stream.set_write_buffer_limits(high=256 << 10, low=64 << 10)
        client.stream.pause_reading()
        chunk = b"y" * (64 << 10)
        written = 0
        while "pause" not in srv.events and written < (256 << 20):
            srv.stream.write(chunk)
            written += len(chunk)
        assert "pause" in srv.events
        assert srv.stream.get_write_buffer_size() > 256 << 10  # all of it counted, ciphertext held
        client.want = written
        client.stream.resume_reading()
        await asyncio.wait_for(client.got_bytes.wait(), 20)
        assert len(client.data) == written and srv.events.count("resume") == 1
        assert srv.stream.get_write_buffer_size() == 0
        srv.stream.close()
        assert await asyncio.wait_for(client.lost, 10) is None
        assert client.events[-2:] == ["eof", "lost"]
        server.close()
        await server.wait_closed()

    asyncio.run(main())


class BufferedRecorder(asyncio.BufferedProtocol):
    """An application that gives its own buffers, in odd sizes (as the node's connections give
    the rest of a block's place): every byte must land in them, in order, once."""

    SIZES = (1, 7, 4096, 16385, 100_000, 3)

    def __init__(self) -> None:
        self.stream: Any = None
        self.data = bytearray()
        self.calls = 0
        self.buf = memoryview(bytearray(max(self.SIZES)))
        self.given = 0
        self.got_bytes = asyncio.Event()
        self.want = 0

    def connection_made(self, transport: Any) -> None:
        self.stream = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        self.given = self.SIZES[self.calls % len(self.SIZES)]
        return self.buf[: self.given]

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= self.given
        self.calls += 1
        self.data += self.buf[:nbytes]
        if len(self.data) >= self.want:
            self.got_bytes.set()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@pytest.mark.timeout(30)
def test_a_buffered_application_gets_every_byte_decrypted_into_its_own_buffers(certs: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[BufferedRecorder] = asyncio.Queue()
        sctx = server_ctx(certs)

        def serve() -> TlsStream:
            rec = BufferedRecorder()
            accepted.put_nowait(rec)
            return TlsStream(rec, sctx, server_side=True)

        server = await loop.create_server(serve, "127.0.0.1", 0)
        client = Recorder()
        cctx = client_ctx(certs)
        _, stream = await loop.create_connection(
            lambda: TlsStream(client, cctx, server_side=False, server_hostname="127.0.0.1"),
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
        )
        await stream.handshake
        srv = await asyncio.wait_for(accepted.get(), 5)
        payload = hashlib.shake_256(b"blocks").digest(8 << 20)
        srv.want = len(payload)
        for i in range(0, len(payload), 1 << 20):
            stream.write(payload[i : i + (1 << 20)])
        await asyncio.wait_for(srv.got_bytes.wait(), 20)
        assert hashlib.sha256(srv.data).digest() == hashlib.sha256(payload).digest()
        assert srv.calls > 8 << 20 >> 17  # many reads into its small buffers, none into another
        stream.close()
        server.close()

    asyncio.run(main())


class ReadCounter(asyncio.BufferedProtocol):
    """A buffered application with one roomy buffer that counts the hand-ons it gets."""

    def __init__(self) -> None:
        self.stream: Any = None
        self.buf = memoryview(bytearray(256 << 10))
        self.handed: list[int] = []
        self.data = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.stream = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.handed.append(nbytes)
        self.data += self.buf[:nbytes]

    def connection_lost(self, exc: Exception | None) -> None:
        pass


@pytest.mark.timeout(20)
def test_the_records_of_one_read_are_handed_on_together(certs: Path) -> None:
    """20 records waiting in the socket together reach the application as one
    ``buffer_updated``, as one read of plain TCP would: the node's decoder and core then step
    once per read, not once per record."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Queue[ReadCounter] = asyncio.Queue()
        sctx = server_ctx(certs)

        def serve() -> TlsStream:
            rec = ReadCounter()
            accepted.put_nowait(rec)
            return TlsStream(rec, sctx, server_side=True)

        server = await loop.create_server(serve, "127.0.0.1", 0)
        client = Recorder()
        cctx = client_ctx(certs)
        _, stream = await loop.create_connection(
            lambda: TlsStream(client, cctx, server_side=False, server_hostname="127.0.0.1"),
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
        )
        await stream.handshake
        srv = await asyncio.wait_for(accepted.get(), 5)
        await asyncio.wait_for(srv.stream.handshake, 5)
        await asyncio.sleep(0.1)  # the server's session tickets are through
        srv.stream.pause_reading()
        sock = srv.stream.get_extra_info("socket")
        parts = [bytes([i]) * 100 for i in range(20)]
        for part in parts:  # a write outside a read goes at once: a record each
            stream.write(part)
        waiting = bytearray(4)
        for _ in range(200):  # until every record is in the server's socket
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
            if int.from_bytes(waiting, "little") >= 20 * (100 + 17):
                break
            await asyncio.sleep(0.01)
        srv.stream.resume_reading()
        for _ in range(200):
            if len(srv.data) >= 2000:
                break
            await asyncio.sleep(0.01)
        assert bytes(srv.data) == b"".join(parts)
        assert srv.handed == [2000]
        stream.close()
        server.close()

    asyncio.run(main())
