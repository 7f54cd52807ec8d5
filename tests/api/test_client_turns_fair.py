"""Clients' calls take turns per identity, not per connection (``node.client_turns``), in-process
on fake connections (fast):

- an identity flooding from 20 connections gets about half of the calls taken, not 20 shares
  in 21, against an identity with one connection; each connection's calls stay in order;
- the identity is the certificate's name (two identities on one host are two), the host
  without TLS (many ports of one host are one);
- a connection whose identity has calls waiting queues behind them, while another identity's
  lone call is taken at once.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pytest

from derecho_actors.node.client_table import ClientTable
from derecho_actors.node.client_turns import CALLS_PER_TURN, PER_CLIENT_ROUND, ClientTurns
from derecho_actors.wire.messages import Call
from runtime.core.layout import ShardId
from runtime.security.identity import Identity

pytestmark = pytest.mark.timeout(30)

SHARD = ShardId("Feed", 0, 0)


class LoopNode:
    """What ``ClientTurns`` uses of a node: ``call_later(0, …)`` callbacks run by the test, one
    loop turn at a time."""

    node_id = 1

    def __init__(self) -> None:
        self.later: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.later.append((fn, args))

    def turn(self) -> None:
        due, self.later = self.later, []
        for fn, args in due:
            fn(*args)


class Conn:
    """A client connection as the driver gives it: its address and what TLS proved."""

    def __init__(self, address: str, name: str | None) -> None:
        self.address = address
        self.identity = None if name is None else Identity("client", None, name, bytes(32))
        self.origin = 7
        self.incarnation = 1
        self.closed = False

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Case:
    label: str
    flooder: list[tuple[str, str | None]]  # (address, certificate name) of each connection
    honest: tuple[str, str | None]


CASES = [
    Case("tls", [(f"10.0.0.{1 + i}:4000", "alice") for i in range(20)], ("10.0.0.99:4000", "bob")),
    Case("tls, one host", [(f"10.0.0.1:{4000 + i}", "alice") for i in range(20)], ("10.0.0.1:5000", "bob")),
    Case("no tls: per host", [(f"10.0.0.1:{4000 + i}", None) for i in range(20)], ("10.0.0.2:4000", None)),
]

WAITING = 500  # calls waiting per connection


def turns_of(node: LoopNode) -> tuple[ClientTurns, list[tuple[Conn, int]]]:
    """Turns whose take records (connection, call id) in the order calls are taken."""
    taken: list[tuple[Conn, int]] = []

    def take(conn: Any, calls: Sequence[Call]) -> None:
        taken.extend((conn, c.call_id) for c in calls)

    table = ClientTable(max_in_flight=WAITING, max_polls=8, wall_ns=lambda: 0)
    return ClientTurns(node, table, take, lambda conn: table.forget(conn)), taken  # type: ignore[arg-type]


def calls(first: int, n: int) -> tuple[Call, ...]:
    return tuple(Call(i, 0, SHARD, "post", True, b"\x91\x01") for i in range(first, first + n))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_an_identity_with_many_connections_gets_one_share_of_the_round(case: Case) -> None:
    node = LoopNode()
    turns, taken = turns_of(node)
    flooders = [Conn(address, name) for address, name in case.flooder]
    honest = Conn(*case.honest)
    turns.taken = CALLS_PER_TURN  # this turn's budget is spent: all of these wait
    for conn in flooders:
        turns.on_calls(conn, calls(1, WAITING))  # type: ignore[arg-type]
    turns.on_calls(honest, calls(1, WAITING))  # type: ignore[arg-type]
    assert taken == []
    while len(taken) < 800:
        node.turn()
    first = taken[:800]
    share = sum(1 for conn, _ in first if conn is honest) / len(first)
    assert 0.45 <= share <= 0.55, f"{case.label}: the honest identity got {share:.1%} of the calls taken"
    node.turn()
    while node.later:
        node.turn()
    # All taken, each connection's in the order it sent them, none twice.
    per_conn: dict[Conn, list[int]] = collections.defaultdict(list)
    for conn, call_id in taken:
        per_conn[conn].append(call_id)
    assert set(per_conn) == {*flooders, honest}
    for conn, ids in per_conn.items():
        assert ids == list(range(1, WAITING + 1)), f"{conn.address}: calls reordered, lost or repeated"
    assert not turns.waiting and not turns.identities


def test_the_flooders_connections_take_turns_among_themselves() -> None:
    """Within an identity's share, its connections are served in turn: none starves."""
    node = LoopNode()
    turns, taken = turns_of(node)
    flooders = [Conn(f"10.0.0.1:{4000 + i}", "alice") for i in range(4)]
    turns.taken = CALLS_PER_TURN
    for conn in flooders:
        turns.on_calls(conn, calls(1, WAITING))  # type: ignore[arg-type]
    for _ in range(4):
        node.turn()
    served = collections.Counter(conn for conn, _ in taken)
    assert set(served) == set(flooders)
    assert max(served.values()) - min(served.values()) <= PER_CLIENT_ROUND


def test_a_connection_queues_behind_its_identitys_waiting_calls_not_another_identitys() -> None:
    node = LoopNode()
    turns, taken = turns_of(node)
    busy, second = Conn("10.0.0.1:4000", "alice"), Conn("10.0.0.2:4000", "alice")
    other = Conn("10.0.0.3:4000", "bob")
    turns.taken = CALLS_PER_TURN
    turns.on_calls(busy, calls(1, 300))  # type: ignore[arg-type]
    node.turn()  # takes a round; alice still has calls waiting
    before = len(taken)
    turns.on_calls(second, calls(1, 1))  # type: ignore[arg-type]
    assert len(taken) == before, "a connection of an identity with calls waiting went ahead of them"
    turns.taken = 0  # a fresh loop turn's budget
    turns.on_calls(other, calls(1, 1))  # type: ignore[arg-type]
    assert taken[-1] == (other, 1), "another identity's lone call waited behind alice's"
    while node.later:
        node.turn()
    assert (second, 1) in taken


def test_an_identity_keeps_its_place_when_a_take_is_cancelled() -> None:
    """A ``BaseException`` (a cancelled task, an interrupt) out of ``take`` leaves the identity in
    the round: its connection's later calls and its other connections' calls are still taken,
    none twice, in order (it dropped out of the round for good, its calls queued forever)."""
    import asyncio

    node = LoopNode()
    taken: list[tuple[Conn, int]] = []
    cancel = [True]

    def take(conn: Any, batch: Sequence[Call]) -> None:
        if cancel[0]:
            cancel[0] = False
            raise asyncio.CancelledError
        taken.extend((conn, c.call_id) for c in batch)

    table = ClientTable(max_in_flight=WAITING, max_polls=8, wall_ns=lambda: 0)
    turns = ClientTurns(node, table, take, lambda conn: table.forget(conn))  # type: ignore[arg-type]
    first, other = Conn("10.0.0.1:4000", "alice"), Conn("10.0.0.1:4001", "alice")
    turns.taken = CALLS_PER_TURN
    turns.on_calls(first, calls(1, 100))  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        node.turn()  # its first 64 calls were handed to a take that was cancelled
    turns.on_calls(other, calls(1, 5))  # type: ignore[arg-type]
    node.later.append((turns.next_turn, ()))  # the driver's next loop turn
    while node.later:
        node.turn()
    assert [c for conn, c in taken if conn is first] == list(range(PER_CLIENT_ROUND + 1, 101))
    assert [c for conn, c in taken if conn is other] == [1, 2, 3, 4, 5]
    assert not turns.waiting and not turns.identities
