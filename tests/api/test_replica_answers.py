"""How a replica hands its answers to the node: a long delivered batch in chunks of
``REPLY_CHUNK`` calls, in order, so the answers of the first chunk travel while the replica
runs the rest (a pipelined caller's calls then keep every stage busy instead of each stage
waiting for the whole batch); a persistent type's log records of a chunk are queued no later
than its answers leave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

import derecho_actors as da
from derecho_actors.model.decorators import spec_of
from derecho_actors.replica.messages import OrderedBatch
from derecho_actors.replica.replica import REPLY_CHUNK, Replica, ReplicaEnv
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Reply, ReplyBatch, ReplyEntry

pytestmark = pytest.mark.timeout(30)


@da.replicated
class Tally:
    def __init__(self) -> None:
        self.n = 0

    @da.ordered
    def add(self, k: int) -> int:
        self.n += k
        return self.n


@da.replicated
class Ledger:
    total = da.Persistent(0)

    @da.ordered
    def add(self, k: int) -> int:
        self.total += k
        return self.total


def entries(handed: list[tuple[int, Any]]) -> list[ReplyEntry]:
    """The answers of one hand-off, in order (ordered calls' answers come as a batch per caller)."""
    out: list[ReplyEntry] = []
    for _, item in handed:
        if isinstance(item, ReplyBatch):
            out += item.entries
        else:
            assert isinstance(item, Reply)
            out.append((item.call_id, item.ok, item.value, item.origin, item.version))
    return out


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
    assert [len(entries(s)) for s in sent] == chunks
    answers = [entry for s in sent for entry in entries(s)]
    assert [call_id for call_id, *_ in answers] == list(range(calls))
    assert [msgpack.unpackb(value) for _, _, value, _, _ in answers] == list(range(1, calls + 1))


def test_a_persistent_chunks_records_are_queued_before_its_answers_leave(tmp_path: Path) -> None:
    queued: list[int] = []  # versions queued for the log when each chunk of answers left
    replica: Replica | None = None

    def send(replies: list[tuple[int, Any]]) -> None:
        assert replica is not None and replica.store is not None
        queued.append(replica.store.last_version)
        assert max(e[4] for e in entries(replies)) <= logged[-1], "answers left before their log records were queued"

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
