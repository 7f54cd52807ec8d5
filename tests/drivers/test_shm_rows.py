"""One-sided SST row writes over shared memory (runtime.drivers.shm_rows): the row board's
layout and encoding (table-driven), the writer's plan per push, and two transports in one
process (over the stand-in TCP of test_shm_transport): rows arrive as the pushes a frame would
have carried, a row-only push makes no frame, and no row overtakes the messages it counts."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgpack
import pytest

from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, ShardPush
from runtime.core.sst_rows import RowDelta
from runtime.drivers.shm_board import BOARD_HEADER, MAX_VALUES, SLOT_SIZE, RowBoard, RowCopy, describe, parse_descriptor
from runtime.drivers.shm_rows import RowImage, RowPlanner, int_value
from runtime.drivers.shm_transport import TransportMode
from runtime.drivers.transport import RowPush
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import AppMessage
from tests.drivers.test_shm_transport import pair

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host"),
]

KV = ShardId("KV", 0, 1)
TOKEN = bytes(range(16))


@pytest.mark.parametrize(
    "value, width",
    [
        (0, 0),
        (5, 0),
        (-3, 0),
        ((1 << 63) - 1, 0),
        (1 << 63, None),  # out of a signed word: travels as a frame
        (True, None),
        ((1, 2, 3), 3),
        ((), None),
        ((1, "x"), None),
        ([1, 2], None),  # the core hands vectors as tuples; anything else is not a board column
        (None, None),
        (b"ab", None),
        ([["KV", 0, 1, [1, 2]]], None),  # frozen counts
    ],
)
def test_which_values_are_board_columns(value: Any, width: int | None) -> None:
    assert int_value(value) == width


@pytest.mark.parametrize(
    "key, columns",
    [
        ((0, None, 0), [("heartbeat", 0), ("suspected", 3)]),
        ((7, KV, 2), [("received_num", 3), ("delivered_num", 0), ("persisted", 0)]),
        ((1 << 40, ShardId("Ü", 9, 0), 0), []),
    ],
)
def test_descriptor_round_trip(key: Any, columns: list[tuple[str, int]]) -> None:
    layout = parse_descriptor(describe(key, columns))
    assert (layout.vid, layout.shard, layout.rank) == key
    assert list(layout.columns) == columns
    assert layout.nvals == sum(w or 1 for _, w in columns)


@pytest.mark.parametrize(
    "obj",
    [
        [1, 0, None],  # three fields
        [-1, 0, None, []],
        [1, "0", None, []],
        [1, 0, ["KV", 0], []],
        [1, 0, ["KV", 0, "1"], []],
        [1, 0, None, [["a", -1]]],
        [1, 0, None, [["a"]]],
        [1, 0, None, {"a": 1}],
        {"vid": 1},
    ],
)
def test_bad_descriptors_are_refused(obj: Any) -> None:
    with pytest.raises(ValueError):
        parse_descriptor(msgpack.packb(obj))
    with pytest.raises(ValueError):
        parse_descriptor(b"\xc1garbage")


def test_an_image_is_the_whole_row_and_grows_its_layout_as_columns_appear() -> None:
    image = RowImage((3, KV, 1))
    assert image.merge(RowDelta(1, 1, {"received_num": (1, 0)}))
    first = image.layout
    assert image.merge(RowDelta(1, 2, {"persisted": 4}))
    assert image.layout != first  # a column appeared: a new descriptor
    again = image.layout
    assert image.merge(RowDelta(1, 3, {"received_num": (2, 5)}))
    assert image.layout == again
    assert image.as_values() == {"received_num": (2, 5), "persisted": 4}
    assert image.seq == 3
    assert not image.merge(RowDelta(1, 4, {"persisted": 5, "proposal": [1, 2]}))  # not an int column
    assert image.as_values() == {"received_num": (2, 5), "persisted": 5}


def _board(shm_dir: str) -> tuple[RowBoard, RowCopy]:
    path = os.path.join(shm_dir, "b.rows")
    board = RowBoard.create(path, TOKEN)
    return board, RowCopy.attach(path, TOKEN)


def test_rows_written_are_read_back_as_the_pushes_a_frame_carries(shm_dir: str) -> None:
    board, copy = _board(shm_dir)
    group, shard = RowImage((4, None, 2)), RowImage((4, KV, 2))
    group.merge(RowDelta(2, 9, {"heartbeat": 3, "suspected": (0, 1, 0)}))
    shard.merge(RowDelta(2, 5, {"received_num": (7, 0, 1), "persisted": 2}))
    assert not copy.changed()
    assert board.write(group) and board.write(shard)
    board.publish()
    assert copy.changed()
    got = copy.read()
    assert got == [
        GroupPush(4, 2, RowDelta(2, 9, {"heartbeat": 3, "suspected": (0, 1, 0)})),
        ShardPush(4, KV, 2, RowDelta(2, 5, {"received_num": (7, 0, 1), "persisted": 2}), 0, ()),
    ]
    assert not copy.changed() and copy.read() == []  # nothing new
    shard.merge(RowDelta(2, 6, {"delivered_num": 1}))  # a new column: a new descriptor
    board.write(shard)
    board.publish()
    assert copy.read() == [
        ShardPush(4, KV, 2, RowDelta(2, 6, {"received_num": (7, 0, 1), "persisted": 2, "delivered_num": 1}), 0, ())
    ]
    copy.close()
    board.close()


def test_a_slot_being_written_is_skipped_and_read_once_done(shm_dir: str) -> None:
    board, copy = _board(shm_dir)
    image = RowImage((1, None, 0))
    image.merge(RowDelta(0, 1, {"heartbeat": 1}))
    board.write(image)
    board.publish()
    w = BOARD_HEADER // 8
    board.words[w] += 1  # the owner is mid-write (odd lock)
    assert copy.read() == []
    board.words[w] += 1
    board.publish()  # what the owner does once the write is done
    assert [p.row.values for p in copy.read()] == [{"heartbeat": 1}]
    copy.close()
    board.close()


def test_garbage_in_a_slot_is_counted_not_raised(shm_dir: str) -> None:
    board, copy = _board(shm_dir)
    image = RowImage((1, None, 0))
    image.merge(RowDelta(0, 1, {"heartbeat": 1}))
    board.write(image)
    base = BOARD_HEADER
    board.mem[base + 40 : base + 48] = b"\xc1" * 8  # the descriptor
    board.publish()
    assert copy.read() == [] and copy.bad == 1
    board.words[base // 8 + 2] = MAX_VALUES + 1  # a value count past the slot
    board.words[base // 8] += 2
    board.publish()
    assert copy.read() == [] and copy.bad == 2
    copy.close()
    board.close()


def test_a_row_too_wide_for_a_slot_is_not_written(shm_dir: str) -> None:
    board, copy = _board(shm_dir)
    image = RowImage((1, None, 0))
    image.merge(RowDelta(0, 1, {"suspected": tuple(range(SLOT_SIZE // 8))}))
    assert not board.write(image)
    copy.close()
    board.close()


def test_a_peer_only_maps_a_board_with_the_offered_token(shm_dir: str) -> None:
    board, copy = _board(shm_dir)
    from runtime.drivers.shm_ring import RingError

    with pytest.raises(RingError):
        RowCopy.attach(board.path, bytes(16))
    os.chmod(board.path, 0o644)
    with pytest.raises(RingError):
        RowCopy.attach(board.path, TOKEN)
    copy.close()
    board.close()


def _decode(data: bytes | None) -> list[Any]:
    return [] if data is None else FrameDecoder().feed(data)


@pytest.mark.parametrize(
    "push, frame_is, image",
    [
        # a row-only push of ints: the board only
        (ShardPush(1, KV, 0, RowDelta(0, 1, {"received_num": (1, 2)}), 4, ()), None, True),
        # the group's row: a frame (it goes to the members not suspected: a whole-row image
        # would give a suspected peer values of pushes it was not sent)
        (GroupPush(1, 0, RowDelta(0, 1, {"heartbeat": 3})), GroupPush(1, 0, RowDelta(0, 1, {"heartbeat": 3})), False),
        # messages: one frame, row and all (as over TCP)
        (
            ShardPush(1, KV, 0, RowDelta(0, 1, {"received_num": (3, 0)}), 0, (b"a", None, b"c")),
            ShardPush(1, KV, 0, RowDelta(0, 1, {"received_num": (3, 0)}), 0, (b"a", None, b"c")),
            False,
        ),
        # messages only (a batch split over pushes): the frame as it is
        (ShardPush(1, KV, 0, None, 0, (b"a",)), ShardPush(1, KV, 0, None, 0, (b"a",)), False),
        # a non-int value: the frame, whole
        (
            GroupPush(1, 0, RowDelta(0, 1, {"proposal": [1, [2]], "ballot": 1})),
            GroupPush(1, 0, RowDelta(0, 1, {"proposal": [1, [2]], "ballot": 1})),
            False,
        ),
    ],
)
def test_how_a_push_travels(push: Any, frame_is: Any, image: bool) -> None:
    rp = RowPush(push)
    plan = RowPlanner().plan(rp)
    assert _decode(plan.frame(rp)) == ([] if frame_is is None else [frame_is])
    assert (plan.image is not None) == image


def test_a_push_that_is_a_frame_carries_every_int_column_of_the_row() -> None:
    """A board write it overtakes is then worth nothing more than the frame (see shm_rows)."""
    planner = RowPlanner()
    planner.plan(RowPush(GroupPush(2, 1, RowDelta(1, 1, {"heartbeat": 4, "suspected": (0, 1)}))))
    rp = RowPush(GroupPush(2, 1, RowDelta(1, 2, {"wedged": 1, "frozen": [["KV", 0, 1, [3]]]})))
    (sent,) = _decode(planner.plan(rp).frame(rp))
    assert sent.row == RowDelta(1, 2, {"wedged": 1, "frozen": [["KV", 0, 1, [3]]]})  # group rows: frames as they are
    shard = RowPush(ShardPush(2, KV, 1, RowDelta(1, 3, {"received_num": (5, 0)}), 4, (b"m",)))
    planner.plan(RowPush(ShardPush(2, KV, 1, RowDelta(1, 2, {"received_num": (4, 0), "persisted": 2}), 0, ())))
    (sent,) = _decode(planner.plan(shard).frame(shard))
    assert sent == ShardPush(2, KV, 1, RowDelta(1, 3, {"received_num": (5, 0), "persisted": 2}), 4, (b"m",))
    # No board write since that whole row: frames carry every value in order, no widening.
    after = ShardPush(2, KV, 1, RowDelta(1, 4, {"received_num": (6, 0)}), 5, (b"n",))
    rp = RowPush(after)
    assert planner.plan(rp).frame(rp) == RowPush(after).frame()


async def _until(cond: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_rows_cross_without_frames_and_never_before_the_messages_they_count(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        a.shm.send(2, b"")  # a probes: its ring to b is set up
        b.shm.send(1, b"")
        await _until(lambda: a.shm.pairs.get(2) is not None and a.shm.pairs[2].switched)
        writer = a.shm.pairs[2].writer
        assert writer is not None and writer.rows is not None
        before = writer.sent
        first = ShardPush(0, KV, 0, RowDelta(0, 1, {"received_num": (0, 1)}), 0, ())
        a.shm.write_rows(2, b"", [RowPush(first)])
        await _until(lambda: any(isinstance(m, ShardPush) for m in b.got))
        assert [m.row for m in b.got if isinstance(m, ShardPush)] == [first.row]
        assert writer.sent == before  # no frame: a one-sided write
        # Pushes with messages (frames) and row-only pushes counting them (board writes), in
        # many small turns: the reader must never see a count past the messages it got (a
        # row overtaking the frame before it would break delivery).
        sent = 0
        for seq in range(2, 400):
            msgs = tuple(bytes([seq % 256]) * 100 for _ in range(1 + seq % 5)) if seq % 2 else ()
            sent += len(msgs)
            push = ShardPush(0, KV, 0, RowDelta(0, seq, {"received_num": (sent, seq)}), sent - len(msgs), msgs)
            a.shm.write_rows(2, b"", [RowPush(push)])
            if seq % 7 == 0:
                await asyncio.sleep(0)
        await _until(lambda: any(isinstance(m, ShardPush) and m.row is not None and m.row.seq == 399 for m in b.got))
        have = 0
        for m in b.got:
            if isinstance(m, ShardPush):
                if m.messages:
                    assert m.first == have
                    have += len(m.messages)
                if m.row is not None:
                    assert m.row.values["received_num"][0] <= have  # type: ignore[index]
        assert have == sent
        assert b.shm.pairs[1].reader is not None and b.shm.pairs[1].reader.rows is not None
        await a.shm.close()
        await b.shm.close()
        assert os.listdir(shm_dir) == []

    asyncio.run(main())


def test_before_the_switch_pushes_are_frames(shm_dir: str) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        push = ShardPush(0, KV, 0, RowDelta(0, 1, {"received_num": (1, 0)}), 0, (b"x",))
        a.shm.write_rows(2, b"", [RowPush(push)])  # the first frame to b: TCP, while the ring is set up
        await _until(lambda: push in b.got)
        assert push in a.tcp.sent
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


@pytest.mark.parametrize("mode", [TransportMode.TCP, TransportMode.AUTO])
def test_a_node_on_tcp_sends_its_pushes_as_frames(shm_dir: str, mode: TransportMode) -> None:
    async def main() -> None:
        a, b = await pair(shm_dir)
        a.shm.mode = mode
        a.shm.refusal = a.shm._local_refusal()
        pushes = [
            ShardPush(0, KV, 0, RowDelta(0, 1, {"received_num": (1, 0)}), 0, (b"x",)),
            GroupPush(0, 0, RowDelta(0, 1, {"heartbeat": 1})),
        ]
        a.shm.write_rows(2, frame(AppMessage(b"first")), [RowPush(p) for p in pushes])
        await _until(lambda: len(b.got) == 3)
        assert b.got == [AppMessage(b"first"), *pushes]
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())


def test_rows_of_frames_are_folded_into_the_image_before_it_is_written(shm_dir: str) -> None:
    planner = RowPlanner()
    framed = RowPush(ShardPush(1, KV, 0, RowDelta(0, 1, {"received_num": (3, 0), "persisted": 1}), 0, (b"a",)))
    assert planner.plan(framed).image is None  # a frame: noted, not laid out yet
    image = planner.images[(1, KV, 0)]
    assert image.pending and image.values == []
    board, copy = _board(shm_dir)
    assert board.write(image)  # folds first: the slot holds the values its counter says
    board.publish()
    assert [p.row for p in copy.read()] == [RowDelta(0, 1, {"received_num": (3, 0), "persisted": 1})]
    row_only = RowPush(ShardPush(1, KV, 0, RowDelta(0, 2, {"received_num": (3, 4)}), 3, ()))
    assert planner.plan(row_only).image is image
    assert image.as_values() == {"received_num": (3, 4), "persisted": 1}
    copy.close()
    board.close()


def test_a_row_behind_queued_frames_goes_as_a_frame_at_once_not_after_the_queue_empties(
    shm_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row waiting for the writer's queue to empty waited behind frames sent after it (a
    reader slower than the writer: for good), and was then written as the image was by then."""
    import runtime.drivers.shm_link as shm_link

    monkeypatch.setattr(shm_link, "READ_BUDGET", 4096)  # a reader slower than the writer

    async def main() -> None:
        a, b = await pair(shm_dir)
        a.shm.send(2, b"")
        b.shm.send(1, b"")
        await _until(lambda: a.shm.pairs.get(2) is not None and a.shm.pairs[2].switched)
        n, pushed_after = 0, -1
        for turn in range(60):
            for _ in range(40):  # a steady stream a little faster than b takes it
                a.shm.send(2, frame(AppMessage(n.to_bytes(4, "big") * 1000)))
                n += 1
            if turn == 10:
                row = ShardPush(0, KV, 0, RowDelta(0, 1, {"received_num": (0, 7)}), 0, ())
                a.shm.write_rows(2, b"", [RowPush(row)])
                pushed_after = n
            await asyncio.sleep(0)
        await _until(lambda: any(isinstance(m, ShardPush) for m in b.got), 20.0)
        got = [m for m in b.got if isinstance(m, (AppMessage, ShardPush))]
        at = next(i for i, m in enumerate(got) if isinstance(m, ShardPush))
        assert at == pushed_after  # right behind the frames sent before it, before any after it
        assert list(got[at].row.values["received_num"]) == [0, 7]  # type: ignore[union-attr, call-overload]
        await a.shm.close()
        await b.shm.close()

    asyncio.run(main())
