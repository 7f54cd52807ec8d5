"""When null messages go, and what a delivery costs with a backlog (issue 21: latency at load).

A sender with nothing of its own waiting sends the nulls it owes at once, on the push of the
event that made them owed, so the others' messages do not wait ``null_interval`` for its turn
in the round-robin order; one whose own messages wait for the window keeps to
``null_interval`` (nulls would take their places).
"""

from __future__ import annotations

import pytest

from runtime.core.messages import ShardPush
from runtime.core.smc import DeliveredBatch, MulticastConfig
from tests.core.shard_net import SHARD, ShardNet

pytestmark = pytest.mark.timeout(60)


def drain_links(net: ShardNet) -> None:
    """Deliver every frame in flight (and those they cause) without advancing time or ticking."""
    while net.in_flight():
        for link in net.in_flight():
            while net.deliver_one(*link):
                pass


def test_sender_with_nothing_waiting_sends_owed_nulls_at_once() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=10.0))  # a tick would never come
    net.send(3, b"c0", b"c1")  # global indices 2 and 5: after nodes 1's and 2's slots
    drain_links(net)
    for m in (1, 2, 3):  # no time passed: nodes 1 and 2 filled their slots on receipt
        assert [p for _, _, _, p in net.delivered[m]] == [b"c0", b"c1"]
    # Rounds 0 and 1, and round 2 ahead of node 3's next message (global 8).
    assert net.cores[1].shards[SHARD].nulls_sent == net.cores[2].shards[SHARD].nulls_sent == 3


def test_nulls_wait_the_interval_with_immediate_nulls_off() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=10.0, immediate_nulls=False))
    net.send(3, b"c0")
    drain_links(net)
    assert all(not net.delivered[m] for m in (1, 2, 3))
    net.settle()  # ticks at the wakeups asked for, 10 s on
    assert net.now >= 10.0
    assert all(net.payloads(m) == [b"c0"] for m in (1, 2, 3))


def test_sender_whose_messages_wait_for_the_window_keeps_to_the_interval() -> None:
    net = ShardNet((1, 2), MulticastConfig(window_size=1, null_interval=10.0))
    assert net.send(2, b"b0", b"b1") == 1  # b1 waits for node 2's window
    assert net.send(1, b"a0", b"a1") == 1  # a1 waits too
    drain_links(net)
    # Node 2's b0 (index 1) follows a0 (index 0): delivered. Node 1 owes nothing; node 2's
    # window reopened, but its caller has b1 queued: no null takes b1's place.
    smc2 = net.cores[2].shards[SHARD]
    assert smc2.nulls_sent == 0
    assert net.payloads(1) == net.payloads(2) == [b"a0", b"b0"]


def test_one_sender_of_three_is_never_held_by_idle_members() -> None:
    """1 msg/ms from one sender (null_interval 1 ms): each message is delivered everywhere
    as soon as the frames it causes are, with no tick."""
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    for i in range(20):
        net.now += 0.001
        net.send(3, b"m%d" % i)  # the last in the round-robin order: every slot before it waits
        drain_links(net)
        assert all(len(net.delivered[m]) == i + 1 for m in (1, 2, 3))


def _pushes_from(net: ShardNet, node: int) -> int:
    """Shard pushes ``node`` has queued to its first peer so far (each goes to every peer)."""
    peer = min(m for m in net.members if m != node)
    return sum(1 for m in net.links.get((node, peer), ()) if isinstance(m, ShardPush))


def test_idle_members_nulls_ride_with_their_acknowledgements() -> None:
    """A busy sender's push draws one push from each idle member, its acknowledgement, and
    the nulls it owes ride with it whenever they fall due, so the sender's next message
    never waits for them: before, nulls went at most once per half interval, and the
    sender's message that came sooner waited for a tick (half an interval)."""
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    net.send(3, b"c0")
    drain_links(net)
    assert net.cores[1].shards[SHARD].nulls_sent == 2  # round 0, and round 1 ahead of node 3's next
    for i, dt in ((1, 0.0002), (2, 0.0001)):  # sooner than half an interval, twice
        net.now += dt
        net.send(3, b"c%d" % i)
        sent_before = net.cores[1].shards[SHARD].nulls_sent
        # Node 1 acknowledges c_i in one push, its null of the round ahead riding with it.
        assert net.deliver_one(3, 1)
        assert _pushes_from(net, 1) == 1
        assert net.cores[1].shards[SHARD].nulls_sent == sent_before + 1
        drain_links(net)
        assert all(net.payloads(m) == [b"c%d" % j for j in range(i + 1)] for m in (1, 2, 3))  # no tick


def test_owed_nulls_alone_go_at_most_once_per_half_interval() -> None:
    """Nulls owed with no push going (owed for nulls received, whose receipt makes no push
    due) wait until half an interval after this member's last push of nulls alone."""
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    net.send(3, b"c0")  # index 2; nodes 1 and 2 fill rounds 0 and 1 (node 1: indices 0, 3)
    drain_links(net)
    smc1 = net.cores[1].shards[SHARD]
    assert smc1.nulls_sent == 2
    net.now += 0.0002
    net.send(3, b"c1")  # index 5
    assert net.deliver_one(3, 2)  # node 2 alone has it; its null of round 2 (index 7) ahead goes
    assert net.deliver_one(2, 1)  # node 1: node 2's nulls (index 7), not node 3's c1 yet
    # Node 1 now owes its slot of round 2 (index 6), with nothing to push: it waits.
    assert smc1.nulls_owed() == 1 and smc1.nulls_sent == 2
    assert _pushes_from(net, 1) == 0
    assert smc1.wakeup_at() == pytest.approx(0.0005)
    net.now = 0.0005
    net.tick()
    assert smc1.nulls_sent == 3
    drain_links(net)
    assert all(net.payloads(m) == [b"c0", b"c1"] for m in (1, 2, 3))


@pytest.mark.parametrize("backlog", [0, 5, 500])
def test_delivery_with_a_backlog_keeps_order_and_buffers(backlog: int) -> None:
    """A delivery that leaves more buffered than it takes (the other way round of the usual
    case) hands over the same messages and keeps the rest for later."""
    net = ShardNet((1, 2), MulticastConfig(window_size=10_000, null_interval=0.0, immediate_nulls=False))
    net.send(1, *[b"a%d" % i for i in range(10)])
    net.send(2, *[b"b%d" % i for i in range(10 + backlog)])
    net.settle()
    want = [p for pair in zip([b"a%d" % i for i in range(10)], [b"b%d" % i for i in range(10)]) for p in pair]
    want += [b"b%d" % i for i in range(10, 10 + backlog)]
    assert net.payloads(1) == net.payloads(2) == want


def test_payloads_of_a_batch_skip_nulls_and_keep_empty_payloads() -> None:
    batch = DeliveredBatch(3, 9, 3, [(0, 1, 1, [b"a", None]), (1, 2, 1, [b"", b"e"]), (2, 3, 1, [None, b"f"])], nulls=2)
    assert list(batch.payloads()) == [m[3] for m in batch] == [b"a", b"", b"e", b"f"]
    assert list(batch.payloads()) == [b"a", b"", b"e", b"f"]  # also once laid out
