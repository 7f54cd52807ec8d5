"""RDMA pairs and the blocks of large objects sent between the peer's accept and the switch:
ShmTransport parks them for the ring; the RDMA switch must send them too (review rev12)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from runtime.core.rdmc_descriptor import ObjectId
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage
from runtime.wire.transfers import BlockLanded, block_frame_head
from tests.drivers.test_rdma_rings import two, until

pytestmark = pytest.mark.timeout(60)


def test_a_block_sent_between_accept_and_switch_arrives_over_rdma() -> None:
    async def main() -> None:
        a, b, _ = await two()
        try:
            landed = bytearray(100)
            b.rdma.block_sink = lambda sender, oid, block, length: memoryview(landed)[:length]
            a.tcp.peers[2] = SimpleNamespace(blocks=["TCP still writes a block for node 2"])
            a.rdma.send(2, frame(AppMessage(b"1")))  # forms the pair
            await until(lambda: 2 in a.rdma.pairs and a.rdma.pairs[2].accepted)
            pair = a.rdma.pairs[2]
            assert pair.accepted and not pair.switched  # TCP's block holds the switch back
            oid = ObjectId(1, 0, 1)
            a.rdma.send_block(2, block_frame_head(oid, 0, 100), memoryview(bytes(range(100))))
            assert len(pair.blocks) == 1 and a.tcp.blocks_sent == []  # parked for the ring
            a.tcp.peers[2].blocks.clear()
            await until(lambda: pair.switched)
            await until(lambda: BlockLanded(oid, 0) in b.got)
            assert pair.switched and pair.blocks == []
            assert BlockLanded(oid, 0) in b.got
            assert bytes(landed) == bytes(range(100))
        finally:
            await a.rdma.close()
            await b.rdma.close()

    asyncio.run(main())
