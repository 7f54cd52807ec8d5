"""How a node's replica host treats a shard whose every holder is gone, driven inline with real
views (``Proposal.next_view``) and real replicas, as the simulator hosts them: an in-memory
shard starts anew with an ERROR, is counted, answers reads with ``ShardStateLost`` until a
write is applied and refuses the first message of writes at every replica alike (a joiner
too: the view names the loss); shards that kept a holder are left alone. A persistent shard
waits instead (``ShardAwaitingLog``) until a last holder is back with its log: see
``tests/sim/test_awaiting_log.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.runners import InlineRunner
from derecho_actors.replica.replica import P2PRequest, ReplicaEnv
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Reply
from examples.kv_store import KV
from runtime.core.effects import Delivery
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.status import RestartedEmpty
from runtime.core.view import Proposal, View
from tests.handed import one_by_one

pytestmark = pytest.mark.timeout(60)

POLICY = LayoutPolicy.of({"KV": ShardPolicy(shards=2, min_nodes=2, max_nodes=2)})
LOST = ShardId("KV", 0, 1)
SERIALIZER = spec_of(KV).serializer  # type: ignore[union-attr]


def view_one() -> View:
    """Six nodes: KV/0/0 on 1 and 2, KV/0/1 on 3 and 4; 5 and 7 hold nothing."""
    members = (1, 2, 3, 4, 5, 7)
    view = View(1, members, tuple(f"n{m}" for m in members), compute_layout(POLICY, members))
    assert dict(view.layout.shards) == {ShardId("KV", 0, 0): (1, 2), LOST: (3, 4)}
    return view


def next_view(previous: View, members: tuple[int, ...], joined: tuple[int, ...], departed: tuple[int, ...]) -> View:
    addresses = tuple(f"n{m}" for m in members)
    return Proposal(previous.vid + 1, members, addresses, joined, departed, ()).next_view(POLICY, previous)


class Node:
    """One node's replica host, with every reply its replicas (or the host) send."""

    def __init__(self, node_id: int, tmp: Path) -> None:
        self.replies: list[tuple[int, Reply]] = []

        def env(sid: ShardId, spec: Any, vid: int, source: int | None) -> ReplicaEnv:
            return ReplicaEnv(
                node_id=node_id,
                send_replies=lambda handed: self.replies.extend(one_by_one(handed)),
                scratch_dir=tmp / f"n{node_id}",
            )

        self.host = ReplicaHost(node_id, {"KV": spec_of(KV)}, InlineRunner(), env)  # type: ignore[dict-item]
        self.calls = 0

    def update(self, view: View) -> list[tuple[ShardId, int]]:
        return self.host.update(view, lambda sid: None)

    def read(self, view: View, key: str) -> Reply:
        self.calls += 1
        args = _codec.encode_args((key,), {}, SERIALIZER)
        self.host.tell(LOST, P2PRequest(view.vid, 9, self.calls, "get", args, 0))
        return self.replies[-1][1]

    def write(self, view: View, key: str, value: bytes) -> Reply:
        self.calls += 1
        call = _codec.PendingCall(9, self.calls, "put", _codec.encode_args((key, value), {}, SERIALIZER), 0, 0, 0)
        (payload,) = _codec.encode_ordered([call], 1 << 20, 1)
        self.host.deliver(Delivery((LOST.type_name, 0, 1), 1, [(9, 0, 0, payload)], view.vid), view)  # type: ignore[arg-type]
        return self.replies[-1][1]


def error_of(reply: Reply) -> BaseException | None:
    return None if reply.ok else _codec.decode_error(reply.value, reply.node)


