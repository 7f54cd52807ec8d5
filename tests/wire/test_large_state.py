"""An object state for a joiner (or a snapshot) encoded and decoded with its large ``bytes``
copied without the GIL (``large_pack``, ``large_args``): the same bytes and values as the
msgpack-only codec, errors included."""

from __future__ import annotations

import functools
import os
from typing import Any

import msgpack
import pytest

from derecho_actors.wire import state_codec
from derecho_actors.wire.large_args import BIG_BIN
from derecho_actors.wire.state_codec import decode_state, encode_state
from runtime.errors import SerializationError
from tests.wire.gil_wait import worst_wait_share

pytestmark = pytest.mark.timeout(90)

BIG = os.urandom(BIG_BIN + 33)
STATES = [
    {"attrs": {"blob": BIG, "n": 3}, "sessions": [[1, 2, b"x"]] * 30, "lost": None},
    {"attrs": {"pair": (b"meta", BIG), "tags": {"a", "b"}, "frozen": frozenset({BIG})}},
    {"attrs": {(1, "k"): [BIG, (BIG, (1, 2))], "big": bytearray(BIG)}},
    {"attrs": {"text": "\u20ac" * BIG_BIN, "t": ("a" * BIG_BIN,), "s": {"\xe9" * BIG_BIN}}},
    {"attrs": {"few": (1, 2, 3), "small": b"x" * 100}},  # no large bin: msgpack's path
    {"attrs": {"many": list(range(10000)), "blob": BIG}},  # more values than are laid out
]


@pytest.mark.parametrize("state", STATES, ids=range(len(STATES)))
def test_a_state_encodes_and_decodes_as_msgpack_does(state: dict[str, Any]) -> None:
    want = state_codec._pack_state(state)
    packed = encode_state(state, "msgpack", "the state")
    assert packed == want
    got, expected = decode_state(packed, "msgpack"), state_codec._unpack_state(want)
    assert got == expected
    assert repr(got) == repr(expected)  # tuples, sets and frozensets come back as themselves


def test_a_state_that_is_not_plain_data_is_refused_as_before() -> None:
    class Thing:
        pass

    with pytest.raises(SerializationError, match="not plain data"):
        encode_state({"attrs": {"blob": BIG, "thing": (Thing(),)}}, "msgpack", "the state")
    with pytest.raises(SerializationError, match="not plain data"):
        encode_state({"attrs": {"blob": BIG, "sub": type("L", (list,), {})()}}, "msgpack", "the state")


def error_of(packed: bytes) -> type[BaseException]:
    try:
        state_codec._unpack_state(packed)
    except Exception as exc:  # noqa: BLE001 - whatever msgpack raises is the answer
        return type(exc)
    raise AssertionError("decoded")


@pytest.mark.parametrize(
    "packed",
    [
        msgpack.packb({"a": BIG}) + b"\x01",
        msgpack.packb({"a": BIG})[:-3],
        msgpack.packb({"a": msgpack.ExtType(9, msgpack.packb([BIG]))}),  # an unknown extension
        msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb([BIG]) + b"\x01")}),  # extra inside
    ],
    ids=["extra", "short", "unknown ext", "ext extra"],
)
def test_a_malformed_state_raises_what_msgpack_raises(packed: bytes) -> None:
    with pytest.raises(error_of(packed)):
        decode_state(packed, "msgpack")


def test_a_large_state_is_encoded_and_decoded_leaving_the_gil_to_the_loop() -> None:
    """The replica's thread encodes a state for a joiner (``write_snapshot``) and decodes one
    received (``IncomingState``) while the node's loop waits for the GIL: msgpack held it
    0.3-1.4 s encoding 100 MB, 80-210 ms decoding."""
    state = {"attrs": {"blob": os.urandom(128 << 20), "pair": (1, b"x")}, "applied": 7}
    encoded, decoded = [], []
    for _ in range(3):
        ratio, packed = worst_wait_share(lambda: encode_state(state, "msgpack", "the state"))
        encoded.append(ratio)
        ratio, value = worst_wait_share(functools.partial(decode_state, packed, "msgpack"))
        assert value == state
        decoded.append(ratio)
        del packed, value
    assert min(encoded) < 0.5 and min(decoded) < 0.5, (encoded, decoded)
