"""One seeded run of users' replicated classes in a simulated group, and its checks.

This is the simulator's host for the actor layer: it gives each simulated node the real
``Group`` (with watched inline replicas and a scratch data folder), hands the restart planner
the reports the nodes' real folders support, starts the clients and the seed's faults, runs the
scheduler until the group is quiet or the deadline passes, then gathers every check's findings
into an ``AppRunResult``. What the checks are is described in ``derecho_actors.sim.simulate``.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from derecho_actors.model.decorators import TypeSpec, spec_of
from derecho_actors.model.layout import Layout
from derecho_actors.node.disk_state import NodeDiskState, saved_state
from derecho_actors.node.group import Group
from derecho_actors.sim.api import workload_of
from derecho_actors.sim.checks import DigestBook, final_state_differences, history_problems
from derecho_actors.sim.clients import ClientPool
from derecho_actors.sim.params import APP_FAULT_MODES, choose_app_params
from derecho_actors.sim.replay import ReplayTarget, replay_target
from derecho_actors.sim.results import AppRunResult
from derecho_actors.sim.watch import WatchedRef, WatchingRunner
from runtime.config import NodeConfig, load_config
from runtime.core.layout import ShardId, ShardPolicy
from runtime.drivers.restart import report_of
from runtime.errors import ConfigError
from runtime.node_api import AppHooks
from runtime.sim.app_node import SimNodeHandle
from runtime.sim.cluster import SimCluster, address_of
from runtime.sim.faults import KINDS, FaultInjector
from runtime.sim.history import HistoryRecorder
from runtime.sim.invariants import Violation, check_trace
from runtime.sim.network import LinkProfile, SimNetwork
from runtime.sim.runner import FAULT_SPAN
from runtime.sim.scheduler import Scheduler

DEADLINE = 30.0  # virtual seconds by which every call is answered and the group is quiet
MAX_STEPS = 3_000_000
PROBE_EVERY = 0.002
TOTAL_RESTARTS = ("restart-all", "restart-all-in-change", "restart-all-at-install", "restart-all-in-transfer")


def _both(first: Callable[..., None], then: Callable[..., None]) -> Callable[..., None]:
    """One cluster hook calling two (the fault injector's, then the clients')."""

    def hook(*args: Any) -> None:
        first(*args)
        then(*args)

    return hook


class AppRun:
    """One seeded run of ``classes`` in a simulated group, and its checks."""

    def __init__(
        self,
        classes: list[type],
        seed: int,
        faults: str = "all",
        members: int | None = None,
        calls: int | None = None,
        verbose: bool = False,
        target: str = "",
    ) -> None:
        if faults not in APP_FAULT_MODES:
            raise ConfigError(f"faults={faults!r}: choose one of {', '.join(APP_FAULT_MODES)}")
        if not classes:
            raise ConfigError("give at least one @replicated class to simulate")
        self.classes = classes
        self.workloads = [workload_of(c) for c in classes]
        self.specs: dict[str, TypeSpec] = {}
        for cls in classes:
            spec = spec_of(cls)
            assert spec is not None  # workload_of checked
            if spec.signed:
                raise ConfigError(f"{spec.name} signs its logs: signed types do not run in the simulator yet")
            self.specs[spec.name] = spec
        self.persistent = any(s.persistent for s in self.specs.values())
        self.target: str | ReplayTarget = (
            ReplayTarget(target, members=members, calls=calls)
            if target
            else replay_target(classes, self.workloads, members, calls)
        )
        self.params = choose_app_params(seed, self.workloads, faults, members, calls)
        self.verbose = verbose
        self.transcript: list[str] = []
        self.violations: list[Violation] = []
        self.digests = DigestBook()
        self.replicas: dict[tuple[int, ShardId], WatchedRef] = {}
        self.groups: dict[int, Group] = {}
        self.histories = {spec_of(w.cls).name: HistoryRecorder() for w in self.workloads if w.model}  # type: ignore[union-attr]
        self.layout = Layout(
            {
                w.cls: ShardPolicy(
                    shards=self.params.shards[spec_of(w.cls).name],  # type: ignore[union-attr]
                    min_nodes=w.min_nodes,
                    max_nodes=self.params.max_nodes[spec_of(w.cls).name],  # type: ignore[union-attr]
                )
                for w in self.workloads
            }
        )

    # ------------------------------------------------------------------ bookkeeping
    def say(self, text: str) -> None:
        if self.verbose:
            self.transcript.append(f"{self.sched.now:.6f} {text}")

    def violation(self, kind: str, detail: str, node: int | None = None) -> None:
        if not any(v.invariant == kind for v in self.violations):  # the first of each kind says enough
            self.violations.append(Violation(kind, node, detail))

    def record_digest(self, shard: ShardId, vid: int, count: int, node: int, digest: bytes, methods: list[str]) -> None:
        diverged = self.digests.record(shard, vid, count, node, digest, methods)
        if diverged is not None:
            self.violation("state-diverged", diverged, node)

    # ------------------------------------------------------------------ nodes
    def _config(self, node: int) -> NodeConfig:
        m = self.params.base.config.membership
        suspicion = max(2, round(m.suspicion_timeout * 1000))
        objects = self.params.base.config.multicast.objects  # the cores' (the seed's) large objects
        rdmc = {"rdmc.enabled": "false"}
        if objects is not None:
            rdmc = {
                "rdmc.enabled": "true",
                "rdmc.threshold_bytes": str(objects.threshold),
                "rdmc.max_object_size": str(objects.max_object_size),
                "rdmc.max_bytes_in_flight": str(objects.max_bytes),
            }
        return load_config(
            None,
            {
                **rdmc,
                "node.id": str(node),
                "node.cluster": "sim",
                "node.listen": f"127.0.0.1:{10000 + node}",
                "node.data_dir": str(self.folder / f"node-{node}"),
                "security.insecure": "true",
                "persistence.fsync": "false",
                "timeouts.suspicion_ms": str(suspicion),
                "timeouts.heartbeat_ms": str(max(1, min(suspicion - 1, round(m.heartbeat_interval * 1000)))),
            },
        )

    def _start_app(self, node: int, life: int) -> None:
        old = self.groups.pop(node, None)
        if old is not None:
            old.close()

        def make_node(config: NodeConfig, hooks: AppHooks, saved: Any, accept_loss: bool) -> SimNodeHandle:
            handle = SimNodeHandle(self.cluster, node, life, config, hooks)
            self.cluster.register_app(handle)
            return handle

        self.groups[node] = Group(
            self._config(node),
            self.classes,
            self.layout,
            _node=make_node,
            _runner=WatchingRunner(self.record_digest, self.replicas, node),
        )
        self.say(f"node {node} (life {life}) hosts its group")

    def _end_app(self, node: int) -> None:
        group = self.groups.pop(node, None)
        for key in [k for k in self.replicas if k[0] == node]:
            del self.replicas[key]
        if group is not None:
            group.close()  # the process is gone: its replicas stop and their logs close

    def _report(self, node: int) -> Any:
        """The restart report this node's data directory supports (None: nothing to restart
        from), exactly as the real node reads it."""
        folder = self.folder / f"node-{node}"
        if not folder.exists():
            return None
        disk = NodeDiskState(folder, "sim", node, fsync=False)
        saved = saved_state(disk, self.specs.values(), None, False)
        return report_of(node, address_of(node), saved) if saved is not None else None

    def _holds(self, node: int, shard: ShardId) -> bool:
        ref = self.replicas.get((node, shard))
        return ref is not None and not ref.replica.awaiting and not ref.replica.failed

    # ------------------------------------------------------------------ the run
    def run(self) -> AppRunResult:
        started = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="derecho-appsim-"))
        # Seeds pick small layouts (min_nodes=1) on purpose; a real node warns of a shard on one
        # replica, and a client of each failover, which here would only bury the report.
        # Errors (a shard lost) still show.
        quiet = [logging.getLogger(name) for name in ("derecho.hosting", "derecho.client")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(max(q.level, logging.ERROR))
        try:
            return self._run(started)
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
            if hasattr(self, "clients"):
                self.clients.close()
            for node in list(self.groups):
                self._end_app(node)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, started: float) -> AppRunResult:
        p = self.params
        seed = p.seed
        self.rng = random.Random(f"app-run-{seed}")
        self.sched = Scheduler()
        net = SimNetwork(self.sched, self.rng, p.base.link)
        for a, b in p.base.slow_links:
            net.links[(a, b)] = LinkProfile(p.base.link.base * 20, p.base.link.jitter * 5 + 1e-3)
        log = self.transcript.append if self.verbose else None
        cluster = self.cluster = SimCluster(
            p.members,
            self.layout.policy,
            p.base.config,
            self.sched,
            net,
            random.Random(f"app-proc-{seed}"),
            log=log,
        )
        cluster.app_start = self._start_app
        cluster.app_end = self._end_app
        cluster.app_holds = self._holds
        if self.persistent:
            cluster.app_report = self._report
        injector = FaultInjector(
            cluster, random.Random(f"app-faults-{seed}"), p.base.config.membership.suspicion_timeout
        )
        cluster.on_wedge = injector.on_wedge
        cluster.on_install = injector.on_install
        fault_plan = self._fault_plan(injector)
        if self.verbose:
            self.transcript.append(p.describe())
            self.transcript.append("faults: " + ", ".join(f"{f.kind}@{f.at:.4f}" for f in fault_plan))
        cluster.start_apps()
        for fault in fault_plan:
            self.sched.at(fault.at, injector.fire, fault.kind)
        clients = self.clients = ClientPool(
            cluster, self.groups, self.workloads, p.shards, self.histories, self.rng, self.say, self.violation
        )
        cluster.on_wedge = _both(injector.on_wedge, clients.changing)
        cluster.on_install = _both(injector.on_install, clients.changing)
        per = [p.calls // p.clients + (1 if i < p.calls % p.clients else 0) for i in range(p.clients)]
        for i, n in enumerate(per):
            clients.schedule(0.001 + i * 1e-4, n)
        quiet_after = max([0.01] + [f.at for f in fault_plan])
        state = {"done": False}

        def probe() -> None:
            if injector.given_up or (
                self.sched.now > quiet_after
                and clients.done()
                and not net.cut
                and injector.idle(self.sched.now)
                and cluster.quiescent()
                and self._apps_quiet()
            ):
                state["done"] = True
                self.sched.stop()
                return
            self.sched.at(self.sched.now + PROBE_EVERY, probe)

        self.sched.at(PROBE_EVERY, probe)
        crash = None
        try:
            self.sched.run(DEADLINE, MAX_STEPS)
        except Exception as exc:  # a bug in the actor layer or the core: report it with the seed
            frames = traceback.extract_tb(exc.__traceback__)
            where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames[-4:]))
            crash = f"{type(exc).__name__}: {exc} (at virtual {self.sched.now:.6f}s, {where})"
        trace = cluster.trace
        trace.pending_at_end = {x for n in cluster.alive() for q in n.pending.values() for x in q}
        trace.expect_complete = crash is None and state["done"] and not injector.given_up
        if crash is not None:
            self.violations.insert(0, Violation("crash", None, crash))
        elif not state["done"]:
            stuck = clients.stuck()
            self.violation(
                "liveness",
                f"not done at virtual {self.sched.now:.3f}s; calls unanswered: {stuck[:4]}; "
                f"nodes (alive, view, excluded, wedged): {cluster.describe_state()}",
            )
        if injector.given_up:
            self.violation("restart-failed", "; ".join(trace.restart_failures) or "the total restart did not happen")
        self.violations.extend(check_trace(trace))
        if crash is None and state["done"]:
            self._check_final_states()
        self._check_histories()
        for fault in cluster.app_faults[:1]:
            self.violation("cut-off", fault)
        for node, group in self.groups.items():
            if group.stopped is not None and group.exit_code not in (0, 3):
                self.violation("node-failed", f"node {node} stopped: {group.stopped}", node)
        top = max((v[-1].vid for v in trace.views.values() if v), default=0)
        result = AppRunResult(
            p,
            self.target,
            self.violations,
            clients.calls,
            clients.answered,
            clients.unknown,
            self.digests.checked,
            top,
            injector.node_restarts,
            injector.total_restarts,
            self.sched.now,
            self.sched.steps,
            time.perf_counter() - started,
            self.transcript,
            *clients.failovers(),
        )
        if self.verbose:
            self.transcript.append(
                f"result: calls={clients.calls} answered={clients.answered} unknown={clients.unknown} "
                f"digests={self.digests.checked} "
                f"views={top} restarts={injector.node_restarts} total_restarts={injector.total_restarts} "
                f"failovers={result.failovers} resent={result.resent} virtual={self.sched.now:.4f}s steps={self.sched.steps} violations={len(self.violations)}"
            )
        return result

    def _fault_plan(self, injector: FaultInjector) -> list[Any]:
        """The protocol simulator's fault schedule, less what this app cannot survive by
        design: total restarts of types that keep no log (their state is in memory only), and
        disk errors (the simulator cannot fail a real folder's writes yet)."""
        mode = self.params.faults
        if mode == "none":
            return []
        plan = FaultInjector.plan(injector.rng, mode if mode != "restart" or self.persistent else "crash", *FAULT_SPAN)
        dropped = {"disk-error"} | (set() if self.persistent else set(TOTAL_RESTARTS))
        return [f for f in plan if f.kind not in dropped and f.kind in {k for ks in KINDS.values() for k in ks}]

    def _apps_quiet(self) -> bool:
        """Every live node's replicas serve (none waits for its state)."""
        for node in self.groups:
            if not self.cluster.nodes[node].alive:
                continue
            handle = self.cluster.apps.get(node)
            if handle is None or handle.hooks.status is None:
                continue
            if any(r != "serving" for r in handle.hooks.status().get("replicas", {}).values()):
                return False
        return True

    def _check_final_states(self) -> None:
        """Once the group is quiet every replica of a shard holds the same state."""

        def hosting(node: int) -> bool:
            return node in self.groups and self.cluster.nodes[node].alive

        for detail in final_state_differences(self.replicas, hosting):
            self.violation("final-state-differs", detail)

    def _check_histories(self) -> None:
        for kind, detail in history_problems(self.workloads, self.histories):
            self.violation(kind, detail)
