"""The ceiling for one object to a 3-member shard on this machine: three processes, no node.

``objects`` measures an object sent to the two other members of a 3-member shard. What can the
machine carry at all in that shape? Each byte must cross two loopback hops (the sender's link
carries each block once; the receivers relay the halves they got to each other, as the
binomial pipeline does for three members) and every receiver must hash every byte (the
descriptor's digest, BLAKE3, checked before delivery). On two cores the kernel copies of two
hops and the two receivers' hashing share the same two cores, so the bound per receiver is
well under one TCP stream's rate: this measures it, with the least Python possible.

Three processes (``python -m bench.object_ceiling ROLE ...``): the sender sends even blocks to
receiver 1 and odd blocks to receiver 2 over plain sockets, fixed-size blocks with no header
(each link's block sequence is known); each receiver receives its half into one buffer,
forwards each block to the other receiver as soon as it has it, receives the other half from
it, and hashes the object in block order as blocks become complete, all on one thread with a
selector and 1 MiB blocks (Python's cost per call is small next to a block's). With TLS
every link is an ``ssl.SSLSocket`` (OpenSSL reads and writes the socket itself: the fewest
copies Python's TLS allows) with the node certificates ``runtime.security`` makes.

Rate per receiver: bytes of all rounds over the time from the sender's first byte to that
receiver's last digest (``time.perf_counter`` is the system's monotonic clock, shared by the
three processes). The sender's own digest of the object (made before a transfer starts, on a
worker thread) is not counted.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import HOST, BenchError, Procs

BLOCK = 1 << 20
SOCK_BUF = 4 << 20


# ------------------------------------------------------------------------------ sockets
def _tune(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    return sock


def _contexts(certs: str, node_id: int) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) contexts of ``node_id``'s certificate, or None for plain sockets."""
    if certs == "-":
        return None
    from runtime.security.tls import TlsCredentials, load_credentials

    creds = load_credentials(TlsCredentials.for_node(Path(certs), node_id), "node", node_id=node_id)
    return creds.server_context(), creds.client_context()


