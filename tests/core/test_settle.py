"""A shard's pushes are evaluated once per flush, and before anything reads what they moved.

``NodeCore.step`` applies a ``ShardPush`` at once but runs the predicates (stability, nulls,
persistence, the group's) only when the state is next read: the next other event, ``send``,
``ready``, ``unreported``, ``status``. Under load a loop turn takes a push from each peer and
a submit from the app; evaluating after each was most of the core's cost per push at
moderate batch sizes (issue 21, half load). These tests pin both halves: the pushes of a turn
cost one evaluation, and no reader sees the state before it.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.core.events import MessageArrived, Tick
from runtime.core.smc import MulticastConfig
from tests.core.shard_net import SHARD, ShardNet

pytestmark = pytest.mark.timeout(30)


def count_evaluations(net: ShardNet, node: int) -> list[int]:
    """Wrap the shard's ``evaluate`` at ``node``; the list's length is how often it ran. Only
    where ``smc`` runs as Python: a mypyc-compiled class's methods cannot be replaced (CI's
    compiled pass skips the count; the pure-Python pass runs it)."""
    from runtime.build_info import compiled_modules

    if compiled_modules()["runtime.core.smc"]:
        pytest.skip("runtime.core.smc is compiled: its evaluate cannot be wrapped to count calls")
    smc = net.cores[node].shards[SHARD]
    calls: list[int] = []
    inner = smc.evaluate

    def evaluate(now: float) -> Any:
        calls.append(1)
        return inner(now)

    smc.evaluate = evaluate  # type: ignore[method-assign]
    return calls


def take_all(net: ShardNet, dst: int) -> int:
    """Step every push queued for ``dst`` without flushing in between (one loop turn)."""
    n = 0
    for (src, to), q in sorted(net.links.items()):
        while to == dst and q:
            net.cores[dst].step(MessageArrived(net.now, src, q.popleft()))
            n += 1
    return n


def test_pushes_of_one_turn_cost_one_evaluation() -> None:
    net = ShardNet((1, 2, 3))
    net.send(1, b"a")
    net.send(2, b"b")
    calls = count_evaluations(net, 3)
    assert take_all(net, 3) == 2
    assert calls == []  # applied, not evaluated yet
    net.flush(3)
    assert len(calls) == 1  # was one per push


def test_a_turn_delivers_what_stepping_each_push_would() -> None:
    one_turn, each = ShardNet((1, 2, 3)), ShardNet((1, 2, 3))
    for net in (one_turn, each):
        for i in range(20):
            for s in (1, 2, 3):
                net.send(s, b"%d-%d" % (s, i))
    for _ in range(50):  # one_turn: every node takes all that waits for it, then flushes once
        if not one_turn.in_flight():
            break
        for m in (1, 2, 3):
            take_all(one_turn, m)
            one_turn.flush(m)
    one_turn.settle()
    each.settle()
    for m in (1, 2, 3):
        assert len(one_turn.payloads(m)) == 60
        assert one_turn.payloads(m) == each.payloads(m)


def test_send_sees_the_window_that_pushes_opened_before_any_flush() -> None:
    net = ShardNet((1, 2, 3), MulticastConfig(window_size=4))
    assert net.send(1, *[b"x"] * 6) == 4  # the window is full
    for _ in range(2):  # 2 and 3 take them and acknowledge, to 1 and to each other
        for m in (2, 3):
            take_all(net, m)
            net.flush(m)
    core = net.cores[1]
    assert take_all(net, 1) > 0  # the acknowledgements, not evaluated yet
    assert core.send(SHARD, [b"y"], net.now) == 1  # stable, delivered here: room again


def test_unreported_and_tick_see_deliveries_of_pushes_not_yet_evaluated() -> None:
    net = ShardNet((1, 2))
    net.send(1, b"a")
    net.deliver_one(1, 2)  # node 2 holds it and acknowledges
    core = net.cores[1]
    core.step(MessageArrived(net.now, 2, net.links[(2, 1)].popleft()))  # the acknowledgement: stable now
    assert core.unreported() == 1  # evaluated on reading, not at the next flush
    core.step(Tick(net.now))
    net.flush(1)
    assert net.payloads(1) == [b"a"]


def test_a_send_whose_settle_removed_the_shard_takes_nothing() -> None:
    """Settling inside ``send`` may install a view (the pushes' predicates decide it) in which
    this node no longer holds the shard the caller just saw: nothing is taken and the view
    reaches the caller through ``ready`` as any view does, not an ``UnknownShard`` raised into
    the app queue. A shard never held is still refused with ``UnknownShard``."""
    from runtime.core.node_core import UnknownShard

    net = ShardNet((1, 2, 3))
    core = net.cores[1]
    shards = core.shards

    def settle_drops_shard() -> None:
        shards.pop(SHARD, None)

    core._settle = settle_drops_shard  # type: ignore[method-assign]
    assert core.send(SHARD, [b"x"], net.now) == 0
    with pytest.raises(UnknownShard):
        core.send(SHARD, [b"y"], net.now)
