"""SMC in one shard: stability, round-robin order with nulls, windows, batching, bad input."""

from __future__ import annotations

import pytest

from runtime.core.effects import Rejected
from runtime.core.events import MessageArrived
from runtime.core.messages import ShardPush
from runtime.core.node_core import UnknownShard
from runtime.core.smc import MulticastConfig, ShardMulticast
from runtime.core.sst import RowDelta
from tests.core.shard_net import SHARD, ShardNet, fixed_core

pytestmark = pytest.mark.timeout(60)


def test_nothing_delivered_until_every_member_holds_it() -> None:
    net = ShardNet((1, 2, 3))
    assert net.send(1, b"a") == 1
    # Only node 2 gets the message; rows flow freely between 1 and 2.
    for _ in range(5):
        net.deliver_one(1, 2)
        net.deliver_one(2, 1)
    assert all(not log for log in net.delivered.values())
    net.settle()
    for m in (1, 2, 3):
        assert net.delivered[m] == [(0, 1, 0, b"a")]


@pytest.mark.parametrize(
    "sends, expected",
    [
        # (node, payloads...) in send order -> expected (global index, sender, sender index)
        ([(1, b"a0")], [(0, 1, 0)]),
        ([(3, b"c0", b"c1")], [(2, 3, 0), (5, 3, 1)]),  # nodes 1 and 2 fill their slots with nulls
        ([(2, b"b0"), (1, b"a0")], [(0, 1, 0), (1, 2, 0)]),  # order is by slot, not by send time
        ([(1, b"a0", b"a1", b"a2"), (3, b"c0")], [(0, 1, 0), (2, 3, 0), (3, 1, 1), (6, 1, 2)]),
        ([(2, b"b0"), (3, b"c0"), (1, b"a0")], [(0, 1, 0), (1, 2, 0), (2, 3, 0)]),
    ],
)
def test_round_robin_order_with_nulls(sends: list[tuple], expected: list[tuple[int, int, int]]) -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.0))
    for node, *payloads in sends:
        assert net.send(node, *payloads) == len(payloads)
    net.settle()
    logs = [net.delivered[m] for m in (1, 2, 3)]
    assert logs[0] == logs[1] == logs[2]
    assert [item[:3] for item in logs[0]] == expected


def test_idle_sender_waits_null_interval_before_sending_nulls() -> None:
    net = ShardNet((1, 2), MulticastConfig(null_interval=0.5, immediate_nulls=False))
    net.send(2, b"x")  # global index 1: needs node 1's slot 0
    for link in net.in_flight():
        while net.deliver_one(*link):
            pass
    net.tick(0.1)
    net.deliver_one(1, 2)
    assert net.cores[1].shards[SHARD].nulls_sent == 0
    assert net.delivered[2] == []
    ready_wakeup = net.cores[1].ready().wakeup_at
    assert ready_wakeup == pytest.approx(0.5)  # asks for a tick when the interval is up
    net.tick(0.4)  # now = 0.5
    assert net.cores[1].shards[SHARD].nulls_sent == 2  # slot 0, and slot 1 ahead of node 2's next
    net.settle()
    assert net.payloads(1) == net.payloads(2) == [b"x"]


def hops_to_deliver(net: ShardNet, node: int, payload: bytes) -> dict[int, int]:
    """Send ``payload`` from ``node`` after an idle spell, then move the network one hop at a
    time (every frame in flight arrives, then each member acts): at which hop each member
    delivered it."""
    net.tick(0.01)
    seen = {m: len(net.delivered[m]) for m in net.members}
    net.send(node, payload)
    got: dict[int, int] = {}
    for hop in range(1, 8):
        for (src, dst), n in [(link, len(q)) for link, q in net.links.items() if q]:
            for _ in range(n):
                net.deliver_one(src, dst)
        net.tick(0.0)
        for m in net.members:
            if m not in got and any(p[3] == payload for p in net.delivered[m][seen[m] :]):
                got[m] = hop
    net.settle()
    return got


