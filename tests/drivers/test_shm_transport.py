"""The shared-memory transport's setup and switch-over (runtime.drivers.shm_transport), two
nodes in one process over a stand-in for their authenticated TCP connection.

What the stand-in does is what TCP does for the transport: deliver each side's frames in
order under the sender's (proven) id, one read at a time on the loop. On top of it: a pair on
one host and user agrees on rings and every frame arrives once and in order across the switch
from TCP to the ring; a peer on another host or of another user stays on TCP and says why; an
offer naming a file that is not that peer's ring for us is refused; the rings go with the TCP
connection.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.core.rdmc_descriptor import ObjectId
from runtime.drivers.shm_doorbell import Doorbell
from runtime.drivers.shm_transport import PeerTransport, ShmTransport, TransportMode
from runtime.drivers.tcp import TcpTransport, TransportSecurity
from runtime.security.certs import ensure_cluster_certs
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage
from runtime.wire.shm_setup import ShmAnswer, ShmOffer, ShmProbe
from runtime.wire.transfers import BlockLanded, block_frame_head

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]


@dataclass
class _Security:
    tls: bool = True


@dataclass
class FakeTcp:
    """What ShmTransport uses of a TcpTransport; frames go to ``other`` on the next loop turn."""

    node_id: int
    cluster: str = "t"
    other: FakeTcp | None = None
    on_frames: Any = None
    on_peer_lost: Any = None
    security: _Security = field(default_factory=_Security)
    incarnations: dict[int, int] = field(default_factory=dict)
    addresses: dict[int, str] = field(default_factory=dict)
    max_backlog: int = 1 << 30
    max_frame: int = 1 << 20
    block_sink: Any = None
    sent: list[Any] = field(default_factory=list)
    bad_frames: int = 0
    peers: dict[int, Any] = field(default_factory=dict)  # what TCP still holds per peer (blocks)
    blocks_sent: list[tuple[int, bytes]] = field(default_factory=list)  # (peer, head) given to TCP

    def send_block(self, node_id: int, head: bytes, data: memoryview) -> None:
        self.blocks_sent.append((node_id, head))

    def send(self, node_id: int, data: bytes) -> None:
        msgs = FrameDecoder().feed(data)
        self.sent.extend(msgs)
        other = self.other
        if other is None:  # cut off: what is sent is only recorded
            return
        assert node_id == other.node_id
        asyncio.get_running_loop().call_soon(other.on_frames, self.node_id, msgs)

    def learn(self, node_id: int, address: str) -> None:
        self.addresses[node_id] = address

    def traffic(self) -> dict[int, tuple[int, int]]:
        return {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Node:
    def __init__(self, node_id: int, shm_dir: str, mode: TransportMode = TransportMode.AUTO) -> None:
        self.got: list[Any] = []
        self.lost: list[int] = []
        self.tcp = FakeTcp(node_id, on_frames=self._frames, on_peer_lost=self.lost.append)
        self.tcp.addresses = {1: "a", 2: "b"}
        self.shm = ShmTransport(self.tcp, mode, ring_capacity=8192, shm_dir=shm_dir)  # type: ignore[arg-type]

    def _frames(self, sender: int, frames: list[Any]) -> None:
        self.got.extend(frames)


async def pair(shm_dir: str, mode2: TransportMode = TransportMode.AUTO) -> tuple[Node, Node]:
    a, b = Node(1, shm_dir), Node(2, shm_dir, mode2)
    a.tcp.other, b.tcp.other = b.tcp, a.tcp
    await a.shm.start()
    await b.shm.start()
    return a, b


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_frames_arrive_once_and_in_order_across_the_switch(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        msgs = [AppMessage(i.to_bytes(4, "big") * 300) for i in range(300)]  # 1.2 KB each, ring 8 KiB
        for i, m in enumerate(msgs):  # the first ones on TCP, the rest through the ring
            a.shm.send(2, frame(m))
            if i % 10 == 0:
                await asyncio.sleep(0)
        b.shm.send(1, frame(AppMessage(b"hi")))
        for _ in range(200):
            if len(b.got) == len(msgs) and a.got:
                break
            await asyncio.sleep(0.005)
        assert b.got == msgs
        assert a.got == [AppMessage(b"hi")]
        assert a.shm.peer_transports() == {2: PeerTransport.SHM}
        assert b.shm.peer_transports() == {1: PeerTransport.SHM}
        on_tcp = [m for m in a.tcp.sent if isinstance(m, AppMessage)]
        assert 0 < len(on_tcp) < len(msgs)  # both paths carried some
        assert os.listdir(shm_dir) == []  # the names went once both sides held the rings
        a.shm.lost_on_tcp(2)  # the TCP connection broke: the rings go with it
        assert a.lost == [2] and a.shm.peer_transports() == {}
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "probe, why",
    [
        (ShmProbe("another-host", os.getuid()), "it runs on another host"),
        (ShmProbe("", os.getuid() + 1), f"it runs as uid {os.getuid() + 1}"),
    ],
)
def test_a_peer_on_another_host_or_uid_stays_on_tcp(
    shm_dir: str, probe: ShmProbe, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        if not probe.host:
            probe_ = ShmProbe(a.shm.host, probe.uid)
        else:
            probe_ = probe
        a.shm.frames_from_tcp(2, [probe_])
        answers = [m for m in a.tcp.sent if isinstance(m, ShmAnswer)]
        assert len(answers) == 1 and not answers[0].accepted and why in answers[0].reason
        assert not [m for m in a.tcp.sent if isinstance(m, ShmOffer)]
        assert os.listdir(shm_dir) == []
        await a.shm.close()
        await b.shm.close()

    caplog.set_level("INFO", logger="derecho.shm")
    asyncio.run(main())
    assert any(why in r.getMessage() for r in caplog.records)


def test_an_offer_of_another_file_is_refused(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        a.shm.send(2, frame(AppMessage(b"x")))  # a asked b for a ring
        a.tcp.other = b.tcp.other = None  # and nothing more passes between them
        await turns()
        a.tcp.sent.clear()
        target = os.path.join(shm_dir, "victim")
        open(target, "w").close()
        for base in (target, f"{shm_dir}/derecho-t-n3-to1-p1-0123456789abcdef", "/etc/passwd"):
            a.shm.frames_from_tcp(2, [ShmOffer(base, 8192, b"0" * 16)])
        refusals = [m for m in a.tcp.sent if isinstance(m, ShmAnswer)]
        assert len(refusals) == 3 and not any(r.accepted for r in refusals)
        assert all("is not one node 2 may offer" in r.reason for r in refusals)
        assert os.path.exists(target)  # untouched

    asyncio.run(main())


def test_a_node_set_to_tcp_answers_probes_with_why(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir, TransportMode.TCP)
        a.shm.send(2, frame(AppMessage(b"x")))
        await turns()
        assert b.got == [AppMessage(b"x")]
        answers = [m for m in b.tcp.sent if isinstance(m, ShmAnswer)]
        assert [(x.accepted, x.reason) for x in answers] == [(False, 'node 2: node.transport = "tcp"')]
        assert not [m for m in b.tcp.sent if isinstance(m, ShmProbe)]  # it never asks
        assert a.shm.peer_transports() == {} and os.listdir(shm_dir) == []

    asyncio.run(main())


def test_the_switch_waits_until_tcp_has_written_its_blocks(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        a.tcp.peers[2] = SimpleNamespace(blocks=[("a block TCP has not written yet",)])
        a.shm.send(2, frame(AppMessage(b"1")))
        await turns()
        await asyncio.sleep(0.05)  # accepted, sweeps ran: still no switch
        assert a.shm.pairs[2].accepted and not a.shm.pairs[2].switched
        a.shm.send(2, frame(AppMessage(b"2")))  # so this goes on TCP, behind the block
        assert AppMessage(b"2") in a.tcp.sent
        a.tcp.peers[2].blocks.clear()
        for _ in range(100):
            if a.shm.pairs[2].switched:
                break
            await asyncio.sleep(0.005)
        assert a.shm.pairs[2].switched
        a.shm.send(2, frame(AppMessage(b"3")))
        for _ in range(100):
            if len(b.got) == 3:
                break
            await asyncio.sleep(0.005)
        assert b.got == [AppMessage(b"1"), AppMessage(b"2"), AppMessage(b"3")]
        assert AppMessage(b"3") not in a.tcp.sent
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


def test_blocks_sent_while_the_switch_waits_for_tcp_wait_for_the_ring(shm_dir: str) -> None:
    """Blocks given to TCP while it still wrote earlier ones kept its queue from emptying, so
    the switch waited for a gap in the stream: an object sent as the pair formed went whole
    over TCP. They wait for the ring now, and arrive through it once TCP's are written."""

    async def main() -> None:
        a, b = Node(1, shm_dir), Node(2, shm_dir)
        a.tcp.other, b.tcp.other = b.tcp, a.tcp
        landed = bytearray(100)
        b.shm.block_sink = lambda sender, oid, block, length: memoryview(landed)[:length]
        await a.shm.start()
        await b.shm.start()
        a.tcp.peers[2] = SimpleNamespace(blocks=[("a block TCP has not written yet",)])
        a.shm.send(2, frame(AppMessage(b"1")))
        await turns()
        await asyncio.sleep(0.05)
        assert a.shm.pairs[2].accepted and not a.shm.pairs[2].switched
        oid = ObjectId(1, 0, 1)
        a.shm.send_block(2, block_frame_head(oid, 0, 100), memoryview(bytes(range(100))))
        assert a.tcp.blocks_sent == []  # held for the ring, not behind TCP's blocks
        a.tcp.peers[2].blocks.clear()  # TCP wrote its block: the sweep switches
        for _ in range(200):
            if BlockLanded(oid, 0) in b.got:
                break
            await asyncio.sleep(0.005)
        assert a.shm.pairs[2].switched
        assert b.got == [AppMessage(b"1"), BlockLanded(oid, 0)]
        assert landed == bytes(range(100))
        assert a.tcp.blocks_sent == []
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


