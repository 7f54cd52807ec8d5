"""CPU per small frame on a TLS connection of the node's event loop, three ways.

A node's loop pays for every frame it takes from or writes to a TLS connection. At a low
rate each frame is its own loop turn, so what a turn costs in asyncio's TLS layer matters
more than the cipher. This measures the server side of an echo over loopback:

* ``sslproto``: an ``asyncio.Protocol`` upgraded with ``loop.start_tls`` after accept, as
  ``runtime.drivers.tcp`` does (asyncio's ``sslproto``);
* ``lean``: an ``asyncio.BufferedProtocol`` on the raw socket doing TLS itself with
  ``ssl.SSLObject`` and two ``MemoryBIO``: each read is fed to the BIO and decrypted in one
  go; frames written in a loop turn go through ``SSLObject.write`` once, then one
  ``transport.write`` of the ciphertext (``runtime.drivers.tls_stream``);
* ``sslproto_joined``: as ``sslproto``, but the frames echoed for one read are joined
  into one ``write`` (what ``lean`` does inside, done by the application instead);
* ``plain``: the same echo on plain TCP, the floor.

Two patterns per frame size: ``pingpong`` (one frame, wait for its echo: each frame is a
loop turn, the low-rate case) and ``burst`` (16 frames in one write, then their 16 echoes:
frames share turns). The echo server runs in a child process and reports its own CPU time
(``time.process_time``) from the end of the handshake to the client's EOF, divided by the
frames echoed. Variants run interleaved (a, b, c, a, b, c, ...) and each figure is the
median of ``--reps`` runs, so drifting load on a shared machine falls on all alike.

    python -m bench.tls_frames            # table of CPU us per frame
    python -m bench.tls_frames --profile sslproto --sizes 1000   # cProfile of one server
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing as mp
import pstats
import resource
import socket
import ssl
import statistics
import struct
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from runtime.drivers.tls_stream import TlsStream
from runtime.security import create_ca, create_client, create_node
from runtime.security.tls import TlsCredentials, load_credentials

VARIANTS = ("sslproto", "sslproto_joined", "lean", "plain")
BURST = 16
_HEADER = struct.Struct(">I")


class _Echo:
    """Length-prefixed frames in, each written back as it is complete (one write per frame,
    as the node writes one reply per call)."""

    def __init__(self, joined: bool = False) -> None:
        self.joined = joined  # the frames of one read written back with one write
        self.buf = bytearray()
        self.frames = 0
        self.started = (0.0, 0.0)
        self.done: asyncio.Future[tuple[int, float, float]] | None = None
        self.write: Any = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self.buf
        buf += data
        off = 0
        end = len(buf)
        out = []
        while end - off >= 4:
            (size,) = _HEADER.unpack_from(buf, off)
            if end - off < 4 + size:
                break
            out.append(bytes(buf[off : off + 4 + size]))
            off += 4 + size
            self.frames += 1
        if off:
            del buf[:off]
        if self.joined and len(out) > 1:
            self.write(b"".join(out))
        else:
            for one in out:
                self.write(one)

    def start(self) -> None:
        self.started = _cpu()

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            user, system = _cpu()
            self.done.set_result((self.frames, user - self.started[0], system - self.started[1]))


def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process. User time is what the TLS layers differ
    in; system time (syscalls, and waking the other end on loopback) moves with how the
    client and the machine's other load happen to interleave."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class _SslprotoEcho(asyncio.Protocol):
    """As ``runtime.drivers.tcp._Connection``: accepted plain, then ``start_tls``."""

    def __init__(self, echo: _Echo, ctx: ssl.SSLContext | None) -> None:
        self.echo, self.ctx = echo, ctx
        self.early: list[bytes] = []  # decrypted before start_tls returned (tcp.py keeps them too)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ctx is None:
            self.echo.write = transport.write  # type: ignore[attr-defined]
            self.echo.start()
        else:
            transport.pause_reading()  # type: ignore[attr-defined]
            asyncio.ensure_future(self._upgrade())

    async def _upgrade(self) -> None:
        tls = await asyncio.get_running_loop().start_tls(self.transport, self, self.ctx, server_side=True)
        assert tls is not None
        self.echo.write = tls.write
        self.echo.start()
        for data in self.early:
            self.echo.feed(data)

    def data_received(self, data: bytes) -> None:
        if self.echo.write is None:
            self.early.append(data)
            return
        self.echo.feed(data)

    def eof_received(self) -> bool | None:
        self.echo.finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.echo.finish()


class _LeanEcho:
    """The echo as a ``TlsStream`` application."""

    def __init__(self, echo: _Echo) -> None:
        self.echo = echo

    def connection_made(self, stream: TlsStream) -> None:
        self.echo.write = stream.write
        self.echo.start()

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        self.echo.feed(data)

    def eof_received(self) -> None:
        self.echo.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.echo.finish()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def _serve(variant: str, certs: str, port_out: Connection, profile: bool) -> tuple[int, float, float, str]:
    loop = asyncio.get_running_loop()
    ctx = None
    if variant != "plain":
        ctx = load_credentials(TlsCredentials.for_node(certs, 1), "node").server_context()
    echo = _Echo(joined=variant == "sslproto_joined")
    echo.done = loop.create_future()
    if variant == "lean":
        assert ctx is not None
        server_ctx = ctx
        factory: Any = lambda: TlsStream(_LeanEcho(echo), server_ctx, server_side=True)  # noqa: E731
    else:
        factory = lambda: _SslprotoEcho(echo, ctx)  # noqa: E731
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port_out.send(server.sockets[0].getsockname()[1])
    prof = cProfile.Profile(time.process_time) if profile else None
    if prof is not None:
        prof.enable()
    frames, user, system = await echo.done
    text = ""
    if prof is not None:
        prof.disable()
        out = tempfile.SpooledTemporaryFile(mode="w+")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)  # type: ignore[arg-type]
        out.seek(0)
        text = out.read()
    server.close()
    return frames, user, system, text


def _server_main(variant: str, certs: str, conn: Connection, profile: bool) -> None:
    conn.send(asyncio.run(_serve(variant, certs, conn, profile)))


def _client(port: int, certs: str | None, size: int, frames: int, burst: int) -> None:
    """Blocking client: ``frames`` frames of ``size`` bytes, ``burst`` per write, each
    burst's echoes read back before the next."""
    sock: Any = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if certs is not None:
        ctx = load_credentials(TlsCredentials.for_client(certs, "bench"), "client").client_context()
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    one = _HEADER.pack(size) + bytes(size)
    data = one * burst
    want = len(data)
    buf = bytearray(want)
    view = memoryview(buf)
    for _ in range(frames // burst):
        sock.sendall(data)
        got = 0
        while got < want:
            n = sock.recv_into(view[got:], want - got)
            if n == 0:
                raise ConnectionError("server closed early")
            got += n
        if buf[:4] != one[:4]:
            raise AssertionError("echo does not match")
    if isinstance(sock, ssl.SSLSocket):
        sock = sock.unwrap()
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()


def run_one(variant: str, certs: str, size: int, frames: int, burst: int, profile: bool = False) -> tuple[float, float]:
    """Server CPU microseconds per frame echoed: (user, user + system)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(variant, certs, child, profile), daemon=True)
    proc.start()
    try:
        port = parent.recv()
        _client(port, None if variant == "plain" else certs, size, frames, burst)
        if not parent.poll(30):
            raise TimeoutError("server did not report")
        got, user, system, text = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if got != frames:
        raise AssertionError(f"{variant}: echoed {got} of {frames} frames")
    if text:
        print(f"--- {variant}, {size} B, burst {burst}\n{text}")
    return user / frames * 1e6, (user + system) / frames * 1e6


def make_certs(folder: Path) -> str:
    create_ca(folder, cluster="bench")
    create_node(folder, 1)
    create_client(folder, "bench")
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,4000,20000", help="frame sizes in bytes")
    parser.add_argument("--frames", type=int, default=2000, help="frames per run")
    parser.add_argument("--reps", type=int, default=5, help="runs per variant (median reported)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--patterns", default="pingpong,burst")
    parser.add_argument("--profile", default="", help="cProfile this variant's server once per size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        if args.profile:
            for size in sizes:
                run_one(args.profile, certs, size, args.frames, 1, profile=True)
            return
        print(
            f"server CPU us per frame (user / user+system), median of {args.reps} interleaved runs, "
            f"{args.frames} frames each"
        )
        print(f"{'pattern':<9} {'size':>6} " + " ".join(f"{v:>17}" for v in variants) + "  lean/sslproto (user, total)")
        patterns = [(1, "pingpong"), (BURST, "burst")]
        for burst, name in [p for p in patterns if p[1] in args.patterns.split(",")]:
            for size in sizes:
                got: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
                for _ in range(args.reps):
                    for v in variants:
                        got[v].append(run_one(v, certs, size, args.frames, burst))
                user = {v: statistics.median(x[0] for x in xs) for v, xs in got.items()}
                total = {v: statistics.median(x[1] for x in xs) for v, xs in got.items()}
                ratio = ""
                if "lean" in got and "sslproto" in got:
                    ratio = f"{user['lean'] / user['sslproto']:.2f}, {total['lean'] / total['sslproto']:.2f}"
                cells = " ".join(f"{user[v]:>8.1f} /{total[v]:>7.1f}" for v in variants)
                print(f"{name:<9} {size:>6} {cells}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
