"""The RDMA transport above the verbs calls (runtime.drivers.rdma_ring, rdma_transport and
runtime.wire.rdma_setup), run here without a device.

The verbs layer is replaced by an in-process fabric whose one-sided write copies a byte range
of the writer's registered buffer into the same offset of the buffer that the remote key
names: what an RDMA_WRITE does, minus the network. Everything above it is the production code:
the mirrored rings, the publication ranges, the setup exchange through real frames, the
switch from TCP, ShmTransport's writer and reader. (The fabric's writes are visible at once,
where a NIC's land later but in the order posted; the ring relies on that order only.)
"""

from __future__ import annotations

import asyncio
import mmap
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime.drivers.rdma_ring import HEAD_AT, TAIL_AT, MirroredRing, ring_buffer, written_ranges
from runtime.drivers.rdma_transport import RdmaTransport, TransportUnavailable, check_offer
from runtime.drivers.rdma_verbs import Endpoint, Missing, RdmaUnavailable, RegionKey
from runtime.drivers.shm_ring import HEADER
from runtime.errors import WireError
from runtime.exitcodes import EXIT_UNAVAILABLE
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage
from runtime.wire.rdma_setup import RdmaAnswer, RdmaOffer, RdmaRegion, RdmaSwitch, decode_rdma, encode_rdma
from runtime.wire.shm_setup import ShmAnswer, ShmProbe
from tests.drivers.test_shm_transport import FakeTcp

pytestmark = pytest.mark.timeout(60)
CAP = 8192


# ---------------------------------------------------------------- publication ranges
@pytest.mark.parametrize(
    "head, n, expected",
    [
        (0, 0, []),
        (0, 100, [(HEADER, 100), (HEAD_AT, 8)]),
        (8000, 100, [(HEADER + 8000, 100), (HEAD_AT, 8)]),  # ends exactly at the ring's end
        (8100, 200, [(HEADER + 8100, 92), (HEADER, 108), (HEAD_AT, 8)]),  # wraps: two pieces
        (3 * CAP + 10, 5, [(HEADER + 10, 5), (HEAD_AT, 8)]),  # the stream position, not the offset
    ],
)
def test_a_write_publishes_its_bytes_then_head(head: int, n: int, expected: list[tuple[int, int]]) -> None:
    assert written_ranges(head, n, CAP) == expected


def mirrored() -> tuple[MirroredRing, MirroredRing, list[tuple[str, int, int]]]:
    """A producer's and a consumer's copy of one ring, each publishing into the other's."""
    a, b = ring_buffer(CAP), ring_buffer(CAP)
    log: list[tuple[str, int, int]] = []

    def copier(name: str, src: mmap.mmap, dst: mmap.mmap) -> Any:
        def publish(offset: int, length: int) -> None:
            log.append((name, offset, length))
            dst[offset : offset + length] = src[offset : offset + length]

        return publish

    producer = MirroredRing(a, CAP, copier("p", a, b), "p")
    consumer = MirroredRing(b, CAP, copier("c", b, a), "c")
    return producer, consumer, log


def test_frames_written_on_one_copy_are_read_from_the_other_through_wraps_and_a_full_ring() -> None:
    producer, consumer, log = mirrored()
    msgs = [AppMessage(bytes([i]) * (700 + i)) for i in range(40)]  # ~30 KB through 8 KiB
    stream = b"".join(frame(m) for m in msgs)
    decoder = FrameDecoder(1 << 20)
    got: list[Any] = []
    sent = 0
    while sent < len(stream) or consumer.readable():
        sent += producer.write(stream[sent : sent + 3000])
        assert producer.free() >= 0
        for piece in consumer.pieces(2500):
            got.extend(decoder.feed(piece))
            consumer.consume(len(piece))
            piece.release()
    assert got == msgs
    # the producer publishes data and head only; the consumer only its tail
    assert {off for who, off, _ in log if who == "c"} == {TAIL_AT}
    assert {off for who, off, n in log if who == "p" and off < HEADER} == {HEAD_AT}
    producer.close()
    consumer.close()


def test_the_producer_sees_room_only_once_the_consumer_published_its_tail() -> None:
    producer, consumer, _ = mirrored()
    assert producer.write(b"x" * (CAP + 10)) == CAP  # full
    assert producer.write(b"y") == 0
    (piece,) = consumer.pieces(100)
    piece.release()
    assert producer.free() == 0  # read, not consumed: no room yet
    consumer.consume(100)
    assert producer.free() == 100
    producer.close()
    consumer.close()