class MuteBell(Doorbell):
    __slots__ = ()

    def ring(self) -> None:
        pass


def test_a_lost_wake_up_delays_frames_never_loses_them(shm_dir: str) -> None:
    """Told by counts, not by timing: the writer rang (muted), the reader was never woken,
    and the frame still arrived, which only the sweep can have done. (A check that the frame
    had not arrived yet after some loop turns failed under load: a slow turn let the sweep
    run first.)"""

    async def main() -> None:
        a, b = await pair(shm_dir)
        a.shm.send(2, frame(AppMessage(b"1")))
        deadline = time.monotonic() + 10

        def switched() -> bool:  # a writes into its ring, and b reads it from the switch on
            out, into = a.shm.pairs.get(2), b.shm.pairs.get(1)
            return bool(out and out.switched and into and into.reader and into.reader.started and b.got)

        while not switched():
            assert time.monotonic() < deadline, "the pair never switched to its ring"
            await asyncio.sleep(0.005)
        writer, reader = a.shm.pairs[2].writer, b.shm.pairs[1].reader
        assert writer is not None and reader is not None
        writer.data_bell = MuteBell(writer.data_bell.path, writer.data_bell.fd)  # the wake-up goes missing
        rings, woken = writer.wakeups, reader.wakeups
        a.shm.send(2, frame(AppMessage(b"2")))
        assert writer.wakeups == rings + 1  # the reader slept: the writer rang, and nobody heard
        while len(b.got) < 2:
            assert time.monotonic() < deadline + 10, "the sweep never read the frame"
            await asyncio.sleep(0.005)
        assert b.got == [AppMessage(b"1"), AppMessage(b"2")]  # in order, once
        assert reader.wakeups == woken  # never woken: the sweep found the frame
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