def _accept(srv: socket.socket, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> socket.socket:
    conn, _ = srv.accept()
    _tune(conn)
    return tls[0].wrap_socket(conn, server_side=True) if tls else conn


def _connect(port: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> socket.socket:
    conn = _tune(socket.create_connection((HOST, port)))
    return tls[1].wrap_socket(conn, server_hostname=HOST) if tls else conn


def _listener() -> socket.socket:
    srv = _tune(socket.socket())
    srv.bind((HOST, 0))
    srv.listen(2)
    return srv


_WANT = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Reader:
    """Reads a link's fixed sequence of blocks into their places, as far as the socket has
    bytes (an ``SSLSocket`` may hold decrypted bytes the selector does not see: read until it
    would block)."""

    def __init__(self, sock: socket.socket, view: memoryview, blocks: list[int]) -> None:
        self.sock, self.view, self.blocks = sock, view, blocks
        self.i = 0  # index into ``blocks`` of the block being read
        self.pos = 0  # bytes of it read

    def read(self, completed: list[int]) -> None:
        while self.i < len(self.blocks):
            g = self.blocks[self.i]
            try:
                n = self.sock.recv_into(self.view[g * BLOCK + self.pos : (g + 1) * BLOCK])
            except _WANT:
                return
            if not n:
                raise ConnectionError("peer closed mid-object")
            self.pos += n
            if self.pos == BLOCK:
                completed.append(g)
                self.i += 1
                self.pos = 0

    @property
    def done(self) -> bool:
        return self.i == len(self.blocks)


class _Writer:
    """Writes blocks to a link as they are handed to it, as far as the socket takes them."""

    def __init__(self, sock: socket.socket, view: memoryview) -> None:
        self.sock, self.view = sock, view
        self.queue: list[int] = []
        self.pos = 0

    def write(self) -> None:
        while self.queue:
            g = self.queue[0]
            try:
                self.pos += self.sock.send(self.view[g * BLOCK + self.pos : (g + 1) * BLOCK])
            except _WANT:
                return
            if self.pos == BLOCK:
                self.queue.pop(0)
                self.pos = 0


def _pattern(blocks: int) -> bytearray:
    """What the sender sends: block ``g`` filled with ``g % 251`` (receivers' digests are
    checked against it, so a ceiling that moved the wrong bytes fails)."""
    buf = bytearray(blocks * BLOCK)
    for g in range(blocks):
        buf[g * BLOCK : (g + 1) * BLOCK] = bytes([g % 251]) * BLOCK
    return buf


def expected_digests(mb: int, rounds: int) -> list[str]:
    from runtime.core.rdmc_descriptor import object_hasher

    out = []
    for r in range(rounds):
        h = object_hasher()
        for g in range(r * mb, (r + 1) * mb):
            h.update(bytes([g % 251]) * BLOCK)
        out.append(h.digest().hex())
    return out


# ------------------------------------------------------------------------------ roles
def receiver(rank: int, mb: int, rounds: int, certs: str, peer_port: int) -> None:
    """Receiver ``rank`` (1 or 2) of ``rounds`` objects of ``mb`` blocks. Rank 1 listens for
    the peer link (its port printed first); rank 2 connects to ``peer_port``. One thread, a
    selector: the least Python per byte."""
    from runtime.core.rdmc_descriptor import object_hasher

    tls = _contexts(certs, rank + 1)
    srv = _listener()
    peer_srv = _listener() if rank == 1 else None
    ports = {"port": srv.getsockname()[1], "peer_port": peer_srv.getsockname()[1] if peer_srv else 0}
    print(json.dumps(ports), flush=True)
    peer = _accept(peer_srv, tls) if peer_srv else _connect(peer_port, tls)
    sender = _accept(srv, tls)
    total = mb * rounds  # every round in its own part of one buffer: nothing is overwritten
    view = memoryview(bytearray(total * BLOCK))
    from_sender = _Reader(sender, view, [g for g in range(total) if g % mb % 2 == rank - 1])
    from_peer = _Reader(peer, view, [g for g in range(total) if g % mb % 2 != rank - 1])
    to_peer = _Writer(peer, view)
    for sock in (sender, peer):
        sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sender, selectors.EVENT_READ, from_sender)
    sel.register(peer, selectors.EVENT_READ, from_peer)
    have = [False] * total
    hashed, hasher = 0, object_hasher()
    done: list[float] = []
    digests: list[str] = []
    while hashed < total:
        completed: list[int] = []
        for key, events in sel.select():
            if events & selectors.EVENT_READ:
                key.data.read(completed)
            if key.fileobj is peer and events & selectors.EVENT_WRITE:
                to_peer.write()
        for g in completed:
            have[g] = True
        to_peer.queue.extend(g for g in completed if g % mb % 2 == rank - 1)
        to_peer.write()
        sel.modify(peer, selectors.EVENT_READ | (selectors.EVENT_WRITE if to_peer.queue else 0), from_peer)
        while hashed < total and have[hashed]:
            hasher.update(view[hashed * BLOCK : (hashed + 1) * BLOCK])
            hashed += 1
            if hashed % mb == 0:
                digests.append(hasher.digest().hex())
                done.append(time.perf_counter())
                hasher = object_hasher()
    # The other receiver may still want our relayed half.
    peer.setblocking(True)
    while to_peer.queue:
        to_peer.write()
    # A word to the sender that all is here, which it waits for: a process that exits with
    # bytes unread (a TLS server's session tickets) resets the connection, and with it
    # whatever the other end has not read yet.
    sender.setblocking(True)
    sender.sendall(b"d")
    print(json.dumps({"done": done, "digests": digests}), flush=True)


def sender(mb: int, rounds: int, certs: str, port1: int, port2: int) -> None:
    """Each round's even blocks to receiver 1, odd ones to receiver 2."""
    tls = _contexts(certs, 1)
    links = [_connect(port1, tls), _connect(port2, tls)]
    total = mb * rounds
    view = memoryview(_pattern(total))
    writers = [_Writer(link, view) for link in links]
    for g in range(total):
        writers[g % mb % 2].queue.append(g)
    start = time.perf_counter()
    for link in links:
        link.setblocking(False)
    sel = selectors.DefaultSelector()
    for link, w in zip(links, writers):
        sel.register(link, selectors.EVENT_WRITE, w)
    while any(w.queue for w in writers):
        for key, _ in sel.select():
            key.data.write()
            if not key.data.queue:
                sel.unregister(key.fileobj)
    for link in links:
        link.setblocking(True)
        if link.recv(1) != b"d":
            raise ConnectionError("a receiver closed before it had the object")
    print(json.dumps({"start": start}), flush=True)


# ------------------------------------------------------------------------------ driver
def pipeline_rate(workdir: Path, mb: int, rounds: int, certs: Path | None, limit: float = 300) -> dict[str, Any]:
    """Run the three processes once: MB/s per receiver (the slower and each) and the setup."""
    cert_arg = str(certs) if certs else "-"
    args = [str(mb), str(rounds), cert_arg]
    name = "tls" if certs else "plain"
    with Procs(workdir) as procs:

        def start_receiver(rank: int, peer_port: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
            proc = procs.python(
                f"objceil-{name}-r{rank}",
                "bench.object_ceiling",
                "recv",
                str(rank),
                *args,
                str(peer_port),
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            return proc, json.loads(proc.stdout.readline())

        r1, p1 = start_receiver(1, 0)
        r2, p2 = start_receiver(2, p1["peer_port"])
        tx = procs.python(
            f"objceil-{name}-send",
            "bench.object_ceiling",
            "send",
            *args,
            str(p1["port"]),
            str(p2["port"]),
            stdout=subprocess.PIPE,
        )
        out_tx, _ = tx.communicate(timeout=limit)
        start = json.loads(out_tx.decode().strip().splitlines()[-1])["start"]
        rates = []
        for rx in (r1, r2):
            out, _ = rx.communicate(timeout=limit)
            doc = json.loads(out.decode().strip().splitlines()[-1])
            if doc["digests"] != expected_digests(mb, rounds):
                raise BenchError(f"a receiver's digests differ from the sender's object (logs in {workdir})")
            done = doc["done"]
            rates.append(mb * rounds * BLOCK / (done[-1] - start) / 1e6)
    return {"MB_per_s": min(rates), "per_receiver": rates, "object_MB": mb * BLOCK / 1e6, "rounds": rounds}


def main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "recv":
        receiver(int(args[0]), int(args[1]), int(args[2]), args[3], int(args[4]))
    elif role == "send":
        sender(int(args[0]), int(args[1]), args[2], int(args[3]), int(args[4]))
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
