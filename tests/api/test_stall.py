"""A stall is not a partition: real node processes, TLS on, stopped with SIGSTOP.

Every member stopped together (a VM pause, an overloaded host) resumes in the same view with
its in-memory state; a member stopped alone while the others go on is removed by them and
comes back as a new member (state transfer), in the same process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import derecho_actors as da
from derecho_actors.node.rejoin import Rejoiner, out_of_group, rejoin_contacts
from derecho_actors.tools.cluster import LocalCluster
from runtime.core.layout import LayoutPolicy, ShardPolicy, compute_layout
from runtime.core.view import View
from runtime.errors import GroupClosed
from runtime.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from tests.api.faults_apps import Counter, Journal

pytestmark = pytest.mark.timeout(240)

SUSPICION_MS = 400
FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": str(SUSPICION_MS)}
STALL = 4 * SUSPICION_MS / 1000
SURVIVES_ONE = da.Layout({Counter: da.ShardPolicy(min_nodes=2, max_nodes=3)})


def wait_for(ok: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``ok`` until it is true; returns the seconds it took. Fails naming ``what``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(da.DerechoError, OSError):
            if ok():
                return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_text(cluster: LocalCluster, node: int) -> str:
    return (cluster.workdir / f"node-{node}.log").read_text(errors="replace")


@contextlib.contextmanager
def stopped(cluster: LocalCluster, nodes: list[int]) -> Any:
    """SIGSTOP ``nodes`` for the block; SIGCONT them after, whatever happens."""
    pids = [cluster.procs[n].pid for n in nodes]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_every_member_stopped_together_resumes_with_its_state(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)
        acked = 0
        for _ in range(50):
            c.add(1).get(timeout=10)
            acked += 1
        vid = cluster.status(1)["vid"]
        with stopped(cluster, [1, 2, 3]):
            time.sleep(STALL)
        took = wait_for(lambda: c.add(1).get(timeout=5), 30, "the group to serve again")
        acked += 1
        for _ in range(20):
            c.add(1).get(timeout=10)
            acked += 1
        for node in (1, 2, 3):
            assert cluster.exit_code(node) is None, log_text(cluster, node)[-2000:]
            st = cluster.status(node)
            assert st["vid"] == vid, f"node {node} moved from view {vid} to {st['vid']}: not the same group"
            assert st.get("stalls", {}).get("count", 0) >= 1, st.get("stalls")
            assert "did not run for" in log_text(cluster, node)
        values = {n: c.value(node=n).get(timeout=10)[n] for n in (1, 2, 3)}
        assert values == {1: acked, 2: acked, 3: acked}, f"in-memory state lost: {values}, {acked} acked"
        print(f"all 3 stopped {STALL:.1f} s: serving again {took:.2f} s after SIGCONT, view {vid} kept")


def test_one_member_stopped_while_the_others_go_on_rejoins_as_a_new_member(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)
        acked = 0
        for _ in range(30):
            c.add(1).get(timeout=10)
            acked += 1
        pid = cluster.procs[3].pid
        with stopped(cluster, [3]):
            cluster.wait_members({1, 2})  # the others go on without it
            for _ in range(20):  # writes node 3 cannot have seen
                c.add(1).get(timeout=10)
                acked += 1
            time.sleep(max(0.0, STALL - 1.0))
        took = wait_for(lambda: set(cluster.members()) == {1, 2, 3} and cluster._all_in_view(), 60, "node 3 back")
        wait_for(lambda: "back in the group as a new member" in log_text(cluster, 3), 20, "node 3's line saying so")
        assert cluster.procs[3].pid == pid and cluster.exit_code(3) is None, "node 3's process did not carry on"
        assert "joins again as a new member" in log_text(cluster, 3)
        for _ in range(10):
            c.add(1).get(timeout=10)
            acked += 1
        values = {n: c.value(node=n).get(timeout=10)[n] for n in (1, 2, 3)}
        assert values == {1: acked, 2: acked, 3: acked}, f"node 3 did not get the state: {values}, {acked} acked"
        print(f"node 3 stopped alone: back as a new member {took:.2f} s after SIGCONT, state transferred")


def test_a_persistent_member_stopped_alone_rejoins_from_its_log(tmp_path: Path) -> None:
    """With a log on disk the rejoin is a restart of this node: it offers its log, the group
    answers that it runs, and the node joins and fetches the versions it missed."""
    layout = da.Layout({Journal: da.ShardPolicy(min_nodes=2, max_nodes=3)})
    overrides = {**FAST, "persistence.restart_quorum_wait_ms": "100"}
    with LocalCluster(3, [Journal], layout, overrides=overrides, workdir=str(tmp_path)) as cluster:
        j = cluster.handle(Journal)
        for i in range(20):
            j.put(f"k{i}", b"v").persisted(timeout=10)
        with stopped(cluster, [3]):
            cluster.wait_members({1, 2})
            for i in range(20, 40):  # versions node 3 missed
                j.put(f"k{i}", b"v").persisted(timeout=10)
            time.sleep(max(0.0, STALL - 1.0))
        wait_for(lambda: set(cluster.members()) == {1, 2, 3} and cluster._all_in_view(), 60, "node 3 back")
        wait_for(lambda: "back in the group as a new member" in log_text(cluster, 3), 20, "node 3's line saying so")
        assert cluster.exit_code(3) is None
        counts = {n: j.count(node=n).get(timeout=10)[n] for n in (1, 2, 3)}
        assert counts == {1: 40, 2: 40, 3: 40}, counts
        assert j.get("k39", node=3).get(timeout=10)[3] == b"v"


def test_on_partition_exit_stops_a_removed_member_with_exit_3(tmp_path: Path) -> None:
    overrides = {**FAST, "node.on_partition": "exit"}
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=overrides, workdir=str(tmp_path)) as cluster:
        with stopped(cluster, [3]):
            cluster.wait_members({1, 2})
        wait_for(lambda: cluster.exit_code(3) is not None, 15, "node 3 to exit")
        assert cluster.exit_code(3) == EXIT_STOPPED, log_text(cluster, 3)[-2000:]
        assert "joins again" not in log_text(cluster, 3)


# ------------------------------------------------------------------ the rejoin loop, alone
def view_of(members: tuple[int, ...]) -> View:
    policy = LayoutPolicy.of({"T": ShardPolicy(min_nodes=1)})
    return View(4, members, tuple(f"h{m}:70{m}" for m in members), compute_layout(policy, members))


@pytest.mark.parametrize(
    "view, configured, expected",
    [
        pytest.param(view_of((1, 2, 3)), [], ["h1:701", "h2:702"], id="last-view-others"),
        pytest.param(view_of((1, 2, 3)), ["h2:702", "h9:709"], ["h1:701", "h2:702", "h9:709"], id="then-configured"),
        pytest.param(None, ["h9:709"], ["h9:709"], id="no-view-known"),
        pytest.param(view_of((3,)), [], [], id="alone-in-its-view"),
    ],
)
def test_rejoin_contacts_are_the_last_views_other_members(
    view: View | None, configured: list[str], expected: list[str]
) -> None:
    assert rejoin_contacts(view, 3, configured) == expected


@pytest.mark.parametrize(
    "reason, rejoins",
    [
        ("partitioned: reaches only 1 of 3 members of view 2, not a majority", True),
        ("suspected by node 1 in view 2", True),
        ("removed from the group in view 5", True),
        ("left the group", False),
        ("storage failure: fsync failed", False),
        ("restart refused: logs lack versions", False),
        ("join refused: layout differs", False),
    ],
)
def test_which_stops_mean_out_of_the_group(reason: str, rejoins: bool) -> None:
    assert out_of_group(reason) is rejoins


class FakeGroup:
    """What the rejoin loop reads of a Group."""

    def __init__(self, stopped: str | None = None, exit_code: int = EXIT_STOPPED) -> None:
        self.stopped = stopped
        self.exit_code = exit_code
        self.view = view_of((1, 2, 3))
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "failures, final, code",
    [
        pytest.param(["node 3 stopped: node.contacts: no contact reachable (h1:701)"], None, EXIT_OK, id="unreachable"),
        pytest.param(["node 3 joined no view within 12 s; check node.contacts"] * 3, None, EXIT_OK, id="no-view-x3"),
        pytest.param(["node 3 stopped: join refused: layout differs"], "join refused", 2, id="refused-is-final"),
        pytest.param(
            ["node 3 stopped: start-up failed: node.contacts: no contact reachable (h1:701) within 900 ms"],
            None,
            EXIT_OK,
            id="unreachable-at-start",
        ),
        pytest.param(
            [
                "node 3 stopped: start-up failed: node.contacts: refused (node 1 at h1:701: node 3 is not among "
                "security.allowed_members); no contact reachable (h1:701) within 900 ms"
            ],
            "refused",
            EXIT_CONFIG,
            id="refused-for-good-is-final",
        ),
        pytest.param(
            ["node 3 stopped: storage failure: saving view 2 in /srv/partitioned-kv/node3 failed: ENOSPC"],
            "storage failure",
            EXIT_STOPPED,
            id="words-inside-a-reason-are-no-removal",
        ),
    ],
)
def test_rejoin_retries_what_a_majority_can_cure_and_stops_on_the_rest(
    failures: list[str], final: str | None, code: int
) -> None:
    done = threading.Event()
    asked: list[list[str]] = []
    back = FakeGroup()

    def start(contacts: list[str]) -> Any:
        asked.append(contacts)
        if len(asked) <= len(failures):
            raise GroupClosed(failures[len(asked) - 1], 2 if "refused" in failures[len(asked) - 1] else EXIT_STOPPED)
        done.set()  # back: the test ends the loop
        return back

    rejoiner = Rejoiner(3, "rejoin", [], start, done, first_delay=0.01, max_delay=0.02)
    first = FakeGroup("partitioned: reaches only 1 of 3 members of view 4, not a majority")
    running, got = rejoiner.run(first, poll=0.001)  # type: ignore[arg-type]
    assert first.closed
    assert all(c == ["h1:701", "h2:702"] for c in asked), asked
    if final is None:
        assert running is back and got == code and rejoiner.rejoins == 1
        assert len(asked) == len(failures) + 1
    else:
        assert running is None and got == code and final in (rejoiner.reason or "")
        assert len(asked) == 1


@pytest.mark.parametrize("on_partition, reason", [("exit", "suspected by node 1 in view 2"), ("rejoin", "left")])
def test_no_rejoin_when_asked_to_exit_or_when_the_stop_is_not_a_removal(on_partition: str, reason: str) -> None:
    def start(contacts: list[str]) -> Any:
        raise AssertionError("no rejoin expected")

    group = FakeGroup(reason, exit_code=EXIT_STOPPED)
    running, code = Rejoiner(3, on_partition, [], start, threading.Event()).run(group, poll=0.001)  # type: ignore[arg-type]
    assert running is None and code == EXIT_STOPPED and group.closed


def test_a_config_error_while_rejoining_ends_the_node_with_exit_2() -> None:
    from runtime.errors import ConfigError

    def start(contacts: list[str]) -> Any:
        raise ConfigError("node.listen: port in use")

    group = FakeGroup("removed from the group in view 5")
    running, code = Rejoiner(3, "rejoin", [], start, threading.Event()).run(group, poll=0.001)  # type: ignore[arg-type]
    assert running is None and code == EXIT_CONFIG


def test_a_slow_start_is_retried_and_a_bug_ends_the_node_with_its_reason() -> None:
    done = threading.Event()
    tries: list[int] = []
    back = FakeGroup()

    def slow_then_back(contacts: list[str]) -> Any:
        tries.append(1)
        if len(tries) == 1:
            raise TimeoutError("the node did not start within 10 s")
        done.set()
        return back

    rejoiner = Rejoiner(3, "rejoin", [], slow_then_back, done, first_delay=0.01, max_delay=0.02)
    running, code = rejoiner.run(FakeGroup("removed from the group in view 5"), poll=0.001)  # type: ignore[arg-type]
    assert running is back and code == EXIT_OK and len(tries) == 2

    def buggy(contacts: list[str]) -> Any:
        raise RuntimeError("a bug")

    rejoiner = Rejoiner(3, "rejoin", [], buggy, threading.Event(), first_delay=0.01, max_delay=0.02)
    running, code = rejoiner.run(FakeGroup("removed from the group in view 5"), poll=0.001)  # type: ignore[arg-type]
    assert running is None and code == EXIT_FAILED and "RuntimeError: a bug" in (rejoiner.reason or "")


@pytest.mark.parametrize(
    "on_partition, failure, rejoins",
    [
        pytest.param(
            "rejoin", "node 3 stopped: partitioned: reaches only 1 of 3 members of view 2", True, id="cut-off"
        ),
        pytest.param("rejoin", "node 3 stopped: suspected by node 1 in view 2", True, id="suspected"),
        pytest.param("exit", "node 3 stopped: partitioned: reaches only 1 of 3 members of view 2", False, id="exit"),
        pytest.param("rejoin", "node 3 joined no view within 12 s; check node.contacts", False, id="never-joined"),
        pytest.param("rejoin", "node 3 stopped: join refused: layout differs", False, id="refused"),
        pytest.param(
            "rejoin", "node 3 stopped: storage failure: saving view 2 in /srv/partitioned-kv failed", False, id="a-path"
        ),
    ],
)
@pytest.mark.timeout(10)
def test_a_removal_while_the_first_start_runs_is_a_removal_like_any_other(
    on_partition: str, failure: str, rejoins: bool
) -> None:
    """A node that joined a view and was cut off before its start ended (a CI run: stopped
    while it fetched its state) rejoins as after any later removal; every other failure of
    the first start is the caller's to report, as before."""
    done = threading.Event()
    asked: list[list[str]] = []
    back = FakeGroup()

    def first() -> Any:
        raise GroupClosed(failure, EXIT_STOPPED)

    def start(contacts: list[str]) -> Any:
        asked.append(contacts)
        return back

    rejoiner = Rejoiner(3, on_partition, ["h1:701"], start, done, first_delay=0.01, max_delay=0.02)
    if rejoins:
        assert rejoiner.first(first) == (back, EXIT_OK)
        assert asked == [["h1:701"]] and rejoiner.rejoins == 1 and rejoiner.out_reason == failure
    else:
        with pytest.raises(GroupClosed, match=failure.split(":")[0]):
            rejoiner.first(first)
        assert asked == []


