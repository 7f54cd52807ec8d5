"""Blocks of large objects leave in slices (``tcp.BLOCK_SLICE``): what else is sent to the peer
meanwhile must wait behind the block being written, or the stream would carry a frame inside a
block's body. Two real transports on loopback, TLS on, a block sink as the node's engine gives."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from runtime.core.rdmc_descriptor import ObjectId
from runtime.drivers.tcp import BLOCK_SLICE, TcpTransport, TransportSecurity
from runtime.security.certs import ensure_cluster_certs
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage
from runtime.wire.transfers import BlockLanded, block_frame_head

BLOCK = 16 * BLOCK_SLICE + 12345  # many slices (more than small socket buffers hold) and a short last one
OID = ObjectId(1, 0, 1, 0)


class Receiver:
    """Node 2: keeps what arrives, in order, and gives each block a place of its own."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.places: dict[int, memoryview] = {}

    def frames(self, sender: int, frames: list[Any]) -> None:
        self.got.extend(frames)

    def sink(self, sender: int, oid: ObjectId, block: int, length: int) -> memoryview:
        place = self.places[block] = memoryview(bytearray(length))
        return place


def transport(node_id: int, certs: Path, on_frames: Any) -> TcpTransport:
    creds = load_credentials(TlsCredentials.for_node(certs, node_id), "node", node_id=node_id)
    security = TransportSecurity(creds.server_context(), creds.client_context())
    return TcpTransport(node_id, "127.0.0.1:0", "t", on_frames, lambda n: None, lambda h, m: None, security=security)


def test_frames_sent_while_a_block_is_written_arrive_after_it_whole(tmp_path: Path) -> None:
    certs = ensure_cluster_certs(tmp_path / "certs", [1, 2], cluster="t")
    blocks = [bytes((i * 31 + k) % 251 for k in range(251)) * (BLOCK // 251 + 1) for i in range(3)]
    blocks = [b[:BLOCK] for b in blocks]

    async def main() -> None:
        rx = Receiver()
        a = transport(1, certs, lambda s, f: None)
        b = transport(2, certs, rx.frames)
        b.block_sink = rx.sink
        await a.start()
        await b.start()
        a.learn(2, f"127.0.0.1:{b.bound_port}")
        try:
            a.send(2, frame(AppMessage(b"first")))
            for _ in range(500):  # the connection is up and the peer answered
                if rx.got:
                    break
                await asyncio.sleep(0.01)
            # Small socket buffers: the kernel takes a slice or two, not a whole block at once.
            out = a.peers[2].conn
            assert out is not None and out.transport is not None
            out.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
            for conn in b.incoming[1]:
                assert conn.transport is not None
                conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            part_written: list[tuple[int, int]] = []  # (block being written, frame sent then)
            for i, data in enumerate(blocks):
                a.send_block(2, block_frame_head(OID, i, len(data)), memoryview(data))
                peer = a.peers[2]
                if peer.partial is not None:  # the first of peer.blocks is the rest of it
                    part_written.append((i + 1 - len(peer.blocks), i))
                # Sent while a block is part written: must come after that block (frames
                # overtake blocks still queued whole, as they always did).
                a.send(2, frame(AppMessage(b"after %d" % i)))
            assert part_written  # the case under test happened
            n = 1 + 2 * len(blocks)
            for _ in range(1000):
                if len(rx.got) >= n:
                    break
                await asyncio.sleep(0.01)
            messages = [m for m in rx.got if isinstance(m, AppMessage)]
            assert messages == [AppMessage(b"first")] + [AppMessage(b"after %d" % i) for i in range(len(blocks))]
            assert sorted(m.block for m in rx.got if isinstance(m, BlockLanded)) == list(range(len(blocks)))
            assert len(rx.got) == n
            for block, i in part_written:
                assert rx.got.index(BlockLanded(OID, block)) < rx.got.index(AppMessage(b"after %d" % i))
            assert all(bytes(rx.places[i]) == data for i, data in enumerate(blocks))
            assert a.peers[2].partial is None and not a.peers[2].behind and not a.peers[2].blocks
        finally:
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 30))
