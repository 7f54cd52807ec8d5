"""The actor layer's status parts, typed: each producer's value goes on the wire in the form
`status --json`, scripts and older readers know, and the engine's readers (``status``, the
metrics endpoint) show it read back by attribute, with the same words and figures as before."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from derecho_actors.node.call_stats import BUCKETS_MS, CallStats
from derecho_actors.node.frontiers import PersistenceStatus
from derecho_actors.node.shard_loss import LossStatus
from derecho_actors.wire.digest import DigestBook
from runtime.core.layout import ShardId
from runtime.core.status import AwaitingLog, LostRange, RestartedEmpty
from runtime.core.versions import make_version
from runtime.drivers.metrics import StatusCollector
from runtime.drivers.status import render_status

pytestmark = pytest.mark.timeout(30)

KV = ShardId("KV", 0, 0)


def call_stats() -> CallStats:
    stats = CallStats()
    stats.done("put", "ok", 0.7, n=1)
    stats.done("put", "ok", 30.0, n=1)
    stats.done("get", "refused", None, n=4)
    return stats


def digest_book() -> DigestBook:
    book = DigestBook(1, lambda node, data: None, lambda: None)
    book._compare(KV, make_version(2, 8), 3, b"\xbb", b"\xaa")  # differ
    book._compare(KV, make_version(2, 4), 2, b"\xcc", b"\xcc")  # agree
    return book


def test_call_stats_keep_their_wire_form() -> None:
    assert call_stats().status().to_wire() == {
        "calls": [["get", "refused", 4], ["put", "ok", 2]],
        "latency_ms": {"put": {"buckets": [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], "sum": 30.7}},
        "bounds_ms": list(BUCKETS_MS),
    }


def test_digests_keep_their_wire_form() -> None:
    persistence = PersistenceStatus(
        frontiers=(("KV/0/0", 12),), lost=(LostRange("P/0/0", 4, 9),), digests=digest_book().status()
    )
    assert persistence.to_wire() == {
        "frontiers": {"KV/0/0": 12},
        "lost": {"P/0/0": [4, 9]},
        "digests": {
            "KV/0/0": {
                "compared": 2,
                "mismatches": 1,
                "last_mismatches": [{"version": "2.8", "nodes": {"1": "aa", "3": "bb"}}],
                "agreed": {"2": "2.4"},
            }
        },
    }
    assert PersistenceStatus((), (), ()).to_wire() == {"frontiers": {}}  # lost and digests only when there are some


def node_status() -> dict[str, Any]:
    """A status reply as a node sends it, its app part made by the producers."""
    loss = LossStatus(1, (RestartedEmpty("KV/0/1", 5, (3, 4), 4),), (AwaitingLog("P/0/1", (3,), 2),))
    persistence = PersistenceStatus((), (LostRange("P/0/0", 4, 9),), digest_book().status())
    app = {"replicas": {"KV/0/0": "serving"}, "client_calls": call_stats().status().to_wire()}
    app.update(loss.to_wire(), **persistence.to_wire())
    return {
        "node": 1,
        "cluster": "c",
        "vid": 5,
        "members": [[1, "a:1"]],
        "leader": 1,
        "health": [{"node": 1, "state": "leader", "heard_ms_ago": 0.0}],
        "layout": [["KV/0/0", [1]]],
        "shards": [],
        "app": app,
    }


def test_status_prints_the_lost_shards_as_before(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    render_status(node_status())
    printed = capsys.readouterr().out
    for line in (
        "shard P/0/1 waits for a node that held it last ([3], view 2) to come back with its data folder (or a node "
        "started with --accept-loss)",
        "shard KV/0/1 started anew in view 5: its updates before 5.0 are gone (held last by [3, 4])",
        "versions given up by a total restart (--accept-loss): {'P/0/0': [4, 9]}",
    ):
        assert line in printed, printed


def test_metrics_read_the_typed_parts() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(node_status))
    text = generate_latest(registry).decode()
    for sample in (
        'derecho_client_calls_total{method="get",outcome="refused"} 4.0',
        'derecho_client_calls_total{method="put",outcome="ok"} 2.0',
        'derecho_client_call_seconds_bucket{le="0.001",method="put"} 1.0',
        'derecho_client_call_seconds_bucket{le="+Inf",method="put"} 2.0',
        'derecho_client_call_seconds_count{method="put"} 2.0',
        'derecho_digest_mismatches_total{shard="KV/0/0"} 1.0',
        "derecho_shards_restarted_empty_total 1.0",
        "derecho_shards_awaiting_log 1.0",
    ):
        assert sample in text, (sample, text)
