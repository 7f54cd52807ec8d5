"""Faults users will meet, each with real node processes: a full disk, a read-only data_dir,
killed scripts and nodes, a frozen contact, refused clients, a replica lost mid-stream, calls
too large or aimed at a non-member, and a layout left short of nodes.

Every test shows: no acknowledged write lost, no hang, no silent drop, no orphan process, and a
clear line saying what happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import CLIENT_NAME, LocalCluster
from runtime.drivers.dial import client_credentials
from runtime.exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_STOPPED, EXIT_STORAGE
from runtime.security.certs import ensure_cluster_certs
from tests.api.faults_apps import Counter, Journal
from tests.api.groups import tls_overrides

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "400"}
SURVIVES_ONE = da.Layout({Counter: da.ShardPolicy(min_nodes=2, max_nodes=3)})


# ------------------------------------------------------------------------------ helpers
def wait_for(ok: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``ok`` until it is true; returns the seconds it took. Fails naming ``what``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if ok():
                return time.monotonic() - t0
        except da.DerechoError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def freeze(pid: int, timeout: float = 10.0) -> float:
    """SIGSTOP process ``pid`` and return once every one of its threads has stopped (the
    seconds that took). ``os.kill`` returns as soon as the signal is queued: the kernel wakes
    one thread to take it (the main thread, asleep in a node), and the group stop begins only
    when that thread gets a CPU. Until then the process's other threads run on: a node's loop
    and replica threads still take calls and answer them, for milliseconds on a busy machine
    (a P2P call made right after ``os.kill`` was answered by the "frozen" node; see
    tests/api/test_p2p_target.py). Where ``/proc`` is missing, waits a moment instead."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    if not Path("/proc/self/task").is_dir():
        time.sleep(0.2)
        return time.monotonic() - t0
    while True:
        states = []
        for tid in os.listdir(tasks):  # FileNotFoundError: the process is gone
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
                states.append((tasks / tid / "stat").read_text().rsplit(") ", 1)[1][:1])
        if states and all(s in ("T", "t") for s in states):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"process {pid} did not stop within {timeout} s of SIGSTOP (its threads: {states})")
        time.sleep(0.0005)


def node_pids(workdir: Path) -> list[int]:
    """Node processes (``derecho_actors.tools.cluster_node``) of the cluster in ``workdir``, by
    ``pgrep -f`` on the node module and the workdir in their command lines."""
    found = subprocess.run(["pgrep", "-a", "-f", "derecho_actors.tools.cluster_node"], capture_output=True, text=True)
    pids = []
    for line in found.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if f"{workdir}/" in cmd and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def kill_leftovers(workdir: Path) -> None:
    for pid in node_pids(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (read-only if asked) for the block; unmounted
    after, whatever happens. Skips the test if this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} (needs root): {done.stderr.strip()}")
    try:
        if read_only:
            ro = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
            if ro.returncode != 0:
                pytest.skip(f"cannot remount {path} read-only: {ro.stderr.strip()}")
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def log_text(cluster: LocalCluster, node: int, start: int = 0) -> str:
    return (cluster.workdir / f"node-{node}.log").read_bytes()[start:].decode(errors="replace")


def log_size(cluster: LocalCluster, node: int) -> int:
    path = cluster.workdir / f"node-{node}.log"
    return path.stat().st_size if path.exists() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def member_ids(status: dict[str, Any]) -> set[int]:
    return {m for m, _ in status["members"]}


