"""CPU per MB of TLS, three ways of moving the bytes: is a socket OpenSSL reads itself worth it?

``runtime.drivers.tls_stream`` runs TLS over memory BIOs on asyncio's socket transport, which
copies each byte a few more times than a socket OpenSSL owns: on send, OpenSSL's record buffer
-> outgoing BIO -> ``bytes`` -> socket; on receive, socket -> read buffer -> incoming BIO ->
OpenSSL's record buffer -> destination. An ``ssl.SSLSocket`` (non-blocking, driven by the
loop's reader/writer callbacks) sends from and receives into its record buffer directly. This
measures what that would save before anyone builds it, with no event loop in the way: 1 MB
chunks over a loopback socket pair, both ends in this process, CPU time (``time.process_time``)
per MB sent and received:

* ``plain``: ``send``/``recv_into`` of the bytes, the floor;
* ``sslsocket``: non-blocking ``SSLSocket.send``/``recv_into``;
* ``bio``: ``SSLObject.write`` + ``MemoryBIO.read`` + ``send``, then ``recv_into`` a 256 KiB
  buffer + ``MemoryBIO.write`` + ``SSLObject.read`` into the destination (what ``TlsStream``
  does, without asyncio).

Variants run interleaved and each figure is the median of ``--reps`` runs, so the shared
machine's drifting load falls on all alike. The cipher is whatever the node's contexts
negotiate (TLS 1.3; printed).

    python -m bench.tls_copies --mb 100 --reps 5
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from runtime.security import create_ca, create_node
from runtime.security.tls import TlsCredentials, load_credentials

MB = 1 << 20
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return a, b


class Runs:
    """The contexts and buffers the variants share."""

    def __init__(self, certs: Path, mb: int) -> None:
        self.server = load_credentials(TlsCredentials.for_node(certs, 1), "node", node_id=1).server_context()
        self.client = load_credentials(TlsCredentials.for_node(certs, 2), "node", node_id=2).client_context()
        self.mb = mb
        self.data = memoryview(bytearray(MB))
        self.dst = memoryview(bytearray(MB))
        self.cipher = ""

    def plain(self) -> float:
        a, b = _socketpair()
        a.setblocking(False)
        b.setblocking(False)
        data, dst = self.data, self.dst
        t = time.process_time()
        for _ in range(self.mb):
            sent = got = 0
            while got < MB:
                if sent < MB:
                    try:
                        sent += a.send(data[sent:])
                    except BlockingIOError:
                        pass
                try:
                    got += b.recv_into(dst[got:])
                except BlockingIOError:
                    pass
        cpu = time.process_time() - t
        a.close()
        b.close()
        return cpu / self.mb * 1e3

    def sslsocket(self) -> float:
        a, b = _socketpair()
        w = self.client.wrap_socket(a, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        r = self.server.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
        th = threading.Thread(target=r.do_handshake)
        th.start()
        w.do_handshake()
        th.join()
        self.cipher = str(w.cipher())
        w.setblocking(False)
        r.setblocking(False)
        data, dst = self.data, self.dst
        t = time.process_time()
        for _ in range(self.mb):
            sent = got = 0
            while got < MB:
                if sent < MB:
                    try:
                        sent += w.send(data[sent:])
                    except _WANT:
                        pass
                try:
                    while got < MB:
                        got += r.recv_into(dst[got:])
                except _WANT:
                    pass
        cpu = time.process_time() - t
        w.close()
        r.close()
        return cpu / self.mb * 1e3

    def bio(self) -> float:
        a, b = _socketpair()
        a.setblocking(False)
        b.setblocking(False)
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        c = self.client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
        s = self.server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # the handshake, by hand
            for end in (c, s):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        raw = memoryview(bytearray(256 << 10))
        data, dst = self.data, self.dst
        read: Any = s.read  # with a buffer it returns the count (typeshed says bytes)
        t = time.process_time()
        for _ in range(self.mb):
            c.write(data)
            out = memoryview(c_out.read())
            sent = got = 0
            while got < MB:
                if sent < len(out):
                    try:
                        sent += a.send(out[sent:])
                    except BlockingIOError:
                        pass
                try:
                    n = b.recv_into(raw)
                except BlockingIOError:
                    continue
                s_in.write(raw[:n])
                while got < MB:
                    try:
                        got += read(MB - got, dst[got:])
                    except ssl.SSLWantReadError:
                        break
        cpu = time.process_time() - t
        a.close()
        b.close()
        return cpu / self.mb * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="MB per run")
    parser.add_argument("--reps", type=int, default=5, help="runs per variant (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        create_ca(certs, cluster="bench")
        create_node(certs, 1)
        create_node(certs, 2)
        runs = Runs(certs, args.mb)
        variants: dict[str, Callable[[], float]] = {"plain": runs.plain, "sslsocket": runs.sslsocket, "bio": runs.bio}
        got: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.reps):
            for name, fn in variants.items():
                got[name].append(fn())
    print(f"CPU ms per MB sent and received (both ends), median of {args.reps} interleaved runs; cipher {runs.cipher}")
    for name, xs in got.items():
        print(f"{name:<10} {statistics.median(xs):7.3f}   runs {' '.join(f'{x:.3f}' for x in xs)}")


if __name__ == "__main__":
    main()
