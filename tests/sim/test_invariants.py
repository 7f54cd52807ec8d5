"""The checker must catch planted violations, or a green simulator proves nothing."""

from __future__ import annotations

from typing import Callable

import pytest

from runtime.sim.cluster import SimCluster
from runtime.sim.invariants import Trace, ViewRecord, check_trace
from runtime.sim.runner import run_seed

pytestmark = pytest.mark.timeout(120)

# A fault-free run, and a run with crashes whose group goes through view changes.
CLEAN = dict(seed=11, members=4, messages=400)
CHANGING = dict(seed=3, members=5, messages=600, faults="crash")


def _incs(cluster: SimCluster) -> list:
    """Incarnations that lived to the end, in a fixed order."""
    return sorted(inc for inc in cluster.trace.delivered if inc not in cluster.trace.ended)


def _victim_log(cluster: SimCluster) -> list:
    return cluster.trace.delivered[_incs(cluster)[1]]


def swap_two(cluster: SimCluster) -> None:
    log = _victim_log(cluster)
    i = len(log) // 2
    log[i], log[i + 1] = log[i + 1], log[i]


def drop_one(cluster: SimCluster) -> None:
    del _victim_log(cluster)[len(_victim_log(cluster)) // 3]


def duplicate_one(cluster: SimCluster) -> None:
    log = _victim_log(cluster)
    log.insert(10, log[9])


def phantom(cluster: SimCluster) -> None:
    log = _victim_log(cluster)
    vid, shard, g, s, k, _, final = log[5]
    log[5] = (vid, shard, g, s, k, b"never-sent", final)


def deliver_early(cluster: SimCluster) -> None:
    """Pretend the victim's frontier passed every message at step 1, before anyone had them."""
    trace = cluster.trace
    inc = _incs(cluster)[1]
    for key in [k for k in trace.frontier if k[0] == inc]:
        final = trace.frontier[key][-1][0]
        trace.frontier[key] = [(final, 1)]


def truncate_tail(cluster: SimCluster) -> None:
    del _victim_log(cluster)[-3:]


def reorder_sender(cluster: SimCluster) -> None:
    """Swap the payloads (not the slots) of two messages of one sender at one member."""
    log = _victim_log(cluster)
    sender = log[0][3]
    a, b = [i for i, r in enumerate(log) if r[3] == sender][:2]
    ra, rb = log[a], log[b]
    log[a] = ra[:5] + (rb[5],) + ra[6:]
    log[b] = rb[:5] + (ra[5],) + rb[6:]


def lose_everywhere(cluster: SimCluster) -> None:
    """Remove the last delivered message of the run from every log, as if nobody got it."""
    last = _victim_log(cluster)[-1][5]
    for log in cluster.trace.delivered.values():
        log[:] = [r for r in log if r[5] != last]


def two_views_one_id(cluster: SimCluster) -> None:
    inc = _incs(cluster)[0]
    v = cluster.trace.views[inc][-1]
    cluster.trace.views[inc][-1] = ViewRecord(v.vid, v.members[:-1] + (999,), v.shards)


def survivor_misses_last_message(cluster: SimCluster) -> None:
    """A survivor of the first view change lacks that view's last delivery."""
    trace = cluster.trace
    inc = next(i for i in _incs(cluster) if any(v.vid == 1 for v in trace.views[i]))
    log = trace.delivered[inc]
    last_in_view0 = max(i for i, r in enumerate(log) if r[0] == 0)
    del log[last_in_view0]


def minority_accepted(cluster: SimCluster) -> None:
    for acc in cluster.trace.accepted.values():
        acc[:] = [a for a in acc if a[1][0] != 1]


@pytest.mark.parametrize(
    "run, corrupt, invariant",
    [
        # Each corruption must trip the check named (prefix agreement would often catch it too).
        (CLEAN, swap_two, {"order", "sender-order"}),
        (CLEAN, drop_one, {"sender-order", "round-robin", "prefix-agreement"}),
        (CLEAN, duplicate_one, {"duplicate"}),
        (CLEAN, phantom, {"phantom"}),
        (CLEAN, deliver_early, {"unstable-delivery"}),
        (CLEAN, truncate_tail, {"liveness"}),
        (CLEAN, reorder_sender, {"sender-order"}),
        (CLEAN, lose_everywhere, {"lost"}),
        (CHANGING, two_views_one_id, {"split-brain"}),
        (CHANGING, survivor_misses_last_message, {"virtual-synchrony"}),
        (CHANGING, minority_accepted, {"majority"}),
    ],
    # sets named sorted: test ids must not depend on the hash seed (pytest-xdist's workers
    # compare their collections)
    ids=lambda x: (
        getattr(x, "__name__", None)
        or (
            "changing"
            if x is CHANGING
            else "clean"
            if x is CLEAN
            else "+".join(sorted(x))
            if isinstance(x, set)
            else str(x)
        )
    ),
)
def test_checker_catches_corruption(run: dict, corrupt: Callable[[SimCluster], None], invariant: set[str]) -> None:
    clean = run_seed(**run)
    assert clean.ok, clean.violations
    if run is CHANGING:
        assert clean.views >= 1, "the scenario needs a view change"
    result = run_seed(**run, corrupt=corrupt)
    kinds = {v.invariant for v in result.violations}
    assert kinds & invariant, result.violations


def test_checker_names_the_member_and_the_first_divergence() -> None:
    result = run_seed(**CLEAN, corrupt=drop_one)
    prefix = [v for v in result.violations if v.invariant == "prefix-agreement"]
    assert prefix and "first divergence at delivery #" in prefix[0].detail
    assert prefix[0].member is not None


def _tiny_trace(records: list) -> Trace:
    trace = Trace()
    view = ViewRecord(0, (1, 2), ((("T", 0, 0), (1, 2)),))
    shard = ("T", 0, 0)
    trace.sent = {1: [b"a", b"b"], 2: []}
    for p in (b"a", b"b"):
        trace.shard_of[p] = shard
        trace.origin[p] = (1, 0)
    for inc in ((1, 0), (2, 0)):
        trace.views[inc] = [view]
        trace.delivered[inc] = list(records)
        trace.frontier[(inc, 0, shard)] = [(5, 2)]
        trace.received[(inc, 0, shard, 1)] = [(2, 1)]
    trace.expect_complete = False
    return trace


def test_decreasing_global_index_is_caught() -> None:
    shard = ("T", 0, 0)
    trace = _tiny_trace([(0, shard, 2, 1, 1, b"b", False), (0, shard, 0, 1, 0, b"a", False)])
    assert "order" in {v.invariant for v in check_trace(trace)}


def test_round_robin_slot_mismatch_is_caught() -> None:
    shard = ("T", 0, 0)
    trace = _tiny_trace([(0, shard, 1, 1, 0, b"a", False)])  # sender 1 is position 0: index must be 0
    assert {v.invariant for v in check_trace(trace)} == {"round-robin"}


def test_well_formed_tiny_trace_passes() -> None:
    shard = ("T", 0, 0)
    trace = _tiny_trace([(0, shard, 0, 1, 0, b"a", False), (0, shard, 2, 1, 1, b"b", False)])
    assert check_trace(trace) == []
