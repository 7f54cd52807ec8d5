"""Clients' calls take turns on the node's loop: at most ``CALLS_PER_TURN`` per loop turn, all
clients together, round-robin beyond, so a frame packed with thousands of calls cannot hold the
loop (and members' heartbeats) up, and no client starves another. What a turn took leaves at
its end (``flush``), before the next turn takes more: a frame of a thousand calls goes on as a
few multicast messages the replicas start on while this node takes the rest, rather than as
one that every stage handles whole while the others wait (a convoy: the stages of a
pipelined client's calls would run one after the other, not side by side).

A connection's calls are taken at once while this turn's budget lasts and none of its
identity's calls wait, else queued in order and taken on later turns. The round goes over
identities, not connections (the certificate's name; without TLS the host: as
``limits.client_connections_per_identity`` counts them): up to ``PER_CLIENT_ROUND`` calls per
identity per round, from its connections in turn. An identity may hold 64 connections: counted
per connection, one flooding from 60 of them took 60 shares of every round while an honest
identity with one connection got one, and its calls waited 60 times longer for a turn. A
connection's calls are always taken in the order it sent them (sessions' order and
exactly-once depend on it). A connection with more than twice ``limits.client_max_in_flight``
calls waiting sends faster than any honest client could be served: it is cut off, with a
WARNING naming it. Runs on the node's loop.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, Sequence

from derecho_actors.node.client_table import ClientState, ClientTable, Limit
from derecho_actors.node.stream_bounds import budget_of
from derecho_actors.wire.messages import Call
from runtime.node_api import ClientConn, NodeHandle

log = logging.getLogger("derecho.routing")

CALLS_PER_TURN = 256
"""Clients' calls this node takes per loop turn, all clients together (round-robin beyond)."""

PER_CLIENT_ROUND = 64
"""Calls one waiting identity (all its connections together) may have taken per round of the
waiting identities."""

LONE_CALLS = 8
"""A frame of at most this many calls, the first taken in its loop turn, is sent on at once
(``flush``) rather than at the turn's end: a client calling one at a time then has its call
multicast in the turn that read it (the node's driver flushes at once when it was idle)."""


class IdentityTurn:
    """One identity's place in the round: its connections with calls waiting, in turn. A plain
    class with slots: made only when an identity has calls waiting (never on the fast path)."""

    __slots__ = ("key", "conns")

    def __init__(self, key: str) -> None:
        self.key = key  # ``stream_bounds.budget_of``: the identity, or the host without TLS
        self.conns: collections.deque[ClientState] = collections.deque()


