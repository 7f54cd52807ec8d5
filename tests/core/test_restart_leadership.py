"""One leader per restart view: the restart coordinators of ``runtime.drivers.restart`` with a
transport whose links can be slow, replaying the interleaving seen on a loaded machine.

Node 1 starts first; its hellos are lost (nobody listens yet). Nodes 2 and 3 start and report
to everyone; node 1 answers both at once, but its connection to node 2 is slow (a TLS
handshake starved of CPU), so node 2 hears nothing from node 1 for a while. Node 1 then holds
every report and leads at once; node 2, holding only its own and node 3's (a majority), used
to lead too once the quorum wait passed: two restart views with the same id, node 3 installing
one of them, node 2 the other, and node 2 stopping as partitioned. A node that is not the
lowest id of the latest view now gives the lower ids it has not heard from a grace of two
resend periods before it leads without them, so node 1's slow messages arrive first."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.core.layout import LayoutPolicy, ShardId, ShardPolicy, compute_layout
from runtime.core.versions import make_version as ver
from runtime.core.view import View
from runtime.drivers.restart import LEADER_GRACE, RestartCoordinator, SavedState
from runtime.wire.control import RestartDecision, RestartHello

pytestmark = pytest.mark.timeout(30)

POLICY = LayoutPolicy.of({"T": ShardPolicy(shards=2, min_nodes=1)})
S0, S1 = ShardId("T", 0, 0), ShardId("T", 0, 1)
V3 = View(3, (1, 2, 3), ("n1", "n2", "n3"), compute_layout(POLICY, (1, 2, 3)))
QUORUM_WAIT = 0.1


class Net:
    """Messages between coordinators, delivered when asked; a (from, to) link may be held."""

    def __init__(self) -> None:
        self.coords: dict[int, RestartCoordinator] = {}
        self.queue: list[tuple[int, int, Any]] = []
        self.held: set[tuple[int, int]] = set()
        self.listening: set[int] = set()

    def add(self, n: int, saved: SavedState) -> None:
        def send(address: str, msg: Any) -> None:
            to = int(address[1:])
            if to in self.listening:  # a node not listening yet: the connection is refused
                self.queue.append((n, to, msg))

        self.coords[n] = RestartCoordinator(
            n, f"n{n}", saved, [], POLICY, QUORUM_WAIT, send, now=0.0, doubt_wait=2.0, on_accept=lambda vid: None
        )

    def deliver(self) -> None:
        """Deliver everything not held, until nothing more moves."""
        moved = True
        while moved:
            moved = False
            for item in list(self.queue):
                frm, to, msg = item
                if (frm, to) in self.held:
                    continue
                self.queue.remove(item)
                moved = True
                c = self.coords[to]
                if isinstance(msg, RestartHello):
                    c.on_hello(msg)
                elif isinstance(msg, RestartDecision):
                    c.on_decision(msg)

    def tick(self, n: int, now: float) -> None:
        self.coords[n].on_tick(now)
        self.deliver()

    def leaders(self) -> set[int]:
        return {c.node_id for c in self.coords.values() if c.led is not None}


def _saved(n: int) -> SavedState:
    return SavedState(V3, {S0: ver(3, 4)} if n != 2 else {S1: ver(3, 2)})


def test_a_slow_link_from_the_lowest_id_does_not_make_a_second_leader() -> None:
    net = Net()
    for n in (1, 2, 3):
        net.add(n, _saved(n))
    net.listening.add(1)
    net.tick(1, 0.0)  # node 1 alone: its hellos to 2 and 3 are refused
    net.listening |= {2, 3}
    net.held.add((1, 2))  # node 1 -> node 2 is slow from here on
    net.tick(2, 0.01)
    net.tick(3, 0.01)
    net.tick(1, 0.02)  # node 1 holds every report: it leads at once
    assert net.leaders() == {1}
    three = net.coords[3].outcome
    assert three is not None and three.view is not None and three.view.members == (1, 2, 3)
    two = net.coords[2]
    assert set(two.reports) == {2, 3}  # node 2 has still heard nothing from node 1
    for now in (0.12, 0.2, 0.3, 0.01 + QUORUM_WAIT + LEADER_GRACE - 0.01):
        net.tick(2, now)  # past its quorum wait: it used to lead here
        assert net.leaders() == {1} and two.outcome is None
    net.held.clear()  # node 1's hello and decision reach node 2 within the grace
    net.deliver()
    assert two.outcome is not None and two.outcome.view == three.view
    net.tick(2, 1.0)
    assert net.leaders() == {1}


def test_without_the_lowest_id_the_next_leads_after_the_grace() -> None:
    """Node 1 never comes back: node 2 leads, later than the quorum wait by the grace only."""
    net = Net()
    for n in (2, 3):
        net.add(n, _saved(n))
    net.listening |= {2, 3}
    net.tick(2, 0.0)
    net.tick(3, 0.0)
    net.tick(2, 0.01)  # node 2 sees the quorum (its own report and node 3's)
    net.tick(2, 0.01 + QUORUM_WAIT + 0.01)
    assert net.leaders() == set()
    nxt = net.coords[2].on_tick(0.01 + QUORUM_WAIT + 0.02)
    assert nxt <= 0.01 + QUORUM_WAIT + LEADER_GRACE + 1e-9  # it comes back when the grace ends
    net.tick(2, 0.01 + QUORUM_WAIT + LEADER_GRACE)
    assert net.leaders() == {2}
    three = net.coords[3].outcome
    assert three is not None and three.view is not None and three.view.members == (2, 3)


def test_the_lowest_id_leads_without_grace() -> None:
    net = Net()
    for n in (1, 2):
        net.add(n, _saved(n))
    net.listening |= {1, 2}
    net.tick(1, 0.0)
    net.tick(2, 0.0)
    net.tick(1, 0.01)  # the quorum: node 1 and node 2
    net.tick(1, 0.01 + QUORUM_WAIT)  # node 3 missing: node 1 waits the quorum wait only
    assert net.leaders() == {1}