@pytest.mark.parametrize("sender", [1, 2, 3])
def test_one_senders_message_is_delivered_after_two_hops_when_the_others_are_idle(sender: int) -> None:
    """The message goes out (hop 1) and every member's receipt comes back (hop 2): idle
    members fill their slots up to the next message of the latest real message's sender, one
    message ahead of what catching up needs, so that next message does not wait a third hop
    for their nulls (it did: 3 hops for every message). The first one, which nobody foresaw,
    waits for the nulls that answer it, which come back with the receipts: a null's slot
    needs only to be held, not stable (it was 3 hops for senders 2 and 3)."""
    net = ShardNet((1, 2, 3))
    assert hops_to_deliver(net, sender, b"m0") == {1: 2, 2: 2, 3: 2}
    for i in range(1, 5):
        assert hops_to_deliver(net, sender, b"m%d" % i) == {1: 2, 2: 2, 3: 2}
    logs = [net.payloads(m) for m in (1, 2, 3)]
    assert logs[0] == logs[1] == logs[2] == [b"m%d" % i for i in range(5)]


def test_nulls_ahead_stop_when_the_real_messages_stop() -> None:
    """Nulls answer real messages only: nulls never call for more nulls, so an idle group
    falls silent (no null ping-pong)."""
    net = ShardNet((1, 2, 3))
    net.send(2, b"x")
    net.settle()
    sent = {m: net.cores[m].shards[SHARD].nulls_sent for m in (1, 2, 3)}
    assert sent == {1: 2, 2: 0, 3: 1}  # the slots before node 2's next message, and nothing more
    for _ in range(3):
        net.tick(0.01)
        net.settle()
    assert {m: net.cores[m].shards[SHARD].nulls_sent for m in (1, 2, 3)} == sent
    assert all(not q for q in net.links.values())


def test_window_full_refuses_then_reopens() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(window_size=2, null_interval=0.0))
    assert net.send(1, b"0", b"1", b"2", b"3", b"4") == 2
    assert net.send(1, b"2") == 0  # full: nothing taken, nothing dropped
    net.settle()
    assert net.window_opened[1] >= 1
    assert net.send(1, b"2", b"3", b"4") == 2
    net.settle()
    assert net.send(1, b"4") == 1
    net.settle()
    assert net.payloads(2) == [b"0", b"1", b"2", b"3", b"4"]


def test_window_reopens_on_a_receipt_of_own_nulls_without_a_delivery() -> None:
    """A member passes its own nulls' slots as it sends them (a null needs only to be held),
    so the receipt of them that frees its window comes with no delivery: the window must
    reopen on the receipt itself, or the app's queued messages wait for ever."""
    # Owed nulls wait null_interval (no tick comes) while the app's messages wait for the window.
    net = ShardNet((1, 2), MulticastConfig(window_size=1, null_interval=10.0))
    assert net.send(2, b"b0") == 1  # index 1: node 1 owes its slot 0
    assert net.deliver_one(2, 1)  # node 1 sends its null, passes it, delivers b0
    assert net.payloads(1) == [b"b0"]
    assert net.send(1, b"a0") == 0  # its null is not yet held by node 2: the window is full
    opened = net.window_opened[1]
    assert net.deliver_one(1, 2)  # node 2 holds the null, says so
    assert net.deliver_one(2, 1)  # node 1 learns it: no new delivery here, but room
    assert net.payloads(1) == [b"b0"]
    assert net.window_opened[1] == opened + 1
    assert net.send(1, b"a0") == 1
    net.settle()
    assert net.payloads(1) == net.payloads(2) == [b"b0", b"a0"]


def test_window_counts_own_undelivered_messages_not_only_receipt() -> None:
    """Messages received everywhere but stuck behind an idle sender still hold the window."""
    net = ShardNet((1, 2), MulticastConfig(window_size=3, null_interval=1e9, immediate_nulls=False))
    assert net.send(1, b"a", b"b", b"c") == 3
    for _ in range(4):  # let every row settle without ticks (so node 2 sends no nulls)
        for link in net.in_flight():
            while net.deliver_one(*link):
                pass
    smc = net.cores[1].shards[SHARD]
    assert min(row["received_num"][0] for row in smc.sst.rows) == 3  # stable everywhere
    assert smc.delivered == 1  # only global index 0; index 1 is node 2's empty slot
    assert smc.send_capacity() == 1  # 1 own message delivered + window 3 - 3 sent