# ---------------------------------------------------------------- setup frames
OFFER = RdmaOffer(
    7, 0x123456, 3, bytes(range(16)), CAP, (RdmaRegion(4096, 11, HEADER + CAP), RdmaRegion(1 << 40, 12, HEADER + CAP))
)


@pytest.mark.parametrize("msg", [OFFER, RdmaAnswer(True), RdmaAnswer(False, "why"), RdmaSwitch()])
def test_setup_frames_round_trip(msg: Any) -> None:
    assert FrameDecoder(1 << 20).feed(frame(msg)) == [msg]
    assert decode_rdma(encode_rdma(msg)) == msg


@pytest.mark.parametrize(
    "fields, error",
    [
        ([37, 9], "is not one of"),
        ([37, 1, 7, 1, 3, b"short", CAP, [1, 2, 3]], "gid must be 16 bytes"),
        ([37, 1, 7, 1, 3, bytes(16), CAP, [1, 2]], "triples"),
        ([37, 1, 7, 1, 3, bytes(16), CAP, []], "triples"),
        ([37, 1, 7, 1, 3, bytes(16), CAP, [1, 2, -3]], "non-negative"),
        ([37, 1, -7, 1, 3, bytes(16), CAP, [1, 2, 3]], "qp_num must be a non-negative int"),
        ([37, 2, "yes", ""], "accepted must be a bool"),
        ([37, 3, "extra"], "needs 1 fields"),
    ],
)
def test_bad_setup_frames_are_refused(fields: list[Any], error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode_rdma(fields)


def test_an_offer_must_name_two_whole_rings_of_our_size() -> None:
    assert check_offer(OFFER, CAP) == ""
    assert "this node's 4096" in check_offer(OFFER, 4096)
    one = RdmaOffer(7, 1, 3, bytes(16), CAP, OFFER.regions[:1])
    assert "1 memory regions, not 2" in check_offer(one, CAP)
    short = RdmaOffer(7, 1, 3, bytes(16), CAP, (OFFER.regions[0], RdmaRegion(0, 1, 64)))
    assert "not one ring long" in check_offer(short, CAP)


# ---------------------------------------------------------------- two transports, one fabric
@dataclass
class Fabric:
    """Queue pairs and registered regions of every fake device, by QP number and rkey."""

    qps: dict[int, FakePair] = field(default_factory=dict)
    regions: dict[int, mmap.mmap] = field(default_factory=dict)
    writes: int = 0


class FakePair:
    def __init__(self, fabric: Fabric, peer: int, buffers: list[mmap.mmap]) -> None:
        self.fabric, self.peer, self.buffers = fabric, peer, buffers
        self.qp_num = len(fabric.qps) + 100
        fabric.qps[self.qp_num] = self
        self.keys = []
        for buf in buffers:
            rkey = len(fabric.regions) + 1000
            fabric.regions[rkey] = buf
            self.keys.append(RegionKey(rkey * 1_000_000, rkey, len(buf)))
        self.remote: tuple[RegionKey, ...] = ()
        self.closed = False

    def endpoint(self) -> Endpoint:
        return Endpoint(self.qp_num, 5, 1, bytes(16), tuple(self.keys))

    def connect(self, remote: Endpoint) -> None:
        assert remote.qp_num in self.fabric.qps
        self.remote = remote.regions

    def write(self, region: int, offset: int, length: int, remote_region: int, signaled: bool = False) -> None:
        assert self.remote and not self.closed, "a write before connect or after close"
        target = self.remote[remote_region]
        dst = self.fabric.regions[target.rkey]  # the rkey names the peer's buffer
        assert target.addr == target.rkey * 1_000_000 and offset + length <= target.length
        dst[offset : offset + length] = self.buffers[region][offset : offset + length]
        self.fabric.writes += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDevice:
    fabric: Fabric
    name: str = "fake0"
    failures: list[str] = field(default_factory=list)
    made: list[FakePair] = field(default_factory=list)

    def pair(self, peer: int, buffers: list[mmap.mmap]) -> FakePair:
        made = FakePair(self.fabric, peer, buffers)
        self.made.append(made)
        return made

    def poll(self) -> int:
        return 0

    def close(self) -> None:
        pass


class Node:
    def __init__(self, node_id: int, fabric: Fabric, capacity: int = CAP) -> None:
        self.got: list[Any] = []
        self.lost: list[int] = []
        self.tcp = FakeTcp(node_id, on_frames=self.got_frames, on_peer_lost=self.lost.append)
        self.tcp.addresses = {1: "a", 2: "b"}
        self.device = FakeDevice(fabric)
        self.rdma = RdmaTransport(self.tcp, ring_capacity=capacity, open_device=lambda: self.device)  # type: ignore[arg-type]

    def got_frames(self, sender: int, frames: list[Any]) -> None:
        self.got.extend(frames)


async def two(capacity_b: int = CAP) -> tuple[Node, Node, Fabric]:
    fabric = Fabric()
    a, b = Node(1, fabric), Node(2, fabric, capacity_b)
    a.tcp.other, b.tcp.other = b.tcp, a.tcp
    await a.rdma.start()
    await b.rdma.start()
    return a, b, fabric


async def until(cond: Any, tries: int = 400) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.002)


