"""The checker must catch planted violations, or a green simulator proves nothing."""

from __future__ import annotations

from typing import Callable

import pytest

from runtime.sim.cluster import SimCluster
from runtime.sim.invariants import Trace, check_trace
from runtime.sim.runner import run_seed

pytestmark = pytest.mark.timeout(120)

SEED, MEMBERS, MESSAGES = 11, 4, 400


def _victim(cluster: SimCluster) -> list:
    return cluster.trace.delivered[cluster.members[1]]


def swap_two(cluster: SimCluster) -> None:
    log = _victim(cluster)
    i = len(log) // 2
    log[i], log[i + 1] = log[i + 1], log[i]


def drop_one(cluster: SimCluster) -> None:
    del _victim(cluster)[len(_victim(cluster)) // 3]


def duplicate_one(cluster: SimCluster) -> None:
    log = _victim(cluster)
    log.insert(10, log[9])


def phantom(cluster: SimCluster) -> None:
    log = _victim(cluster)
    g, s, k, _ = log[5]
    log[5] = (g, s, k, b"never-sent")


def deliver_early(cluster: SimCluster) -> None:
    """Pretend the victim's frontier passed every message at step 1, before anyone got them."""
    trace = cluster.trace
    m = cluster.members[1]
    final = trace.frontier[m][-1][0]
    trace.frontier[m] = [(0, 0), (final, 1)]


def truncate_tail(cluster: SimCluster) -> None:
    del _victim(cluster)[-3:]


def reorder_sender(cluster: SimCluster) -> None:
    """Swap the payloads (not the slots) of two messages of one sender at one member."""
    log = _victim(cluster)
    sender = log[0][1]
    idx = [i for i, item in enumerate(log) if item[1] == sender][:2]
    a, b = idx
    log[a], log[b] = (log[a][0], sender, log[a][2], log[b][3]), (log[b][0], sender, log[b][2], log[a][3])


@pytest.mark.parametrize(
    "corrupt, invariant",
    [
        # Each corruption must trip the member-local check named, not only prefix agreement.
        (swap_two, {"order", "sender-order"}),
        (drop_one, {"sender-order", "round-robin"}),
        (duplicate_one, {"duplicate"}),
        (phantom, {"phantom"}),
        (deliver_early, {"unstable-delivery"}),
        (truncate_tail, {"liveness"}),
        (reorder_sender, {"sender-order"}),
    ],
)
def test_checker_catches_corruption(corrupt: Callable[[SimCluster], None], invariant: set[str]) -> None:
    clean = run_seed(SEED, MEMBERS, MESSAGES)
    assert clean.ok, clean.violations
    result = run_seed(SEED, MEMBERS, MESSAGES, corrupt=corrupt)
    kinds = {v.invariant for v in result.violations}
    assert kinds & invariant, result.violations


def test_checker_names_the_member_and_the_first_divergence() -> None:
    result = run_seed(SEED, MEMBERS, MESSAGES, corrupt=drop_one)
    prefix = [v for v in result.violations if v.invariant == "prefix-agreement"]
    assert prefix and "first divergence at delivery #" in prefix[0].detail
    assert prefix[0].member is not None


def test_decreasing_global_index_is_caught() -> None:
    trace = Trace(members=(1,), senders=(1, 2))
    trace.sent[1].extend([b"a", b"b"])
    trace.received[1][1].append((2, 1))
    trace.frontier[1].append((3, 2))
    trace.delivered[1].extend([(2, 1, 1, b"a"), (0, 1, 0, b"b")])
    kinds = {v.invariant for v in check_trace(trace, expect_complete=False)}
    assert kinds == {"order"}


def test_round_robin_slot_mismatch_is_caught() -> None:
    trace = Trace(members=(1, 2), senders=(1, 2))
    trace.sent[1].append(b"a")
    trace.received[1][1].append((1, 1))
    trace.received[2][1].append((1, 1))
    for m in (1, 2):
        trace.frontier[m].append((2, 2))
        trace.delivered[m].append((1, 1, 0, b"a"))  # sender 1 is position 0: index must be 0
    kinds = {v.invariant for v in check_trace(trace)}
    assert kinds == {"round-robin"}
