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

pytestmark = [pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
PORT = 7000
CLUSTER = "netns"
IDS = [1, 2, 3, 4, 5]
MAJORITY = [1, 2, 3]
MINORITY = [4, 5]
SEND = 3000
FAST = ["--set", "timeouts.heartbeat_ms=20", "--set", "timeouts.suspicion_ms=300"]
VIEW_LINE = re.compile(r"view (\d+) installed: members \[([\d, ]*)\]")

# Runs inside a node namespace: answers one "contact cluster" line with one JSON line.
STATUS_HELPER = r"""
import json, sys
from runtime.drivers.status import fetch_status
for line in sys.stdin:
    contact, cluster = line.split()
    try:
        out = {"ok": True, "status": fetch_status(contact, cluster, 1.0)}
    except Exception as exc:
        out = {"ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class Lab:
    """Namespaces, bridge, node processes and status helpers of one test; ``close`` undoes all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        tag = secrets.token_hex(3)
        self.bridge_ns = f"da-{tag}-br"
        self.ns = {i: f"da-{tag}-n{i}" for i in IDS}
        self.subnet = f"10.213.{secrets.randbelow(256)}"
        self.created: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # label -> process
        self.logs: dict[str, Path] = {}
        self.helpers: dict[int, subprocess.Popen[str]] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    # ------------------------------------------------------------ network
    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def addr(self, i: int) -> str:
        return f"{self.ip(i)}:{PORT}"

    @staticmethod
    def run_ip(*args: str) -> None:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
        if res.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")

    def add_ns(self, name: str) -> None:
        self.run_ip("netns", "add", name)
        self.created.append(name)
        self.run_ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        try:
            self.add_ns(self.bridge_ns)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot create a network namespace: {exc}")
        br = self.bridge_ns
        self.run_ip("-n", br, "link", "add", "br0", "type", "bridge")
        self.run_ip("-n", br, "link", "set", "br0", "up")
        for i in IDS:
            ns = self.ns[i]
            self.add_ns(ns)
            # Both ends are created inside our namespaces: nothing appears in the root namespace.
            self.run_ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", "netns", br)
            self.run_ip("-n", br, "link", "set", f"v{i}", "master", "br0")
            self.run_ip("-n", br, "link", "set", f"v{i}", "up")
            self.run_ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            self.run_ip("-n", ns, "link", "set", "eth0", "up")

    def _routes(self, verb: str) -> None:
        for side, other in ((MAJORITY, MINORITY), (MINORITY, MAJORITY)):
            for i in side:
                for j in other:
                    self.run_ip("-n", self.ns[i], "route", verb, "blackhole", f"{self.ip(j)}/32")

    def partition(self) -> None:
        self._routes("add")

    def heal(self) -> None:
        self._routes("del")

    # ------------------------------------------------------------ processes
    def start(self, i: int, label: str, contact: int | None, send: int = SEND, wait_members: int = 5) -> None:
        cmd = [
            "ip", "netns", "exec", self.ns[i], sys.executable, "-m", "derecho_actors.cli", "node",
            "--id", str(i), "--listen", self.addr(i),
            "--set", f"node.cluster={CLUSTER}",
            "--set", f"node.data_dir={self.workdir / f'data-{label}'}",
            *FAST,
            "--send", str(send), "--wait-members", str(wait_members),
            "--delivery-log", str(self.delivery_path(label)),
        ]
        if contact is not None:
            cmd += ["--contact", self.addr(contact)]
        path = self.workdir / f"node-{label}.log"
        self.logs[label] = path
        with open(path, "ab") as log:
            self.procs[label] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, env=self.env, start_new_session=True,
            )

    def delivery_path(self, label: str) -> Path:
        return self.workdir / f"delivered-{label}.log"

    def deliveries(self, label: str) -> list[str]:
        path = self.delivery_path(label)
        if not path.exists():
            return []
        # A batch is written with one flush, but a reader may still catch a partial last line.
        return [line for line in path.read_text().split("\n")[:-1] if line]

    def log_text(self, label: str) -> str:
        return self.logs[label].read_text(errors="replace")

    def views_in_log(self, label: str) -> list[tuple[int, tuple[int, ...]]]:
        return [
            (int(m.group(1)), tuple(int(x) for x in m.group(2).split(",") if x.strip()))
            for m in VIEW_LINE.finditer(self.log_text(label))
        ]

    def status(self, via: int, of: int) -> dict[str, Any] | None:
        """Node ``of``'s status, asked from inside node ``via``'s namespace; None if no answer."""
        helper = self.helpers.get(via)
        if helper is None or helper.poll() is not None:
            helper = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[via], sys.executable, "-c", STATUS_HELPER],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, cwd=REPO, env=self.env, start_new_session=True,
            )
            self.helpers[via] = helper
        assert helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(f"{self.addr(of)} {CLUSTER}\n")
            helper.stdin.flush()
        except OSError:
            return None
        line = helper.stdout.readline()  # fetch_status gives up after 1 s
        if not line:
            return None
        reply = json.loads(line)
        return reply["status"] if reply["ok"] else None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str,
                 interval: float = 0.05, alive: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            for label in alive or []:
                if self.procs[label].poll() is not None:
                    raise AssertionError(
                        f"node {label} exited with {self.procs[label].returncode} while waiting for {what}:\n"
                        f"{self.log_text(label)[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.tails()}")
            time.sleep(interval)

    def wait_view(self, members: set[int], via: int, timeout: float, alive: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def ok() -> bool:
            st = self.status(via, via)
            if st and "vid" in st and {m for m, _ in st["members"]} == members and not st["wedged"]:
                found.update(st)
                return True
            return False

        self.wait_for(ok, timeout, f"a view of {sorted(members)} at node {via}", 0.1, alive)
        return found

    def tails(self) -> str:
        return "\n".join(
            f"--- node {label} (rc {self.procs[label].poll()}):\n{path.read_text(errors='replace')[-1500:]}"
            for label, path in self.logs.items() if path.exists()
        )

    def kill(self, label: str) -> None:
        proc = self.procs[label]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.helpers.values()]:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in [*self.procs.values(), *self.helpers.values()]:
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
        lab.build()
        yield lab
    finally:
        lab.close()


