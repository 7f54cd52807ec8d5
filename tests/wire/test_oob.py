"""Pickle protocol 5 out of band (``wire.oob``) and large payloads' argument views
(``wire.call_views``): what is a view of the received bytes, what is refused, and the pool's
rule that a buffer held by an argument is never reused."""

from __future__ import annotations

import os
import pickle
import random
import struct

import msgpack
import pytest

from derecho_actors.wire import codec, oob
from derecho_actors.wire.call_views import MIN_VIEW_BYTES, ordered_views
from derecho_actors.wire.codec import PendingCall, UndecodableBatch, decode_ordered, encode_ordered
from runtime.core.rdmc_buffers import BufferPool
from runtime.errors import WireError

pytestmark = pytest.mark.timeout(60)

BIG = 1 << 20


class Held:
    """An object whose bytes pickle out of band and come back as a view (``PickleBuffer``)."""

    def __init__(self, data: object) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: int) -> tuple[object, ...]:
        return Held, (pickle.PickleBuffer(self.data),)  # type: ignore[arg-type]


def _roundtrip(value: object) -> tuple[bytes, object]:
    data = oob.dumps(value)
    return data, oob.loads(memoryview(data).toreadonly())


def test_large_buffers_go_out_of_band_and_come_back_as_views_of_the_received_bytes() -> None:
    blob = os.urandom(BIG)
    ba = bytearray(os.urandom(BIG))
    data, ((got_ba, held, small), kwargs) = _roundtrip([[ba, Held(blob), b"small"], {"k": bytearray(3)}])  # type: ignore[misc]
    assert data[:4] == oob.MAGIC
    stream, buffers = oob.split(data)
    assert [b.nbytes for b in buffers] == [BIG, BIG]
    assert stream.nbytes < 4096  # neither buffer was copied into the pickle
    assert type(got_ba) is bytearray and got_ba == ba  # users get the type they passed
    assert isinstance(held.data, memoryview) and held.data.readonly and held.data == blob
    assert held.data.obj is not None and bytes(held.data) == blob
    assert small == b"small" and kwargs == {"k": bytearray(3)}


def test_a_view_argument_refers_to_the_received_buffer_itself() -> None:
    received = bytearray(oob.dumps([[Held(os.urandom(BIG))], {}]))
    (held,), _ = oob.loads(memoryview(received))  # type: ignore[misc]
    before = bytes(held.data)
    received[-1] ^= 0xFF  # the received bytes change: the argument sees it (no copy was made)
    assert held.data[-1] == before[-1] ^ 0xFF


def test_small_values_stay_a_plain_pickle_and_plain_pickles_still_decode() -> None:
    value = [[b"x" * 100, bytearray(100), {"a": 1}], {}]
    data = oob.dumps(value)
    assert data[:1] == b"\x80" and pickle.loads(data) == value
    assert oob.loads(pickle.dumps(value, protocol=4)) == value


def test_numpy_arrays_are_views_when_numpy_is_installed() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(BIG // 8, dtype=np.int64)
    data, ((b,), _) = _roundtrip([[a], {}])  # type: ignore[misc]
    assert len(data) < a.nbytes + 4096
    assert (b == a).all() and not b.flags.owndata and not b.flags.writeable


def _layout(count: int, stream_len: int, lengths: list[int], body: bytes) -> bytes:
    return struct.pack("<4sIQ", b"OOB5", count, stream_len) + b"".join(struct.pack("<Q", n) for n in lengths) + body


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"OOB5\0", "shorter than"),
        (b"OOB5" + b"\0" * 4, "shorter than"),
        (_layout(1 << 20, 0, [], b""), "at most"),
        (_layout(3, 0, [1], b""), "needs"),
        (_layout(1, 5, [4], b"abcde" + b"wxyz" + b"!"), "the table says"),
        (_layout(1, 5, [40], b"abcde" + b"wxyz"), "the table says"),
        (_layout(2, 1 << 62, [1 << 62, 1 << 62], b""), "the table says"),
        (_layout(0, 4, [], b"\x80\x05N."), None),  # well formed: a pickle of None, no buffer
    ],
)
def test_malformed_tables_are_refused_with_a_clear_error(data: bytes, says: str | None) -> None:
    if says is None:
        assert oob.loads(data) is None
        return
    with pytest.raises(WireError, match=says):
        oob.loads(data)


def test_random_damage_to_a_layout_is_an_error_never_a_crash() -> None:
    rng = random.Random(7)
    good = oob.dumps([[Held(os.urandom(70_000)), bytearray(70_000)], {}])
    for _ in range(300):
        bad = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(0, 64)] = rng.randrange(256)
        if rng.random() < 0.3:
            bad = bad[: rng.randrange(len(bad))]
        try:
            oob.loads(bytes(bad))
        except Exception as exc:  # refused: any error the replica turns into the caller's
            assert not isinstance(exc, (SystemError, MemoryError)), exc


def _calls(n: int, size: int) -> list[PendingCall]:
    return [
        PendingCall(i + 1, 1000 + i, f"méthode{i}", os.urandom(size + i), i, -5 if i else 1 << 40, i, i * 3)
        for i in range(n)
    ]