# ------------------------------------------------------------------ 1. the disk fills up
@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node 3 of 3 keeps its data on a 2 MB tmpfs; write until it fills. Returns what
    happened, for the tests below to judge (one run serves them all)."""
    tmp = tmp_path_factory.mktemp("disk-full")
    layout = da.Layout({Journal: da.ShardPolicy(min_nodes=2, max_nodes=3)})
    value = lambda n: bytes([n % 251]) * 8192  # noqa: E731 - 2 MB hold about 250 of them
    out: dict[str, Any] = {}
    with tmpfs(tmp / "data-3", "2m"):
        with LocalCluster(3, [Journal], layout, overrides=FAST, workdir=str(tmp)) as cluster:
            j = cluster.handle(Journal)
            acked: list[tuple[int, int]] = []  # (write number, version) of writes persisted() confirmed
            failed: list[tuple[int, BaseException]] = []
            # Known client flaws this run can hit, at random: persisted() asks one replica; if
            # that is node 3, asked just before it left, no answer comes (timeout; see
            # test_client_p2p_call_to_a_replica_that_dies_fails_at_once); and persisted() asked
            # while the client is resending after a reconnect raises ReplicaLost("... (None)").
            # Such writes are asked again once the group moved on: they must be persisted.
            hung: list[tuple[int, da.QueryResults]] = []
            n = 0
            t0 = time.monotonic()
            while cluster.exit_code(3) is None and n < 1200:
                batch = [(n + k, j.put(f"k{n + k}", value(n + k))) for k in range(8)]
                n += 8
                for i, r in batch:
                    try:
                        acked.append((i, r.persisted(timeout=10 if not hung else 0.5)))
                    except da.TimeoutError:
                        hung.append((i, r))
                    except da.ReplicaLost as exc:
                        failed.append((i, exc))
                        hung.append((i, r))
            wait_for(lambda: cluster.exit_code(3) is not None, 20, "node 3 to exit on the full disk")
            out["fail_s"] = time.monotonic() - t0
            out["exit_code"] = cluster.exit_code(3)
            out["failed"] = failed
            out["log_file"] = cluster.data_dir(3) / "Journal.0.0.log"
            out["log"] = log_text(cluster, 3)
            # The other two keep serving; the frontier moves without node 3.
            cluster.wait_members({1, 2})
            more = [(n + k, j.put(f"k{n + k}", value(n + k))) for k in range(20)]
            t1 = time.monotonic()
            acked += [(i, r.persisted(timeout=20)) for i, r in more]
            out["more_s"] = time.monotonic() - t1
            out["hung"] = [i for i, _ in hung]
            acked = sorted(acked + [(i, r.persisted(timeout=10)) for i, r in hung])
            out["acked"] = acked
            # Every write whose persisted() returned, read back at both survivors.
            out["wrong"] = {}
            for node in (1, 2):
                reads = [(i, j.get(f"k{i}", node=node)) for i, _ in acked]
                out["wrong"][node] = [i for i, r in reads if r.get(timeout=20)[node] != value(i)]
    return out


def test_disk_full_node_fail_stops_and_no_persisted_write_is_lost(disk_full: dict[str, Any]) -> None:
    assert disk_full["exit_code"] == EXIT_STORAGE, disk_full["log"][-2000:]
    versions = [v for _, v in disk_full["acked"]]
    assert len(set(versions)) == len(versions)
    assert disk_full["wrong"] == {1: [], 2: []}, "survivors lost writes whose persisted() returned"
    assert disk_full["more_s"] < 10, "the persistence frontier did not move without node 3"
    # Node 3 says what happened, naming its log, in a line or two (not a flood).
    errors = [
        ln
        for ln in disk_full["log"].splitlines()
        if " ERROR " in ln and "storage failure" in ln and str(disk_full["log_file"]) in ln
    ]
    assert 1 <= len(errors) <= 3, disk_full["log"][-3000:]
    print(
        f"disk full: {len(versions)} writes persisted, node 3 exited 4 after {disk_full['fail_s']:.1f} s; "
        f"persisted() asked again for {disk_full['hung']} (ReplicaLost first: {disk_full['failed'][:2]})"
    )


def test_disk_full_node_log_has_no_traceback(disk_full: dict[str, Any]) -> None:
    text = disk_full["log"]
    assert "Traceback" not in text and "Unhandled exception" not in text, text[-3000:]


# ------------------------------------------------------------ 2. a read-only data_dir
def test_read_only_data_dir_stops_the_node_at_start_with_exit_2(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        assert cluster.stop(2) == EXIT_OK
        cluster.wait_members({1, 3})
        with tmpfs(cluster.data_dir(2), "1m", read_only=True):
            before = log_size(cluster, 2)
            t0 = time.monotonic()
            cluster.start(2)
            wait_for(lambda: cluster.exit_code(2) is not None, 20, "node 2 to refuse its read-only data_dir")
            took = time.monotonic() - t0
            out = log_text(cluster, 2, before)
            assert cluster.exit_code(2) == EXIT_CONFIG, out
            assert took < 10, f"node 2 took {took:.1f} s to give up"
            line = next((ln for ln in out.splitlines() if "read-only" in ln), "")
            assert str(cluster.data_dir(2)) in line, out
            # It never joined: the others still see two members, and serve.
            for node in (1, 3):
                assert member_ids(cluster.status(node)) == {1, 3}
            assert set(cluster.handle(Counter).add(1).get(timeout=10)) == {1, 3}


# ---------------------------------------------------------------- 3. process hygiene
SCRIPT = """
import sys, time
import derecho_actors as da
from tests.api.faults_apps import Counter
with da.local_cluster(nodes=3, types=[Counter], overrides={"timeouts.heartbeat_ms": "20"}, workdir=sys.argv[1]):
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_script_killed_leaves_no_node_process(tmp_path: Path, sig: signal.Signals) -> None:
    """No orphan: the nodes see their parent die (the lifeline pipe) and leave. How soon is
    the business of test_members_told_to_leave_at_once_all_exit_promptly (a lost leave can
    hold one node for the 10 s leave timeout)."""
    workdir = tmp_path / "cluster"
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        ready, _, _ = select.select([script.stdout], [], [], 60)
        line = script.stdout.readline() if ready else b""  # type: ignore[union-attr]
        assert line.strip() == b"ready", line
        assert len(node_pids(workdir)) == 3
        script.send_signal(sig)
        script.wait(10)
        gone_s = wait_for(lambda: not node_pids(workdir), 20, f"the nodes to leave after the script got {sig.name}")
        print(f"{sig.name}: nodes gone {gone_s:.2f} s after the script died")
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(10)
        kill_leftovers(workdir)


