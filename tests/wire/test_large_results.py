"""A method's result packed by a replica and decoded by its caller: the bytes and values
msgpack gives, a large ``bin`` in them laid out or read here (``large_pack``, ``large_args``)
so that it is copied without holding the GIL."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from derecho_actors.wire import large_pack
from derecho_actors.wire.codec import encode_result, result_decoder, result_encoder
from derecho_actors.wire.large_args import BIG_BIN, MAX_VALUES
from derecho_actors.wire.large_pack import pack_large
from derecho_actors.wire.serializers import FEW, unpack_msgpack
from runtime.errors import SerializationError
from tests.wire.test_large_args import error_of

pytestmark = pytest.mark.timeout(60)

BIG = os.urandom(BIG_BIN + 17)
VALUES = [
    BIG,
    bytearray(BIG),
    (b"meta", BIG),
    [BIG, BIG[:100], "text", 7, None, True, 1.5],
    {"data": BIG, "n": -3},
    {1: BIG, b"k": [BIG, {"x": (BIG,)}], 2.5: "float key"},
    [list(range(20)), BIG, "é" * 40, "y" * 70000, b"w" * 70000],
    [msgpack.ExtType(5, b"abc"), msgpack.Timestamp(10, 5), 2**64 - 1, -(2**63), BIG],
    [dict.fromkeys(range(20)), BIG],
    [[BIG]] + [[0]] * 3,
    BIG[: BIG_BIN - 1],  # one byte under: packed by msgpack
    [BIG, list(range(MAX_VALUES))],  # more values than are laid out
    None,
    [1, 2, 3],
    "a" * (BIG_BIN + 3),  # text: ASCII, then wider and wider characters, one across a step's end
    ["\xe9" * BIG_BIN, "x" * (BIG_BIN - 1) + "\u20ac" + "y" * 9],
    {"emoji": "\U0001f600" * (BIG_BIN // 2) + "a", "data": BIG},
    "\xe9" * (BIG_BIN // 2),  # under a mebibyte of characters: msgpack's path
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_a_result_packs_to_the_bytes_msgpack_writes(value: Any) -> None:
    want = msgpack.packb(value, use_bin_type=True)
    assert result_encoder("msgpack")(value) == want
    assert encode_result(value, "msgpack") == want


def test_large_bins_in_a_few_values_are_laid_out_and_others_are_not() -> None:
    pack = msgpack.Packer(use_bin_type=True).pack
    assert pack_large(BIG, pack) == msgpack.packb(BIG)
    assert pack_large((1, {"d": BIG}), pack) == msgpack.packb((1, {"d": BIG}))
    assert pack_large([1, 2, b"x" * 100], pack) is None  # no large bin
    assert pack_large([BIG, list(range(MAX_VALUES))], pack) is None  # over the budget
    assert pack_large(memoryview(BIG), pack) is None  # not a type laid out: msgpack packs it


def test_a_result_laid_out_is_searched_only_when_small(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = large_pack.pack_large

    def spy(value: Any, pack: Any) -> bytes | None:
        calls.append(type(value))
        return real(value, pack)

    monkeypatch.setattr("derecho_actors.wire.serializers.pack_large", spy)
    encode = result_encoder("msgpack")
    few, many = [0] * FEW + [BIG], [0] * (FEW + 1)
    assert encode(few[1:]) == msgpack.packb(few[1:])
    assert encode(many) == msgpack.packb(many)
    assert encode(BIG[:100]) == msgpack.packb(BIG[:100])
    assert calls == [list]  # the small container only: not the long one nor the small bin


def test_a_result_msgpack_cannot_pack_raises_as_before() -> None:
    value = ({"d": BIG}, object())
    with pytest.raises(TypeError):
        msgpack.packb(value)
    with pytest.raises(TypeError):
        result_encoder("msgpack")(value)
    with pytest.raises(SerializationError, match="not plain data"):
        encode_result(value, "msgpack")


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_a_result_decodes_to_the_values_msgpack_gives(value: Any) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    got, want = result_decoder("msgpack")(packed), unpack_msgpack(packed)
    assert got == want
    assert repr(got) == repr(want)  # the same types (a tuple comes back a list, a bin bytes)


@pytest.mark.parametrize(
    "packed",
    [
        msgpack.packb(BIG) + b"\x01",
        msgpack.packb(BIG)[:-3],
        b"\x92\xc1" + msgpack.packb(BIG),
        b"\x82\x91\x01" + msgpack.packb(BIG) + b"\x01\x02",
        b"\xdb" + (BIG_BIN + 2).to_bytes(4, "big") + b"a" * BIG_BIN + b"\xff\xfe",  # not UTF-8
        b"\xdb" + (BIG_BIN + 1).to_bytes(4, "big") + b"a" * BIG_BIN + b"\xc3",  # a character cut short
    ],
    ids=["extra", "short", "0xc1", "unhashable key", "not utf-8", "cut character"],
)
def test_a_malformed_result_raises_what_msgpack_raises(packed: bytes) -> None:
    with pytest.raises(error_of(packed)):
        result_decoder("msgpack")(packed)


def test_a_text_with_a_lone_surrogate_is_refused_as_msgpack_refuses_it() -> None:
    value = ["a" * BIG_BIN + "\ud800", BIG]
    with pytest.raises(UnicodeEncodeError):
        msgpack.packb(value)
    with pytest.raises(UnicodeEncodeError):
        result_encoder("msgpack")(value)
    with pytest.raises(SerializationError):
        encode_result(value, "msgpack")