@pytest.mark.timeout(10)
def test_a_first_start_removal_rejoins_only_with_contacts_and_the_stop_exit_code() -> None:
    """A founder (no contacts) has no group to rejoin (rejoining would found a second one); a
    removal reason with another exit code is not a removal as ``first`` takes it."""

    def start(contacts: list[str]) -> Any:
        raise AssertionError("no rejoin expected")

    removal = "node 3 stopped: partitioned: reaches only 1 of 3 members of view 2"
    for configured, code in (([], EXIT_STOPPED), (["h1:701"], 4)):

        def first(code: int = code) -> Any:
            raise GroupClosed(removal, code)

        with pytest.raises(GroupClosed):
            Rejoiner(3, "rejoin", configured, start, threading.Event()).first(first)


def test_a_member_left_alone_waits_for_its_majority_and_never_founds_a_group(tmp_path: Path) -> None:
    """The majority (nodes 1 and 2) is stopped while node 3 runs: node 3 is the minority. It
    must not go on alone nor found a group; it keeps trying and is back once they resume."""
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)
        acked = 0
        for _ in range(30):
            c.add(1).get(timeout=10)
            acked += 1
        with stopped(cluster, [1, 2]):
            wait_for(lambda: "is out of the group" in log_text(cluster, 3), 20, "node 3 to find itself alone")
            # Meanwhile it keeps its port and tells a client why it cannot serve it (the client,
            # whose only contact it is, fails over to it again and again and reports the reason).
            with cluster.new_client(contacts=[cluster.address(3)]) as lone:
                t0 = time.monotonic()
                with pytest.raises(da.DerechoError) as refused:
                    lone.handle(Counter).add(1).get(timeout=3)
                assert time.monotonic() - t0 < 10
                assert "node 3 is out of the group (partitioned" in str(refused.value), refused.value
                assert "call another member" in str(refused.value)
            for _ in range(int(2 * STALL / 0.2)):  # it keeps trying, in the same process, port open
                socket.create_connection(("127.0.0.1", cluster.ports[3]), timeout=2).close()
                time.sleep(0.2)
            assert cluster.exit_code(3) is None, log_text(cluster, 3)[-2000:]
        wait_for(lambda: set(cluster.members()) == {1, 2, 3} and cluster._all_in_view(), 90, "node 3 back")
        text = log_text(cluster, 3)
        assert "stops: partitioned" in text, text[-3000:]
        assert "members [3] " not in text and "founding" not in text.split("is out of the group", 1)[1], text[-3000:]
        for _ in range(10):
            c.add(1).get(timeout=10)
            acked += 1
        values = {n: c.value(node=n).get(timeout=10)[n] for n in (1, 2, 3)}
        assert values == {1: acked, 2: acked, 3: acked}, f"{values}, {acked} acked"


def test_a_cli_app_node_stopped_alone_rejoins_in_the_same_process(tmp_path: Path) -> None:
    """``derecho-actors node --app``: the operator's command rejoins as local_cluster nodes do."""
    from tests.drivers.test_cli_apps import CliNodes

    nodes = CliNodes(tmp_path)
    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.shards=1", "--set", "layout.KV.min_nodes=2"]
    fast = ["--set", "timeouts.heartbeat_ms=20", "--set", f"timeouts.suspicion_ms={SUSPICION_MS}"]
    try:
        for n in (1, 2, 3):
            nodes.start(n, *app, *fast)
            if n == 1:
                nodes.wait_members({1})
        nodes.wait_members({1, 2, 3})
        proc = nodes.procs[3]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            nodes.wait_members({1, 2})
            time.sleep(STALL)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        nodes.wait_members({1, 2, 3}, timeout=60)
        wait_for(lambda: "back in the group as a new member" in nodes.log(3), 20, "node 3's line saying it is back")
        assert proc.poll() is None, nodes.log(3)[-2000:]
    finally:
        nodes.close()
