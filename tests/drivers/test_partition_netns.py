"""A real network partition between node processes, made with Linux network namespaces.

Each node runs in a network namespace of its own; the namespaces are wired to a Linux bridge
that lives in one more namespace, on a private /24 that exists only inside them (no traffic
ever leaves these namespaces). Blackhole routes inside the node namespaces then cut nodes 4
and 5 off from nodes 1, 2 and 3 while 4 and 5 still reach each other.

Expected: the majority {1, 2, 3} installs a view of its own and keeps delivering; the minority
cannot reach a majority of its view and stops itself (exit code 3, "partitioned"), having
installed no view the majority did not; whatever anyone delivered in a view, every majority
member of that view delivered too, in the same order. After the routes are removed, 4 and 5
start again as new processes and join: a 5-member view is installed again.

Needs root and ``ip``; skips otherwise. Everything created here is removed in ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from runtime.security.certs import ensure_cluster_certs

pytestmark = [pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
PORT = 7000
CLUSTER = "netns"
IDS = [1, 2, 3, 4, 5]
MAJORITY = [1, 2, 3]
MINORITY = [4, 5]
SEND = 12000
HEARTBEAT_MS, SUSPICION_MS = 20, 300
FAST = [
    "--set",
    f"timeouts.heartbeat_ms={HEARTBEAT_MS}",
    "--set",
    f"timeouts.suspicion_ms={SUSPICION_MS}",
    # A window of 1,000 keeps each sender's load (SEND messages) running across the partition,
    # so the majority has messages of its own left to deliver in the view after it: with the
    # default (10,000) the senders would be done, or nearly, before the partition.
    "--set",
    "multicast.window_size=1000",
]
# The node driver closes a departed node's connections 2 * suspicion_ms after the view change
# (runtime/drivers/node_phases/member.py, _forget_if_gone), and not at all if the id is back in the view.
FORGET_GRACE_S = 2 * SUSPICION_MS / 1000
VIEW_LINE = re.compile(r"view (\d+) installed: members \[([\d, ]*)\]")

# Runs inside a node namespace: answers each "contact cluster" line with one JSON line.
STATUS_HELPER = r"""
import json, sys
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import fetch_status
credentials = client_credentials(sys.argv[1], "operator")
for line in sys.stdin:
    contact, cluster = line.split()
    try:
        out = {"ok": True, "status": fetch_status(contact, cluster, 1.0, credentials)}
    except Exception as exc:
        out = {"ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class Lab:
    """Namespaces, bridge, node processes and status helpers of one test; ``close`` undoes
    all of it. Hosts are numbered: host h is namespace ``da-<tag>-n<h>`` with address
    ``10.213.<x>.<h>``; node processes are named by a label (``"4"``, ``"4-again"``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = secrets.token_hex(3)
        self.bridge_ns = f"da-{self.tag}-br"
        self.ns: dict[int, str] = {}
        self.subnet = f"10.213.{secrets.randbelow(256)}"
        self.created: list[str] = []
        self.blackholes: list[tuple[int, int]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.helpers: dict[int, subprocess.Popen[str]] = {}
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        # TLS on, as everywhere: a throwaway CA; node certificates are made as nodes start.
        self.certs = ensure_cluster_certs(workdir / "certs", (), clients=("operator",), cluster=CLUSTER)

    # ------------------------------------------------------------ network
    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def addr(self, host: int) -> str:
        return f"{self.ip(host)}:{PORT}"

    @staticmethod
    def run_ip(*args: str) -> None:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
        if res.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")

    def _add_ns(self, name: str) -> None:
        self.run_ip("netns", "add", name)
        self.created.append(name)
        self.run_ip("-n", name, "link", "set", "lo", "up")

    def build(self, hosts: list[int]) -> None:
        try:
            self._add_ns(self.bridge_ns)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot create a network namespace: {exc}")
        try:
            self.run_ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            self.run_ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for h in hosts:
                self.add_host(h)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # no bridge or veth support
            pytest.skip(f"cannot build the namespace network: {exc}")

    def add_host(self, h: int) -> None:
        ns = self.ns[h] = f"da-{self.tag}-n{h}"
        br = self.bridge_ns
        self._add_ns(ns)
        # Both veth ends are created inside our namespaces: nothing appears in the root one.
        self.run_ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{h}", "netns", br)
        self.run_ip("-n", br, "link", "set", f"v{h}", "master", "br0")
        self.run_ip("-n", br, "link", "set", f"v{h}", "up")
        self.run_ip("-n", ns, "addr", "add", f"{self.ip(h)}/24", "dev", "eth0")
        self.run_ip("-n", ns, "link", "set", "eth0", "up")

    def partition(self, side_a: list[int], side_b: list[int]) -> None:
        """Blackhole routes in every host of each side for every address of the other."""
        pairs = [(a, b) for a in side_a for b in side_b] + [(b, a) for a in side_a for b in side_b]
        procs = []
        for h in {p[0] for p in pairs}:
            script = "".join(f"route add blackhole {self.ip(t)}/32\n" for s, t in pairs if s == h)
            procs.append(
                subprocess.Popen(
                    ["ip", "-n", self.ns[h], "-batch", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
            procs[-1].stdin.write(script)  # type: ignore[union-attr]
            procs[-1].stdin.close()  # type: ignore[union-attr]
        self.blackholes += pairs
        for proc in procs:
            assert proc.wait(15) == 0, proc.stderr.read()  # type: ignore[union-attr]

    def heal(self) -> None:
        for h, t in self.blackholes:
            self.run_ip("-n", self.ns[h], "route", "del", "blackhole", f"{self.ip(t)}/32")
        self.blackholes = []

    # ------------------------------------------------------------ processes
    def start(
        self,
        label: str,
        node_id: int,
        host: int,
        contact: int | None,
        send: int = SEND,
        wait_members: int = 5,
        extra: list[str] | None = None,
    ) -> None:
        cmd = [
            "ip",
            "netns",
            "exec",
            self.ns[host],
            sys.executable,
            "-m",
            "derecho_actors.tools.cli",
            "node",
            "--id",
            str(node_id),
            "--listen",
            self.addr(host),
            "--set",
            f"node.cluster={CLUSTER}",
            "--set",
            f"node.data_dir={self.workdir / f'data-{label}'}",
            "--certs-dir",
            str(ensure_cluster_certs(self.certs, [node_id], cluster=CLUSTER)),
            *(extra if extra is not None else FAST),
            "--send",
            str(send),
            "--wait-members",
            str(wait_members),
            "--delivery-log",
            str(self.delivery_path(label)),
        ]
        if contact is not None:
            cmd += ["--contact", self.addr(contact)]
        path = self.workdir / f"node-{label}.log"
        self.logs[label] = path
        with open(path, "ab") as log:
            self.procs[label] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=self.env,
                start_new_session=True,
            )

    def delivery_path(self, label: str) -> Path:
        return self.workdir / f"delivered-{label}.log"

    def deliveries(self, label: str) -> list[str]:
        path = self.delivery_path(label)
        if not path.exists():
            return []
        # Batches are written with one flush each, but a reader may catch a partial last line.
        return [line for line in path.read_text().split("\n")[:-1] if line]

    def log_text(self, label: str) -> str:
        return self.logs[label].read_text(errors="replace")

    def views_in_log(self, label: str) -> list[tuple[int, tuple[int, ...]]]:
        return [
            (int(m.group(1)), tuple(int(x) for x in m.group(2).split(",") if x.strip()))
            for m in VIEW_LINE.finditer(self.log_text(label))
        ]

    def status(self, host: int) -> dict[str, Any] | None:
        """The status of the node listening on ``host``, asked from inside its namespace."""
        helper = self.helpers.get(host)
        if helper is None or helper.poll() is not None:
            helper = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[host], sys.executable, "-c", STATUS_HELPER, str(self.certs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
                env=self.env,
                start_new_session=True,
            )
            self.helpers[host] = helper
        assert helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(f"{self.addr(host)} {CLUSTER}\n")
            helper.stdin.flush()
        except OSError:
            return None
        line = helper.stdout.readline()  # fetch_status gives up after 1 s
        if not line:
            return None
        reply = json.loads(line)
        return reply["status"] if reply["ok"] else None

    def check_alive(self, labels: list[str], what: str) -> None:
        for label in labels:
            if self.procs[label].poll() is not None:
                raise AssertionError(
                    f"node {label} exited with {self.procs[label].returncode} {what}:\n{self.log_text(label)[-3000:]}"
                )

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        interval: float = 0.05,
        alive: list[str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            self.check_alive(alive or [], f"while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.tails()}")
            time.sleep(interval)

    def wait_view(
        self, members: set[int], host: int, timeout: float, alive: list[str], interval: float = 0.05
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def ok() -> bool:
            st = self.status(host)
            if st and "vid" in st and {m for m, _ in st["members"]} == members and not st["wedged"]:
                found.update(st)
                return True
            return False

        self.wait_for(ok, timeout, f"a view of {sorted(members)} at host {host}", interval, alive)
        return found

    def tails(self) -> str:
        return "\n".join(
            f"--- node {label} (rc {self.procs[label].poll()}):\n{path.read_text(errors='replace')[-1500:]}"
            for label, path in self.logs.items()
            if path.exists()
        )

    def close(self) -> None:
        everything = [*self.procs.values(), *self.helpers.values()]
        for proc in everything:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in everything:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.helpers.values():
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=15)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def per_view(lines: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        out[int(line.split(" ", 1)[0])].append(line)
    return out


def start_group(lab: Lab, send: int, extra: list[str] | None = None, interval: float = 0.05) -> None:
    lab.start("1", 1, 1, contact=None, send=send, extra=extra)
    lab.wait_for(lambda: bool((st := lab.status(1)) and "vid" in st), 30, "the founder", 0.05, ["1"])
    for i in IDS[1:]:
        lab.start(str(i), i, i, contact=1, send=send, extra=extra)
    lab.wait_view(set(IDS), 1, timeout=40, alive=[str(i) for i in IDS], interval=interval)


def test_minority_stops_majority_continues_and_rejoin(lab: Lab) -> None:
    lab.build(IDS)
    first = [str(i) for i in IDS]
    majority = [str(i) for i in MAJORITY]
    # -------------------------------------------------------------- a 5-member group under load
    start_group(lab, SEND, interval=0.01)
    lab.wait_for(lambda: len(lab.deliveries("1")) >= 100, 60, "deliveries to flow", 0.01, first)

    # -------------------------------------------------------------- partition {1,2,3} | {4,5}
    t0 = time.monotonic()
    lab.partition(MAJORITY, MINORITY)
    at_partition = {i: len(lab.deliveries(str(i))) for i in MAJORITY}
    assert at_partition[1] < SEND * len(IDS), "the load finished before the partition"
    view = lab.wait_view(set(MAJORITY), 1, timeout=15, alive=majority)
    took = time.monotonic() - t0
    new_vid = view["vid"]
    assert took < 10, f"the majority took {took:.1f} s to install a view of {MAJORITY}"
    for i in (2, 3):
        assert lab.wait_view(set(MAJORITY), i, timeout=10, alive=majority)["vid"] == new_vid

    # The minority stops itself: exit code 3, "partitioned" in its log.
    for i in MINORITY:
        proc = lab.procs[str(i)]
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {i} did not stop within 20 s of the partition\n{lab.log_text(str(i))[-3000:]}")
        assert rc == 3, f"node {i} exited with {rc}, not 3 (stopped)\n{lab.log_text(str(i))[-3000:]}"
        assert "stops: partitioned" in lab.log_text(str(i)), lab.log_text(str(i))[-3000:]

    # The majority keeps delivering, in the new view.
    lab.wait_for(
        lambda: all(new_vid in per_view(lab.deliveries(str(i))) for i in MAJORITY),
        60,
        f"majority deliveries in view {new_vid}",
        0.05,
        majority,
    )
    for i in MAJORITY:
        assert len(lab.deliveries(str(i))) > at_partition[i], f"node {i} delivered nothing after the partition"

    # The minority installed no view the majority did not (same id, same members).
    majority_views: dict[int, tuple[int, ...]] = {}
    for i in MAJORITY:
        for vid, members in lab.views_in_log(str(i)):
            assert majority_views.setdefault(vid, members) == members, f"majority nodes disagree on view {vid}"
    assert majority_views.get(new_vid) is not None and set(majority_views[new_vid]) == set(MAJORITY)
    for i in MINORITY:
        views = lab.views_in_log(str(i))
        assert views, f"node {i} logged no view"
        for vid, members in views:
            assert majority_views.get(vid) == members, (
                f"node {i} installed view {vid} {list(members)}, which the majority never installed "
                f"(majority: {majority_views.get(vid)})"
            )

    # Virtual synchrony, nothing acknowledged lost: in every view before the partition view,
    # the majority members of the view delivered the same sequence (final: each has delivered
    # in view new_vid since), and anyone's deliveries in it (the minority's included) are a
    # prefix of that sequence.
    logs = {i: per_view(lab.deliveries(str(i))) for i in IDS}
    checked = {i: 0 for i in IDS}
    for vid in sorted({v for log in logs.values() for v in log if v < new_vid}):
        holders = [i for i in MAJORITY if i in majority_views.get(vid, ())]
        assert holders, f"view {vid} has deliveries but no majority member"
        ref = logs[holders[0]].get(vid, [])
        for i in holders[1:]:
            assert logs[i].get(vid, []) == ref, (
                f"nodes {holders[0]} and {i} delivered different sequences in view {vid}"
            )
        for i in IDS:
            seq = logs[i].get(vid, [])
            assert seq == ref[: len(seq)], (
                f"node {i}'s {len(seq)} deliveries in view {vid} are not all in the majority's "
                f"{len(ref)}, in the same order"
            )
            checked[i] += len(seq)
    assert all(checked.values()), f"some node delivered nothing before the partition: {checked}"

    # -------------------------------------------------------------- heal, 4 and 5 come back
    lab.heal()
    # Restart at once: the transport tells the new processes from their dead predecessors.
    again = [f"{i}-again" for i in MINORITY]
    for i in MINORITY:
        lab.start(f"{i}-again", i, i, contact=2, send=200, wait_members=5)
    alive = majority + again
    view = lab.wait_view(set(IDS), 1, timeout=40, alive=alive)
    final_vid = view["vid"]
    assert final_vid > new_vid
    for i in MINORITY:
        assert lab.wait_view(set(IDS), i, timeout=15, alive=alive)["vid"] == final_vid
    # The new members take part: everyone delivers the restarted nodes' messages...
    lab.wait_for(
        lambda: all(len(per_view(lab.deliveries(n)).get(final_vid, [])) >= 400 for n in alive),
        60,
        f"the restarted nodes' 400 messages delivered in view {final_vid}",
        0.1,
        alive,
    )
    # ... and the view holds (no spurious suspicion of the restarted nodes).
    time.sleep(10 * SUSPICION_MS / 1000)
    lab.check_alive(alive, f"after view {final_vid} was installed")
    for host in IDS:
        st = lab.status(host)
        assert st is not None and st.get("vid") == final_vid, f"host {host} left view {final_vid}: {st}\n{lab.tails()}"
    seqs = {n: per_view(lab.deliveries(n))[final_vid] for n in alive}
    ref = max(seqs.values(), key=len)
    for n, seq in seqs.items():
        assert seq == ref[: len(seq)], f"node {n} delivered a different sequence in view {final_vid}"


SLOW_SUSPICION_MS = 3000
SLOW_TIMEOUTS = ["--set", "timeouts.heartbeat_ms=50", "--set", f"timeouts.suspicion_ms={SLOW_SUSPICION_MS}"]


def test_fast_rejoin_of_same_id(lab: Lab) -> None:
    """Node 4 is partitioned away for good (its old address stays unreachable); the same id
    restarts on a new host right after the majority removed it, and must be admitted promptly."""
    lab.build(IDS + [14])
    majority = [str(i) for i in MAJORITY]
    start_group(lab, 0, extra=SLOW_TIMEOUTS)
    lab.partition(MAJORITY, MINORITY)
    lab.wait_view(set(MAJORITY), 1, timeout=30, alive=majority)
    removed_at = time.monotonic()
    lab.start("4-again", 4, 14, contact=2, send=0, wait_members=1, extra=SLOW_TIMEOUTS)
    alive = majority + ["4-again"]
    # A joiner is answered at once (join_retry_ms is 500): it must be a member before the
    # majority's grace for the old incarnation's connections (2 * suspicion_ms from the
    # removal) ends, which is what admission used to wait for. At least 2.5 s after its
    # start; more if the start itself was quick (a loaded CI machine once needed more than
    # 2.5 s from the start to the view).
    grace_left = removed_at + 2 * SLOW_SUSPICION_MS / 1000 - 0.5 - time.monotonic()
    lab.wait_view({1, 2, 3, 4}, 1, timeout=max(2.5, grace_left), alive=alive)
    # And it stays a member for longer than the grace period.
    deadline = time.monotonic() + 2 * SLOW_SUSPICION_MS / 1000 + 2
    while time.monotonic() < deadline:
        lab.check_alive(alive, "after node 4 rejoined")
        for host in (1, 14):
            st = lab.status(host)
            assert st is not None and {m for m, _ in st.get("members", [])} == {1, 2, 3, 4}, (
                f"host {host} no longer has node 4 in its view: {st}\n{lab.tails()}"
            )
        time.sleep(0.2)
