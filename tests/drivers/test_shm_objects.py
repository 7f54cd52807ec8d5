"""Large objects between real node processes over shared memory (issue 23), TLS on the control
connections, ``node.transport = "shm"``, loopback only.

Three node processes (this module run as ``python -m tests.drivers.test_shm_objects node``)
form a shard; node 1 multicasts objects of up to 100 MiB, whose blocks move by the RDMC
schedule through the pairs' rings. Every node logs each delivery (sender, the object's stamp,
its sha256) to a file, flushed line by line, so what a node delivered before it was killed is
on disk. The tests check: every member delivers every object identical to what the sender
built (the test hashes the expected bytes itself); a kill -9 of the sender mid-object loses
nothing the sender had delivered (the survivors deliver the same objects, in the same order)
and its next start leaves nothing of the killed process in /dev/shm; a peer's exit leaves the
other nodes' files and rings alone (they go on moving objects through shared memory).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.objects import pattern
from bench.procs import child_env, free_ports

MIB = 1 << 20
SHM = "/dev/shm"

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm on this host"),
]


# ------------------------------------------------------------------------------ node side
def payload(size: int, node: int, stamp: int) -> bytearray:
    """Object ``stamp`` of ``node``: its pattern with the stamp in the first 8 bytes, so two
    objects of one sender differ and a duplicate or a swap shows."""
    out = pattern(size, node)
    out[:8] = stamp.to_bytes(8, "little")
    return out


class _App:
    """Sends ``--send`` objects once the view has every node and the test's go file exists;
    logs every delivery."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.driver: Any = None
        self.shard: Any = None
        self.sent = 0
        self.go = False
        self.waiting = False  # the go file is being watched for
        self.base = pattern(args.size, args.id) if args.send else bytearray()  # built before the loop runs
        self.log = open(args.out, "a", encoding="ascii")  # noqa: SIM115 (open for the process's life)
        self.pool = ThreadPoolExecutor(1)  # hashes and logs deliveries in order, off the loop

    def hooks(self) -> Any:
        from runtime.drivers.node import AppHooks

        return AppHooks(on_deliver=self.on_deliver, on_view=self.on_view, on_window_open=self.on_window_open)

    def on_view(self, view: Any) -> None:
        mine = view.my_shards(self.args.id)
        self.shard = mine[0] if mine else None
        if self.args.send and not (self.go or self.waiting) and view.n >= self.args.nodes:
            self.waiting = True
            self._wait_for_go()
        self._pump()

    def _wait_for_go(self) -> None:
        """Send once the test says so (it waits for every pair to be on shared memory)."""
        self.go = os.path.exists(self.args.go)
        if self.go:
            self._pump()
        else:
            self.driver.loop.call_later(0.05, self._wait_for_go)

    def on_window_open(self, shard: Any) -> None:
        self._pump()

    def _pump(self) -> None:
        while self.go and self.shard is not None and self.sent < self.args.send and self.driver.queued(self.shard) < 2:
            data = bytearray(self.base)
            data[:8] = self.sent.to_bytes(8, "little")
            self.driver.send_ordered(self.shard, [data])
            self.sent += 1

    def on_deliver(self, d: Any) -> None:
        for _, sender, _, data in d.messages:
            self.pool.submit(self._record, sender, data)
        self._pump()

    def _record(self, sender: int, data: Any) -> None:
        stamp = int.from_bytes(bytes(data[:8]), "little")
        self.log.write(f"{sender} {stamp} {hashlib.sha256(data).hexdigest()}\n")
        self.log.flush()


