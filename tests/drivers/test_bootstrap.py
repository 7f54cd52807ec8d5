"""Who founds when every node starts from one command line (``node.bootstrap_expect``):
table-driven over what each node hears, then three real processes on loopback started alike."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from derecho_actors.tools.cluster import _free_ports
from runtime.config import NodeSection
from runtime.drivers.bootstrap import BootstrapCoordinator, BootstrapOutcome
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import fetch_status
from runtime.errors import ConfigError
from runtime.security.certs import ensure_cluster_certs
from runtime.wire.control import BootstrapHello, GroupRunning

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
ADDR = {n: f"pod-{n}:7001" for n in range(1, 6)}


def coordinator(me: int, expect: int = 3) -> tuple[BootstrapCoordinator, list[tuple[str, object]]]:
    sent: list[tuple[str, object]] = []
    contacts = [ADDR[n] for n in range(1, expect + 1)]  # every pod lists every pod, itself too
    c = BootstrapCoordinator(me, ADDR[me], contacts, expect, lambda a, m: sent.append((a, m)), 0.0)
    return c, sent


@pytest.mark.parametrize(
    ("me", "heard_empty", "heard_data", "running", "outcome"),
    [
        (1, [2, 3], [], None, BootstrapOutcome(found=True)),  # all new: the lowest id founds
        (2, [1, 3], [], None, None),  # all new, but node 1 founds: wait for it to run
        (1, [2], [], None, None),  # only 2 of 3 up: nobody founds
        (1, [2, 3], [3], None, None),  # a node with data: a group existed; never found another
        (1, [], [2, 3], None, None),  # node 1's volume was lost while all were down
        (1, [2, 3, 4], [], None, BootstrapOutcome(found=True)),  # more than expected is fine
        (3, [], [], 2, BootstrapOutcome(contacts=(ADDR[2], ADDR[1]))),  # a running group: join it
        (1, [2, 3], [2], 2, BootstrapOutcome(contacts=(ADDR[2], ADDR[3]))),  # rolling restart, lost volume
    ],
)
def test_founding_needs_every_expected_node_new_and_none_with_data(
    me: int, heard_empty: list[int], heard_data: list[int], running: int | None, outcome: BootstrapOutcome | None
) -> None:
    c, sent = coordinator(me)
    for n in heard_empty:
        c.on_hello(BootstrapHello(n, ADDR[n], 3))
    for n in heard_data:
        c.on_has_data(n)
    if running is not None:
        c.on_running(GroupRunning(ADDR[running], 7))
    c.on_tick(0.0)
    assert c.outcome == outcome
    if outcome is None:
        assert {a for a, _ in sent} == {ADDR[n] for n in (1, 2, 3) if n != me}  # hellos to the others, not itself
        assert c.why_waiting()


def test_hellos_repeat_and_a_late_peer_is_counted() -> None:
    c, sent = coordinator(1)
    assert c.on_tick(0.0) > 0.0 and len(sent) == 2
    c.on_tick(0.1)
    assert len(sent) == 2  # not before RESEND
    c.on_tick(1.0)
    assert len(sent) == 4
    c.on_hello(BootstrapHello(1, ADDR[1], 3))  # its own hello (its address among the contacts)
    c.on_hello(BootstrapHello(2, ADDR[2], 3))
    c.on_tick(1.1)
    assert c.outcome is None
    c.on_hello(BootstrapHello(3, ADDR[3], 3))
    c.on_tick(1.2)
    assert c.outcome == BootstrapOutcome(found=True)


def test_expect_needs_contacts_naming_the_others() -> None:
    with pytest.raises(ConfigError, match="bootstrap_expect = 3 needs node.contacts"):
        NodeSection(id=1, listen="0.0.0.0:7001", advertise=ADDR[1], contacts=(ADDR[1], ADDR[2]), bootstrap_expect=3)
    NodeSection(
        id=1, listen="0.0.0.0:7001", advertise=ADDR[1], contacts=tuple(ADDR[n] for n in (1, 2, 3)), bootstrap_expect=3
    )


class SameCommandNodes:
    """Three ``node`` processes with one command line but the id and address, as pods."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.certs = ensure_cluster_certs(workdir / "certs", (1, 2, 3), clients=("operator",), cluster="boot")
        self.ports = dict(zip((1, 2, 3), _free_ports(3)))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def address(self, n: int) -> str:
        return f"127.0.0.1:{self.ports[n]}"

    def start(self, n: int) -> None:
        cmd = [sys.executable, "-m", "derecho_actors.tools.cli", "node", "--id", str(n), "--listen", self.address(n),
               "--bootstrap-expect", "3", "--no-leave", "--app", "examples.persistent_kv:PersistentKV",
               "--certs-dir", str(self.certs), "--set", "node.cluster=boot",
               "--set", f"node.data_dir={self.workdir / f'data-{n}'}"]  # fmt: skip
        for m in (1, 2, 3):
            cmd += ["--contact", self.address(m)]
        with open(self.workdir / f"node-{n}.log", "ab") as log:
            self.procs[n] = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def log(self, n: int) -> str:
        return (self.workdir / f"node-{n}.log").read_text()

    def status(self, n: int) -> dict:
        try:
            return fetch_status(self.address(n), "boot", 1.0, client_credentials(self.certs, "operator"))
        except Exception:
            return {}

    def wait(self, predicate, what: str, timeout: float = 40.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- node {n}\n{self.log(n)[-1500:]}" for n in self.procs)
        raise AssertionError(f"{what} within {timeout} s\n{logs}")

    def members(self, n: int) -> set[int]:
        return {m for m, _ in self.status(n).get("members", [])}

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(10)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[SameCommandNodes]:
    made = SameCommandNodes(tmp_path)
    try:
        yield made
    finally:
        made.kill_all()


def test_alike_nodes_found_one_group_and_a_lost_volume_never_founds_a_second(pods: SameCommandNodes) -> None:
    import derecho_actors as da
    from examples.persistent_kv import PersistentKV

    for n in (3, 2, 1):  # in any order: nobody founds before all three are up
        pods.start(n)
        if n != 1:
            pods.wait(lambda n=n: pods.status(n).get("bootstrapping"), f"node {n} answering, bootstrapping")
            time.sleep(0.5)
            assert "vid" not in pods.status(n), pods.log(n)[-1000:]
    pods.wait(lambda: all(pods.members(n) == {1, 2, 3} for n in (1, 2, 3)), "no common view of 1, 2, 3")
    assert "node 1 founds the group" in pods.log(1)
    creds = {"certs_dir": pods.certs, "name": "operator", "cluster": "boot"}
    with da.Client([pods.address(n) for n in (1, 2, 3)], **creds) as client:  # type: ignore[arg-type]
        kv = client.handle(PersistentKV)
        last = [kv.put(f"k{i}", b"v%d" % i) for i in range(50)][-1]
        last.persisted(timeout=30)
    # Every node dies; node 1 comes back with an empty volume, first and alone.
    pods.kill_all()
    import shutil

    shutil.rmtree(pods.workdir / "data-1")
    pods.start(1)
    pods.wait(lambda: pods.status(1).get("bootstrapping"), "node 1 answering, bootstrapping")
    time.sleep(2.0)  # what it would do alone: wait, never found
    st = pods.status(1)
    assert "vid" not in st and st.get("bootstrapping"), f"node 1 did not wait: {st}\n{pods.log(1)[-1500:]}"
    pods.start(2)
    pods.start(3)
    pods.wait(lambda: all(pods.members(n) == {1, 2, 3} for n in (1, 2, 3)), "the group did not come back whole")
    assert "have data of an existing group" in pods.log(1) or "has the data of an existing group" in pods.log(1)
    with da.Client([pods.address(n) for n in (1, 2, 3)], **creds) as client:  # type: ignore[arg-type]
        kv = client.handle(PersistentKV)
        values = kv.get("k49", consistency="linearizable").get(timeout=20)
        assert list(values.values()) == [b"v49"], "the group restarted without its data: a second group was founded"
        for n in (1, 2, 3):
            assert kv.get("k7", node=n).get(timeout=20) == {n: b"v7"}, f"node {n} lacks the old data"