@pytest.mark.parametrize(("n", "size"), [(1, MIN_VIEW_BYTES), (1, 70 << 20), (3, 100_000), (4, 1 << 16)])
def test_a_large_payloads_calls_are_the_msgpack_decoders_with_views_for_arguments(n: int, size: int) -> None:
    (payload,) = encode_ordered(_calls(n, size), 1 << 40, 123456789)
    views = decode_ordered(memoryview(payload).toreadonly())
    ts, calls = msgpack.unpackb(payload, raw=False)
    assert isinstance(views, list) and len(views) == n == len(calls)
    for got, want in zip(views, calls):
        assert isinstance(got[3], memoryview) and got[3].obj is payload
        assert (*got[:3], bytes(got[3]), *got[4:]) == (*want, *([0] if len(want) == 7 else []), ts)


def test_anything_unexpected_in_a_large_payload_goes_the_msgpack_way() -> None:
    big = os.urandom(MIN_VIEW_BYTES)
    assert ordered_views(msgpack.packb([1, [[1, 2, "m", big, 0, 0, 0, 0]]]) + b"x") is None  # trailing byte
    assert ordered_views(msgpack.packb([1, [[1, 2, "m", big, 0, 0]]])) is None  # 6 fields
    assert ordered_views(msgpack.packb([1, [[1, 2, "m", big.hex(), 0, 0, 0]]])) is None  # str arguments
    assert ordered_views(msgpack.packb([1, [[1, 2, "m", big, 0, 0, 0]] * 5])) is None  # many calls
    assert ordered_views(msgpack.packb([1, [[1, 2, "m", big, 0, 0, 0]]])[:-1]) is None  # cut short
    assert ordered_views(b"\x92\x01\x91\x97\x01\x02\xa1\xff" + bytes(MIN_VIEW_BYTES)) is None  # bad UTF-8
    bad = decode_ordered(msgpack.packb([1, [[1, 2, "m", big, 0, 0]]]))
    assert isinstance(bad, UndecodableBatch)


def test_a_msgpack_types_bytes_argument_is_still_bytes() -> None:
    args = codec.encode_args([b"\1" * MIN_VIEW_BYTES, "s"], {"k": b"v"}, "msgpack")
    (payload,) = encode_ordered([PendingCall(1, 1, "m", args)], 1 << 40, 1)
    (call,) = decode_ordered(memoryview(payload))  # type: ignore[misc]
    a, kw = codec.decode_args(call[3], "msgpack")
    assert type(a[0]) is bytes and a[0] == b"\1" * MIN_VIEW_BYTES and kw == {"k": b"v"}


def test_a_received_buffer_held_by_an_argument_is_not_reused() -> None:
    """The lifetime rule: ``BufferPool`` reuses a mapping only once nothing refers to it. An
    argument built on a view of it (here a ``PickleBuffer``-backed object the replica kept)
    holds it: the next object of the same size gets another mapping, and the kept one's bytes
    are unchanged; once the argument goes, the mapping is reused."""
    pool = BufferPool(keep_bytes=1 << 30)
    first_bytes = os.urandom(4 << 20)
    value = oob.dumps([[Held(first_bytes)], {}])
    (payload,) = encode_ordered([PendingCall(1, 1, "keep", value)], 1 << 40, 1)
    buf, _ = pool.take(len(payload))
    buf[:] = payload
    (call,) = decode_ordered(buf.toreadonly())  # type: ignore[misc]
    (kept,), _ = oob.loads(call[3])  # type: ignore[misc]
    del buf, call
    assert pool.idle_bytes == 0  # the kept argument holds the mapping
    second, reused = pool.take(len(payload))
    assert not reused
    second[:] = bytes(len(payload))  # a later object written: the kept argument is untouched
    assert bytes(kept.data) == first_bytes
    del second
    third, reused = pool.take(len(payload))
    assert reused  # the second mapping, free again
    del third, kept
    assert pool.idle_bytes >= 2 * len(payload)


def test_the_same_bytearray_twice_is_one_buffer_and_one_object() -> None:
    ba = bytearray(os.urandom(BIG))
    data, ((x, y), kw) = _roundtrip([[ba, ba], {"again": ba}])  # type: ignore[misc]
    assert len(oob.split(data)[1]) == 1
    assert x is y is kw["again"] and x == ba


def test_a_run_call_lets_go_of_its_view_so_a_held_batch_does_not_hold_the_buffer() -> None:
    """The actor thread's loop keeps its last batch until the next one arrives: a call's view
    of its received object is released once its arguments are decoded, so the buffer is free
    for the next object unless what was decoded from it is kept."""
    import derecho_actors as da
    from derecho_actors.model.decorators import spec_of
    from derecho_actors.replica.calls import CallRunner

    @da.replicated(serializer="cloudpickle")
    class T:
        @da.ordered
        def size(self, data: object) -> int:
            return len(data)  # type: ignore[arg-type]

        @da.ordered
        def keep(self, data: Held) -> int:
            self.kept = data
            return len(data.data)  # type: ignore[arg-type]

    runner = CallRunner(spec_of(T), sink=None)  # type: ignore[arg-type]
    obj = T()
    pool = BufferPool(keep_bytes=1 << 30)
    for method, value, idle in (("size", bytearray(2 << 20), True), ("keep", Held(os.urandom(2 << 20)), False)):
        (payload,) = encode_ordered([PendingCall(1, 1, method, oob.dumps([[value], {}]))], 1 << 40, 1)
        buf, _ = pool.take(len(payload))
        buf[:] = payload
        batch = decode_ordered(buf.toreadonly())
        del buf
        assert isinstance(batch, list)
        assert pool.idle_bytes == 0
        ok, _ = runner.ordered(obj, method, batch[0][3])
        assert ok
        assert (pool.idle_bytes > 0) is idle, method  # the batch is still held here
    assert bytes(obj.kept.data) == bytes(value.data)  # type: ignore[attr-defined]
