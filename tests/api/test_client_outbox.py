"""The client outbox (``derecho_actors.node.client_outbox``): answers encoded in pieces when
written, and none encoded once the connection stops taking writes (a client cut off for not
reading its replies). Deterministic, no loop: the flush is run by hand."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from derecho_actors.node.answer_queue import ENTRY_BYTES, pieces
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.wire.messages import AnswerBatch, ReplyBatch, decode

pytestmark = pytest.mark.timeout(30)


class Node:
    """What the outbox uses of a ``NodeHandle``: writes recorded; the connection stops taking
    writes once ``cap`` bytes were written to it (as the transport's cut-off does)."""

    node_id = 1

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap
        self.writes: list[tuple[Any, tuple[bytes, ...]]] = []
        self.timers: list[Callable[[], None]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append(fn)

    def reply_client(self, conn: Any, *messages: bytes) -> bool:
        self.writes.append((conn, messages))
        return self.cap is None or self.written(conn) < self.cap

    def written(self, conn: Any) -> int:
        return sum(len(m) for c, ms in self.writes if c == conn for m in ms)

    def flush(self) -> None:
        """One loop turn: the timers due now."""
        timers, self.timers = self.timers, []
        for fn in timers:
            fn()

    def drain(self) -> int:
        """Loop turns until nothing is scheduled; how many."""
        turns = 0
        while self.timers:
            self.flush()
            turns += 1
        return turns


def answers(n: int, size: int, vid: int = 3) -> AnswerBatch:
    return AnswerBatch(vid, (1, 2, 3), tuple((i, True, bytes([i % 256]) * size, 7, ()) for i in range(n)))


def replies(n: int, size: int) -> ReplyBatch:
    return ReplyBatch(2, 3, (1, 2, 3), tuple((i, True, b"v" * size, 11, 0) for i in range(n)))


@pytest.mark.parametrize(
    "batch, most, sizes",
    [
        (answers(0, 10), 100, []),
        (answers(3, 10), 1000, [3]),  # small: the batch itself, one piece
        (answers(4, 76), 100, [1, 1, 1, 1]),  # each answer reaches the bound alone
        (answers(5, 26), 100, [2, 2, 1]),  # two answers of 50 bytes reach 100
        (answers(2, 5000), 100, [1, 1]),  # larger than a piece: a piece of its own
        (replies(7, 10), 3 * (10 + ENTRY_BYTES), [3, 3, 1]),
    ],
)
def test_pieces_keep_every_answer_in_order_within_the_bound(batch: Any, most: int, sizes: list[int]) -> None:
    got = list(pieces(batch, most))
    assert [len(p.entries) for p in got] == sizes
    assert [e for p in got for e in p.entries] == list(batch.entries)
    assert all(type(p) is type(batch) and p.vid == batch.vid and p.replicas == batch.replicas for p in got)
    if sizes == [len(batch.entries)]:
        assert got[0] is batch  # nothing copied when it fits


def test_a_turn_of_small_messages_is_one_write() -> None:
    node = Node()
    out = ClientOutbox(node)  # type: ignore[arg-type]
    out.send("c", b"offer")
    out.send("c", answers(10, 100))
    out.send("c", replies(5, 100))
    node.flush()
    assert len(node.writes) == 1
    conn, messages = node.writes[0]
    assert conn == "c" and messages[0] == b"offer"
    assert [len(decode(m).entries) for m in messages[1:]] == [10, 5]  # type: ignore[union-attr]


def test_a_large_turn_goes_in_pieces_and_every_answer_arrives() -> None:
    node = Node()
    out = ClientOutbox(node, piece_bytes=64 << 10)  # type: ignore[arg-type]
    out.send("c", answers(100, 8 << 10))  # 800 KiB of values
    assert node.drain() == 1
    assert 10 <= len(node.writes) <= 14
    assert all(sum(len(m) for m in ms) < 2 * (64 << 10) for _, ms in node.writes)
    got = [e[0] for _, ms in node.writes for m in ms for e in decode(m).entries]  # type: ignore[union-attr]
    assert got == list(range(100)) and out.unsent == 0


@pytest.mark.parametrize("cap_pieces", [1, 3])
def test_nothing_more_is_encoded_once_the_connection_takes_no_more(cap_pieces: int) -> None:
    """A client cut off (its write went past its backlog limit): the rest of the turn's answers
    for it are counted as unsent and never encoded; other clients get all of theirs."""
    node = Node(cap=cap_pieces * (64 << 10))
    out = ClientOutbox(node, piece_bytes=64 << 10)  # type: ignore[arg-type]
    out.send("flooder", answers(600, 32 << 10))  # 18.75 MB of values
    out.send("flooder", replies(10, 100))
    out.send("honest", answers(3, 100))
    node.cap = cap_pieces * (64 << 10)
    node.drain()
    to_flooder = [ms for c, ms in node.writes if c == "flooder"]
    assert len(to_flooder) == cap_pieces  # one write past the cap, then none
    assert node.written("flooder") < (cap_pieces + 1) * (64 << 10)
    sent = sum(len(decode(m).entries) for ms in to_flooder for m in ms)  # type: ignore[union-attr]
    assert out.unsent == 610 - sent
    assert [len(decode(m).entries) for c, ms in node.writes if c == "honest" for m in ms] == [3]  # type: ignore[union-attr]


def test_refusals_of_a_turn_go_in_one_batch_after_what_was_queued() -> None:
    from derecho_actors.wire.messages import ReplyTo
    from runtime.errors import ClientLimit

    node = Node()
    out = ClientOutbox(node)  # type: ignore[arg-type]
    out.send("c", answers(2, 10))
    for call_id in (5, 6, 7):
        out.refuse("c", ReplyTo(1, call_id, 3, 99), ClientLimit("refused: a limit"))
    node.flush()
    ((_, messages),) = node.writes
    first, refused = (decode(m) for m in messages)
    assert isinstance(first, AnswerBatch) and isinstance(refused, ReplyBatch)
    assert [e[0] for e in refused.entries] == [5, 6, 7] and not any(e[1] for e in refused.entries)


def test_a_turn_writes_at_most_its_budget_round_robin_and_everything_arrives_in_order() -> None:
    """Work per loop turn is bounded: 400 answers of 64 KiB (25 MiB) to one client and 3 small
    answers to another; each turn writes about ``turn_bytes``, the small client is served in
    the first turn, not after the large one, and every answer arrives once, in order."""
    node = Node()
    out = ClientOutbox(node, piece_bytes=256 << 10, turn_bytes=2 << 20)  # type: ignore[arg-type]
    out.send("big", answers(400, 64 << 10))
    out.send("big", b"a view notice")
    out.send("small", answers(3, 100))
    per_turn: list[int] = []
    while node.timers:
        before = len(node.writes)
        node.flush()
        per_turn.append(sum(len(m) for _, ms in node.writes[before:] for m in ms))
    assert len(per_turn) >= 12 and max(per_turn) < (2 << 20) + (320 << 10), per_turn
    assert [c for c, _ in node.writes].index("small") < 10  # in the first turn's writes
    messages = [m for c, ms in node.writes if c == "big" for m in ms]
    assert messages[-1] == b"a view notice"
    got = [e[0] for m in messages[:-1] for e in decode(m).entries]  # type: ignore[union-attr]
    assert got == list(range(400)) and out.waiting() == 0


def test_answers_queued_while_a_large_turn_waits_go_behind_it() -> None:
    node = Node()
    out = ClientOutbox(node, piece_bytes=64 << 10, turn_bytes=256 << 10)  # type: ignore[arg-type]
    out.send("c", answers(40, 32 << 10))
    node.flush()
    out.send("c", replies(2, 10))  # queued while 40 answers are still waiting
    node.drain()
    kinds = [type(decode(m)).__name__ for _, ms in node.writes for m in ms]
    assert kinds[-1] == "ReplyBatch" and set(kinds[:-1]) == {"AnswerBatch"}
    assert sum(len(decode(m).entries) for _, ms in node.writes for m in ms) == 42  # type: ignore[union-attr]


class Members(Node):
    """A node whose member links hold ``backlog[member]`` bytes unsent; ``send_app`` records."""

    def __init__(self) -> None:
        super().__init__()
        self.backlog: dict[int, int] = {}
        self.sent: list[tuple[int, bytes]] = []
        self.delays: list[float] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.delays.append(delay)
        super().call_later(delay, fn)

    def link_backlog(self, node: int) -> int:
        return self.backlog.get(node, 0)

    def send_app(self, node: int, data: bytes) -> None:
        self.sent.append((node, data))


def test_messages_to_a_backed_up_member_wait_in_order_and_small_ones_go_at_once() -> None:
    """``member_queue``: a small message to a member whose link is clear goes at once (no turn
    of latency); while a link holds ``LINK_READY_BYTES`` or more, messages for it wait (looked
    at again ``RETRY_S`` later, not every turn) and others' do not; what waits goes in order,
    and a message offered while others wait goes behind them."""
    from derecho_actors.node.answer_queue import LINK_READY_BYTES, RETRY_S, member_queue

    node = Members()
    queue = member_queue(node)  # type: ignore[arg-type]
    queue.offer(2, b"call-1")
    assert node.sent == [(2, b"call-1")] and not node.timers
    node.backlog[2] = LINK_READY_BYTES
    queue.offer(2, b"call-2")
    queue.offer(3, answers(2, 10))
    assert node.sent == [(2, b"call-1"), (3, node.sent[1][1])] and decode(node.sent[1][1]).entries
    node.flush()
    assert [n for n, _ in node.sent] == [2, 3] and node.delays[-1] == RETRY_S  # still backed up
    node.backlog[2] = 0
    queue.offer(2, b"call-3")  # behind call-2, which waits
    node.drain()
    assert [d for n, d in node.sent if n == 2] == [b"call-1", b"call-2", b"call-3"]
    assert queue.waiting() == 0


def test_a_large_answer_to_a_member_goes_in_pieces_over_turns() -> None:
    from derecho_actors.node.answer_queue import PIECE_BYTES, TURN_BYTES, member_queue

    node = Members()
    queue = member_queue(node)  # type: ignore[arg-type]
    queue.offer(2, answers(100, 100_000))  # 10 MB of values for one caller
    assert not node.sent  # too large to go at once
    turns = node.drain()
    assert turns >= 10 // (TURN_BYTES >> 20)
    assert max(len(d) for _, d in node.sent) < 2 * PIECE_BYTES
    assert [e[0] for _, d in node.sent for e in decode(d).entries] == list(range(100))  # type: ignore[union-attr]
