"""Persistent mode of the simulator: crash-and-restart faults, simulated disks, and the
persistence checks, each shown to catch a planted violation."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

import pytest

from runtime.core.versions import format_version, make_version, version_parts
from runtime.sim.cluster import SimCluster
from runtime.sim.invariants import RestartRecord, persisted_versions
from runtime.sim.runner import RunResult, run_seed
from tests.sim import pool

pytestmark = pytest.mark.timeout(300)

RESTARTS: dict = {}  # the scenario every corruption is planted in (set by the fixture)
RESTART_SEEDS = range(20, 26)


@pytest.fixture(scope="module", autouse=True)
def restart_runs() -> dict[int, Future[RunResult]]:
    """The restart seeds, started on the workers as the module begins: one of them is long,
    and the module's other runs go on meanwhile."""
    return {seed: pool.submit(seed, faults="restart") for seed in RESTART_SEEDS}


def _suits(cluster: SimCluster) -> None:
    """Raises unless the run has what the corruptions need (used as a no-op 'corruption')."""
    trace = cluster.trace
    assert trace.restarts, "no total restart"
    shards = persisted_versions(trace)
    assert any(len(_live_members(cluster, s)) >= 2 and len(v) > 50 for s, v in shards.items())


@pytest.fixture(scope="module")
def clean_run():
    """A small run with a node restart (and state transfer) and a total restart: seed 4 when
    this was written; the search keeps the tests independent of timing changes in the core."""
    for seed in range(4, 40):
        run = dict(seed=seed, faults="restart", messages=600)
        try:
            result = run_seed(**run, corrupt=_suits)
        except AssertionError:
            continue
        if result.ok and result.node_restarts and result.total_restarts and result.transfers:
            RESTARTS.update(run)
            return result
    pytest.fail("no seed gives the scenario")


@pytest.fixture(scope="module")
def planted(clean_run) -> dict[Callable[[SimCluster], None] | None, Future[RunResult]]:
    """The scenario with each corruption planted (and once as it ran, for its transcript),
    all started at once on the workers."""
    runs: dict[Callable[[SimCluster], None] | None, Future[RunResult]] = {
        corrupt: pool.submit(**RESTARTS, corrupt=corrupt) for corrupt, _ in CORRUPTIONS
    }
    runs[None] = pool.submit(**RESTARTS, verbose=True)
    return runs


def test_scenario_covers_restarts_and_persistence(clean_run) -> None:
    assert clean_run.total_restarts >= 1 and clean_run.node_restarts >= 1
    assert clean_run.transfers >= 1
    assert clean_run.persisted_checked > 100


def _live_members(cluster: SimCluster, shard: tuple | None = None) -> list[int]:
    """Live nodes at the end (holding ``shard`` in their last view, if given)."""
    trace = cluster.trace
    live = [inc for inc in trace.incarnations() if inc not in trace.ended and trace.views.get(inc)]
    if shard is not None:
        live = [inc for inc in live if inc[0] in trace.views[inc][-1].shard_members(shard)]
    return sorted(inc[0] for inc in live)


def _persisted(cluster: SimCluster) -> tuple[tuple, dict[int, bytes]]:
    """The shard with the most persisted versions, and those versions."""
    shard, versions = max(persisted_versions(cluster.trace).items(), key=lambda kv: len(kv[1]))
    return shard, versions


def _log(cluster: SimCluster, shard: tuple, which: int) -> list:
    return cluster.disks[_live_members(cluster, shard)[which]].logs[shard]