def node_main(argv: list[str]) -> int:
    from runtime.config import load_config, parse_override
    from runtime.drivers.node import NodeDriver, run_loop

    p = argparse.ArgumentParser(prog="test_shm_objects node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--go", default="", help="a file whose existence starts the sending")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    config = load_config(None, dict(parse_override(text) for text in args.set), environ={})
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"node{args.id} %(levelname)s %(message)s")
    app = _App(args)
    driver = NodeDriver(config, app.hooks())
    app.driver = driver

    async def main() -> str:
        def on_term() -> None:  # as the node command does: leave the group, then stop
            if driver.core is None or driver.core.view is None:
                driver.stop("interrupted")
                return
            driver.leave()
            asyncio.get_running_loop().call_later(10, driver.stop, "left without a view change")

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        return await driver.run()

    reason = run_loop(main(), tls=driver.security.tls)
    print(f"node stopped: {reason}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ test side
class Cluster:
    """Three (or ``nodes``) node processes of one fresh cluster on loopback, TLS on, every
    pair on shared memory; every process is killed at the end whatever happens."""

    def __init__(self, workdir: Path, nodes: int = 3, size: int = 100 * MIB) -> None:
        from runtime.drivers.dial import client_credentials
        from runtime.security.certs import ensure_cluster_certs

        self.workdir = workdir
        self.nodes = nodes
        self.size = size
        self.name = f"shmobj{uuid.uuid4().hex[:10]}"
        self.addr = {i: f"127.0.0.1:{p}" for i, p in zip(range(1, nodes + 1), free_ports(nodes))}
        certs = ensure_cluster_certs(workdir / "certs", range(1, nodes + 1), clients=("operator",), cluster=self.name)
        self.credentials = client_credentials(certs, "operator")
        self.settings = {
            "node.log_level": "INFO",
            "timeouts.suspicion_ms": "3000",  # 2 cores shared with 100 MiB copies and digests
            "node.transport": "shm",
            "rdmc.enabled": "true",
            "layout.default.min_nodes": "2",
            "layout.default.max_nodes": str(nodes),
            "security.certs_dir": str(certs),
            "node.cluster": self.name,
        }
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def out(self, i: int) -> Path:
        return self.workdir / f"delivered-{i}.txt"

    @property
    def go(self) -> Path:
        return self.workdir / "go"

    def start(self, i: int, send: int = 0) -> None:
        sets = {
            **self.settings,
            "node.id": str(i),
            "node.listen": self.addr[i],
            "node.data_dir": str(self.workdir / f"data-{i}"),
        }
        if i != 1 or self.procs:
            sets["node.contacts"] = ",".join(a for n, a in self.addr.items() if n != i)
        cmd = [sys.executable, "-m", "tests.drivers.test_shm_objects", "node", "--id", str(i)]
        cmd += ["--nodes", str(self.nodes), "--send", str(send), "--size", str(self.size), "--out", str(self.out(i))]
        cmd += ["--go", str(self.go)]
        cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
        with open(self.workdir / f"node-{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
            )

    def status(self, i: int) -> dict[str, Any]:
        from runtime.drivers.status import fetch_status

        try:
            return fetch_status(self.addr[i], self.name, 2.0, self.credentials)
        except Exception:  # not up yet, or going down: the caller waits
            return {}

    def founded(self) -> bool:
        return "vid" in self.status(1)

    def members(self, i: int) -> set[int]:
        return {int(n) for n, _ in self.status(i).get("members", ())}

    def transports(self, i: int) -> dict[int, str]:
        return {int(p): str(k) for p, k in self.status(i).get("transports", ())}

    def delivered(self, i: int) -> list[tuple[int, int, str]]:
        try:
            text = self.out(i).read_text(encoding="ascii")
        except FileNotFoundError:
            return []
        return [(int(a), int(b), c) for a, b, c in (line.split() for line in text.splitlines() if line.count(" ") == 2)]

    def kill(self, i: int) -> int:
        proc = self.procs.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return proc.pid

    def stop(self, i: int) -> None:
        """A graceful exit: SIGTERM, as an operator stops a node."""
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    def files(self, node: int | None = None) -> list[str]:
        who = "*" if node is None else str(node)
        return sorted(glob.glob(f"{SHM}/derecho-{self.name}-n{who}-*"))

    def close(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.procs.clear()
        for path in self.files():
            os.unlink(path)

    def logs(self) -> str:
        return "\n".join(
            f"--- node {p.stem}\n{p.read_text(errors='replace')[-3000:]}" for p in self.workdir.glob("node-*.log")
        )


def wait_for(what: str, check: Callable[[], bool], cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for i, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"node {i} exited ({proc.returncode}) waiting for {what}\n{cluster.logs()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def all_on_shm(cluster: Cluster, nodes: list[int]) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            {p: k for p, k in cluster.transports(i).items() if p in nodes and p != i}
            == {p: "shm" for p in nodes if p != i}
            for i in nodes
        )

    return check


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="derecho-shmobj-"))
    c = Cluster(workdir)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(workdir, ignore_errors=True)


def plant(cluster: Cluster, node: int, peer: int, pid: int) -> list[str]:
    """The three files of a ring ``node`` (process ``pid``) made for ``peer``, as setup leaves
    them until the peer accepts."""
    base = f"{SHM}/derecho-{cluster.name}-n{node}-to{peer}-p{pid}-{os.urandom(8).hex()}"
    paths = [base + suffix for suffix in (".ring", ".data", ".room")]
    for path in paths:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    return paths


def expected(size: int, node: int, stamps: range) -> list[tuple[int, int, str]]:
    return [(node, k, hashlib.sha256(payload(size, node, k)).hexdigest()) for k in stamps]


