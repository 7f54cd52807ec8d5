"""``NodeCore.take``: frames applied without evaluating, one evaluation at the next ``ready``.

The node driver takes every data-plane frame of a loop turn this way, so a turn costs one
stability step however many frames came. Taking must change only *when* the core evaluates,
never what it decides: the same messages delivered in the same order as stepping each frame.
"""

from __future__ import annotations

import pytest

from runtime.core.effects import Delivery
from runtime.core.events import MessageArrived
from runtime.core.layout import LayoutPolicy, ShardPolicy, compute_layout
from runtime.core.messages import Message
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.view import View

pytestmark = pytest.mark.timeout(30)

IDS = (1, 2, 3)
POLICY = LayoutPolicy.of({"T": ShardPolicy(min_nodes=3)})


def _cores() -> dict[int, NodeCore]:
    view = View(0, IDS, tuple(f"n{i}" for i in IDS), compute_layout(POLICY, IDS))
    return {i: NodeCore(i, f"n{i}", POLICY, CoreConfig(), 0.0, view=view) for i in IDS}


def _run(lazy: bool, per_turn: int, turns: int = 40) -> dict[int, list[tuple[int, int, int, bytes]]]:
    """Every member sends ``per_turn`` messages a turn; frames go round in turns; each core
    takes (``lazy``) or steps every frame it got, then hands its effects over once."""
    cores = _cores()
    shard = next(iter(cores[1].shards))
    inbox: dict[int, list[tuple[int, Message]]] = {i: [] for i in IDS}
    delivered: dict[int, list[tuple[int, int, int, bytes]]] = {i: [] for i in IDS}
    for turn in range(turns + 20):  # the last 20 turns only settle what is in flight
        now = turn * 0.001
        for i in IDS:
            core = cores[i]
            if turn < turns:
                core.send(shard, [f"{i}:{turn}:{k}".encode() for k in range(per_turn)], now)
            frames, inbox[i] = inbox[i], []
            before = core.shards[shard].delivered
            for sender, msg in frames:
                (core.take if lazy else core.step)(MessageArrived(now, sender, msg))
            if lazy:
                assert core.shards[shard].delivered == before, "take() delivered before ready()"
            ready = core.ready()
            for o in ready.outgoing:
                for dst in o.to:
                    inbox[dst].append((i, o.message))
            for d in ready.deliveries:
                assert isinstance(d, Delivery)
                delivered[i].extend((g, s, k, bytes(p)) for g, s, k, p in d.messages if p)
    return delivered


@pytest.mark.parametrize("per_turn", [1, 7, 200])
def test_taking_frames_delivers_what_stepping_them_does(per_turn: int) -> None:
    eager = _run(lazy=False, per_turn=per_turn)
    lazy = _run(lazy=True, per_turn=per_turn)
    expected = 3 * 40 * per_turn
    for i in IDS:
        assert len(eager[i]) == expected
        assert lazy[i] == eager[i], f"node {i} delivered otherwise when taking frames"


def test_a_taken_frame_shows_only_after_ready() -> None:
    cores = _cores()
    shard = next(iter(cores[1].shards))
    cores[1].send(shard, [b"x"], 0.0)
    pushes = [o.message for o in cores[1].ready().outgoing if 2 in o.to]
    assert pushes
    smc = cores[2].shards[shard]
    received = list(smc.sst.mine["received_num"])  # type: ignore[arg-type]
    for msg in pushes:
        cores[2].take(MessageArrived(0.0, 1, msg))
    assert smc.sst.mine["received_num"] != received, "the frame was applied at once"
    pushed = cores[2].ready().outgoing
    assert pushed, "ready() evaluated and pushed the new receive count"