@pytest.mark.parametrize(
    "window_bytes, sizes, taken",
    [
        (100, [40, 40, 40], 2),  # the third would make 120 bytes outstanding
        (100, [50, 50, 1], 2),  # exactly full
        (100, [101], 1),  # above the byte window, alone and nothing outstanding: it goes
        (100, [101, 1], 1),  # ... but alone
        (100, [10, 101], 1),  # something outstanding: the large one waits
        (1 << 20, [10] * 50, 20),  # the message window (20) binds first
    ],
)
def test_byte_window_bounds_what_a_sender_has_in_flight(window_bytes: int, sizes: list[int], taken: int) -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(window_size=20, window_bytes=window_bytes, null_interval=0.0))
    assert net.send(1, *(bytes(n) for n in sizes)) == taken


def test_byte_window_reopens_as_messages_are_delivered() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(window_size=1000, window_bytes=100, null_interval=0.0))
    payloads = [bytes([i]) * 30 for i in range(10)]
    sent = net.send(1, *payloads)
    assert sent == 3
    while sent < len(payloads):
        net.settle()
        assert net.window_opened[1] >= 1
        took = net.send(1, *payloads[sent:])
        assert 1 <= took <= 3
        sent += took
    net.settle()
    assert net.payloads(2) == net.payloads(3) == payloads
    assert net.cores[1].shards[SHARD].window_bytes_free() == 100


def test_nulls_are_not_held_back_by_the_byte_window() -> None:
    """Null messages weigh nothing: a sender whose byte window is full still sends the nulls
    others' messages wait on."""
    net = ShardNet((1, 2), MulticastConfig(window_size=100, window_bytes=10, null_interval=0.0))
    assert net.send(2, b"0123456789") == 1
    assert net.send(2, b"x") == 0  # node 2's byte window is full: its message is nowhere else yet
    assert net.send(1, b"a", b"b", b"c") == 3
    while net.deliver_one(1, 2):  # node 1's messages reach node 2, nothing goes back yet
        pass
    smc = net.cores[2].shards[SHARD]
    # n1's third message waits on n2's second slot, its next one would on the third: nulls,
    # sent at once (null_interval 0).
    assert smc.window_bytes_free() == 0 and smc.nulls_sent == 2 and smc.nulls_owed() == 0
    net.settle()
    assert net.payloads(1) == net.payloads(2) == [b"a", b"0123456789", b"b", b"c"]


def test_many_sends_between_drains_coalesce_into_one_push() -> None:
    core = fixed_core(1, (1, 2, 3), MulticastConfig(max_batch=1000))
    for i in range(50):
        assert core.send(SHARD, [b"%d" % i], 0.0) == 1
    ready = core.ready()
    assert len(ready.outgoing) == 1
    push = ready.outgoing[0].message
    assert ready.outgoing[0].to == (2, 3)
    assert push.first == 0 and len(push.messages) == 50
    assert push.row is not None and push.row.values["received_num"] == (50, 0, 0)
    assert core.ready().outgoing == []  # nothing new: nothing to push


def test_long_batch_splits_by_max_batch_with_row_on_last_part() -> None:
    core = fixed_core(1, (1, 2), MulticastConfig(max_batch=100))
    assert core.send(SHARD, [b"m"] * 250, 0.0) == 250
    pushes = [o.message for o in core.ready().outgoing]
    assert [(p.first, len(p.messages)) for p in pushes] == [(0, 100), (100, 100), (200, 50)]
    assert [p.row is not None for p in pushes] == [False, False, True]


def test_one_stability_step_delivers_a_whole_batch() -> None:
    net = ShardNet((1, 2), MulticastConfig(null_interval=0.0))
    net.send(1, *[b"%d" % i for i in range(300)])
    net.deliver_one(1, 2)  # node 2 holds all 300 and fills its own slots with nulls
    # Every other index is node 2's slot: its nulls pass them at once, in the same batch
    # (a null needs only to be held, and node 2 holds its own).
    assert net.batches[2] == [300]
    net.deliver_one(2, 1)  # node 1 receives node 2's 299 nulls in one push
    assert net.batches[1] == [300]  # one stability step releases the whole batch
    net.settle()
    assert net.batches == {1: [300], 2: [300]}


