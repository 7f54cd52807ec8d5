"""Edges of the large-value readers and writers found in review: a text whose last piece is a
one-character singleton, a client's merged answers of 1 MiB or more, values nested deeply, and
a bytearray laid out by the length its view pins."""

from __future__ import annotations

import os
import sys
from typing import Any

import msgpack
import pytest

from derecho_actors.wire import large_args, large_pack, replies
from derecho_actors.wire.large_args import BIG_BIN, decode_view
from derecho_actors.wire.large_pack import pack_large
from derecho_actors.wire.large_text import decode_text
from derecho_actors.wire.messages import encode
from derecho_actors.wire.packing import packb
from derecho_actors.wire.replies import AnswerBatch, client_answers
from derecho_actors.wire.serializers import unpack_msgpack
from runtime.errors import WireError
from runtime.wire.checks import decode_tagged
from tests.wire.gil_wait import worst_wait_share

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("last", ["\xe9", "\xff", "\u20ac", "\U0001f600", "a"])
def test_a_text_ending_with_a_cached_singleton_decodes_as_str_does(last: str) -> None:
    msgpack.packb({"unit": last})  # caches the one-character str's UTF-8 form (its size grows)
    text = "x" * (BIG_BIN - 1) + last
    raw = text.encode()
    got = decode_text(memoryview(raw))
    assert got == text and hash(got) == hash(text)
    assert sys.getsizeof(got) == sys.getsizeof(raw.decode())  # as compact as str makes it
    args = msgpack.packb([{text: 1}])
    assert decode_view(memoryview(args), unpack_msgpack)[0][text] == 1


def _batch(value: bytes) -> bytes:
    return encode(AnswerBatch(3, (1, 2, 3), ((6, True, b"\xc0", -1, ()), (7, True, value, -1, ()))))


def test_a_clients_large_answers_are_read_as_msgpack_reads_them() -> None:
    value = msgpack.packb(os.urandom(BIG_BIN + 10))
    data = _batch(value)
    rows = client_answers(data)
    want = decode_tagged(data, replies._CLIENT_ANSWERS, "message")  # msgpack's reading
    assert rows == want and type(rows) is type(want)
    for cut in (data[:-1], data + b"\x00"):
        with pytest.raises(WireError):
            client_answers(cut)


def test_a_clients_large_answers_leave_the_gil_to_its_loop() -> None:
    data = _batch(msgpack.packb(os.urandom(96 << 20)))
    ratios = []
    for _ in range(3):
        ratio, rows = worst_wait_share(lambda: client_answers(data))
        assert rows is not None
        ratios.append(ratio)
        del rows
    assert min(ratios) < 0.5, ratios


def _nested(depth: int, inner: Any) -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


@pytest.mark.parametrize("depth", [10, large_args.MAX_DEPTH + 5, 900])
def test_a_deep_value_packs_and_reads_as_msgpack_does(depth: int) -> None:
    value = _nested(depth, os.urandom(BIG_BIN))
    try:
        want: bytes | None = packb(value)
    except ValueError:  # msgpack's own nesting limit
        want = None
    got = pack_large(value, packb)
    if got is not None:
        assert got == want
    else:
        assert depth > large_args.MAX_DEPTH
    if want is not None:
        assert decode_view(memoryview(want), unpack_msgpack) == msgpack.unpackb(want)


def test_a_deep_value_near_the_recursion_limit_falls_back_to_msgpack() -> None:
    value = _nested(300, os.urandom(BIG_BIN))

    def deep(n: int) -> bytes | None:
        return deep(n - 1) if n else pack_large(value, packb)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(600)
    try:
        got = deep(250)  # ~250 frames used already: the walk would need ~300 more
    finally:
        sys.setrecursionlimit(old)
    assert got is None or got == packb(value)


def test_a_bytearray_is_laid_out_with_the_length_its_view_pins() -> None:
    data = bytearray(os.urandom(BIG_BIN + 3))
    assert pack_large([data], packb) == packb([bytes(data)])
    assert large_pack.MAX_DEPTH == large_args.MAX_DEPTH
