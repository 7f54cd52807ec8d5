"""Typed status (``runtime.core.status``): a real core's status reads back whole from its wire
form, the wire form keeps the keys readers and scripts use, and a reply of a node in another
phase (joining, bootstrapping) or of a leaner writer reads with defaults."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.core.status import (
    AppStatus,
    AwaitingLog,
    CallCount,
    CallLatency,
    ClientCalls,
    CoreStatus,
    DigestMismatch,
    LostRange,
    NodeStatus,
    RestartedEmpty,
    ShardDigests,
    Stalls,
)
from runtime.core.versions import make_version

from .group_net import GroupNet

pytestmark = pytest.mark.timeout(30)


def running_core_status() -> CoreStatus:
    net = GroupNet((1, 2, 3))
    net.send(1, b"a", b"b")
    assert net.run_until(lambda: all(len(net.payloads(n)) == 2 for n in (1, 2, 3)))
    return net.core(1).status()


def test_a_running_core_reads_back_whole_from_its_wire_form() -> None:
    st = running_core_status()
    assert st.vid == 0 and st.leader == 1 and [m for m, _ in st.members] == [1, 2, 3]
    assert [h.state for h in st.health] == ["leader", "ok", "ok"]
    (shard,) = st.shards
    assert shard.delivered >= 2 and [m.node for m in shard.members] == [1, 2, 3]  # nulls count too
    assert CoreStatus.from_wire(st.to_wire()) == st


def test_the_wire_form_keeps_the_keys_readers_use() -> None:
    wire = NodeStatus(node=1, cluster="c", core=running_core_status(), app=AppStatus.from_wire({"x": 1})).to_wire()
    for key in ("node", "cluster", "vid", "members", "leader", "adequate", "health", "layout", "shards", "app"):
        assert key in wire, key
    member = wire["shards"][0]["members"][0]
    assert set(member) == {"node", "delivered", "received", "persisted", "persistence_lag"}
    assert wire["app"] == {"x": 1}  # the actor layer's part travels as it said it


STATUSES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("joining", {"node": 4, "joining": True, "excluded": None}, {"vid": None, "joining": True}),
    (
        "bootstrapping",
        {"node": 4, "joining": True, "bootstrapping": "2 of 3 alike nodes heard"},
        {"vid": None, "bootstrapping": "2 of 3 alike nodes heard"},
    ),
    (
        "stalled",
        {"node": 2, "joining": False, "stalls": {"count": 3, "longest_ms": 812.5}},
        {"stalls": Stalls(3, 812.5)},
    ),
    (
        "lean health",
        {"node": 1, "vid": 5, "members": [[1, "a:1"]], "health": [{"node": 1, "state": "leader"}]},
        {"vid": 5, "members": ((1, "a:1"),)},
    ),
]


@pytest.mark.parametrize("wire, expected", [(w, e) for _, w, e in STATUSES], ids=[n for n, _, _ in STATUSES])
def test_replies_of_every_phase_read_with_defaults(wire: dict[str, Any], expected: dict[str, Any]) -> None:
    st = NodeStatus.from_wire(wire)
    for name, value in expected.items():
        where = st if name in ("bootstrapping",) else st.core
        assert getattr(where, name) == value, name
    assert st.app is None and st.traffic == ()


def test_the_apps_part_reads_the_figures_operators_see() -> None:
    app = AppStatus.from_wire(
        {
            "replicas": {"KV/0/0": "serving"},
            "transfers_active": [["KV/0/0", 3, 4096]],
            "shards_awaiting_log": 1,
            "awaiting_log": [{"shard": "P/0/1", "last_holders": [3], "last_view": 2}],
            "stopped": "left",
        }
    )
    assert app.transfers_active == (("KV/0/0", 3, 4096),)
    assert app.shards_awaiting_log == 1 and app.awaiting_log == (AwaitingLog("P/0/1", (3,), 2),)
    assert app.stopped == "left" and app.replicas == {"KV/0/0": "serving"}
    assert app.client_calls == ClientCalls() and app.digests == () and app.lost == ()  # what it left out


# The actor layer's parts: each written by its producer's to_wire reads back whole, and the
# wire forms keep the keys `status --json`, scripts and older readers use.
APP_PARTS: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "client calls",
        ClientCalls(
            (CallCount("get", "ok", 7), CallCount("put", "refused", 1)),
            (CallLatency("get", (5, 2, 0), 1.25),),
            (0.5, 1.0),
        ),
        {
            "calls": [["get", "ok", 7], ["put", "refused", 1]],
            "latency_ms": {"get": {"buckets": [5, 2, 0], "sum": 1.25}},
            "bounds_ms": [0.5, 1.0],
        },
    ),
    (
        "digests, a mismatch",
        ShardDigests(
            "KV/0/0",
            4,
            1,
            (DigestMismatch(make_version(2, 8), ((1, "aa"), (3, "bb"))),),
            ((2, make_version(2, 8)), (3, make_version(2, 4))),
        ),
        {
            "compared": 4,
            "mismatches": 1,
            "last_mismatches": [{"version": "2.8", "nodes": {"1": "aa", "3": "bb"}}],
            "agreed": {"2": "2.8", "3": "2.4"},
        },
    ),
    ("digests, all equal so far", ShardDigests("KV/0/0", 2, 0), {"compared": 2, "mismatches": 0}),
    (
        "restarted empty",
        RestartedEmpty("KV/0/1", 5, (3, 4), 4),
        {"shard": "KV/0/1", "view": 5, "last_holders": [3, 4], "last_view": 4, "lost_before": "5.0"},
    ),
    ("awaiting log", AwaitingLog("P/0/1", (3,), 2), {"shard": "P/0/1", "last_holders": [3], "last_view": 2}),
]


@pytest.mark.parametrize("part, wire", [(p, w) for _, p, w in APP_PARTS], ids=[n for n, _, _ in APP_PARTS])
def test_the_apps_parts_keep_their_wire_form_and_read_back(part: Any, wire: dict[str, Any]) -> None:
    assert part.to_wire() == wire
    back = ShardDigests.from_wire(part.shard, wire) if isinstance(part, ShardDigests) else type(part).from_wire(wire)
    assert back == part


def test_the_apps_part_reads_its_typed_parts_from_the_wire() -> None:
    app = AppStatus.from_wire(
        {
            "client_calls": {"calls": [["put", "ok", 3], ["get", "error", 2]]},  # a lean writer: no latency
            "digests": {"KV/0/0": {"compared": 2, "mismatches": 1}},
            "lost": {"P/0/0": [4, 9]},
            "restarted_empty": [{"shard": "KV/0/1", "view": 5, "last_holders": [3], "last_view": 4}],
        }
    )
    assert app.client_calls.total == 5 and app.client_calls.latency == ()
    assert app.digests == (ShardDigests("KV/0/0", 2, 1),)
    assert app.lost == (LostRange("P/0/0", 4, 9),)
    assert app.restarted_empty[0].lost_before == make_version(5, 0)
