"""A large call's msgpack arguments, read from a view of its received object
(``wire.large_args``): the same values msgpack decodes, and the replica's thread copies their
large ``bin`` values without holding the GIL, so the node's loop keeps turning meanwhile."""

from __future__ import annotations

import mmap
import os
import sys
from typing import Any

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.replica.calls import CallRunner
from derecho_actors.wire import large_args
from derecho_actors.wire.codec import PendingCall, decode_ordered, encode_args, encode_ordered
from derecho_actors.wire.large_args import BIG_BIN, BYTES_PER_VALUE, MAX_VALUES, decode_view, released_copy, values_for
from derecho_actors.wire.serializers import unpack_msgpack
from runtime.core.rdmc_buffers import BufferPool
from tests.wire.gil_wait import worst_wait_share

pytestmark = pytest.mark.timeout(60)

BIG = os.urandom(BIG_BIN + 17)


def received(data: bytes) -> memoryview:
    """``data`` as a delivered object is handed on: a read-only view of an anonymous mapping,
    at an offset (a call's arguments are a slice of its payload)."""
    mm = mmap.mmap(-1, len(data) + 9)
    mm[5 : 5 + len(data)] = data
    return memoryview(mm).toreadonly()[5 : 5 + len(data)]


@pytest.mark.parametrize(
    "value",
    [
        [[BIG], {}],
        [[BIG, b"small", "text", 7], {"data": BIG, "n": -3}],
        [[0, 127, -1, -32, 255, -129, 70000, -70000, 2**40, -(2**40), 2**64 - 1, 1.5, None, True, False], {}],
        [["é" * 40, "x" * 300, "y" * 70000, b"z" * 300, b"w" * 70000, BIG], {}],
        [["é" * BIG_BIN, "a" * (BIG_BIN + 5)], {"t": "\U0001f600" * BIG_BIN}],
        [[[BIG, [BIG]], {"k": BIG, "l": [1, {"m": b"x"}]}], {}],
        [[{1: BIG, 2: b"x"}, {b"k": "v"}], {}],  # keys msgpack takes only on its permissive path
        [[msgpack.ExtType(5, b"abc"), msgpack.ExtType(9, b"x" * 300), msgpack.Timestamp(10, 5), BIG], {}],
        [[list(range(20)), BIG], {"a" * 40: list(range(16))}],
    ],
    ids=["one bin", "bins and others", "integers", "strings", "large strings", "nested", "map keys", "ext", "arrays"],
)
def test_the_values_are_those_msgpack_decodes(value: Any) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    got = decode_view(received(packed), unpack_msgpack)
    want = unpack_msgpack(packed)
    assert got == want
    assert repr(got) == repr(want)  # the same types too (a bin is bytes, an array a list)


