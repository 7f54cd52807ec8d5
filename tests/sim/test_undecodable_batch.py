"""A multicast message that fails to decode: its calls are failed at their callers with
``WireError`` and the reason (not left to time out), and a WARNING names its sender, at most one
a minute per sender; when no call can be identified the WARNING says so. Driven through a real
replica host with real replicas, inline, as the simulator hosts them; the rule of who answers
a refused delivered call (``refusals``) table-driven."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from derecho_actors.model.decorators import spec_of
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.node.refused_batches import UndecodableBatches, refusals
from derecho_actors.node.runners import InlineRunner
from derecho_actors.replica.replica import ReplicaEnv
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.codec import IdentifiedCall, UndecodableBatch
from derecho_actors.wire.messages import Reply
from examples.kv_store import KV
from runtime.core.effects import Delivery
from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.view import View
from runtime.errors import ClientLimit, WireError
from tests.handed import one_by_one

pytestmark = pytest.mark.timeout(60)

SHARD = ShardId("KV", 0, 0)
SERIALIZER = spec_of(KV).serializer  # type: ignore[union-attr]
TS = 1_800_000_000 * 10**9


def view() -> View:
    members = (1, 2, 3)
    policy = LayoutPolicy.of({"KV": ShardPolicy(min_nodes=3, max_nodes=3)})
    return View(1, members, tuple(f"n{m}" for m in members), compute_layout(policy, members))


class Node:
    """Node 2's replica host, with every reply its replicas (or the host) send."""

    def __init__(self, tmp: Path) -> None:
        self.replies: list[tuple[int, Reply]] = []

        def env(sid: ShardId, spec: Any, vid: int, source: int | None) -> ReplicaEnv:
            return ReplicaEnv(
                node_id=2, send_replies=lambda handed: self.replies.extend(one_by_one(handed)), scratch_dir=tmp
            )

        self.host = ReplicaHost(2, {"KV": spec_of(KV)}, InlineRunner(), env)  # type: ignore[dict-item]
        self.view = view()
        self.host.update(self.view, lambda sid: None)

    def deliver(self, *payloads: tuple[int, bytes]) -> None:
        messages = [(i, sender, 0, payload) for i, (sender, payload) in enumerate(payloads)]
        self.host.deliver(Delivery(SHARD, len(messages), messages, 1), self.view)


def put(call_id: int, key: str, origin: int = 0) -> list[object]:
    return [9, call_id, "put", _codec.encode_args((key, b"v"), {}, SERIALIZER), origin, 0, 0, 0]


def error_of(reply: Reply) -> BaseException:
    assert not reply.ok
    return _codec.decode_error(reply.value, reply.node)


def test_the_calls_of_an_undecodable_message_are_failed_at_their_callers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    good = msgpack.packb([TS, [put(1, "a")]], use_bin_type=True)
    bad = msgpack.packb([TS, [put(2, "b", 5), [9, 3, 17, b"", 5, 0, 0, 0]]], use_bin_type=True)  # a method not a str
    with caplog.at_level(logging.WARNING, logger="derecho.hosting"):
        node.deliver((3, bad), (1, good))
    by_call = {r.call_id: r for _, r in node.replies}
    assert by_call[1].ok, "the decodable message of the same delivery was not run"
    for call_id in (2, 3):
        reply = by_call[call_id]
        assert (reply.node, reply.vid, reply.replicas, reply.origin) == (2, 1, (1, 2, 3), 5)
        exc = error_of(reply)
        assert isinstance(exc, WireError)
        assert "from node 3" in str(exc) and "call 1 has a field of the wrong type" in str(exc)
    assert {caller for caller, _ in node.replies} == {9}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("node 3 multicast a message in shard KV/0/0 (view 1) that node 2 cannot decode")
    assert "its 2 calls that could be identified are failed at their callers with WireError" in warning


def test_when_no_call_can_be_identified_the_warning_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path)
    with caplog.at_level(logging.WARNING, logger="derecho.hosting"):
        node.deliver((3, b"\xc1garbage"))
    assert node.replies == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "node 3 multicast" in warning and "none of its calls could be identified" in warning


def test_the_warning_is_rate_limited_per_sender(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    batches = UndecodableBatches(2, clock=lambda: now[0])
    bad = UndecodableBatch("why", (IdentifiedCall(9, 1),))
    with caplog.at_level(logging.WARNING, logger="derecho.hosting"):
        for sender, at in ((3, 0.0), (3, 10.0), (3, 20.0), (4, 20.0), (3, 61.0)):
            now[0] = at
            assert len(batches.refusals(SHARD, 1, (1, 2), sender, bad)) == 1  # every call is still answered
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines] == ["3", "4", "3"]
    assert "(2 similar lines held back)" in lines[2] and "held back" not in lines[0]


CALLS = {
    # name: (the call, node answering) -> (answers?, replicas named)
    "a write: every replica answers": ((IdentifiedCall(9, 1, 5, 0, 0), 2), (True, (1, 2, 3))),
    "a session's write": ((IdentifiedCall(9, 1, 5, 77, 4), 2), (True, (1, 2, 3))),
    "a linearizable read, named replica": ((IdentifiedCall(9, 1, 5, -1, 2), 2), (True, (2,))),
    "a linearizable read, another replica": ((IdentifiedCall(9, 1, 5, -1, 3), 2), (False, ())),
}


@pytest.mark.parametrize("given, expected", CALLS.values(), ids=CALLS.keys())
def test_who_answers_a_refused_delivered_call(
    given: tuple[IdentifiedCall, int], expected: tuple[bool, tuple[int, ...]]
) -> None:
    call, me = given
    out = refusals(me, 4, (1, 2, 3), [call], ClientLimit("no"))
    answers, replicas = expected
    assert bool(out) == answers
    if answers:
        ((caller, reply),) = out
        assert (caller, reply.call_id, reply.node, reply.vid, reply.replicas, reply.origin) == (
            9,
            1,
            me,
            4,
            replicas,
            5,
        )
        assert isinstance(error_of(reply), ClientLimit)
