"""``derecho-actors top``'s arithmetic: rates from two rounds of status snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.drivers.top import TopModel

pytestmark = pytest.mark.timeout(10)


def status(node: int, vid: int, delivered: int, calls: int, sent: int, window_free: int | None = 900) -> dict[str, Any]:
    return {
        "node": node,
        "vid": vid,
        "members": [[1, "a:1"], [2, "a:2"]],
        "health": [{"node": 1, "state": "leader"}, {"node": 2, "state": "ok"}],
        "clients": 2,
        "traffic": [[3 - node, sent, sent // 2]],
        "shards": [
            {
                "shard": "KV/0/0",
                "delivered": delivered,
                "persisted_frontier": -1,
                "window_size": 1000,
                "window_free": window_free,
                "members": [
                    {"node": 1, "delivered": delivered, "persistence_lag": 0},
                    {"node": 2, "delivered": delivered - 5, "persistence_lag": 3},
                ],
            }
        ],
        "app": {"client_calls": {"calls": [["put", "ok", calls]]}, "replicas": {"KV/0/0": "serving"}},
    }


MEMBERS = [(1, "a:1"), (2, "a:2"), (3, "a:3")]


@pytest.mark.parametrize(
    ("second_vid", "second_delivered", "want_rate"),
    [
        (4, 3000, 1000.0),  # 2000 more in 2 s
        (5, 10, 0.0),  # a new view restarts the count: no negative or bogus rate
    ],
)
def test_rates_come_from_two_rounds(second_vid: int, second_delivered: int, want_rate: float) -> None:
    model = TopModel()
    first, _ = model.update(MEMBERS, {1: status(1, 4, 1000, 10, 4000), 2: status(2, 4, 1000, 0, 0), 3: None}, 10.0)
    assert [r.delivered_per_s for r in first if r.vid is not None] == [0.0, 0.0]  # one round: no rates yet
    nodes, shards = model.update(
        MEMBERS, {1: status(1, second_vid, second_delivered, 210, 8000, None), 2: None, 3: None}, 12.0
    )
    one = nodes[0]
    assert one.state == "leader" and one.delivered_per_s == want_rate
    assert one.calls_per_s == 100.0 and one.out_per_s == 2000.0 and one.in_per_s == 1000.0
    assert one.window == "-"  # not a sender in that shard any more
    assert one.persistence_lag == 3 and one.replicas == "KV/0/0: serving"
    assert [n.state for n in nodes[1:]] == ["no answer", "no answer"]
    (sh,) = shards
    assert sh.members == [1, 2] and sh.delivery_lag == 5 and sh.delivered_per_s == want_rate


def test_a_node_that_has_no_view_yet_says_what_it_does() -> None:
    nodes, shards = TopModel().update(
        MEMBERS[:2],
        {1: {"node": 1, "joining": True, "bootstrapping": "1 of 3 up"}, 2: {"node": 2, "joining": True}},
        1.0,
    )
    assert [n.state for n in nodes] == ["bootstrapping", "joining"] and shards == []
    first = TopModel().update(MEMBERS[:1], {1: status(1, 4, 10, 0, 0)}, 1.0)[0][0]
    assert first.window == "100/1000"
