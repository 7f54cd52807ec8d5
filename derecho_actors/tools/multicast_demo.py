"""``derecho-actors multicast-demo``: the protocol alone (no actors), on a local cluster of
real node processes on loopback.

It starts the nodes (the first founds the group, the others join through it), waits for the
view, has every node multicast numbered messages, checks that every node delivered the same
sequence, kills one node with SIGKILL, times the view change, and shows the group's status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.drivers.dial import client_credentials
from runtime.drivers.status import StatusError, fetch_status, render_status
from runtime.errors import DerechoError
from runtime.security.certs import ensure_cluster_certs

CLIENT_NAME = "operator"  # the client certificate the cluster's status requests use


class DemoError(DerechoError):
    """The demo cluster did not behave; the node logs in the work folder say why."""


class MulticastCluster:
    """Raw protocol nodes (``derecho-actors node``, running ``tools.load_app``) on 127.0.0.1, each
    with its own config, log and delivery log: the multicast demo and the tests of the node
    driver use it. (A cluster hosting replicated types is ``derecho_actors.LocalCluster``.)"""

    def __init__(self, workdir: Path, base_port: int, cluster: str = "demo", extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.base_port = base_port
        self.cluster = cluster
        self.extra = extra or []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._counted: dict[int, tuple[int, int]] = {}  # node -> (bytes read, lines seen)
        # A throwaway CA in the work folder: TLS is on, as in production.
        self.certs_dir = ensure_cluster_certs(workdir / "certs", (), clients=(CLIENT_NAME,), cluster=cluster)
        self.credentials = client_credentials(self.certs_dir, CLIENT_NAME)

    def address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.base_port + node_id}"

    def start(
        self,
        node_id: int,
        send: int = 0,
        size: int = 100,
        contact: int | None = None,
        env: dict[str, str] | None = None,
        wait_members: int = 1,
        extra: list[str] | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "derecho_actors.tools.cli",
            "node",
            "--id",
            str(node_id),
            "--listen",
            self.address(node_id),
            "--set",
            f"node.cluster={self.cluster}",
            "--set",
            f"node.data_dir={self.workdir / f'data-{node_id}'}",
            "--send",
            str(send),
            "--size",
            str(size),
            "--delivery-log",
            str(self.delivery_log(node_id)),
            "--wait-members",
            str(wait_members),
            "--certs-dir",
            str(ensure_cluster_certs(self.certs_dir, [node_id], cluster=self.cluster)),
            *self.extra,
            *(extra or []),
        ]
        if contact is not None:
            cmd += ["--contact", self.address(contact)]
        log = open(self.workdir / f"node-{node_id}.log", "ab")
        self.procs[node_id] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        log.close()

    def delivery_log(self, node_id: int) -> Path:
        return self.workdir / f"delivered-{node_id}.log"

    def delivered_count(self, node_id: int) -> int:
        """Lines in the node's delivery log, reading only what was appended since the last
        call (waiting on a growing log must not cost the nodes their CPU)."""
        path = self.delivery_log(node_id)
        done, lines = self._counted.get(node_id, (0, 0))
        try:
            with open(path, "rb") as f:
                f.seek(done)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        cut = chunk.rfind(b"\n") + 1  # whole lines only
        done, lines = done + cut, lines + chunk.count(b"\n", 0, cut)
        self._counted[node_id] = (done, lines)
        return lines

    def deliveries(self, node_id: int) -> list[str]:
        """The node's delivery log, whole lines only: a node killed (or read) in the middle
        of writing a batch leaves a partial last line, which is not a delivery record."""
        path = self.delivery_log(node_id)
        if not path.exists():
            return []
        text = path.read_text()
        return text[: text.rfind("\n") + 1].splitlines()

    def status(self, node_id: int, timeout: float = 2.0) -> dict[str, Any]:
        return fetch_status(self.address(node_id), self.cluster, timeout, credentials=self.credentials)

    def wait_for(self, predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except StatusError:
                pass
            for node_id, proc in self.procs.items():
                if proc.poll() not in (None, 0, -9, -15):
                    tail = (self.workdir / f"node-{node_id}.log").read_text()[-2000:]
                    raise DemoError(f"node {node_id} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            time.sleep(interval)
        raise DemoError(f"timed out after {timeout} s waiting for {what} (logs in {self.workdir})")

    def wait_view(self, members: set[int], timeout: float = 20.0, via: int | None = None) -> dict[str, Any]:
        asker = via if via is not None else min(members)
        result: dict[str, Any] = {}

        def ok() -> bool:
            st = self.status(asker)
            if "vid" in st and {m for m, _ in st["members"]} == members and not st["wedged"]:
                result.update(st)
                return True
            return False

        self.wait_for(ok, timeout, f"a view of {sorted(members)}")
        return result

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> MulticastCluster:
        # SIGTERM (from timeout, CI, a test) must still reap the node processes.
        self._old_term = signal.signal(signal.SIGTERM, _raise_exit) if _main_thread() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def demo(nodes: int = 3, messages: int = 20000, base_port: int = 7100, workdir: str | None = None) -> int:
    if nodes < 2:
        raise DemoError("the demo needs at least 2 nodes")
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="derecho-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(1, nodes + 1))
    first, victim = ids[0], ids[-1]
    say = lambda text: print(text, flush=True)  # noqa: E731 - the demo narrates as it goes
    say(
        f"derecho-actors demo: {nodes} node processes on 127.0.0.1:{base_port + 1}..{base_port + nodes}; logs in {folder}"
    )
    # The layout needs every node in the one shard, so nobody sends until all have joined.
    layout = ["--set", f"layout.default.min_nodes={nodes}"]
    with MulticastCluster(folder, base_port, extra=layout) as cluster:
        cluster.start(first, send=messages)
        cluster.wait_for(lambda: "vid" in cluster.status(first), 10, "the first node")
        started = time.monotonic()
        for n in ids[1:]:
            cluster.start(n, send=messages, contact=first)
        view = cluster.wait_view(set(ids))
        say(
            f"view {view['vid']} installed: members {ids}, leader node {view['leader']}; "
            f"each node multicasts {messages} messages of 100 bytes"
        )
        total = messages * nodes
        cluster.wait_for(
            lambda: all(cluster.delivered_count(n) >= total for n in ids), 300, f"{total} deliveries at every node", 0.2
        )
        took = time.monotonic() - started
        logs = [cluster.deliveries(n) for n in ids]
        if any(log != logs[0] for log in logs):
            raise DemoError("nodes delivered different sequences")
        say(
            f"every node delivered the same {total} messages in the same order "
            f"({total / took:,.0f} messages/s per node, including start-up)"
        )
        say(f"kill -9 node {victim} ...")
        t0 = time.monotonic()
        cluster.kill(victim)
        view = cluster.wait_view(set(ids[:-1]), timeout=20)
        say(
            f"view {view['vid']} without node {victim} installed {time.monotonic() - t0:.3f} s later "
            f"(too small for the layout: {view['shortfall']})"
        )
        say(f"node {victim} restarts and joins again ...")
        cluster.start(victim, contact=first)
        view = cluster.wait_view(set(ids), timeout=20)
        say(f"view {view['vid']} installed with node {victim} back")
        render_status(cluster.status(first))
    if not workdir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