def test_single_member_shard_delivers_at_once() -> None:
    core = fixed_core(7, (7,))
    assert core.send(SHARD, [b"solo", b"again"], 0.0) == 2
    ready = core.ready()
    assert ready.outgoing == []
    assert [m for d in ready.deliveries for m in d.messages] == [(0, 7, 0, b"solo"), (1, 7, 1, b"again")]


def test_send_errors() -> None:
    core = fixed_core(1, (1, 2), MulticastConfig(max_message_size=4))
    with pytest.raises(UnknownShard):
        core.send(("other", 0, 0), [b"x"], 0.0)
    with pytest.raises(ValueError, match="max_message_size"):
        core.send(SHARD, [b"12345"], 0.0)
    with pytest.raises(ValueError, match="window_size"):
        MulticastConfig(window_size=0)


def test_receive_only_member_cannot_send_and_senders_order_among_themselves() -> None:
    smc = ShardMulticast(SHARD, (1, 2, 3), 3, senders=(0, 1))
    with pytest.raises(ValueError, match="not a sender"):
        smc.send([b"x"], 0.0)
    assert smc.wakeup_at() is None and smc.nulls_owed() == 0


def _push(rank: int, first: int = 0, messages: tuple = (), row: RowDelta | None = None, shard=SHARD) -> ShardPush:
    return ShardPush(0, shard, rank, row, first, messages)


@pytest.mark.parametrize(
    "sender, push, reason",
    [
        (2, _push(0, 0, (b"x",)), "as rank 0"),  # node 2 claims node 1's rank
        (2, _push(9, 0, (b"x",)), "as rank 9"),
        (2, _push(1, 5, (b"x",)), "gap"),
        (2, _push(1, 0, (b"x",) * 11), "overran"),
        (2, _push(1, 0, ("text",)), "bad payload"),
        (2, _push(1, 0, (b"x" * 65,)), "bad payload"),
        (2, _push(1, 0, (b"x" * 60,) * 3), "overran its byte window"),
        (2, _push(1, 0, (), RowDelta(0, 1, {"received_num": (1, 1, 1)})), "carries row 0"),
        (2, _push(1, 0, (), RowDelta(1, 1, {"nonsense": 1})), "unknown SST column"),
        (2, _push(1, 0, (), RowDelta(1, 1, {"received_num": (1, 1)})), "needs 3 values"),
        (2, _push(1, 0, (), RowDelta(1, 1, {"delivered_num": "a lot"})), "holds an int"),
        (2, _push(1, shard=("nope", 0, 0)), "not in"),
        (9, _push(1, 0, (b"x",)), "as rank 1"),  # a stranger speaking for node 2
    ],
)
def test_bad_pushes_are_rejected_and_change_nothing(sender: int, push: ShardPush, reason: str) -> None:
    core = fixed_core(1, (1, 2, 3), MulticastConfig(window_size=10, max_message_size=64, window_bytes=128))
    smc = core.shards[SHARD]
    before = [dict(r, received_num=list(r["received_num"])) for r in smc.sst.rows]
    core.step(MessageArrived(0.0, sender, push))
    ready = core.ready()
    assert len(ready.rejected) == 1 and isinstance(ready.rejected[0], Rejected)
    assert reason in ready.rejected[0].reason
    assert [dict(r, received_num=list(r["received_num"])) for r in smc.sst.rows] == before
    assert ready.deliveries == [] and ready.outgoing == []


def test_repeated_push_is_ignored_quietly() -> None:
    net = ShardNet((1, 2), MulticastConfig(immediate_nulls=False))  # node 2 owes no null here
    net.send(1, b"a", b"b")
    push = net.links[(1, 2)][0]
    net.deliver_one(1, 2)
    net.cores[2].step(MessageArrived(0.0, 1, push))  # the same frame again, as after a reconnect
    ready = net.cores[2].ready()
    assert ready.rejected == []
    assert net.cores[2].shards[SHARD].sst.mine["received_num"] == [2, 0]
