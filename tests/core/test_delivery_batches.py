"""The SMC's batch fast paths: deliveries kept by column, per-batch payload checks, lazy
``delivered_num`` pushes, and no timer spin while the window is full."""

from __future__ import annotations

import pytest

from runtime.core.events import MessageArrived
from runtime.core.messages import ShardPush
from runtime.core.smc import LAZY_PUSH_DELAY, DeliveredBatch, MulticastConfig, ShardMulticast
from runtime.core.sst import SST, Column, RowDelta, Schema
from tests.core.shard_net import SHARD, ShardNet, fixed_core

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------ DeliveredBatch
def test_batch_reads_as_the_list_of_tuples_in_global_order() -> None:
    # Slots 4..9 belong to senders 1, 2, 0, 1, 2, 0 (g % 3); sender 0's run starts at k=2
    # (g=6), sender 1's at k=1... the parts name each run's first sender index.
    parts = [(0, 7, 2, [b"a", b"b"]), (1, 8, 1, [b"c", b"d"]), (2, 9, 1, [b"e", None])]
    b = DeliveredBatch(4, 10, 3, parts, nulls=1)  # type: ignore[arg-type]
    expected = [(4, 8, 1, b"c"), (5, 9, 1, b"e"), (6, 7, 2, b"a"), (7, 8, 2, b"d"), (9, 7, 3, b"b")]
    assert len(b) == 5
    assert list(b) == expected
    assert b == expected and expected == b and b != expected[:-1]
    assert b[0] == expected[0] and b[-1] == expected[-1] and b[1:3] == expected[1:3]
    assert b + [(10, 8, 3, b"x")] == expected + [(10, 8, 3, b"x")]
    assert [(0, 0, 0, b"")] + b == [(0, 0, 0, b"")] + expected
    assert repr(b) == repr(expected)
    assert [p for _, _, _, p in b] == [b"c", b"e", b"a", b"d", b"b"]
    with pytest.raises(TypeError):
        hash(b)


def test_batch_without_nulls_keeps_a_range_of_indices() -> None:
    b = DeliveredBatch(0, 4, 2, [(0, 1, 0, [b"a", b"b"]), (1, 2, 0, [b"c", b"d"])])  # type: ignore[arg-type]
    assert list(b) == [(0, 1, 0, b"a"), (1, 2, 0, b"c"), (2, 1, 1, b"b"), (3, 2, 1, b"d")]
    assert isinstance(b._columns()[0], range)


def test_smc_deliveries_are_batches_equal_to_the_tuples() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.0))
    net.send(1, b"a0", b"a1", b"a2")
    net.send(3, b"c0")
    net.settle()
    for m in (1, 2, 3):
        assert net.delivered[m] == [(0, 1, 0, b"a0"), (2, 3, 0, b"c0"), (3, 1, 1, b"a1"), (6, 1, 2, b"a2")]


@pytest.mark.parametrize("senders", [1, 2, 3])
def test_large_interleaved_batches_match_the_round_robin_order(senders: int) -> None:
    members = (1, 2, 3)
    net = ShardNet(members, MulticastConfig(null_interval=0.0, window_size=1000))
    sent = {m: [b"%d:%d" % (m, i) for i in range(400 + 37 * m)] for m in members[:senders]}
    for m, payloads in sent.items():
        assert net.send(m, *payloads) == len(payloads)
    net.settle()
    logs = [list(net.delivered[m]) for m in members]
    assert logs[0] == logs[1] == logs[2]
    assert [g for g, _, _, _ in logs[0]] == sorted(g for g, _, _, _ in logs[0])
    for g, s, k, p in logs[0]:
        assert g == k * 3 + members.index(s) and p == sent[s][k]
    assert sum(len(v) for v in sent.values()) == len(logs[0])


# ----------------------------------------------------------------- per-batch checks
@pytest.mark.parametrize(
    "messages, needle",
    [
        ((b"ok", "text"), "bad payload from sender 1: str"),
        ((b"ok", bytearray(b"x")), "bad payload from sender 1: bytearray"),
        ((None, b"x" * 65, None), "bad payload from sender 1: bytes of size 65"),
        ((b"x" * 40, b"y" * 40), None),  # 80 bytes in all, each within the limit
        ((None, None), None),
    ],
)
def test_payloads_are_checked_per_batch(messages: tuple, needle: str | None) -> None:
    core = fixed_core(1, (1, 2, 3), MulticastConfig(max_message_size=64, immediate_nulls=False))
    core.ready()
    push = ShardPush(0, SHARD, 1, RowDelta(1, 1, {"received_num": (0, len(messages), 0)}), 0, messages)
    core.step(MessageArrived(0.0, 2, push))
    rejected = core.ready().rejected
    if needle is None:
        assert rejected == []
        assert core.shards[SHARD].sst.mine["received_num"] == [0, len(messages), 0]
    else:
        assert len(rejected) == 1 and needle in rejected[0].reason
        assert core.shards[SHARD].sst.mine["received_num"] == [0, 0, 0]


