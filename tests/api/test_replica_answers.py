"""How a replica hands its answers to the node: a long delivered batch in chunks of
``REPLY_CHUNK`` calls, in order, so the answers of the first chunk travel while the replica
runs the rest (a pipelined caller's calls then keep every stage busy instead of each stage
waiting for the whole batch); a persistent type's log records of a chunk are queued no later
than its answers leave."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.node.reply_routes import ReplyRoutes
from derecho_actors.replica.messages import OrderedBatch
from derecho_actors.replica.replica import REPLY_CHUNK, Replica, ReplicaEnv
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import ReplyBatch
from tests.handed import one_by_one

pytestmark = pytest.mark.timeout(30)


@da.replicated
class Tally:
    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self, k: int) -> int:
        self.n += k
        return self.n

    @da.p2p
    def value(self) -> int:
        return self.n


@da.replicated
class Ledger:
    total = da.Persistent(0)

    @da.ordered
    def add(self, k: int) -> int:
        self.total += k
        return self.total


def run_batch(replica: Replica, calls: int) -> None:
    args = _codec.encode_args((1,), {}, "msgpack")
    batch = [(2, i, "add", args, 0, 0, 0, 0, 0) for i in range(calls)]
    replica.receive(OrderedBatch(1, (1, 2, 3), batch))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "calls, chunks",
    [
        (1, [1]),
        (REPLY_CHUNK, [REPLY_CHUNK]),
        (REPLY_CHUNK + 1, [REPLY_CHUNK, 1]),
        (2 * REPLY_CHUNK + 7, [REPLY_CHUNK, REPLY_CHUNK, 7]),
    ],
)
def test_a_long_delivered_batch_is_answered_in_chunks_in_order(tmp_path: Path, calls: int, chunks: list[int]) -> None:
    sent: list[list[tuple[int, Any]]] = []
    replica = Replica(spec_of(Tally), ReplicaEnv(1, sent.append, tmp_path / "scratch"))
    replica.start()
    run_batch(replica, calls)
    assert [len(list(one_by_one(s))) for s in sent] == chunks
    answers = [reply for s in sent for _, reply in one_by_one(s)]
    assert [r.call_id for r in answers] == list(range(calls))
    assert [msgpack.unpackb(r.value) for r in answers] == list(range(1, calls + 1))


def test_a_persistent_chunks_records_are_queued_before_its_answers_leave(tmp_path: Path) -> None:
    queued: list[int] = []  # versions queued for the log when each chunk of answers left
    replica: Replica | None = None

    def send(replies: list[tuple[int, Any]]) -> None:
        assert replica is not None and replica.store is not None
        queued.append(replica.store.last_version)
        assert max(r.version for _, r in one_by_one(replies)) <= logged[-1], (
            "answers left before their log records were queued"
        )

    env = ReplicaEnv(1, send, tmp_path / "scratch", log_path=tmp_path / "ledger.log", fsync=False, inline_writes=True)
    replica = Replica(spec_of(Ledger), env)
    replica.start()
    store = replica.store
    assert store is not None
    logged: list[int] = [-1]
    submit = store.submit

    def counting(records: list[tuple[int, int, bytes]]) -> None:
        logged.append(max(v for v, _, _ in records))
        submit(records)

    store.submit = counting  # type: ignore[method-assign]
    run_batch(replica, REPLY_CHUNK + 3)
    assert len(queued) == 2 and len(logged) == 3
    replica.stop()


class _Offered:
    """A node's queue to members that keeps what it is offered."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ReplyBatch]] = []

    def offer(self, dest: int, batch: ReplyBatch) -> None:
        self.batches.append((dest, batch))


def test_reads_among_ordered_calls_keep_their_place_in_the_callers_batch(tmp_path: Path) -> None:
    """A single-replica shard: a linearizable read's answer has the same caller, node, view and
    replicas as the ordered answers around it, so the node sends them in one ReplyBatch, in call
    order (as when every answer was a Reply of its own)."""
    handed: list[tuple[int, Any]] = []
    replica = Replica(spec_of(Tally), ReplicaEnv(1, handed.extend, tmp_path / "scratch"))
    replica.start()
    add, read = _codec.encode_args((1,), {}, "msgpack"), _codec.encode_args((), {}, "msgpack")
    calls = [
        (2, i, "value", read, 0, -1, 1, 0, 0) if i % 3 == 1 else (2, i, "add", add, 0, 0, 0, 0, 0) for i in range(8)
    ]
    replica.receive(OrderedBatch(1, (1,), calls))  # type: ignore[arg-type]
    offered = _Offered()
    routes = ReplyRoutes(SimpleNamespace(node_id=1), None, None, offered)  # type: ignore[arg-type]
    routes.route(handed)
    ((dest, batch),) = offered.batches
    assert dest == 2 and (batch.node, batch.vid, batch.replicas) == (1, 1, (1,))
    assert [e[0] for e in batch.entries] == list(range(8))
    assert [msgpack.unpackb(e[2]) for e in batch.entries] == [1, 1, 2, 3, 3, 4, 5, 5]
