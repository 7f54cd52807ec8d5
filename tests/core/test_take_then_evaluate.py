"""``NodeCore.take``: frames applied without evaluating, one evaluation at the next ``ready``.

The node driver takes every data-plane frame of a loop turn this way, so a turn costs one
stability step however many frames came. Taking must change only *when* the core evaluates,
never what it decides: the same messages delivered in the same order as stepping each frame.
"""

from __future__ import annotations

import pytest

from runtime.core.effects import Delivery
from runtime.core.events import Event, MessageArrived, TransferArrived
from runtime.core.layout import LayoutPolicy, ShardPolicy, compute_layout
from runtime.core.multicast_config import MulticastConfig
from runtime.core.node_core import CoreConfig, NodeCore
from runtime.core.object_policy import ObjectPolicy
from runtime.core.object_transfers import as_received
from runtime.core.view import View

pytestmark = pytest.mark.timeout(30)

IDS = (1, 2, 3)
POLICY = LayoutPolicy.of({"T": ShardPolicy(min_nodes=3)})


def _cores(config: CoreConfig | None = None) -> dict[int, NodeCore]:
    view = View(0, IDS, tuple(f"n{i}" for i in IDS), compute_layout(POLICY, IDS))
    return {i: NodeCore(i, f"n{i}", POLICY, config or CoreConfig(), 0.0, view=view) for i in IDS}


def _run(
    lazy: bool,
    per_turn: int,
    turns: int = 40,
    config: CoreConfig | None = None,
    size: int = 0,
    settle: int = 60,
    slow: bool = False,
) -> dict[int, list[tuple[int, int, int, bytes]]]:
    """Every member sends ``per_turn`` messages a turn (padded to ``size`` bytes: large ones
    go as objects when ``config`` has them); frames, blocks and credits go round in turns,
    in the order sent; each core takes (``lazy``) or steps everything it got, then hands its
    effects over once."""
    cores = _cores(config)
    shard = next(iter(cores[1].shards))
    # Per receiver: (turn due, event). The ``slow`` link takes a turn longer than the others,
    # so a node may get a peer's word on a message (a credit, a relayed block) in the same
    # turn as the push that brings the message itself.
    inbox: dict[int, list[tuple[int, Event]]] = {i: [] for i in IDS}
    outbox: dict[int, list[bytes]] = {i: [] for i in IDS}
    delivered: dict[int, list[tuple[int, int, int, bytes]]] = {i: [] for i in IDS}
    for turn in range(turns + settle):  # the last turns only settle what is in flight
        now = turn * 0.001
        for i in IDS:
            core = cores[i]
            if turn < turns:
                outbox[i].extend(f"{i}:{turn}:{k}".encode().ljust(size, b".") for k in range(per_turn))
            if outbox[i]:  # what the window does not take now is offered again next turn
                del outbox[i][: core.send(shard, outbox[i], now)]
            events = [e for due, e in inbox[i] if due <= turn]
            inbox[i] = [(due, e) for due, e in inbox[i] if due > turn]
            before = core.shards[shard].delivered
            for event in events:
                (core.take if lazy else core.step)(event)
            if lazy:
                assert core.shards[shard].delivered == before, "take() delivered before ready()"
            ready = core.ready()
            for o in ready.outgoing:
                for dst in o.to:
                    inbox[dst].append((turn + 1 + ((i, dst) == slow), MessageArrived(now, i, o.message)))
            for t in ready.transfers:
                inbox[t.to].append((turn + 1 + ((i, t.to) == slow), TransferArrived(now, as_received(t, i))))
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


@pytest.mark.parametrize("slow", [None, (1, 3), (2, 3), (3, 2)])
def test_taking_blocks_and_credits_delivers_every_object(slow: tuple[int, int] | None) -> None:
    """Large objects too: a relay may take the push with an object's descriptor and, in the
    same turn, a credit or block of that object; taking the push must hand the descriptor to
    the transfer engine at once, or what follows it is refused as unknown and the object never
    completes (the simulator's seed 298 stalled so). Null messages may fall otherwise than
    when stepping, so the order is checked as such: one sequence at every member, every
    message once, each sender's in the order sent."""
    policy = ObjectPolicy(threshold=200, block_size=64, max_object_size=4096, max_bytes=8192, max_objects=2, window=2)
    config = CoreConfig(MulticastConfig(objects=policy))
    lazy = _run(lazy=True, per_turn=2, turns=20, config=config, size=500, settle=600, slow=slow)
    sent = {i: [f"{i}:{t}:{k}".encode().ljust(500, b".") for t in range(20) for k in range(2)] for i in IDS}
    reference = lazy[IDS[0]]
    for i in IDS:
        assert lazy[i] == reference, f"node {i} delivered another sequence"
    for sender in IDS:
        assert [p for _, s, _, p in reference if s == sender] == sent[sender], f"node {sender}'s messages"