@pytest.mark.parametrize("first", [True, False], ids=["bin first", "bin last"])
def test_more_values_than_it_walks_are_left_to_msgpack_before_any_copy(
    first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = list(range(MAX_VALUES))
    value = [[BIG, many] if first else [many, BIG], {}]
    view = received(msgpack.packb(value))
    copies: list[int] = []
    whole: list[int] = []
    real_copy = large_args.released_copy
    monkeypatch.setattr(large_args, "released_copy", lambda v: copies.append(len(v)) or real_copy(v))

    def unpack(data: Any) -> Any:
        whole.append(len(data))
        return unpack_msgpack(data)

    assert decode_view(view, unpack) == value
    assert whole == [len(view)]  # msgpack decoded it once, whole
    assert copies == []  # and no large bin was copied first for nothing


def test_values_within_the_budget_are_read_here(monkeypatch: pytest.MonkeyPatch) -> None:
    value = [[BIG, list(range(MAX_VALUES - 8))], {}]
    view = received(msgpack.packb(value))
    copies: list[int] = []
    real_copy = large_args.released_copy
    monkeypatch.setattr(large_args, "released_copy", lambda v: copies.append(len(v)) or real_copy(v))
    assert decode_view(view, unpack_msgpack) == value
    assert copies == [len(BIG)]


def error_of(packed: bytes) -> type[BaseException]:
    """The type of what decoding ``packed`` raises (and that it raises)."""
    try:
        unpack_msgpack(packed)
    except Exception as exc:  # noqa: BLE001 - whatever msgpack raises is the answer
        return type(exc)
    raise AssertionError("decoded")


@pytest.mark.parametrize(
    "packed",
    [
        msgpack.packb([[BIG], {}]) + b"\x01",  # a value after the value
        msgpack.packb([[BIG], {}])[:-3],  # cut short
        b"\x92\x91\xc1" + msgpack.packb(BIG),  # a type byte msgpack never writes
        b"\x92\x91\x81\x91\x01" + msgpack.packb(BIG) + b"\x80",  # a map keyed by an array
    ],
    ids=["extra", "short", "0xc1", "unhashable key"],
)
def test_a_malformed_view_raises_what_msgpack_raises(packed: bytes) -> None:
    with pytest.raises(error_of(packed)):
        decode_view(received(packed), unpack_msgpack)


def test_the_copy_leaves_no_hold_on_the_view() -> None:
    """The received buffer is reused once nothing refers to it: the view is released right after
    its arguments are decoded (``call_views.let_go``), which fails while anything exports it."""
    view = received(BIG * 2)
    copy = released_copy(view[3:-3])
    assert type(copy) is bytes and copy == (BIG * 2)[3:-3]
    view.release()
    assert sys.implementation.name != "cpython" or large_args._RELEASED


def test_a_replica_decoding_a_large_call_leaves_the_gil_to_the_loop() -> None:
    """The replica's thread decodes a delivered 128 MB call as ``CallRunner`` does for every
    call, while this thread, in the loop's place, wakes every millisecond: msgpack's decoder
    held the GIL for the whole copy (this thread never woke until it ended: every member of a
    shard delivering 100 MB went silent together, and on two busy cores one was removed). Best
    of three: a busy machine may keep this thread off a core once in a while."""

    @da.replicated
    class Sizes:
        @da.ordered
        def size(self, data: bytes) -> int:
            return len(data) if type(data) is bytes else -1

    runner, obj = CallRunner(spec_of(Sizes), sink=None), Sizes()  # type: ignore[arg-type]
    data = os.urandom(128 << 20)
    (payload,) = encode_ordered([PendingCall(1, 1, "size", encode_args((data,), {}, "msgpack"))], 1 << 40, 1)
    pool = BufferPool(keep_bytes=0)
    ratios: list[float] = []
    for _ in range(3):
        buf, _ = pool.take(len(payload))
        buf[:] = payload
        batch = decode_ordered(buf.toreadonly())
        del buf
        assert isinstance(batch, list) and type(batch[0][3]) is memoryview
        ratio, answer = worst_wait_share(lambda view=batch[0][3]: runner.ordered(obj, "size", view))
        assert answer == (True, msgpack.packb(len(data)))
        ratios.append(ratio)
        del batch
    print(f"longest wait of the loop's stand-in, as a share of the decode: {[f'{r:.2f}' for r in ratios]}")
    assert min(ratios) < 0.5, ratios


def test_a_large_view_may_hold_one_value_per_bytes_per_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100 MB bin among a few hundred other values was left to msgpack (more than
    ``MAX_VALUES``): its copy held the GIL 53-70 ms. A larger view may hold more values."""
    big = os.urandom(4 * BYTES_PER_VALUE * MAX_VALUES)
    allowed = values_for(len(big) + 100)
    assert allowed > MAX_VALUES
    copies: list[int] = []
    real_copy = large_args.released_copy
    monkeypatch.setattr(large_args, "released_copy", lambda v: copies.append(len(v)) or real_copy(v))
    within = [[big, list(range(allowed - 8))], {}]
    assert decode_view(received(msgpack.packb(within)), unpack_msgpack) == within
    assert copies == [len(big)]
    over = [[big, list(range(values_for(len(big)) * 2))], {}]
    assert decode_view(received(msgpack.packb(over)), unpack_msgpack) == over
    assert copies == [len(big)]  # over the budget: msgpack decoded it, nothing copied here
