"""When a contact's merged answers leave for a client (``node.client_answers``): at once when
the client waits for nothing else from this node (calls one at a time: no loop turn added
between the last replica's answer and the client), in the turn's one frame otherwise
(pipelined: what a turn answers goes together). Deterministic, no loop: turns run by hand."""

from __future__ import annotations

import time

import pytest

from derecho_actors.node.call_stats import CallStats
from derecho_actors.node.client_answers import ClientAnswers
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_table import ClientState, ClientTable, Proxied
from derecho_actors.wire.messages import AnswerBatch, ReplyBatch, ReplyTo, decode
from runtime.errors import DerechoError
from tests.api.test_client_outbox import Node

pytestmark = pytest.mark.timeout(30)

REPLICAS = (1, 2, 3)
ORIGIN = 77  # the client's session origin, as its calls carry it


class Conn:
    closed = False
    address = "127.0.0.1:5000"


def setup() -> tuple[Node, ClientAnswers, ClientTable, ClientState, ClientOutbox]:
    node = Node()
    node.wall_ns = time.time_ns  # type: ignore[attr-defined]
    table = ClientTable(max_in_flight=100, max_polls=2, wall_ns=time.monotonic_ns)
    out = ClientOutbox(node)  # type: ignore[arg-type]
    answers = ClientAnswers(node, lambda: None, table, CallStats(), out)  # type: ignore[arg-type]
    client = table.state(Conn())
    client.merged = True
    return node, answers, table, client, out


def call(table: ClientTable, client: ClientState, call_id: int) -> None:
    table.add(client, (ORIGIN, call_id), Proxied(client, "KV.put", time.time_ns()))


def answer(answers: ClientAnswers, replica: int, *call_ids: int) -> None:
    entries = [(i, True, b"ok", ORIGIN, 5) for i in call_ids]
    answers.forward(ReplyBatch(replica, 4, REPLICAS, tuple(entries)), entries)


def written(node: Node) -> list[list[int]]:
    """Call ids of each message written, in order."""
    out = []
    for _, messages in node.writes:
        for m in messages:
            batch = decode(m)
            assert isinstance(batch, (AnswerBatch, ReplyBatch))
            out.append([e[0] for e in batch.entries])
    return out


def test_a_lone_call_is_answered_in_the_turn_its_last_answer_came() -> None:
    node, answers, table, client, _ = setup()
    call(table, client, 1)
    answer(answers, 1, 1)
    answer(answers, 2, 1)
    assert not node.writes and not node.timers  # held until every replica answered
    answer(answers, 3, 1)
    assert written(node) == [[1]]  # written now: no loop turn scheduled for it
    assert not node.timers
    assert isinstance(decode(node.writes[0][1][0]), AnswerBatch)


def test_answers_while_calls_wait_go_in_the_turns_frame_and_keep_their_order() -> None:
    node, answers, table, client, _ = setup()
    for i in (1, 2, 3):
        call(table, client, i)
    for r in REPLICAS:
        answer(answers, r, 1)
    for r in REPLICAS:
        answer(answers, r, 2)
    assert not node.writes and len(node.timers) == 1  # call 3 still waits: queued for the turn
    for r in REPLICAS:
        answer(answers, r, 3)  # the last: joins what is queued, behind it
    assert not node.writes
    assert node.drain() == 1
    assert written(node) == [[1], [2], [3]]  # one write of the turn's messages, in order


def test_a_refusal_gathered_for_the_client_goes_behind_the_answer_made_before_it() -> None:
    node, answers, table, client, out = setup()
    call(table, client, 1)
    answer(answers, 1, 1)
    answer(answers, 2, 1)
    out.refuse(client.conn, ReplyTo(1, 9, 4, ORIGIN), DerechoError("no"))
    answer(answers, 3, 1)
    assert not node.writes  # the refusal waits for the turn: the answer waits with it
    node.drain()
    assert written(node) == [[1], [9]]