@pytest.mark.timeout(150)
def test_100_mib_objects_arrive_identical_at_every_member_through_shared_memory(cluster: Cluster) -> None:
    # Four: the first two find no segment reserved (a new one is offered once its room is),
    # the later ones a spare reserved meanwhile or one the members let go of.
    cluster.start(1, send=4)
    wait_for("node 1's view", cluster.founded, cluster, 60)
    cluster.start(2)
    cluster.start(3)
    wait_for("shared memory between every pair", all_on_shm(cluster, [1, 2, 3]), cluster, 60)
    cluster.go.touch()  # only now does node 1 send: every block goes through a ring
    want = expected(cluster.size, 1, range(4))
    wait_for("every delivery", lambda: all(len(cluster.delivered(i)) >= 4 for i in (1, 2, 3)), cluster, 120)
    for i in (1, 2, 3):
        assert cluster.delivered(i) == want, f"node {i}"
    assert all_on_shm(cluster, [1, 2, 3])()
    assert "shared memory with it closed" not in cluster.logs()  # no pair fell back to TCP meanwhile
    for i in (2, 3):  # written once into node 1's segment, read in place (shm_objects)
        log_text = (cluster.workdir / f"node-{i}.log").read_text(errors="replace")
        assert f"node{i} INFO objects of node 1 are read in place from its segments" in log_text
    # (a spare segment, reserved ahead for a next object, goes after shm_objects.SPARE_IDLE)
    wait_for("accepted rings and object segments unlinked by their owners", lambda: cluster.files() == [], cluster, 10)


@pytest.mark.timeout(240)
def test_kill_9_of_the_sender_mid_object_loses_nothing_delivered_and_its_next_start_leaves_nothing(
    cluster: Cluster,
) -> None:
    count = 12
    cluster.size = 64 * MIB
    cluster.start(1, send=count)
    wait_for("node 1's view", cluster.founded, cluster, 60)
    cluster.start(2)
    cluster.start(3)
    wait_for("shared memory between every pair", all_on_shm(cluster, [1, 2, 3]), cluster, 60)
    cluster.go.touch()
    wait_for("a first delivery", lambda: len(cluster.delivered(2)) >= 1, cluster, 120)
    dead = cluster.kill(1)  # mid-stream: an object's blocks are on their way through the rings
    sender_saw = cluster.delivered(1)
    assert len(sender_saw) < count, "the kill came after the last object: nothing was mid-object"
    # Accepted rings have no names left; a process killed mid-setup leaves its files (made here
    # as such a process would have): its peers must leave them, its next start removes them.
    left = plant(cluster, 1, 2, dead)
    wait_for("the survivors' view", lambda: cluster.members(2) == cluster.members(3) == {2, 3}, cluster, 60)

    def settled() -> bool:
        a, b = cluster.delivered(2), cluster.delivered(3)
        return a == b and len(a) >= len(sender_saw)

    wait_for("the survivors to agree", settled, cluster, 30)
    survivors = cluster.delivered(2)
    # What the sender had delivered is delivered at both survivors, in the same order, and
    # everything delivered is what node 1 built (a prefix of its objects, each once).
    assert survivors[: len(sender_saw)] == sender_saw
    assert survivors == expected(cluster.size, 1, range(len(survivors)))
    assert all(os.path.exists(p) for p in left), "a peer removed files of node 1"
    # Node 1's next start removes whatever its killed process left, and talks shm again.
    cluster.start(1)
    wait_for("node 1 back in the view", lambda: cluster.members(2) == {1, 2, 3}, cluster, 90)
    assert [f for f in cluster.files(1) if f"-p{dead}-" in f] == []
    wait_for("shared memory between every pair again", all_on_shm(cluster, [1, 2, 3]), cluster, 30)


@pytest.mark.timeout(150)
def test_a_peers_exit_leaves_the_others_files_and_rings_alone(cluster: Cluster) -> None:
    count = 40
    cluster.size = 8 * MIB
    cluster.start(1)
    wait_for("node 1's view", cluster.founded, cluster, 60)
    cluster.start(2, send=count)
    cluster.start(3)
    wait_for("shared memory between every pair", all_on_shm(cluster, [1, 2, 3]), cluster, 60)
    # Files of nodes 1 and 2 in /dev/shm under their live pids, as a ring mid-setup has: a
    # peer's exit (its own cleanup, CPython's resource tracker) must not touch them.
    planted = [*plant(cluster, 1, 2, cluster.procs[1].pid), *plant(cluster, 2, 1, cluster.procs[2].pid)]
    cluster.go.touch()
    wait_for("the first objects", lambda: len(cluster.delivered(1)) >= 2, cluster, 60)
    cluster.stop(3)  # mid-stream, a graceful exit
    wait_for("the view without node 3", lambda: cluster.members(1) == cluster.members(2) == {1, 2}, cluster, 60)
    # Nodes 1 and 2 go on through their rings: every object arrives, identical, at both.
    want = expected(cluster.size, 2, range(count))
    wait_for("every object at 1 and 2", lambda: all(len(cluster.delivered(i)) >= count for i in (1, 2)), cluster, 90)
    assert cluster.delivered(1) == cluster.delivered(2) == want
    assert all_on_shm(cluster, [1, 2])()
    assert all(os.path.exists(p) for p in planted), [p for p in planted if not os.path.exists(p)]
    for path in planted:
        os.unlink(path)


if __name__ == "__main__" and sys.argv[1:2] == ["node"]:
    sys.exit(node_main(sys.argv[2:]))
