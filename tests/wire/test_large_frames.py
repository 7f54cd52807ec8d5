"""Answer frames holding a large value: encoded with the value laid out by ``large_pack`` and
decoded by ``large_args`` (the value copied without the GIL), to the bytes and messages msgpack
gives; a malformed large frame is refused with ``WireError`` as before."""

from __future__ import annotations

import os

import msgpack
import pytest

from derecho_actors.wire import large_frames, messages
from derecho_actors.wire.large_args import BIG_BIN
from derecho_actors.wire.messages import decode, decode_from_client, encode
from derecho_actors.wire.packing import packb
from derecho_actors.wire.replies import AnswerBatch, Reply, ReplyBatch
from runtime.errors import WireError

pytestmark = pytest.mark.timeout(60)

VALUE = msgpack.packb(os.urandom(BIG_BIN + 9))
FRAMES = [
    Reply(7, 2, 3, (1, 2, 3), True, VALUE, 0, -1),
    ReplyBatch(2, 3, (1, 2, 3), ((6, True, b"\xc0", 0, -1), (7, True, VALUE, 11, 5))),
    AnswerBatch(3, (1, 2, 3), ((6, True, b"\xc0", -1, ()), (7, True, VALUE, -1, (1, 2)))),
    ReplyBatch(2, 3, (1, 2, 3), ((7, True, VALUE, 0, -1), (8, True, b"\xc0", 0, -1))),  # large not last
]


@pytest.mark.parametrize("msg", FRAMES, ids=["reply", "batch", "answers", "not last"])
def test_a_large_answer_frame_is_the_one_msgpack_writes_and_reads(msg: object) -> None:
    fields = messages._ENCODERS[type(msg)](msg)
    data = encode(msg)  # type: ignore[arg-type]
    assert data == packb(fields)
    assert decode(data) == msg
    assert decode_from_client(data, 8) == msg


def test_a_large_answer_is_laid_out_only_when_it_ends_its_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    laid: list[int] = []
    real = large_frames.pack_large
    monkeypatch.setattr(large_frames, "pack_large", lambda v, p: laid.append(1) or real(v, p))
    for msg in FRAMES:
        encode(msg)  # type: ignore[arg-type]
    assert laid == [1, 1, 1]


@pytest.mark.parametrize(
    "data",
    [
        encode(FRAMES[0]) + b"\x01",  # a value after the frame
        encode(FRAMES[0])[:-2],  # cut short
        b"\x92\x03" + msgpack.packb(msgpack.ExtType(1, b"x" * BIG_BIN)),  # an extension
        msgpack.packb([99, VALUE]),  # an unknown tag
    ],
    ids=["extra", "short", "ext", "tag"],
)
def test_a_malformed_large_frame_is_refused(data: bytes) -> None:
    with pytest.raises(WireError) as got:
        decode(data)
    with pytest.raises(WireError) as want:
        messages.decode_tagged(data, messages._DECODERS, "message")
    assert str(got.value) == str(want.value)
