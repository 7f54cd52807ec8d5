"""``local_cluster``: a group of real node processes on loopback, for tests, demos and trying
things out. Each node is ``python -m derecho_actors.tools.cluster_node``, given the replicated types
and layout through a cloudpickle file (so classes defined in a script or a test work too).
The cluster talks to its group through a ``Client``.

Before any process starts, the layout (the code's policy with any ``layout.*`` overrides merged
over it, as every node will compute it) is checked against the node count: a layout those nodes
cannot run fails at once with ``LayoutError`` saying how many more nodes it needs, instead of a
wait that can only time out. When starting fails anyway, the work folder (node logs, data) is
kept and the error names it, with the lines of the nodes' logs that say why.

``DERECHO_TRANSPORT`` (``tcp``, ``auto``, ``shm``) in the environment sets ``node.transport``
of every node that the overrides leave it to (the default, ``auto``, uses shared memory
between these processes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import cloudpickle

from derecho_actors.caller.client import Client
from derecho_actors.caller.handles import Handle
from derecho_actors.model.layout import Layout
from derecho_actors.node.app_host import hosted_layout
from derecho_actors.tools.ports import free_ports
from runtime.config import load_config
from runtime.core.layout import ShardPolicy, compute_layout, nodes_needed, single_replica_shards
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import StatusError, fetch_status
from runtime.errors import GroupClosed, LayoutError
from runtime.security.certs import ensure_cluster_certs

_log = logging.getLogger("derecho.cluster")

CLIENT_NAME = "local"  # the client certificate a local cluster makes for its own Client
# Sets node.transport for every node of a local cluster that does not override it ("tcp",
# "auto", "shm", "rdma"): how CI runs the real-process suite once per transport.
TRANSPORT_ENV = "DERECHO_TRANSPORT"


def check_layout(nodes: int, types: Sequence[type], layout: Layout, overrides: Mapping[str, str]) -> None:
    """Refuse, before starting anything, a layout ``nodes`` nodes cannot run (``LayoutError``
    saying how many more it needs); warn of shards it would leave on one replica."""
    layout_keys = {k: v for k, v in overrides.items() if k.startswith("layout.")}
    configured = load_config(None, layout_keys, environ={}).layout
    policy = hosted_layout(list(dict.fromkeys([*types, *layout.types])), configured, layout).policy
    ids = tuple(range(1, nodes + 1))
    planned = compute_layout(policy, ids)
    if not planned.adequate:
        needed = nodes_needed(policy, nodes)
        total = f"{needed} nodes" if needed is not None else "more nodes than a local cluster can start"
        more = f"needs {needed - nodes} more node{'s' if needed - nodes != 1 else ''}" if needed else "cannot run"
        which = "node 1" if nodes == 1 else f"nodes 1-{nodes}"
        raise LayoutError(
            f"local_cluster(nodes={nodes}): the layout {more} ({planned.describe_shortfall()} with {which}; "
            f"{policy.describe()} takes {total}); pass nodes={needed or '...'}, or lower min_nodes or shards"
        )
    for sid, node in single_replica_shards(planned):
        _log.warning(
            "local_cluster(nodes=%d): shard %s has one replica (node %d): one failure loses this shard's state; "
            "raise min_nodes of %s to 2 or more",
            nodes,
            sid,
            node,
            sid.type_name,
        )


_free_ports = free_ports  # the name the tests import


class LocalCluster:
    def __init__(
        self,
        nodes: int,
        types: Sequence[type],
        layout: Layout | None = None,
        overrides: Mapping[str, str] | None = None,
        workdir: str | None = None,
        cluster: str = "local",
        start_timeout: float = 30.0,
        insecure: bool = False,
        node_overrides: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """``insecure=True`` runs the nodes without TLS (``security.insecure``); by default
        the cluster makes a throwaway CA in its work folder, with a certificate per node and
        one for its client, so TLS is on as in production. ``node_overrides``: per node id,
        settings over ``overrides`` (one node on another transport, say)."""
        if nodes < 1:
            raise GroupClosed("a local cluster needs at least one node")
        layout = layout or Layout({t: ShardPolicy() for t in types})
        check_layout(nodes, types, layout, overrides or {})
        # A folder we made ourselves (logs, data directories) goes when the cluster closes.
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="derecho-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.ports = dict(zip(range(1, nodes + 1), free_ports(nodes)))
        self.insecure = insecure
        self.certs_dir = self.workdir / "certs"
        self._credentials = None
        if not insecure:
            ensure_cluster_certs(self.certs_dir, range(1, nodes + 1), clients=(CLIENT_NAME,), cluster=cluster)
            self._credentials = client_credentials(self.certs_dir, CLIENT_NAME)
        spec = self.workdir / "cluster.pickle"
        spec.write_bytes(cloudpickle.dumps({"types": list(types), "layout": layout}))
        self._spec = spec
        self._overrides = dict(overrides or {})
        self.node_overrides = {n: dict(o) for n, o in (node_overrides or {}).items()}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._client: Client | None = None
        # Every node holds the read end of this pipe; only this process holds the write end.
        # If this process dies (even by SIGKILL) the nodes see end-of-file and leave.
        self._lifeline_r, self._lifeline_w = os.pipe()
        try:
            for node in self.ports:
                self.start(node)
                if node == 1:
                    self._wait(lambda: "vid" in self.status(1), start_timeout, "node 1")
            self._wait(lambda: self._all_in_view(), start_timeout, f"a view of all {nodes} nodes")
        except BaseException as exc:
            self._own_workdir = False  # the node logs are the evidence: keep them, and say where
            self.close()
            exc.add_note(f"local_cluster did not start; its work folder (node logs, data) is kept at {self.workdir}")
            raise

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def start(self, node: int, accept_loss: bool = False) -> None:
        """Start (or restart, as a new process joining again) node ``node``."""
        args = [
            sys.executable,
            "-m",
            "derecho_actors.tools.cluster_node",
            str(self._spec),
            "--set",
            f"node.id={node}",
            "--set",
            f"node.listen={self.address(node)}",
            "--set",
            f"node.cluster={self.cluster}",
            "--set",
            f"node.data_dir={self.workdir / f'data-{node}'}",
        ]
        if self.insecure:
            args += ["--set", "security.insecure=true"]
        else:
            ensure_cluster_certs(self.certs_dir, [node], cluster=self.cluster)
            args += ["--set", f"security.certs_dir={self.certs_dir}"]
        others = [
            self.address(n) for n in self.ports if n != node and (n in self.procs and self.procs[n].poll() is None)
        ]
        others = others or [self.address(n) for n in self.ports if n != node]
        if node != 1 or node in self.procs:
            args += ["--set", f"node.contacts={','.join(others)}"]
        settings = {**self._overrides, **self.node_overrides.get(node, {})}
        transport = os.environ.get(TRANSPORT_ENV, "")
        if transport and "node.transport" not in settings:
            args += ["--set", f"node.transport={transport}"]
        for k, v in settings.items():
            args += ["--set", f"{k}={v}"]
        log = open(self.workdir / f"node-{node}.log", "ab")
        args[4:4] = ["--parent-fd", str(self._lifeline_r), *(["--accept-loss"] if accept_loss else [])]
        self.procs[node] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(self._lifeline_r,)
        )
        log.close()

    def stop(self, node: int, timeout: float = 15.0) -> int:
        """Stop node ``node`` gracefully (SIGTERM: it leaves the group) and return its exit
        code (``runtime.exitcodes``); SIGKILL if it does not exit within ``timeout``."""
        proc = self.procs[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def exit_code(self, node: int) -> int | None:
        """The exit code of node ``node``'s process, None while it runs."""
        return self.procs[node].poll()

    def status(self, node: int) -> dict[str, Any]:
        return fetch_status(self.address(node), self.cluster, timeout=2, credentials=self._credentials)

    def members(self) -> list[int]:
        for node, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    return [m for m, _ in self.status(node).get("members", [])]
                except StatusError:
                    continue
        return []

    def _all_in_view(self) -> bool:
        live = {n for n, p in self.procs.items() if p.poll() is None}
        first = min(live)
        st = self.status(first)
        if not ("vid" in st and {m for m, _ in st["members"]} == live and st["adequate"] and not st["wedged"]):
            return False
        return all(self._serving(n, st["vid"], st if n == first else None) for n in live)

    def _serving(self, node: int, vid: int, st: dict[str, Any] | None = None) -> bool:
        """Node ``node`` is in view ``vid`` and every replica it holds serves (none waits
        for its state)."""
        st = st if st is not None else self.status(node)
        replicas = st.get("app", {}).get("replicas", {})
        return st.get("vid") == vid and all(r == "serving" for r in replicas.values())

    def wait_members(self, members: set[int], timeout: float = 20.0) -> None:
        self._wait(lambda: set(self.members()) == members, timeout, f"a view of {sorted(members)}")

    def data_dir(self, node: int) -> Path:
        return self.workdir / f"data-{node}"

    def _wait(self, ok: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ok():
                    return
            except StatusError:
                pass
            for node, proc in self.procs.items():
                if proc.poll() not in (None, -signal.SIGKILL, 0):
                    tail = (self.workdir / f"node-{node}.log").read_text()[-1500:]
                    raise GroupClosed(f"node {node} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            time.sleep(0.2)  # nodes answer a client's status requests at a bounded rate (limits.status_per_second)
        why = self.reasons_from_logs()
        raise GroupClosed(
            f"timed out after {timeout:g} s waiting for {what}"
            + (f"; the nodes' logs say: {why}" if why else "")
            + f" (logs in {self.workdir})"
        )

    def reasons_from_logs(self, per_node: int = 1) -> str:
        """The latest lines of each node's log that say why it is not serving (an ERROR, a
        WARNING, or a view too small for the layout), for an error message."""
        found: list[str] = []
        for node in self.procs:
            path = self.workdir / f"node-{node}.log"
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            telling = [ln for ln in lines if " ERROR " in ln or " WARNING " in ln or "inadequate:" in ln]
            for line in telling[-per_node:]:
                text = line.split(": ", 1)[1] if ": " in line else line
                found.append(f"node {node}: {text.strip()[:300]}")
        return "; ".join(found)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self, **kwargs: Any) -> Client:
        """A Client of this cluster (with the cluster's client certificate unless insecure);
        keyword arguments go to ``Client``."""
        contacts = kwargs.pop("contacts", [self.address(n) for n in self.ports])
        if self.insecure:
            return Client(contacts, cluster=self.cluster, insecure=True, **kwargs)
        return Client(contacts, cluster=self.cluster, credentials=self._credentials, **kwargs)

    def handle(self, cls: type, shard: int = 0, subgroup: int = 0) -> Handle:
        return self.client.handle(cls, shard, subgroup)

    def kill(self, node: int) -> None:
        """kill -9 a node (for tests and the demo)."""
        proc = self.procs[node]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill_all(self) -> None:
        """kill -9 every node at once (a total failure)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(10)
        if self._client is not None:
            self._client.close()
            self._client = None

    def restart(self, nodes: Sequence[int] | None = None, timeout: float = 60.0, accept_loss: bool = False) -> None:
        """Start stopped nodes again from their data directories (all of them by default) and
        wait until every running node is in one view. After a total failure this is a total
        restart; with the group running, each restarted node joins it again. A total restart
        whose logs lack persisted versions stops the nodes (exit code 5) unless
        ``accept_loss`` (the operator's ``--accept-loss``)."""
        todo = [n for n in (nodes or list(self.ports)) if self.procs[n].poll() is not None]
        for node in todo:
            self.start(node, accept_loss=accept_loss)
        self._wait(lambda: self._all_in_view(), timeout, f"a view with restarted nodes {todo}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for fd in (self._lifeline_w, self._lifeline_r):
            try:
                os.close(fd)
            except OSError:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._own_workdir = False  # keep the node logs for whoever reads the error
            where = f"local_cluster failed; its work folder (node logs, data) is kept at {self.workdir}"
            _log.error("%s", where)
            for node in self.procs:  # what the nodes said, for when the folder is gone (a CI run)
                path = self.workdir / f"node-{node}.log"
                try:
                    lines = path.read_text(errors="replace").splitlines()
                except OSError:
                    continue
                said = [
                    ln
                    for ln in lines
                    if (" WARNING " in ln or " ERROR " in ln or " view " in ln) and "rate limit" not in ln
                ][-12:]
                if said:
                    _log.error("node %s's last warnings and views:\n%s", node, "\n".join(said))
            if isinstance(exc, BaseException):
                exc.add_note(where)
        self.close()


class ClusterStart:
    """What :func:`local_cluster` returns: ``with`` starts the cluster in this thread, ``async
    with`` on a worker thread (so the event loop keeps running while nodes start and stop);
    either gives the running :class:`LocalCluster`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._cluster: LocalCluster | None = None

    def __enter__(self) -> LocalCluster:
        self._cluster = LocalCluster(*self._args, **self._kwargs)
        return self._cluster

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._cluster is not None:
            self._cluster.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> LocalCluster:
        self._cluster = await asyncio.to_thread(LocalCluster, *self._args, **self._kwargs)
        return self._cluster

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.__exit__, exc_type, exc, tb)


def local_cluster(nodes: int, types: Sequence[type], layout: Layout | None = None, **kwargs: Any) -> ClusterStart:
    """``with da.local_cluster(nodes=3, types=[KV], layout=layout) as cluster: ...`` (or
    ``async with``): real node processes on loopback, TLS on, stopped at the end. A layout the
    nodes cannot run raises ``LayoutError`` before any starts ("needs 3 more nodes"); a start
    that fails keeps the work folder and names it."""
    return ClusterStart(nodes, types, layout, **kwargs)