def test_a_lost_shard_tells_readers_until_a_write_is_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = view_one()
    node = Node(5, tmp_path)
    node.update(one)
    two = next_view(one, (1, 2, 5, 7), (), (3, 4))  # both holders of KV/0/1 gone together
    assert two.layout.members_of(LOST) == (5, 7) and two.source_of(LOST) is None
    with caplog.at_level(logging.ERROR, logger="derecho.hosting"):
        node.update(two)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "shard KV/0/1 lost every replica (nodes 3, 4 held it last, in view 1)" in error
    assert "KV.__init__ in view 2" in error and "before version 2.0" in error
    status = node.host.loss_status()
    assert status.shards_restarted_empty == 1 and status.awaiting_log == ()
    assert status.restarted_empty == (RestartedEmpty("KV/0/1", view=2, last_holders=(3, 4), last_view=1),)
    assert status.to_wire()["restarted_empty"] == [  # what `status` sends, as before
        {"shard": "KV/0/1", "view": 2, "last_holders": [3, 4], "last_view": 1, "lost_before": "2.0"}
    ]

    assert isinstance(error_of(node.read(two, "animal")), da.ShardStateLost)
    assert isinstance(error_of(node.write(two, "animal", b"heron")), da.ShardStateLost)  # the first batch
    assert isinstance(error_of(node.read(two, "animal")), da.ShardStateLost)  # that write did not run
    applied = node.write(two, "animal", b"heron")
    assert applied.ok and _codec.decode_result(applied.value, SERIALIZER) == 1
    read = node.read(two, "animal")
    assert read.ok and _codec.decode_result(read.value, SERIALIZER) == b"heron"


def test_a_member_that_joins_in_the_view_of_the_loss_refuses_the_same_first_write(tmp_path: Path) -> None:
    # The loss is in the view itself: the joiner (node 6, no history of the shard) knows of it
    # as node 5 does, so both refuse the first write and apply the next alike.
    one = view_one()
    old, new = Node(5, tmp_path / "5"), Node(6, tmp_path / "6")
    old.update(one)
    two = next_view(one, (1, 2, 5, 6), (6,), (3, 4, 7))
    assert two.layout.members_of(LOST) == (5, 6)
    assert [o.shard for o in two.restarted] == [LOST]
    for node in (old, new):
        node.update(two)
        assert isinstance(error_of(node.read(two, "animal")), da.ShardStateLost)
        assert isinstance(error_of(node.write(two, "animal", b"heron")), da.ShardStateLost)
        applied = node.write(two, "animal", b"heron")
        assert applied.ok, error_of(applied)
        read = node.read(two, "animal")
        assert read.ok and _codec.decode_result(read.value, SERIALIZER) == b"heron"


def test_a_shard_that_kept_a_holder_and_a_first_layout_are_no_loss(tmp_path: Path) -> None:
    one = view_one()
    node = Node(5, tmp_path)
    node.update(View(0, (1,), ("n1",), compute_layout(POLICY, (1,))))  # inadequate: nothing ran yet
    node.update(one)
    two = next_view(one, (1, 2, 4, 5, 7), (), (3,))  # node 4 still holds KV/0/1
    assert two.layout.members_of(LOST) == (4, 5)
    assert node.update(two) == [(LOST, 4)]  # node 5 gets the state from node 4: nothing lost
    assert node.host.loss_status().shards_restarted_empty == 0


def _writes(node: Node, first: int, n: int) -> list[bytes]:
    """``n`` ordered messages of one write each, as node 9 multicasts them."""
    out = []
    for i in range(first, first + n):
        call = _codec.PendingCall(9, i, "put", _codec.encode_args((f"k{i}", b"v"), {}, SERIALIZER), 0, 0, 0)
        (payload,) = _codec.encode_ordered([call], 1 << 20, 1)
        out.append(payload)
    return out


@pytest.mark.parametrize("splits", [((2,), (1, 1)), ((1, 1), (2,)), ((3,), (1, 2))])
def test_replicas_refuse_the_same_writes_however_deliveries_are_batched(
    tmp_path: Path, splits: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    """Stability reaches replicas at different moments, so one replica may get two messages in
    one delivery where another gets them in two: the refusal goes by message, so both refuse
    exactly the first message's writes and apply the rest alike."""
    one = view_one()
    outcomes = []
    for node_id, split in zip((5, 7), splits, strict=True):
        node = Node(node_id, tmp_path / str(node_id))
        node.update(one)
        two = next_view(one, (1, 2, 5, 7), (), (3, 4))
        node.update(two)
        payloads = _writes(node, 1, sum(split))
        at = 0
        for size in split:
            batch = [(9, 0, at + j, p) for j, p in enumerate(payloads[at : at + size])]
            node.host.deliver(Delivery((LOST.type_name, 0, 1), 1, batch, two.vid), two)  # type: ignore[arg-type]
            at += size
        outcomes.append([reply.ok for _caller, reply in node.replies])
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] is False and all(outcomes[0][1:]), outcomes
