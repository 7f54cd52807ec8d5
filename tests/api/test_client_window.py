"""A client whose ``max_outstanding`` is above its contact's ``limits.client_max_in_flight``
keeps to the contact's limit (its Welcome says it): every call is served, none refused with
``ClientLimit``, and the connection is never cut off for sending too many."""

from __future__ import annotations

from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from tests.api.faults_apps import Counter

pytestmark = pytest.mark.timeout(120)

LIMIT = 8  # limits.client_max_in_flight of every node
CALLS = 600
LAYOUT = da.Layout({Counter: da.ShardPolicy(min_nodes=3)})
OVERRIDES = {"limits.client_max_in_flight": str(LIMIT), "timeouts.heartbeat_ms": "20"}


def test_a_window_above_the_contacts_limit_is_lowered_to_it(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], LAYOUT, overrides=OVERRIDES, workdir=str(tmp_path)) as cluster:
        with cluster.new_client(max_outstanding=4096) as client:
            assert client.window == LIMIT, "the Welcome's limit lowers the window"
            counter = client.handle(Counter)
            calls = [counter.add(1) for _ in range(CALLS)]  # pipelined: never more than LIMIT unanswered
            answers = [r.get(timeout=60) for r in calls]
            assert all(len(a) == 3 and len(set(a.values())) == 1 for a in answers), "3 replicas, one value"
            assert sorted(max(a.values()) for a in answers) == list(range(1, CALLS + 1))
            assert client.connections == 1, "the contact cut the client off"
            assert [counter.value(node=n).get(timeout=10) for n in (1, 2, 3)] == [{n: CALLS} for n in (1, 2, 3)]