def test_members_told_to_leave_at_once_all_exit_promptly(tmp_path: Path) -> None:
    """What a script's death does to its nodes (each sees the lifeline close and leaves): they
    all leave at about the same time. Each must exit 0 within 5 s. The failure is a race (the
    third node's request 10 ms after the others' hits it about half the time), so try a few
    times: the test passes only if every attempt is prompt."""
    for attempt in range(12):
        with LocalCluster(3, [Counter], overrides=FAST, workdir=str(tmp_path / f"try-{attempt}")) as cluster:
            t0 = time.monotonic()
            cluster.procs[1].send_signal(signal.SIGTERM)
            cluster.procs[2].send_signal(signal.SIGTERM)
            time.sleep(0.01)
            cluster.procs[3].send_signal(signal.SIGTERM)
            for node, proc in cluster.procs.items():
                try:
                    proc.wait(max(0.1, 5 - (time.monotonic() - t0)))
                except subprocess.TimeoutExpired:
                    tail = "\n".join(log_text(cluster, node).splitlines()[-3:])
                    pytest.fail(f"attempt {attempt}: node {node} still runs 5 s after SIGTERM; its log ends:\n{tail}")
                assert proc.returncode == EXIT_OK


def test_sigterm_stops_a_node_promptly_with_exit_0(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)
        c.add(1).get(timeout=10)
        t0 = time.monotonic()
        code = cluster.stop(3, timeout=5)
        took = time.monotonic() - t0
        assert code == EXIT_OK and took < 5, f"exit {code} after {took:.1f} s"
        cluster.wait_members({1, 2})
        assert c.add(1).get(timeout=10) == {1: 2, 2: 2}


