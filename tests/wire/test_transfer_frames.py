"""Block and credit frames: raw bytes after a fixed header, read straight into the place the
sink gives, in whatever pieces the socket returns, among ordinary frames."""

from __future__ import annotations

import random

import pytest

from runtime.core.layout import ShardId
from runtime.core.messages import ShardPush
from runtime.core.rdmc_descriptor import ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.errors import WireError
from runtime.wire.codec import FrameDecoder, decode, frame
from runtime.wire.transfers import BlockDropped, BlockLanded, CreditFrame, block_frame_head, credit_frame

OID = ObjectId(3, 7, 2, 1)
PUSH = ShardPush(2, ShardId("KV", 0, 0), 1, None, 0, (b"hello", None))


class Sink:
    """Gives each block a fresh buffer (or refuses the ones listed) and records what it gave."""

    def __init__(self, refuse: frozenset[int] = frozenset()) -> None:
        self.refuse = refuse
        self.buffers: dict[int, bytearray] = {}

    def __call__(self, oid: ObjectId, block: int, length: int) -> memoryview | Refusal:
        assert oid == OID
        if block in self.refuse:
            return Refusal.DUPLICATE
        self.buffers[block] = bytearray(length)
        return memoryview(self.buffers[block])


def block_bytes(block: int, data: bytes) -> bytes:
    return block_frame_head(OID, block, len(data)) + data


def stream(blocks: dict[int, bytes]) -> bytes:
    parts = [frame(PUSH)]
    for b, data in blocks.items():
        parts += [block_bytes(b, data), credit_frame(OID, b + 1), frame(PUSH)]
    return b"".join(parts)


def feed_in_pieces(decoder: FrameDecoder, data: bytes, seed: int) -> list[object]:
    rng = random.Random(seed)
    out: list[object] = []
    off = 0
    while off < len(data):
        n = rng.choice([1, 2, 7, 30, 31, 45, 100, 4096, 70_000])
        out += decoder.feed(data[off : off + n])
        off += n
    return out


BLOCKS = {0: bytes(range(256)) * 40, 1: b"x" * 3, 2: b"", 3: bytes(reversed(range(256))) * 300}


@pytest.mark.parametrize("seed", range(12))
def test_blocks_land_in_place_whatever_the_pieces(seed: int) -> None:
    sink = Sink()
    out = feed_in_pieces(FrameDecoder(sink=sink), stream(BLOCKS), seed)
    expected: list[object] = [PUSH]
    for b in BLOCKS:
        expected += [BlockLanded(OID, b), CreditFrame(OID, b + 1), PUSH]
    assert out == expected
    assert {b: bytes(buf) for b, buf in sink.buffers.items()} == BLOCKS


def read_into_buffers(decoder: FrameDecoder, data: bytes, seed: int) -> tuple[list[object], int]:
    """Read ``data`` as a BufferedProtocol reader does: into the block's place while the
    decoder offers one (``block_room``), else into a reused scratch buffer fed to ``feed``;
    pieces of random sizes. Returns the decoded items and how many bytes went straight in."""
    rng = random.Random(seed)
    scratch = bytearray(64 * 1024)
    out: list[object] = []
    off = direct = 0
    while off < len(data):
        want = rng.choice([1, 3, 30, 1000, 4096, 70_000])
        room = decoder.block_room()
        if room is not None:
            n = min(want, len(room), len(data) - off)
            room[:n] = data[off : off + n]
            out += decoder.block_filled(n)
            direct += n
        else:
            n = min(want, len(scratch), len(data) - off)
            scratch[:n] = data[off : off + n]
            out += decoder.feed(memoryview(scratch)[:n])
            scratch[:n] = b"\xee" * n  # the reader reuses its buffer: nothing may point into it
        off += n
    return out, direct


@pytest.mark.parametrize("seed", range(12))
def test_blocks_read_straight_into_their_place_and_the_scratch_is_reusable(seed: int) -> None:
    sink = Sink(refuse=frozenset({1}))
    out, direct = read_into_buffers(FrameDecoder(sink=sink), stream(BLOCKS), seed)
    expected: list[object] = [PUSH]
    for b in BLOCKS:
        landed = BlockDropped(OID, b, Refusal.DUPLICATE) if b == 1 else BlockLanded(OID, b)
        expected += [landed, CreditFrame(OID, b + 1), PUSH]
    assert out == expected
    assert {b: bytes(buf) for b, buf in sink.buffers.items()} == {b: d for b, d in BLOCKS.items() if b != 1}
    assert direct > 0  # the big blocks' later bytes never passed through the scratch


def test_block_filled_refuses_more_than_the_room() -> None:
    decoder = FrameDecoder(sink=Sink())
    assert decoder.block_room() is None
    with pytest.raises(ValueError):
        decoder.block_filled(1)
    whole = block_bytes(0, BLOCKS[0])
    cut = len(block_frame_head(OID, 0, len(BLOCKS[0]))) + 10  # the header and 10 body bytes
    assert decoder.feed(whole[:cut]) == []
    room = decoder.block_room()
    assert room is not None and len(room) == len(BLOCKS[0]) - 10
    with pytest.raises(ValueError):
        decoder.block_filled(len(room) + 1)


@pytest.mark.parametrize("seed", range(6))
def test_a_refused_block_is_skipped_and_the_stream_goes_on(seed: int) -> None:
    sink = Sink(refuse=frozenset({0, 3}))
    out = feed_in_pieces(FrameDecoder(sink=sink), stream(BLOCKS), seed)
    assert out[1] == BlockDropped(OID, 0, Refusal.DUPLICATE)
    assert out[-3] == BlockDropped(OID, 3, Refusal.DUPLICATE)
    assert out.count(PUSH) == 1 + len(BLOCKS)
    assert set(sink.buffers) == {1, 2}


def test_without_a_sink_a_block_frame_is_an_error_value_and_the_stream_goes_on() -> None:
    out = FrameDecoder().feed(stream({0: b"abc"}))
    assert out[0] == PUSH
    assert isinstance(out[1], WireError) and "takes none" in str(out[1])
    assert out[2:] == [CreditFrame(OID, 1), PUSH]


BAD_CREDITS = [
    ("short", credit_frame(OID, 1)[4:-1], "credit frame body must be"),
    ("unknown kind", b"\xc1\x09" + b"\x00" * 40, "unknown transfer frame kind 9"),
    ("kind only", b"\xc1", "too short"),
]


@pytest.mark.parametrize(("body", "why"), [c[1:] for c in BAD_CREDITS], ids=[c[0] for c in BAD_CREDITS])
def test_bad_transfer_bodies_raise_wire_errors(body: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        decode(body)