def test_send_checks_sizes_per_batch() -> None:
    core = fixed_core(1, (1, 2), MulticastConfig(max_message_size=64))
    assert core.send(SHARD, [b"x" * 40, b"y" * 40], 0.0) == 2  # 80 in all, each fine
    with pytest.raises(ValueError, match="payload of 65 bytes exceeds max_message_size 64"):
        core.send(SHARD, [b"x", b"y" * 65], 0.0)


# ------------------------------------------------------------------------ lazy columns
def test_lazy_column_rides_along_or_waits_to_be_asked() -> None:
    schema = Schema((Column("num"), Column("seen", lazy=True)))
    sst = SST(schema, 2, 0)
    sst.set("seen", 5)
    assert not sst.has_changes() and sst.lazy_pending()
    assert sst.drain_push() is None  # no push for a lazy change alone
    sst.set("num", 1)
    assert sst.has_changes()
    assert sst.drain_push() == RowDelta(0, 1, {"num": 1, "seen": 5})  # it rides along
    sst.set("seen", 6)
    assert sst.drain_push(lazy=True) == RowDelta(0, 2, {"seen": 6})  # or is asked for
    assert not sst.lazy_pending() and sst.drain_push(lazy=True) is None


def _shard_frames(net: ShardNet) -> list[tuple[int, int]]:
    return [link for link, q in sorted(net.links.items()) if any(isinstance(m, ShardPush) for m in q)]


def test_delivered_count_alone_is_pushed_once_after_the_lazy_delay() -> None:
    net = ShardNet((1, 2), MulticastConfig(null_interval=0.0))
    net.send(1, b"a")
    net.deliver_one(1, 2)  # node 2 holds it (and knows node 1 does): delivers, acks with its null of round 0
    net.deliver_one(2, 1)  # node 1 learns it is stable and delivers index 0
    assert net.delivered[1] == [(0, 1, 0, b"a")]
    # Node 1's receipt of the null (no real message after it) and its delivered count make
    # no frame...
    assert _shard_frames(net) == []
    assert net.cores[1].shards[SHARD].wakeup_at() == pytest.approx(LAZY_PUSH_DELAY)  # ...until the lazy delay is up
    net.tick(LAZY_PUSH_DELAY / 2)
    assert _shard_frames(net) == []
    net.tick(LAZY_PUSH_DELAY / 2)
    assert _shard_frames(net) == [(1, 2)]
    while net.deliver_one(1, 2):  # a heartbeat, then the push: node 2 learns node 1 holds the null
        pass
    # Node 2 passed its own null when it sent it (a null's slot needs only to be held), so its
    # delivered count went with that push and moves no more: no frame, no lazy wake-up.
    assert net.cores[1].shards[SHARD].sst.rows[1]["delivered_num"] == 2
    assert net.cores[2].shards[SHARD].sst.rows[0]["delivered_num"] == 2
    smc = net.cores[2].shards[SHARD]
    assert smc.wakeup_at() is None
    net.tick(LAZY_PUSH_DELAY)
    assert _shard_frames(net) == []


def test_no_tick_is_asked_for_while_the_window_is_full() -> None:
    """A full window cannot take the nulls a tick would send: asking for a tick at a time
    already past made the driver's timer spin until a push reopened the window."""
    smc = ShardMulticast(SHARD, (1, 2, 3), 2, MulticastConfig(window_size=2, null_interval=0.001))
    assert smc.send([b"b0", b"b1"], now=0.0) == 2  # global 1 and 4; nobody has acked: full
    for first in (0, 2):  # node 1's messages 0..3: global 0, 3, 6, 9
        row = RowDelta(0, first + 1, {"received_num": (first + 2, 0, 0)})
        push = ShardPush(0, SHARD, 0, row, first, (b"a", b"a"))
        assert smc.on_push(push) is None
    smc.evaluate(now=0.01)
    assert smc.send_capacity() == 0 and smc.nulls_owed() == 2  # global 7 < 9, and 10 ahead: owes two nulls
    assert smc.wakeup_at() is None
    smc.on_tick(now=1.0)
    assert smc.nulls_sent == 0  # a tick could not have sent it either