class ClientTurns:
    def __init__(
        self,
        node: NodeHandle,
        table: ClientTable,
        take: Callable[[ClientConn, Sequence[Call]], None],
        closed: Callable[[ClientConn], None],
        flush: Callable[[], None] = lambda: None,
        hold: Callable[[], None] = lambda: None,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        """``take(conn, calls)``: take calls of one client, in order, stopping if it is
        forgotten meanwhile (one step for a frame's calls, not one per call: per-frame work is
        done once); ``closed(conn)``: forget a client whose connection this closes;
        ``flush()``: send what the calls taken so far made; ``hold()``/``release()``: around
        a lone frame's take, what it queues is sent at ``release`` (no turn-end timer armed)."""
        self.node = node
        self.table = table
        self.take = take
        self.closed = closed
        self.flush = flush
        self.hold = hold
        self.release = release
        self.taken = 0  # clients' calls taken this loop turn
        self._scheduled = False
        self.waiting: collections.deque[IdentityTurn] = collections.deque()  # identities with calls waiting
        self.identities: dict[str, IdentityTurn] = {}  # the same, by key

    def on_calls(self, conn: ClientConn, calls: tuple[Call, ...]) -> None:
        """A client's calls as they arrive (one frame's worth), in order."""
        if getattr(conn, "closed", False):  # frames read before it closed: nobody to answer
            return
        client = self.table.state(conn)
        if (
            not client.inbox
            and self.taken < CALLS_PER_TURN
            and not (self.identities and _key(client) in self.identities)  # its identity waits: after it
        ):
            if not self.taken and len(calls) <= LONE_CALLS:  # lone: sent on now, in whole
                self._spend(len(calls))
                self.hold()
                try:
                    self.take(conn, calls)
                finally:
                    self.release()
                return
            room = CALLS_PER_TURN - self.taken
            self._spend(min(room, len(calls)))
            self.take(conn, calls[:room])
            calls = calls[room:]
            if not calls or client.closed:
                return
            self.flush()
        client.inbox.extend(calls)
        waiting = len(client.inbox)
        if waiting > 2 * self.table.max_in_flight:
            self.table.warn(
                client,
                Limit.WAITING,
                f"it sent calls faster than they are taken ({waiting} waiting); its connection is cut off",
                cut_off=True,
            )
            conn.close()
            self.closed(conn)
            return
        if not client.waiting:
            client.waiting = True
            key = _key(client)
            turn = self.identities.get(key)
            if turn is None:
                turn = self.identities[key] = IdentityTurn(key)
                self.waiting.append(turn)
            turn.conns.append(client)
        self._spend(0)

    def _spend(self, calls: int) -> None:
        self.taken += calls
        if not self._scheduled:
            self._scheduled = True
            self.node.call_later(0, self.next_turn)

    def next_turn(self) -> None:
        """A new loop turn: the budget is whole again; identities with calls waiting take turns,
        each up to ``PER_CLIENT_ROUND`` calls from its connections in turn."""
        self._scheduled = False
        self.taken = 0
        waiting = self.waiting
        budget = CALLS_PER_TURN
        while waiting and budget > 0:
            turn = waiting.popleft()
            try:
                budget -= self._take_turn(turn, min(PER_CLIENT_ROUND, budget))
            finally:  # whatever escapes, the identity keeps its place (or leaves, done)
                if turn.conns:
                    waiting.append(turn)
                else:
                    del self.identities[turn.key]
        self.taken = CALLS_PER_TURN - budget
        if waiting:
            self.flush()
            self._spend(0)

    def _take_turn(self, turn: IdentityTurn, quota: int) -> int:
        """Take up to ``quota`` calls of one identity, from each of its waiting connections in
        turn (each visited at most once), each connection's in order. Returns how many."""
        conns = turn.conns
        took = 0
        for _ in range(len(conns)):
            if took >= quota:
                break
            client = conns.popleft()
            inbox = client.inbox
            if client.closed or not inbox:  # forgotten, or its calls taken meanwhile (a stream's)
                client.waiting = False
                continue
            n = min(len(inbox), quota - took)
            took += n
            try:
                self.take(client.conn, [inbox.popleft() for _ in range(n)])
            except Exception:  # a bug: this client is cut off, the others keep their turn
                log.exception(
                    "node %d: taking a call of %s failed; its connection is closed", self.node.node_id, client.who
                )
                client.waiting = False
                self._close(client.conn)
                continue
            except BaseException:  # (cancelled, interrupted) it keeps its place in the round
                if inbox and not client.closed:
                    conns.append(client)
                else:
                    client.waiting = False
                raise
            if inbox and not client.closed:
                conns.append(client)
            else:
                client.waiting = False
        return took

    def _close(self, conn: ClientConn) -> None:
        """Close a client's connection and forget what is kept for it (a failure is logged)."""
        try:
            conn.close()
        except Exception:
            log.exception("node %d: closing the connection of a failed client failed", self.node.node_id)
        try:
            self.closed(conn)
        except Exception:
            log.exception("node %d: forgetting a failed client failed", self.node.node_id)


def _key(client: ClientState) -> str:
    """Whose turns a connection's calls take: its identity (the host without TLS), as the
    node authenticated it; worked out once per connection, when first needed."""
    key = client.turn_key
    if not key:
        key = client.turn_key = budget_of(client.conn)
    return key