def test_node_removed_by_the_group_exits_by_itself_with_exit_3(tmp_path: Path) -> None:
    # node.on_partition = "exit": the default, "rejoin", brings it back instead (tests/api/test_stall.py).
    overrides = {**FAST, "node.on_partition": "exit"}
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=overrides, workdir=str(tmp_path)) as cluster:
        pid = cluster.procs[3].pid
        os.kill(pid, signal.SIGSTOP)  # cut off for longer than the suspicion timeout
        try:
            cluster.wait_members({1, 2})
        finally:
            os.kill(pid, signal.SIGCONT)
        exit_s = wait_for(lambda: cluster.exit_code(3) is not None, 15, "node 3 to exit once it learns it was removed")
        assert cluster.exit_code(3) == EXIT_STOPPED, log_text(cluster, 3)[-2000:]
        assert "node stops" in log_text(cluster, 3)
        assert set(cluster.handle(Counter).add(1).get(timeout=10)) == {1, 2}
        print(f"removed node exited 3 {exit_s:.2f} s after SIGCONT")


def test_group_closed_and_reopened_at_once_on_one_data_dir_20_times(tmp_path: Path) -> None:
    layout = da.Layout({Journal: da.ShardPolicy()})
    overrides = {
        **FAST,
        **tls_overrides(tmp_path, [1], "reopen"),
        "node.cluster": "reopen",
        "node.id": "1",
        "node.listen": f"127.0.0.1:{free_port()}",
        "node.data_dir": str(tmp_path / "data"),
        "persistence.restart_quorum_wait_ms": "100",
    }
    t0 = time.monotonic()
    for i in range(20):
        with da.Group(types=[Journal], layout=layout, overrides=overrides) as group:
            j = group.handle(Journal)
            assert j.count().get(timeout=10) == {1: i}, f"round {i}: the log did not come back whole"
            j.put(f"k{i}", b"v").persisted(timeout=10)
    print(f"20 close/reopen rounds in {time.monotonic() - t0:.1f} s")


def test_failing_with_block_keeps_the_work_folder_and_names_it() -> None:
    workdir: Path | None = None
    try:
        with pytest.raises(RuntimeError) as info:
            with da.local_cluster(nodes=1, types=[Counter], overrides=FAST) as cluster:
                workdir = cluster.workdir
                raise RuntimeError("the user's code failed")
        assert workdir is not None
        notes = getattr(info.value, "__notes__", [])
        assert any(str(workdir) in note for note in notes), notes
        assert (workdir / "node-1.log").exists()
        assert node_pids(workdir) == []
    finally:
        if workdir is not None:
            kill_leftovers(workdir)
            shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- 4. a frozen contact
def test_frozen_contact_client_fails_over_and_applies_each_call_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="derecho.client")
    layout = da.Layout({Counter: da.ShardPolicy(min_nodes=2)})
    with LocalCluster(3, [Counter], layout, overrides=FAST, workdir=str(tmp_path)) as cluster:
        client = cluster.new_client()  # contacts 1, 2, 3: it connects to node 1 first
        pid = cluster.procs[1].pid
        try:
            assert f"client connected to {cluster.address(1)}" in caplog.text
            c = client.handle(Counter)
            first = [c.add(1) for _ in range(300)]
            first[20].get(timeout=10)
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            rest = [c.add(1) for _ in range(100)]
            for r in first + rest:
                assert r.get(timeout=30), r
            took = time.monotonic() - t0
            counts = {n: c.value(node=n).get(timeout=10)[n] for n in (2, 3)}
        finally:
            os.kill(pid, signal.SIGCONT)
            client.close()
        assert "sent nothing for" in caplog.text and f"client connected to {cluster.address(2)}" in caplog.text
        assert counts == {2: 400, 3: 400}, "a call was lost or applied twice"
        assert took < 10, f"calls took {took:.1f} s to complete after the contact froze"
        print(f"frozen contact: every call completed {took:.2f} s after SIGSTOP")