# ============================================ a dial dropped mid-setup, over real TLS connections
class Gate:
    """A front for node 1's port. Its first ``drops`` connections get node 1's side of the TLS
    handshake and are then aborted unread, once the dialler has written: what node 1's full
    handshake pool does to a dial whose handshake the dialler had already finished (TLS 1.3: the
    client is done before the server has checked the client's certificate). Later connections
    are piped to node 1 unchanged (TLS runs end to end through the pipe)."""

    def __init__(self, port: int, context: ssl.SSLContext, drops: int) -> None:
        self.port, self.context, self.drops = port, context, drops
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.dropped < self.drops:
            await writer.start_tls(self.context)
            await reader.read(1)  # the dialler's Hello (and frames) are here: it is past its handshake
            self.dropped += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()


class TlsNode:
    """A ``ShmTransport`` around a real ``TcpTransport`` with TLS (node ``node_id``'s certificate)."""

    def __init__(self, node_id: int, certs: Path, mode: TransportMode, shm_dir: str) -> None:
        self.got: list[Any] = []
        self.lost: list[int] = []
        self.creds = load_credentials(TlsCredentials.for_node(certs, node_id), "node", node_id=node_id)
        security = TransportSecurity(self.creds.server_context(), self.creds.client_context())
        self.tcp = TcpTransport(
            node_id, "127.0.0.1:0", "t", self._frames, self.lost.append, lambda h, m: None, security=security
        )
        self.shm = ShmTransport(self.tcp, mode, ring_capacity=8192, shm_dir=shm_dir)

    def _frames(self, sender: int, frames: list[Any]) -> None:
        self.got.extend(frames)


