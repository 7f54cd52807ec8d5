"""What one message costs in pushes when messages come few at a time (issues 20 and 21).

At low rate every message is a round of pushes of its own: the sender's, then each member's
acknowledgement (with the nulls an idle member owes). A receipt of null messages alone makes
no push due unless a real message held here comes after them (``ShardMulticast._nulls_wait``):
before, each idle member's null push drew an acknowledgement push from every other member
(7 pushes per message of one sender of three, now 3). Counted frame by frame, each arrival
flushed on its own (the driver's worst case: no two frames share a loop turn).
"""

from __future__ import annotations

from collections import Counter

import pytest

from runtime.core.events import MessageArrived
from runtime.core.messages import ShardPush
from runtime.core.smc import LAZY_PUSH_DELAY, MulticastConfig
from tests.core.shard_net import SHARD, ShardNet

pytestmark = pytest.mark.timeout(60)


def shard_pushes(net: ShardNet) -> Counter[int]:
    """Shard pushes queued so far, by sending node (each goes to every peer)."""
    out: Counter[int] = Counter()
    for (src, _dst), q in net.links.items():
        out[src] += sum(1 for m in q if isinstance(m, ShardPush))
    return out


def run_paced(net: ShardNet, senders: tuple[int, ...], rounds: int) -> Counter[int]:
    """Each sender sends one message per millisecond; every frame is delivered (and its
    effects flushed) one at a time before the next millisecond. Returns the pushes each
    node made, to every peer counted once."""
    made: Counter[int] = Counter()
    for i in range(rounds):
        net.now += 0.001
        for s in senders:
            net.send(s, b"m%d" % i)
        while True:
            links = net.in_flight()
            if not links:
                break
            for src, dst in links:
                q = net.links[(src, dst)]
                while q:
                    msg = q.popleft()
                    if isinstance(msg, ShardPush) and dst == min(m for m in net.members if m != src):
                        made[src] += 1  # one per push (it went to every peer): count it on one link
                    net.cores[dst].step(MessageArrived(net.now, src, msg))
                    net.flush(dst)
    return made


def test_one_sender_at_low_rate_costs_one_push_per_member() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    rounds = 200
    made = run_paced(net, (3,), rounds)
    for m in (1, 2, 3):
        assert net.payloads(m) == [b"m%d" % i for i in range(rounds)]  # every one, with no tick
    # The sender's push of the message, each idle member's push of its acknowledgement and
    # null; nothing answers a push of nulls (before: 3 pushes at the sender, 2 at each idle
    # member).
    assert made[3] <= rounds + 2
    assert made[1] <= rounds + 2 and made[2] <= rounds + 2


def test_three_senders_at_low_rate_cost_at_most_one_push_per_message_per_member() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    rounds = 200
    made = run_paced(net, (1, 2, 3), rounds)
    for m in (1, 2, 3):
        assert len(net.delivered[m]) == 3 * rounds
    for m in (1, 2, 3):  # was 1.44 per message
        assert made[m] <= 3 * rounds


def test_a_null_receipt_behind_a_real_message_is_acknowledged_at_once() -> None:
    """Node 3's message (global 2) reaches node 2 before node 1's null (global 1), which it
    waits for: node 2 must say at once that it holds the null, or the message waits for the
    lazy push."""
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=10.0))
    net.send(3, b"c0")  # global 2: nodes 1 and 2 owe their slot 0 (and one round ahead)
    # Node 3's push reaches node 2 first; node 1's null push (caused by node 3's push) comes after.
    while net.deliver_one(3, 2):
        pass
    while net.deliver_one(3, 1):
        pass
    # Node 1 has sent its nulls to node 2 and 3 now. Deliver everything without ticks.
    for _ in range(100):
        links = net.in_flight()
        if not links:
            break
        for src, dst in links:
            while net.deliver_one(src, dst):
                pass
    for m in (1, 2, 3):  # no time passed, no tick
        assert net.payloads(m) == [b"c0"]


def test_deferred_null_receipts_go_out_after_the_lazy_delay() -> None:
    """With no real message after them, acknowledgements of nulls wait for a ride, at most
    ``LAZY_PUSH_DELAY``: then the nulls' senders' windows move on (their deliveries did not
    wait: a null's slot needs only to be held, and a sender holds its own)."""
    net = ShardNet((1, 2, 3), MulticastConfig(null_interval=0.001))
    run_paced(net, (3,), 5)
    start = net.now
    smcs = {m: net.cores[m].shards[SHARD] for m in (1, 2, 3)}
    # Node 1's nulls of the round ahead of node 3's next message: held everywhere, not said.
    sent1 = smcs[1].sent
    assert smcs[2].sst.mine["received_num"][0] == smcs[3].sst.mine["received_num"][0] == sent1
    assert smcs[1].sst.rows[1]["received_num"][0] < sent1
    assert smcs[1].sst.rows[2]["received_num"][0] < sent1
    assert smcs[1].delivered > 3 * (sent1 - 1)  # its own nulls passed as it sent them
    net.tick(LAZY_PUSH_DELAY)  # the lazy wakeup
    assert all(w is None or w > net.now for w in net.wakeups.values())
    while net.in_flight():
        for src, dst in net.in_flight():
            while net.deliver_one(src, dst):
                pass
    assert net.now - start == pytest.approx(LAZY_PUSH_DELAY)
    for r in (1, 2):
        assert smcs[1].sst.rows[r]["received_num"][0] == sent1


def test_small_windows_defer_nothing() -> None:
    """Under a window of 4, a null's acknowledgement is never held back: the nulls' sender
    could otherwise stall on its window for the lazy delay."""
    net = ShardNet((1, 2, 3), MulticastConfig(window_size=3, null_interval=0.001))
    made = run_paced(net, (3,), 20)
    assert all(net.payloads(m) == [b"m%d" % i for i in range(20)] for m in (1, 2, 3))
    assert made[3] == 3 * 20  # the sender acknowledges each idle member's nulls, as before