# ------------------------------------------------------------ 5. refusals do not spin
@pytest.fixture(scope="module")
def calm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes the tests below only talk to (no node is stopped)."""
    with LocalCluster(
        3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path_factory.mktemp("calm"))
    ) as cluster:
        yield cluster


def refused_clients(cluster: LocalCluster, tmp: Path) -> dict[str, dict[str, Any]]:
    good = client_credentials(cluster.certs_dir, CLIENT_NAME)
    other_ca = ensure_cluster_certs(tmp / "other-ca", [], clients=(CLIENT_NAME,), cluster=cluster.cluster)
    return {
        "another cluster's name": dict(cluster="someone-else", credentials=good),
        "another CA's certificate": dict(
            cluster=cluster.cluster, credentials=client_credentials(other_ca, CLIENT_NAME)
        ),
    }


def warnings_since(cluster: LocalCluster, starts: dict[int, int]) -> list[str]:
    lines = []
    for node, start in starts.items():
        lines += [ln for ln in log_text(cluster, node, start).splitlines() if " WARNING " in ln or " ERROR " in ln]
    return lines


def test_refused_client_fails_at_once_and_nodes_log_a_handful(calm_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = calm_cluster
    contacts = [cluster.address(n) for n in (1, 2, 3)]
    for what, kwargs in refused_clients(cluster, tmp_path).items():
        starts = {n: log_size(cluster, n) for n in (1, 2, 3)}
        t0 = time.monotonic()
        with pytest.raises(da.Refused) as info:  # from the constructor or, at the latest, the first call
            client = da.Client(contacts, **kwargs)
            try:
                client.handle(Counter).add(1).get(timeout=10)
            finally:
                client.close()
        took = time.monotonic() - t0
        assert took < 1.0, f"{what}: refused after {took:.2f} s"
        assert "refused" in str(info.value).lower() or "handshake" in str(info.value).lower(), str(info.value)
        time.sleep(1.0)  # a client still retrying would go on making the nodes log
        lines = warnings_since(cluster, starts)
        assert 1 <= len(lines) <= 5, f"{what}: {len(lines)} warning lines:\n" + "\n".join(lines[:20])
        print(f"{what}: Refused after {took * 1000:.0f} ms ({info.value}); node log: {lines}")
    assert set(cluster.handle(Counter).add(1).get(timeout=10)) == {1, 2, 3}


def test_refused_client_constructor_raises(calm_cluster: LocalCluster, tmp_path: Path) -> None:
    contacts = [calm_cluster.address(n) for n in (1, 2, 3)]
    for what, kwargs in refused_clients(calm_cluster, tmp_path).items():
        for _ in range(5):
            client = None
            try:
                client = da.Client(contacts, **kwargs)
            except da.Refused:
                continue
            finally:
                if client is not None:
                    with contextlib.suppress(da.DerechoError):
                        client.handle(Counter).add(1).get(timeout=10)  # let it read the refusal before closing
                    client.close()
            pytest.fail(f"{what}: Client() returned; the refusal came only at the first call")


def test_client_closed_at_once_leaves_no_thread_traceback(calm_cluster: LocalCluster) -> None:
    errors: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}")
    try:
        for _ in range(50):
            calm_cluster.new_client().close()
    finally:
        threading.excepthook = previous
    assert errors == [], f"{len(errors)} of 50 clients: {errors[:2]}"


# ------------------------------------------------------- 6. answers on replica loss
def test_replica_killed_mid_stream_survivors_answer_exactly_once(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)  # the cluster's client, connected to node 1
        calls: list[da.QueryResults] = []
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                calls.extend(c.add(1) for _ in range(10))
                time.sleep(0.002)

        t = threading.Thread(target=stream)
        t.start()
        try:
            wait_for(lambda: len(calls) > 400 and calls[300].done(), 20, "calls to flow")
            # Freeze node 3 for a moment first (under the suspicion timeout), so calls are surely
            # in flight when it dies: the survivors hold them, undelivered without its ack.
            os.kill(cluster.procs[3].pid, signal.SIGSTOP)
            frozen_at, frozen_t = len(calls), time.monotonic()
            wait_for(
                lambda: len(calls) > frozen_at + 100 and time.monotonic() - frozen_t > 0.2,
                5,
                "calls to go out while node 3 is frozen",
            )
            cluster.kill(3)
            killed_at = len(calls)
            wait_for(lambda: len(calls) > killed_at + 400, 10, "calls to be made after the kill")
        finally:
            stop.set()
            t.join(10)
        # The stream is open-loop (10 calls per 2 ms, more than a loaded 2-core machine
        # serves): chasing its newest call could wait on a backlog that keeps growing. Stopped,
        # its backlog is finite, and every call made after the kill must be answered.
        wait_for(lambda: calls[-1].done(), 60, "the calls made after the kill to be answered")
        lost_old = 0
        for r in calls:
            out = r.get(timeout=30)  # never raises ReplicaLost: the survivors answered
            lost = set(r.lost)
            assert lost <= {3} and set(out) | lost in ({1, 2, 3}, {1, 2}), (out, r.lost)
            assert len(set(out.values())) == 1, out
            if lost:
                assert set(out) == {1, 2} and "left the group" in str(r.lost[3])
                lost_old += 1
        assert lost_old > 0, "no call was delivered in the old view without node 3's answer"
        counts = {n: c.value(node=n).get(timeout=10)[n] for n in (1, 2)}
        assert counts == {1: len(calls), 2: len(calls)}, f"{len(calls)} calls acknowledged"
        print(f"replica loss: {len(calls)} calls, {lost_old} answered by the survivors only")


# ---------------------------------------------------------------- 7. silent drops
def test_too_large_calls_non_member_p2p_and_huge_node_id_are_refused(tmp_path: Path) -> None:
    limit = 65536  # without large objects, every call must fit one multicast message
    overrides = {**FAST, "multicast.max_message_size": str(limit), "rdmc.enabled": "false"}
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=overrides, workdir=str(tmp_path)) as cluster:
        client = cluster.client
        wait_for(lambda: client.max_message_size == limit, 10, "the Welcome to carry the limit")
        c = client.handle(Counter)
        with pytest.raises(da.PayloadTooLarge, match=str(limit)):
            c.store(b"x" * 100_000)
        assert c.store(b"x" * 30_000).get(timeout=10) == {1: 30_000, 2: 30_000, 3: 30_000}
        # An in-process member of the same cluster (node 4) refuses at the call too.
        ensure_cluster_certs(cluster.certs_dir, [4], cluster=cluster.cluster)
        member = {
            **overrides,
            "node.id": "4",
            "node.listen": f"127.0.0.1:{free_port()}",
            "node.cluster": cluster.cluster,
            "node.contacts": ",".join(cluster.address(n) for n in (1, 2, 3)),
            "node.data_dir": str(tmp_path / "data-4"),
            "security.certs_dir": str(cluster.certs_dir),
        }
        with da.Group(types=[Counter], layout=SURVIVES_ONE, overrides=member) as group:
            g = group.handle(Counter)
            with pytest.raises(da.PayloadTooLarge, match=str(limit)):
                g.store(b"x" * 100_000)
            # Node 3 leaves: a P2P call aimed at it is refused, never answered by another node.
            assert cluster.stop(3) == EXIT_OK
            wait_for(lambda: 3 not in group.members and set(cluster.members()) == {1, 2, 4}, 20, "node 3 to be gone")
            with pytest.raises(da.ReplicaLost, match="node 3 holds no replica") as info:
                g.value(node=3).get(timeout=10)
            assert info.value.applied is False
            with pytest.raises(da.ReplicaLost) as info:  # its message: test_client_p2p_to_a_non_member_names_it
                c.value(node=3).get(timeout=10)
            assert info.value.applied is False
        # A node id beyond 32 bits is refused at start, with the bound.
        huge = subprocess.run(
            [
                sys.executable,
                "-m",
                "derecho_actors.tools.cluster_node",
                str(cluster.workdir / "cluster.pickle"),
                "--set",
                f"node.id={2**70}",
                "--set",
                f"node.listen=127.0.0.1:{free_port()}",
                "--set",
                "security.insecure=true",
                "--set",
                f"node.data_dir={tmp_path / 'data-huge'}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert huge.returncode == EXIT_CONFIG, huge.stderr
        assert "node.id must be <= 4294967295" in huge.stderr


def test_client_p2p_to_a_non_member_names_it(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        assert cluster.stop(3) == EXIT_OK
        cluster.wait_members({1, 2})
        r = cluster.handle(Counter).value(node=3)
        with pytest.raises(da.ReplicaLost) as info:
            r.get(timeout=10)
        assert info.value.applied is False
        assert "node 3" in str(info.value) and "left" not in str(info.value), str(info.value)
        assert set(r.lost) <= {3}, f"nodes reported lost: {sorted(r.lost)}"


def test_client_p2p_call_to_a_replica_that_dies_fails_at_once(tmp_path: Path) -> None:
    with LocalCluster(3, [Counter], SURVIVES_ONE, overrides=FAST, workdir=str(tmp_path)) as cluster:
        c = cluster.handle(Counter)
        c.add(1).get(timeout=10)
        # Stopped for good before the call, so it gets the call but never answers (right after
        # os.kill its threads may still run and answer it: see freeze).
        freeze(cluster.procs[3].pid)
        r = c.value(node=3)
        time.sleep(0.1)
        cluster.kill(3)
        cluster.wait_members({1, 2})
        t0 = time.monotonic()
        try:
            got = r.get(timeout=8)
        except da.ReplicaLost as exc:
            assert exc.applied is False and time.monotonic() - t0 < 3
        else:  # which node answered says which path let it through
            client = cluster.client
            pytest.fail(
                f"a P2P call to node 3, frozen then killed, was answered: {got!r} (the client's contact: "
                f"{client.connected_to}, after {client.connections} connections; node 3 at "
                f"{cluster.address(3)}); {cluster.reasons_from_logs(5)}"
            )


def test_calls_relayed_through_a_dying_member_are_not_dropped(tmp_path: Path) -> None:
    """Node 4 is outside the shard {1, 2, 3} and relays its clients' calls, each client's to
    one member picked by its session. 20 clients make it near certain (1 - (2/3)^20) that some
    relay through node 2, which is frozen then killed while their calls are in flight."""
    layout = da.Layout({Counter: da.ShardPolicy(min_nodes=2, max_nodes=3, reserved=((1, 2, 3),))})
    with LocalCluster(4, [Counter], layout, overrides=FAST, workdir=str(tmp_path)) as cluster:
        assert sorted(cluster.status(1)["layout"][0][1]) == [1, 2, 3]
        clients = [cluster.new_client(contacts=[cluster.address(4)]) for _ in range(20)]
        try:
            handles = [cl.handle(Counter) for cl in clients]
            for h in handles:
                h.add(1).get(timeout=10)
            os.kill(cluster.procs[2].pid, signal.SIGSTOP)
            calls = [h.add(1) for h in handles for _ in range(5)]
            time.sleep(0.1)
            cluster.kill(2)
            deadline = time.monotonic() + 10
            stuck = []
            for r in calls:
                try:
                    r.get(timeout=max(0.01, deadline - time.monotonic()))
                except da.TimeoutError as exc:
                    stuck.append(str(exc))
            count = handles[0].value().get(timeout=10)
        finally:
            for cl in clients:
                cl.close()
        assert stuck == [], (
            f"{len(stuck)} of {len(calls)} calls still unanswered 10 s after node 2 died "
            f"(count {count}, {len(calls) + len(handles)} calls made): {stuck[0]}"
        )
        assert list(count.values()) == [len(calls) + len(handles)]


# ------------------------------------------------------------- 8. a stall with a reason
@pytest.mark.timeout(240)
def test_layout_short_of_a_node_says_what_it_needs(tmp_path: Path) -> None:
    layout = da.Layout({Counter: da.ShardPolicy(shards=3, min_nodes=3, max_nodes=3)})
    overrides = {"timeouts.heartbeat_ms": "50", "timeouts.suspicion_ms": "1500"}  # 9 processes on few cores
    with LocalCluster(9, [Counter], layout, overrides=overrides, workdir=str(tmp_path), start_timeout=90) as cluster:
        shards = cluster.status(1)["layout"]
        victim = 9
        index, members = next((i, m) for i, (_, m) in enumerate(shards) if victim in m)
        # The client talks to a surviving member of the victim's shard: no relay between them
        # (calls relayed through a member that dies: test_calls_relayed_through_a_dying_member_...).
        contact = next(m for m in members if m != victim)
        client = cluster.new_client(contacts=[cluster.address(contact)])
        c = client.handle(Counter, shard=index)
        calls: list[da.QueryResults] = []
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                calls.extend(c.add(1) for _ in range(5))
                time.sleep(0.005)

        t = threading.Thread(target=stream)
        t.start()
        refusal: list[BaseException] = []
        try:
            wait_for(lambda: len(calls) > 100 and calls[50].done(), 30, "calls to flow")
            # Freeze the victim a moment first (well under the suspicion timeout) so calls are
            # surely in flight, unanswerable without it, when it dies.
            os.kill(cluster.procs[victim].pid, signal.SIGSTOP)
            frozen_at = len(calls)
            wait_for(lambda: len(calls) > frozen_at + 50, 5, "calls to go out while the victim is frozen")
            cluster.kill(victim)

            def refused() -> bool:
                probe = c.add(1)
                calls.append(probe)  # counted with the others: it may be held too
                try:
                    probe.get(timeout=5)
                except da.ShardUnavailable as exc:
                    refusal.append(exc)
                    return True
                except da.TimeoutError:
                    pass
                return False

            wait_for(refused, 30, "a new call to be refused with ShardUnavailable")
        finally:
            stop.set()
            t.join(10)
        why = str(refusal[0])
        assert "too few for the layout" in why and "needs 1 more node" in why, why
        st = cluster.status(1)
        assert st["adequate"] is False and "needs 1 more node" in st["shortfall"], st
        # Every call caught by the failure completed, was refused, or waits and says why.
        outcomes: dict[str, list[str]] = {"answered": [], "refused": [], "waiting": [], "unexplained": []}
        held: list[da.QueryResults] = []
        for r in calls:
            try:
                r.get(timeout=2 if not outcomes["waiting"] else 0.01)
                outcomes["answered"].append("")
            except da.ShardUnavailable as exc:
                outcomes["refused" if "needs 1 more node" in str(exc) else "unexplained"].append(repr(exc))
            except da.TimeoutError as exc:
                outcomes["waiting" if "needs 1 more node" in str(exc) else "unexplained"].append(str(exc))
                held.append(r)
            except da.DerechoError as exc:
                outcomes["unexplained"].append(repr(exc))
        summary = {k: len(v) for k, v in outcomes.items()}
        assert outcomes["unexplained"] == [], f"{summary}: {outcomes['unexplained'][:3]}"
        # Calls are caught waiting only when they reached the contact between the victim's death
        # and the new view (most runs); on a loaded machine that window can close before any
        # does, and every call caught by the failure was answered or refused. The restart below
        # and the count are checked either way.
        waiting = len(outcomes["waiting"])
        example = outcomes["waiting"][0] if waiting else "none caught waiting in this run"
        # Held, not dropped: once the victim is back, the waiting calls run, each once.
        cluster.restart([victim], timeout=90)
        for r in held:
            assert r.get(timeout=30)
        count = c.value().get(timeout=10)
        assert list(count.values()) == [len(outcomes["answered"]) + waiting], (count, summary)
        client.close()
        print(f"stall: {len(calls)} calls, {waiting} waiting with the reason ({example}); refusal: {why}")
