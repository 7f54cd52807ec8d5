"""The object frames of shared-memory pairs (``runtime.wire.shm_setup``) survive the codec, and
a frame with a field missing or of the wrong kind is a clear WireError, never a crash."""

from __future__ import annotations

import msgpack
import pytest

from runtime.core.rdmc_descriptor import ObjectId
from runtime.errors import WireError
from runtime.wire.codec import decode, frame
from runtime.wire.shm_setup import (
    TAG_SHM_SETUP,
    ShmBlockInPlace,
    ShmInPlace,
    ShmObjectAnswer,
    ShmObjectOffer,
    ShmSegmentFree,
    ShmStep,
    encode_shm,
)

pytestmark = [pytest.mark.timeout(30)]

OID = ObjectId(3, 7, 2, 1)
TOKEN = bytes(range(16))

FRAMES = [
    ShmObjectOffer(OID, "/dev/shm/x-obj-p1-ab", 1 << 20, TOKEN),
    ShmObjectAnswer(OID, True, TOKEN),
    ShmObjectAnswer(OID, False, TOKEN),
    ShmInPlace(OID),
    ShmBlockInPlace(OID, 5, 4096),
    ShmSegmentFree(TOKEN, False),
]


@pytest.mark.parametrize("msg", FRAMES, ids=lambda m: type(m).__name__)
def test_object_frames_survive_the_codec(msg: object) -> None:
    assert decode(frame(msg)[4:]) == msg


def test_an_answer_names_its_segment() -> None:
    """The token travels with the answer: the owner finds the segment after it let go of the
    object (a late answer)."""
    fields = encode_shm(ShmObjectAnswer(OID, True, TOKEN))
    assert fields[0] == TAG_SHM_SETUP and fields[1] == ShmStep.OBJECT_ANSWER and fields[-1] == TOKEN
    with pytest.raises(WireError, match="fields after the tag"):
        decode(msgpack.packb(fields[:-1]))
    with pytest.raises(WireError, match="ShmObjectAnswer.token"):
        decode(msgpack.packb([*fields[:-1], "not bytes"]))