def test_frames_arrive_once_and_in_order_across_the_switch_to_rdma() -> None:
    async def main() -> None:
        a, b, fabric = await two()
        msgs = [AppMessage(i.to_bytes(4, "big") * 300) for i in range(300)]  # 1.2 KB each, ring 8 KiB
        for i, m in enumerate(msgs):
            a.rdma.send(2, frame(m))
            if i % 10 == 0:
                await asyncio.sleep(0)
        b.rdma.send(1, frame(AppMessage(b"hi")))
        await until(lambda: len(b.got) == len(msgs) and a.got)
        assert b.got == msgs and a.got == [AppMessage(b"hi")]
        assert a.rdma.peer_kinds() == {2: "rdma"} and b.rdma.peer_kinds() == {1: "rdma"}
        on_tcp = [m for m in a.tcp.sent if isinstance(m, AppMessage)]
        assert 0 < len(on_tcp) < len(msgs) and fabric.writes > 0  # both paths carried some
        assert [type(m) for m in a.tcp.sent if isinstance(m, (RdmaOffer, RdmaAnswer, RdmaSwitch))] == [
            RdmaOffer,
            RdmaAnswer,
            RdmaSwitch,
        ]
        a.rdma.lost_on_tcp(2)  # the TCP connection broke: the QP and the rings go with it
        assert a.lost == [2] and a.rdma.peer_kinds() == {} and a.device.made[0].closed
        await a.rdma.close()
        await b.rdma.close()

    asyncio.run(main())


def test_an_offer_of_another_ring_size_keeps_the_pair_on_tcp() -> None:
    async def main() -> None:
        a, b, fabric = await two(capacity_b=2 * CAP)
        a.rdma.send(2, frame(AppMessage(b"1")))
        await until(lambda: b.got)
        await asyncio.sleep(0.02)
        a.rdma.send(2, frame(AppMessage(b"2")))
        await until(lambda: len(b.got) == 2)
        assert b.got == [AppMessage(b"1"), AppMessage(b"2")] and fabric.writes == 0
        refusals = [m for m in a.tcp.sent + b.tcp.sent if isinstance(m, RdmaAnswer)]
        assert refusals and not any(r.accepted for r in refusals)
        assert any("its rings hold" in r.reason for r in refusals)
        assert all(made.closed for made in a.device.made + b.device.made)  # QPs and MRs released
        await a.rdma.close()
        await b.rdma.close()

    asyncio.run(main())


def test_a_shared_memory_probe_is_answered_no() -> None:
    async def main() -> None:
        a, b, _ = await two()
        a.tcp.other = None
        a.rdma.frames_from_tcp(2, [ShmProbe(a.rdma.host, a.rdma.uid)])
        answers = [m for m in a.tcp.sent if isinstance(m, ShmAnswer)]
        assert [(x.accepted, x.reason) for x in answers] == [(False, 'node 1: node.transport = "rdma"')]
        await a.rdma.close()
        await b.rdma.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "problem, says",
    [
        (RdmaUnavailable(Missing.NO_DEVICE, "none listed"), "no RDMA device on this host (none listed)"),
        (RdmaUnavailable(Missing.NO_PYVERBS, "x"), "install it with: apt-get install python3-pyverbs rdma-core"),
        (OSError("Permission denied: /dev/infiniband/uverbs0"), "cannot open the RDMA device: Permission denied"),
    ],
)
def test_a_node_that_cannot_have_rdma_does_not_start(problem: Exception, says: str) -> None:
    def no_device() -> Any:
        raise problem

    async def main() -> None:
        tcp = FakeTcp(1)
        rdma = RdmaTransport(tcp, ring_capacity=CAP, open_device=no_device)  # type: ignore[arg-type]
        with pytest.raises(TransportUnavailable) as caught:
            await rdma.start()
        assert caught.value.exit_code == EXIT_UNAVAILABLE == 7
        assert str(caught.value).startswith('node.transport = "rdma": ') and says in str(caught.value)

    asyncio.run(main())