def per_view(lines: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        out[int(line.split(" ", 1)[0])].append(line)
    return out


def test_minority_stops_majority_continues_and_rejoin(lab: Lab) -> None:
    first = [str(i) for i in IDS]
    # -------------------------------------------------------------- a 5-member group under load
    lab.start(1, "1", contact=None)
    lab.wait_for(lambda: bool((st := lab.status(1, 1)) and "vid" in st), 30, "the founder", 0.1, ["1"])
    for i in IDS[1:]:
        lab.start(i, str(i), contact=1)
    lab.wait_view(set(IDS), via=1, timeout=40, alive=first)
    lab.wait_for(lambda: len(lab.deliveries("1")) >= 300, 60, "deliveries to flow", 0.02, first)
    assert len(lab.deliveries("1")) < SEND * len(IDS), "the load finished before the partition; send more"

    # -------------------------------------------------------------- partition {1,2,3} | {4,5}
    lab.partition()
    t0 = time.monotonic()
    at_partition = {i: len(lab.deliveries(str(i))) for i in MAJORITY}
    view = lab.wait_view(set(MAJORITY), via=1, timeout=15, alive=[str(i) for i in MAJORITY])
    took = time.monotonic() - t0
    new_vid = view["vid"]
    for i in (2, 3):
        lab.wait_view(set(MAJORITY), via=i, timeout=10, alive=[str(i) for i in MAJORITY])
    assert took < 15, f"the majority took {took:.1f} s to install {sorted(MAJORITY)}"

    # The minority stops itself: non-zero exit, "partitioned" in its log.
    for i in MINORITY:
        proc = lab.procs[str(i)]
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {i} did not stop within 20 s of the partition\n{lab.log_text(str(i))[-3000:]}")
        assert rc != 0, f"node {i} exited with 0 after losing its majority"
        assert rc == 3, f"node {i} exited with {rc}, not 3 (stopped)\n{lab.log_text(str(i))[-3000:]}"
        assert "partitioned" in lab.log_text(str(i)), lab.log_text(str(i))[-3000:]

    # The majority keeps delivering, in the new view.
    lab.wait_for(
        lambda: all(new_vid in per_view(lab.deliveries(str(i))) for i in MAJORITY), 60,
        f"majority deliveries in view {new_vid}", 0.1, [str(i) for i in MAJORITY],
    )
    for i in MAJORITY:
        assert len(lab.deliveries(str(i))) > at_partition[i], f"node {i} delivered nothing after the partition"

    # The minority installed no view the majority did not (same id, same members).
    majority_views: dict[int, tuple[int, ...]] = {}
    for i in MAJORITY:
        for vid, members in lab.views_in_log(str(i)):
            assert majority_views.setdefault(vid, members) == members, f"majority nodes disagree on view {vid}"
    members_of = dict(majority_views)
    for i in MINORITY:
        views = lab.views_in_log(str(i))
        assert views, f"node {i} logged no view"
        for vid, members in views:
            assert majority_views.get(vid) == members, (
                f"node {i} installed view {vid} {list(members)}, which the majority never installed "
                f"(majority: {majority_views.get(vid)})"
            )
            members_of.setdefault(vid, members)

    # Virtual synchrony: for every view before the partition view, each majority member of the
    # view delivered the same sequence (final: each has delivered in view new_vid since), and
    # anyone's deliveries in that view (the minority's included) are a prefix of it.
    logs = {i: per_view(lab.deliveries(str(i))) for i in IDS}
    checked = 0
    for vid in sorted({v for log in logs.values() for v in log if v < new_vid}):
        holders = [i for i in MAJORITY if i in members_of.get(vid, ())]
        assert holders, f"view {vid} has deliveries but no majority member"
        ref = logs[holders[0]].get(vid, [])
        for i in holders[1:]:
            seq = logs[i].get(vid, [])
            assert seq == ref, f"nodes {holders[0]} and {i} delivered different sequences in view {vid}"
        for i in IDS:
            seq = logs[i].get(vid, [])
            assert seq == ref[: len(seq)], (
                f"node {i}'s {len(seq)} deliveries in view {vid} are not all in the majority's "
                f"{len(ref)}, in the same order"
            )
            checked += len(seq)
    assert checked > 0, "no delivery before the partition was checked"

    # -------------------------------------------------------------- heal, 4 and 5 come back
    lab.heal()
    majority_alive = [str(i) for i in MAJORITY]
    for i in MINORITY:
        lab.start(i, f"{i}-again", contact=2, send=200, wait_members=5)
    alive = majority_alive + [f"{i}-again" for i in MINORITY]
    view = lab.wait_view(set(IDS), via=1, timeout=40, alive=alive)
    assert view["vid"] > new_vid
    for i in MINORITY:
        lab.wait_view(set(IDS), via=i, timeout=15, alive=alive)
