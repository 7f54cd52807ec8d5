"""A client failing over from a contact with a high ``limits.client_max_in_flight`` to one
with a low limit, with many calls unanswered: it resends them only as the new contact's
``Welcome`` allows, so every call completes, applied once, and none is refused with
``ClientLimit``. Real node processes, TLS on, loopback only.

The first contact is frozen (SIGSTOP, every thread stopped) before the calls are made, so none
is answered (all are in flight at once), then killed: the client fails over to node 2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from tests.api.faults_apps import Counter
from tests.api.test_faults import freeze

pytestmark = pytest.mark.timeout(90)

LOW = 8  # limits.client_max_in_flight of nodes 2 and 3 (node 1: the default, 4096)
CALLS = 300
LAYOUT = da.Layout({Counter: da.ShardPolicy(min_nodes=2, max_nodes=3)})
OVERRIDES = {"timeouts.heartbeat_ms": "20"}
LOW_LIMIT = {"limits.client_max_in_flight": str(LOW)}


def test_a_failover_to_a_contact_with_a_lower_limit_resends_within_it(tmp_path: Path) -> None:
    with LocalCluster(
        3,
        [Counter],
        LAYOUT,
        overrides=OVERRIDES,
        node_overrides={2: LOW_LIMIT, 3: LOW_LIMIT},
        workdir=str(tmp_path),
    ) as cluster:
        contacts = [cluster.address(n) for n in (1, 2, 3)]
        with cluster.new_client(contacts=contacts, max_outstanding=4096) as client:
            counter = client.handle(Counter)
            assert counter.add(0).get(timeout=30) == {1: 0, 2: 0, 3: 0}
            assert client.window == 4096 and client.connected_to == contacts[0]
            freeze(cluster.procs[1].pid)
            calls = [counter.add(1) for _ in range(CALLS)]  # all in flight: the contact answers none
            cluster.kill(1)
            killed = time.monotonic()
            answers = [r.wait_all(timeout=60) for r in calls]
            # Held calls go as soon as answers free room, not at the socket loop's next timer
            # tick (0.5 s: 300 calls through a window of 8 took ~19 s that way; ~1 s now).
            assert time.monotonic() - killed < 10, "held calls went a window per timer tick"
            refused = [a for a in answers if any(isinstance(v, Exception) for v in a.values())]
            assert not refused, f"{len(refused)} calls failed, first: {refused[0]}"
            assert client.connected_to != contacts[0] and client.window == LOW, "failed over to a low limit"
            assert sorted(max(a.values()) for a in answers) == list(range(1, CALLS + 1)), "each applied once"
            assert [counter.value(node=n).get(timeout=30) for n in (2, 3)] == [{2: CALLS}, {3: CALLS}]