@pytest.mark.parametrize("mode", [TransportMode.AUTO, TransportMode.TCP])
def test_a_dial_dropped_after_its_handshake_is_redialled_and_loses_nothing(
    tmp_path: Path, shm_dir: str, mode: TransportMode
) -> None:
    """Node 2's connections to node 1 (its probe, offer and first frames on them) are dropped
    twice after node 2's handshake, before node 1 read its Hello. Node 1 never took them, so it
    is a failed dial, not a lost peer: nobody is reported lost (which stopped a fresh 2-node
    group as partitioned), every frame arrives once and in order, and with shared memory allowed
    the pair ends on it both ways."""
    certs = ensure_cluster_certs(tmp_path / "certs", [1, 2], cluster="t")

    async def main() -> None:
        a, b = TlsNode(1, certs, mode, shm_dir), TlsNode(2, certs, mode, shm_dir)
        await a.shm.start()
        await b.shm.start()
        gate = Gate(a.tcp.bound_port, a.creds.server_context(), drops=2)
        a.shm.learn(2, f"127.0.0.1:{b.tcp.bound_port}")
        b.shm.learn(1, f"127.0.0.1:{await gate.start()}")
        try:
            n = 60
            for i in range(n):
                a.shm.send(2, frame(AppMessage(b"a%d" % i)))
                b.shm.send(1, frame(AppMessage(b"b%d" % i)))
                await asyncio.sleep(0.005)
            for _ in range(1000):
                if len(a.got) >= n and len(b.got) >= n:
                    break
                await asyncio.sleep(0.01)
            assert gate.dropped == 2
            assert a.lost == [] and b.lost == []
            assert a.got == [AppMessage(b"b%d" % i) for i in range(n)]
            assert b.got == [AppMessage(b"a%d" % i) for i in range(n)]
            want = {PeerTransport.SHM if mode is TransportMode.AUTO else PeerTransport.TCP}
            for _ in range(200):
                if {*a.shm.peer_transports().values(), *b.shm.peer_transports().values()} == want:
                    break
                await asyncio.sleep(0.01)
            assert a.shm.peer_transports() == {2: want.pop()} == {2: b.shm.peer_transports()[1]}
        finally:
            await gate.close()
            await a.shm.close()
            await b.shm.close()

    asyncio.run(asyncio.wait_for(main(), 40))


def _redo_duplicate(a: Node, b: Node) -> None:
    """Node 1 drops its side and probes, and its probe goes twice (``learn`` resends one it
    thinks was dropped)."""
    a.shm._drop_pair(2)
    a.shm._probe(2)
    a.tcp.send(2, frame(ShmProbe(a.shm.host, a.shm.uid)))


def _redo_crossing(a: Node, b: Node) -> None:
    """Both drop their side and probe at once, and node 1's probe goes twice."""
    a.shm._drop_pair(2)
    b.shm._drop_pair(1)
    a.shm._probe(2)
    b.shm._probe(1)
    a.tcp.send(2, frame(ShmProbe(a.shm.host, a.shm.uid)))


@pytest.mark.parametrize("redo", [_redo_duplicate, _redo_crossing], ids=["duplicate probe", "crossing probes"])
def test_a_repeated_probe_sets_the_pair_up_once_not_in_a_storm(shm_dir: str, redo: Any) -> None:
    """A probe that comes while our offer to the same process is on its way is answered by that
    offer: dropping and probing anew instead made two probes in flight tear down each other's
    rings for good (~2,000 probes in half a second here, ~400 a second between real nodes)."""

    async def main() -> None:
        a, b = await pair(shm_dir)
        try:
            a.shm.send(2, frame(AppMessage(b"x")))
            b.shm.send(1, frame(AppMessage(b"y")))
            for _ in range(50):
                await asyncio.sleep(0.005)
            assert a.shm.peer_transports() == {2: PeerTransport.SHM}
            before = sum(type(m) is ShmProbe for m in a.tcp.sent + b.tcp.sent)
            redo(a, b)
            for _ in range(100):
                await asyncio.sleep(0.005)
            probes = sum(type(m) is ShmProbe for m in a.tcp.sent + b.tcp.sent) - before
            assert probes <= 4, f"{probes} probes: the setup never settles"
            assert a.shm.peer_transports() == {2: PeerTransport.SHM}
            assert b.shm.peer_transports() == {1: PeerTransport.SHM}
            assert os.listdir(shm_dir) == []
        finally:
            await a.shm.close()
            await b.shm.close()

    asyncio.run(main())