def drop_persisted_record(cluster: SimCluster) -> None:
    """A live member's disk loses one record that was inside a persistence frontier."""
    shard, versions = _persisted(cluster)
    log = _log(cluster, shard, -1)
    target = sorted(versions)[len(versions) // 2]
    log[:] = [r for r in log if r[0] != target]


def change_persisted_payload(cluster: SimCluster) -> None:
    shard, versions = _persisted(cluster)
    log = _log(cluster, shard, 0)
    target = sorted(versions)[len(versions) // 3]
    i = next(i for i, r in enumerate(log) if r[0] == target)
    log[i] = (target, b"tampered")


def lose_persisted_tail_everywhere(cluster: SimCluster) -> None:
    """Every disk loses the last persisted version (as if fsync had lied)."""
    shard, versions = _persisted(cluster)
    last = max(versions)
    for disk in cluster.disks.values():
        log = disk.logs.get(shard)
        if log:
            log[:] = [r for r in log if r[0] != last]


def swap_two_records(cluster: SimCluster) -> None:
    shard, _ = _persisted(cluster)
    log = _log(cluster, shard, 0)
    i = len(log) // 2
    log[i], log[i + 1] = log[i + 1], log[i]


def record_never_delivered(cluster: SimCluster) -> None:
    """A disk holds a version (beyond anything persisted) that nobody ever delivered."""
    shard, _ = _persisted(cluster)
    log = _log(cluster, shard, 0)
    vid, _ = version_parts(log[-1][0])
    log.append((make_version(vid + 50, 0), b"from nowhere"))


def members_disagree(cluster: SimCluster) -> None:
    """Two live members of a shard disagree: one lacks a record in the middle of what both
    hold, so their logs are no longer prefixes of one another."""
    shard = next(s for s in sorted(persisted_versions(cluster.trace)) if len(_live_members(cluster, s)) >= 2)
    log = _log(cluster, shard, -1)
    del log[len(log) // 2]


def frontier_ahead_of_disk(cluster: SimCluster) -> None:
    """A core reports a frontier beyond what a member of its view had on disk then."""
    trace = cluster.trace
    key = min(trace.persisted, key=lambda k: (k[1], k[0]))
    (version, step), *rest = trace.persisted[key]
    vid, index = version_parts(version)
    trace.persisted[key] = [(make_version(vid, index + 10_000), step), *rest]


def disk_late(cluster: SimCluster) -> None:
    """A member's disk got its records later than the frontiers that counted on them."""
    trace = cluster.trace
    node = _live_members(cluster)[0]
    for key in [k for k in trace.durable if k[0] == node]:
        trace.durable[key] = [(v, s + 10**9) for v, s in trace.durable[key]]


def restart_without_majority(cluster: SimCluster) -> None:
    r = cluster.trace.restarts[0]
    cluster.trace.restarts[0] = RestartRecord(r.vid, r.members[:1], r.latest_vid, r.kept, r.step)


def restart_reuses_latest_view(cluster: SimCluster) -> None:
    r = cluster.trace.restarts[0]
    cluster.trace.restarts[0] = RestartRecord(r.vid - 1, r.members, r.vid - 1, r.kept, r.step)


def restart_refused(cluster: SimCluster) -> None:
    cluster.trace.restart_failures.append("total restart refused: planted")


def restart_discards_persisted(cluster: SimCluster) -> None:
    """A total restart that kept only part of what had been persisted before it: every disk
    loses the persisted versions between a cut and the restart view."""
    trace = cluster.trace
    r = trace.restarts[0]
    shard, versions = _persisted(cluster)
    before = sorted(v for v in versions if version_parts(v)[0] < r.vid)
    cut = before[len(before) // 2]
    for disk in cluster.disks.values():
        log = disk.logs.get(shard)
        if log:
            log[:] = [rec for rec in log if not cut < rec[0] < make_version(r.vid, 0)]


CORRUPTIONS = [
    (drop_persisted_record, {"persisted-lost"}),
    (change_persisted_payload, {"persisted-lost", "log-conflict"}),
    (lose_persisted_tail_everywhere, {"persisted-lost"}),
    (swap_two_records, {"log-order"}),
    (record_never_delivered, {"log-conflict"}),
    (members_disagree, {"log-divergence"}),
    (frontier_ahead_of_disk, {"persisted-beyond-durable"}),
    (disk_late, {"persisted-beyond-durable"}),
    (restart_without_majority, {"majority", "restart-quorum"}),
    (restart_reuses_latest_view, {"restart-view"}),
    (restart_refused, {"restart-failed"}),
    (restart_discards_persisted, {"persisted-lost"}),
]


@pytest.mark.parametrize(
    "corrupt, invariant",
    CORRUPTIONS,
    # a set named sorted: ids must not depend on the hash seed (pytest-xdist compares collections)
    ids=lambda x: getattr(x, "__name__", None) or ("+".join(sorted(x)) if isinstance(x, set) else str(x)),
)
def test_checker_catches_persistence_corruption(
    planted, corrupt: Callable[[SimCluster], None], invariant: set[str]
) -> None:
    result = planted[corrupt].result()
    kinds = {v.invariant for v in result.violations}
    assert invariant <= kinds, result.violations


def test_persisted_loss_names_the_node_and_the_version(planted) -> None:
    result = planted[drop_persisted_record].result()
    lost = [v for v in result.violations if v.invariant == "persisted-lost"]
    assert lost and lost[0].member is not None and "first " in lost[0].detail and "missing" in lost[0].detail


@pytest.mark.parametrize("seed", RESTART_SEEDS)
def test_restart_seeds_pass(seed: int, restart_runs: dict[int, Future[RunResult]]) -> None:
    result = restart_runs[seed].result()
    assert result.ok, f"seed {seed}: {result.violations[:3]}"


def test_restart_replays_identically() -> None:
    a, b = (pool.submit(5, faults="restart", verbose=True) for _ in range(2))
    assert a.result().transcript == b.result().transcript
    text = "\n".join(a.result().transcript)
    assert "RESTART in view" in text or "restarts with its disk" in text


def test_total_restart_transcript_names_plan_and_transfers(planted) -> None:
    result = planted[None].result()
    text = "\n".join(result.transcript)
    assert "CRASH ALL nodes" in text and "RESTART in view" in text and "sources" in text
    assert "awaits shard" in text and "state from node" in text


def test_non_persistent_modes_check_no_persistence() -> None:
    result = run_seed(3, faults="crash", messages=300)
    assert result.ok and result.persisted_checked == 0 and result.total_restarts == 0


def _find(invariant: str, avoid: str | None = None, seeds: range = range(60)) -> list[int]:
    """Seeds of small restart-race runs whose restart from plain reports trips ``invariant``."""
    found = []
    for seed in seeds:
        plain = run_seed(seed, members=3, messages=100, faults="restart-race", plain_restart_quorum=True)
        kinds = {v.invariant for v in plain.violations}
        if invariant in kinds and (avoid is None or avoid not in kinds):
            found.append(seed)
            if len(found) == 2:
                break
    return found


@pytest.mark.parametrize(
    "invariant, avoid",
    [
        # A node installed view v+1 and reported last; a majority of view v, which had accepted
        # v+1, restarted into a different view v+1: the id reuse that reports of installed views
        # alone allow (seed 2 when this was written). With accepted ids the planner waits for
        # the installer and restarts above v+1.
        ("split-brain", None),
        # A newcomer whose state transfer had not landed was a shard's only reporter and its
        # short log was taken as the longest: persisted versions lost. Its transfer marker
        # keeps it from vouching for the shard.
        ("persisted-lost", "split-brain"),
    ],
)
def test_plain_reports_lose_what_the_full_reports_keep(invariant: str, avoid: str | None) -> None:
    """The restart-race mode strikes where plain reports (last view and log ends only) cannot
    tell what happened. From them the shipped planner goes wrong and the checker says so; from
    full reports (accepted view id, transfer markers, frontiers) the same seeds stay correct.
    The seed search keeps the test independent of timing changes in the core."""
    seeds = _find(invariant, avoid)
    assert seeds, f"no seed showed {invariant}"
    for seed in seeds:
        full = run_seed(seed, members=3, messages=100, faults="restart-race")
        assert full.ok, (seed, full.violations[:2])
        assert full.total_restarts >= 1


# ------------------------------------------------------------------ damaged disks, refused restarts
DAMAGE: dict = {}  # what the last damage did: shard, cut, recorded frontier


def lying_fsync(cluster: SimCluster) -> None:
    """Right after the first total crash, every disk of the shard with the highest recorded
    frontier loses its last records back to a few versions below that frontier, as if fsync
    had lied everywhere at once."""
    if DAMAGE.get("done"):
        return
    frontiers = [(f, sid) for d in cluster.disks.values() for sid, f in d.frontiers.items()]
    if not frontiers:
        return
    frontier, shard = max(frontiers)
    versions = sorted({v for d in cluster.disks.values() for v, _ in d.logs.get(shard, []) if v <= frontier})
    if len(versions) < 6:
        return
    cut = versions[-5]
    for node, disk in sorted(cluster.disks.items()):
        if disk.drop_after(shard, cut):
            cluster._durable_changed(node, shard)
    DAMAGE.update(done=True, shard=tuple(shard), cut=cut, frontier=frontier)


def _damaged(accept_loss: bool) -> tuple[RunResult, dict, list[RestartRecord]]:
    """The first small restart run whose disks ``lying_fsync`` could damage: its result, the
    damage, and its total restarts."""
    restarts: list[RestartRecord] = []

    def keep(cluster: SimCluster) -> None:
        restarts[:] = cluster.trace.restarts

    for seed in range(40):
        DAMAGE.clear()
        result = run_seed(
            seed,
            faults="restart",
            messages=600,
            accept_loss=accept_loss,
            before_restart=lying_fsync,
            corrupt=keep,
        )
        if DAMAGE.get("done"):
            return result, dict(DAMAGE), restarts
    pytest.fail("no seed has a total restart after persisted versions")


def test_a_restart_from_damaged_logs_is_refused_with_a_report() -> None:
    result, damage, restarts = _damaged(accept_loss=False)
    assert {v.invariant for v in result.violations} == {"restart-failed"}, result.violations
    (refusal,) = [v.detail for v in result.violations]
    assert "total restart refused" in refusal and "--accept-loss" in refusal
    shard = "/".join(str(x) for x in damage["shard"])
    assert f"shard {shard}: versions {format_version(damage['cut'] + 1)} to " in refusal
    assert result.total_restarts == 0 and restarts == []


def test_an_accepted_loss_restarts_and_names_the_lost_versions() -> None:
    """With --accept-loss the restart goes ahead and declares the lost range; the checker
    still reports the loss (those versions were persisted), and only inside that range."""
    result, damage, restarts = _damaged(accept_loss=True)
    assert result.total_restarts >= 1
    ((shard, lo, hi),) = restarts[0].lost
    assert shard == damage["shard"] and lo == damage["cut"] + 1 and damage["cut"] < hi <= damage["frontier"]
    lost = [v for v in result.violations if v.invariant == "persisted-lost"]
    assert lost and {v.invariant for v in result.violations} == {"persisted-lost"}
    for v in lost:
        first_missing = v.detail.split("first ", 1)[1].split(" ", 1)[0]
        vid, index = (int(x) for x in first_missing.split("."))
        assert lo <= make_version(vid, index) <= hi


# ------------------------------------------------------------------------------ disk errors
@pytest.fixture(scope="module")
def disk_error_run():
    """A run in which a node's disk fails and the node stops before anything else stops it."""
    for seed in range(60):
        result = run_seed(seed, faults="restart", messages=600, verbose=True)
        if result.disk_errors and any("stops: disk error" in line for line in result.transcript):
            return result
    pytest.fail("no seed has a disk error")


def test_a_failing_disk_makes_its_node_fail_stop(disk_error_run) -> None:
    result = disk_error_run
    assert result.ok, result.violations[:3]
    text = "\n".join(result.transcript)
    failed = next(line for line in result.transcript if "starts failing writes" in line)
    node = failed.split("disk of node ", 1)[1].split(" ", 1)[0]
    assert f"node {node} fail-stops (disk writes fail): asks to leave" in text
    assert f"node {node} stops: disk error" in text
    # Once repaired it comes back with its disk (or with everyone, after a total restart).
    assert f"node {node} restarts with its disk" in text or "RESTART in view" in text


def test_checker_catches_a_node_going_on_with_a_failed_disk(disk_error_run) -> None:
    def still_running(cluster: SimCluster) -> None:
        for inc in cluster.trace.disk_failed:
            cluster.trace.ended.pop(inc, None)

    result = run_seed(disk_error_run.params.seed, faults="restart", messages=600, corrupt=still_running)
    assert "no-fail-stop" in {v.invariant for v in result.violations}
