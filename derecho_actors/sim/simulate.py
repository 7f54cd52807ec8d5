"""Users' replicated classes in the deterministic simulator.

Each run hosts the real actor layer (``Group``: routing, replicas, state transfer, persistence,
exactly-once sessions) on simulated nodes (``runtime.sim.app_node.SimNodeHandle``) of a
``SimCluster`` in app mode, with replicas run inline (``InlineRunner``) and their logs written
in place to a scratch folder, so a whole group lives in this one thread in virtual time. The
seed picks the group (3-5 nodes, 1-2 shards per type, protocol timings, link delays), the
clients (several per run: most of them the shipped ``ClientSession`` over the simulated network,
failing over between contacts, some pipelining; the others members' handles; see ``clients``)
and the faults (the protocol simulator's ``FaultInjector``: crashes, partitions,
joins, leaves, a node's crash and restart, and for persistent types a total restart decided by
the restart planner that ships, from reports the nodes' real data directories support).

Checks of every run:

- **state digests**: after every ordered batch a replica applies, a digest of its state is
  kept under (shard, view, calls of the view so far); two replicas with different digests at
  the same point have diverged (a non-deterministic ordered method, a P2P method that changed
  state, a bug);
- **replies**: the replicas' replies to one ordered call are identical;
- **history**: with a workload model (register, append, counter), what the clients observed is
  linearizable (``runtime.sim.history``); a call whose outcome the client never learned (its
  node crashed) may or may not have taken effect, and one a client sent again after a failover
  must take effect once;
- **final state**: once the group is quiet, every replica of a shard holds the same state;
- **liveness**: every call is answered (or its caller died, or its session gave up), and the
  group ends quiet;
- **the protocol's invariants** (``runtime.sim.invariants``) on the same run's trace;
- no node cut another off (every input here is honest) and no replica failed.

``--seed S`` replays a run exactly: every choice comes from RNGs seeded by the seed, and the
wall clock of the replicas is virtual.
"""

from __future__ import annotations

import importlib
import logging
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from derecho_actors.model.decorators import TypeSpec, spec_of
from derecho_actors.model.layout import Layout
from derecho_actors.node.disk_state import NodeDiskState, saved_state
from derecho_actors.node.group import Group
from derecho_actors.node.hosting import InlineRunner, ReplicaRef
from derecho_actors.replica.replica import OrderedBatch, Replica
from derecho_actors.sim.api import SimWorkload, workload_of
from derecho_actors.sim.clients import ClientPool
from derecho_actors.wire.digest import state_digest
from runtime.config import NodeConfig, load_config
from runtime.core.layout import ShardId, ShardPolicy
from runtime.drivers.restart import report_of
from runtime.errors import ConfigError
from runtime.node_api import AppHooks
from runtime.sim.app_node import SimNodeHandle
from runtime.sim.cluster import SimCluster, address_of
from runtime.sim.faults import KINDS, FaultInjector
from runtime.sim.history import HistoryRecorder, HistoryTooComplex, check_history
from runtime.sim.invariants import Violation, check_trace
from runtime.sim.network import LinkProfile, SimNetwork
from runtime.sim.runner import FAULT_SPAN, choose_params
from runtime.sim.scheduler import Scheduler

APP_FAULT_MODES = ("none", "crash", "partition", "join", "restart", "all")
DEADLINE = 30.0  # virtual seconds by which every call is answered and the group is quiet
MAX_STEPS = 3_000_000
PROBE_EVERY = 0.002
TOTAL_RESTARTS = ("restart-all", "restart-all-in-change", "restart-all-at-install", "restart-all-in-transfer")


# ---------------------------------------------------------------------- parameters
@dataclass(frozen=True, slots=True)
class AppParams:
    seed: int
    members: tuple[int, ...]
    faults: str
    shards: dict[str, int]
    clients: int
    calls: int
    base: Any  # the protocol simulator's RunParams for the same seed (timings, links)

    def describe(self) -> str:
        c, m = self.base.config.multicast, self.base.config.membership
        return (
            f"seed={self.seed} members={len(self.members)} faults={self.faults} shards={self.shards} "
            f"clients={self.clients} calls={self.calls} window={c.window_size} batch={c.max_batch} "
            f"suspicion={m.suspicion_timeout * 1e3:.0f}ms link={self.base.link.base * 1e6:.0f}+"
            f"{self.base.link.jitter * 1e6:.0f}us"
        )


def choose_app_params(
    seed: int, workloads: list[SimWorkload], faults: str, members: int | None, calls: int | None
) -> AppParams:
    rng = random.Random(f"app-params-{seed}")
    n = members if members is not None else rng.randint(3, 5)
    base = choose_params(seed, members=n, messages=0, faults="none")
    shards = {spec_of(w.cls).name: (w.shards or rng.choice((1, 1, 2))) for w in workloads}  # type: ignore[union-attr]
    clients = rng.randint(2, 6)
    total = calls if calls is not None else rng.randint(80, 240)
    return AppParams(seed, base.members, faults, shards, clients, total, base)


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """How to run the same classes again from a shell: ``--app module:A,B`` (one module that
    binds every class and registers, on import, the workloads this run used), the folder to run
    it from, and the arguments the seed alone does not fix (``--members``, ``--calls``). With no
    such module (a class defined inside a function, or in ``__main__``), ``target`` is empty and
    ``why`` says so; the replay is then a ``da.simulate`` call to run where the classes are."""

    target: str
    root: str = ""  # the folder the module imports from, when it is not the working folder
    why: str = ""
    names: str = ""  # the classes' names, for the da.simulate form
    members: int | None = None
    calls: int | None = None


def replay_target(
    classes: list[type], workloads: list[SimWorkload], members: int | None, calls: int | None
) -> ReplayTarget:
    """Find a module from which ``python -m runtime.sim --app`` replays this run exactly.

    The module must bind every class (by any name) and, when a class's workload was registered
    somewhere else than its class (a test module registering one for ``examples.kv_store.KV``),
    be the module that registers it: importing the class's own module would run its default
    workload, another run altogether. Candidates: the workloads' modules, then the classes'."""
    import os
    import sys

    names = ", ".join(c.__name__ for c in classes)
    generic = SimWorkload.__module__  # generic workloads are made there, registered ones by users
    registered = [w.ops.__module__ for w in workloads if w.ops.__module__ != generic]
    candidates = list(dict.fromkeys([*registered, *(c.__module__ for c in classes)]))
    why = f"{names} is defined inside a function or in __main__"
    for module_name in candidates:
        module = sys.modules.get(module_name)
        if module is None or module_name == "__main__" or getattr(module, "__spec__", None) is None:
            continue
        if any(w.ops.__module__ != module_name for w in workloads if w.ops.__module__ in registered):
            continue  # a workload registered elsewhere would not be loaded by this module
        bound: list[str] = []
        for cls in classes:
            name = cls.__qualname__ if getattr(module, cls.__qualname__, None) is cls else None
            name = name or next((k for k, v in vars(module).items() if v is cls and not k.startswith("_")), None)
            if name is None:
                break
            bound.append(name)
        if len(bound) != len(classes):
            continue
        root = ""
        origin = getattr(module.__spec__, "origin", None)
        if origin:
            depth = module_name.count(".") + (2 if os.path.basename(origin) == "__init__.py" else 1)
            folder = os.path.abspath(origin)
            for _ in range(depth):
                folder = os.path.dirname(folder)
            root = "" if folder == os.getcwd() else folder
        return ReplayTarget(f"{module_name}:{','.join(bound)}", root, "", names, members, calls)
    return ReplayTarget("", "", why, names, members, calls)


@dataclass(slots=True)
class AppRunResult:
    params: AppParams
    target: str | ReplayTarget
    violations: list[Violation]
    calls: int = 0
    answered: int = 0
    unknown: int = 0
    digests: int = 0
    views: int = 0
    node_restarts: int = 0
    total_restarts: int = 0
    virtual_time: float = 0.0
    steps: int = 0
    real_time: float = 0.0
    transcript: list[str] = field(default_factory=list)
    failovers: int = 0  # clients' connections after their first (a contact lost, or turning them away)
    resent: int = 0  # calls the clients sent again after a failover

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay(self) -> str:
        """A command that runs this very run again (same seed, faults, members and calls, and
        the same workload), or, when no module can be imported to give the classes, the
        ``da.simulate`` call that does, with the reason."""
        t = self.target if isinstance(self.target, ReplayTarget) else ReplayTarget(self.target)
        p = self.params
        extra = (f" --members {t.members}" if t.members is not None else "") + (
            f" --calls {t.calls}" if t.calls is not None else ""
        )
        if t.target:
            cd = f"cd {t.root} && " if t.root else ""
            return f"{cd}python -m runtime.sim --app {t.target} --seed {p.seed} --faults {p.faults}{extra} --verbose"
        kwargs = (f", members={t.members}" if t.members is not None else "") + (
            f", calls={t.calls}" if t.calls is not None else ""
        )
        return (
            f"da.simulate({t.names}, seeds=[{p.seed}], faults={p.faults!r}{kwargs}, verbose=True)  "
            f"(run it where {t.names} is defined: {t.why}, so python -m runtime.sim cannot import it)"
        )


# ---------------------------------------------------------------------- replicas watched
class _WatchedRef:
    """Runs a replica inline and records its state digest after each ordered batch it applies
    at once (a replica that held batches while awaiting its state is not digested again until
    the next view: its count of the view's calls is not known here)."""

    def __init__(self, run: AppRun, inner: ReplicaRef, replica: Replica, shard: ShardId, node: int) -> None:
        self.run, self.inner, self.replica, self.shard, self.node = run, inner, replica, shard, node
        self.vid = -1
        self.count = 0
        self.dirty_vid = -1

    def tell(self, message: Any) -> None:
        replica = self.replica
        was_behind = replica.behind
        self.inner.tell(message)
        if type(message) is not OrderedBatch:
            return
        vid = message.vid
        if was_behind or replica.behind or replica.failed:
            self.dirty_vid = vid
            return
        if vid == self.dirty_vid:
            return
        if vid != self.vid:
            self.vid, self.count = vid, 0
        self.count += len(message.calls)
        self.run.record_digest(
            self.shard, vid, self.count, self.node, state_digest(replica, replica.spec), [c[2] for c in message.calls]
        )

    def stop(self) -> Any:
        return self.inner.stop()


class _WatchingRunner(InlineRunner):
    def __init__(self, run: AppRun, node: int) -> None:
        self.run, self.node = run, node

    def start(self, replica: Replica, shard: ShardId) -> ReplicaRef:
        ref = _WatchedRef(self.run, super().start(replica, shard), replica, shard, self.node)
        self.run.replicas[(self.node, shard)] = ref
        return ref


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
        self.digests: dict[tuple[ShardId, int, int], tuple[int, bytes]] = {}
        self.digests_checked = 0
        self.replicas: dict[tuple[int, ShardId], _WatchedRef] = {}
        self.groups: dict[int, Group] = {}
        self.histories = {spec_of(w.cls).name: HistoryRecorder() for w in self.workloads if w.model}  # type: ignore[union-attr]
        self.layout = Layout(
            {
                w.cls: ShardPolicy(shards=self.params.shards[spec_of(w.cls).name], min_nodes=w.min_nodes)  # type: ignore[union-attr]
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
        key = (shard, vid, count)
        seen = self.digests.get(key)
        self.digests_checked += 1
        if seen is None:
            self.digests[key] = (node, digest)
        elif seen[1] != digest:
            self.violation(
                "state-diverged",
                f"replicas of {shard} hold different states after call {count} of view {vid}: node {seen[0]} "
                f"{seen[1].hex()[:12]}, node {node} {digest.hex()[:12]} (the last batch ran {', '.join(methods)}); "
                "a method is not deterministic, or a P2P method changed state",
                node,
            )

    # ------------------------------------------------------------------ nodes
    def _config(self, node: int) -> NodeConfig:
        m = self.params.base.config.membership
        suspicion = max(2, round(m.suspicion_timeout * 1000))
        return load_config(
            None,
            {
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
            self._config(node), self.classes, self.layout, _node=make_node, _runner=_WatchingRunner(self, node)
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
            self.digests_checked,
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
                f"digests={self.digests_checked} "
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
        by_shard: dict[ShardId, list[tuple[int, bytes]]] = {}
        for (node, shard), ref in sorted(self.replicas.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])):
            if node in self.groups and self.cluster.nodes[node].alive and not ref.replica.awaiting:
                by_shard.setdefault(shard, []).append((node, state_digest(ref.replica, ref.replica.spec)))
        for shard, digests in by_shard.items():
            if len({d for _, d in digests}) > 1:
                shown = ", ".join(f"node {n} {d.hex()[:12]}" for n, d in digests)
                self.violation("final-state-differs", f"replicas of {shard} end with different states: {shown}")

    def _check_histories(self) -> None:
        for w in self.workloads:
            spec = spec_of(w.cls)
            assert spec is not None
            history = self.histories.get(spec.name)
            if history is None or w.model is None:
                continue
            try:
                verdict = check_history(history.ops(), w.model)
            except HistoryTooComplex as exc:
                self.violation("history-too-complex", f"{spec.name}: {exc}; make fewer concurrent calls per key")
                continue
            if not verdict.ok:
                self.violation("not-linearizable", f"{spec.name} ({w.model}): {verdict.problem}")


# ---------------------------------------------------------------------- many runs
@dataclass(slots=True)
class SimReport:
    results: list[AppRunResult]

    @property
    def failures(self) -> list[AppRunResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        lines = []
        for r in self.failures:
            lines.append(f"FAIL {r.params.describe()}")
            lines.extend(f"  {v}" for v in r.violations[:5])
            lines.append(f"  replay: {r.replay()}")
        calls = sum(r.calls for r in self.results)
        unknown = sum(r.unknown for r in self.results)
        lines.append(
            f"{len(self.results)} runs, {len(self.failures)} failed; {calls} calls ({unknown} with unknown outcome), "
            f"{sum(r.digests for r in self.results)} state digests compared, "
            f"{sum(r.node_restarts for r in self.results)} node restarts, "
            f"{sum(r.total_restarts for r in self.results)} total restarts, "
            f"{sum(r.failovers for r in self.results)} client failovers "
            f"({sum(r.resent for r in self.results)} calls resent)"
        )
        return "\n".join(lines)


def run_many(
    classes: list[type],
    seeds: Iterable[int],
    faults: str,
    members: int | None,
    calls: int | None,
    verbose: bool,
    stop_at_first: bool,
    target: str = "",
) -> SimReport:
    results = []
    for seed in seeds:
        result = AppRun(classes, seed, faults, members, calls, verbose, target).run()
        results.append(result)
        if stop_at_first and not result.ok:
            break
    return SimReport(results)


def load_target(target: str) -> list[type]:
    """``module:Class[,Class...]`` -> the classes (importing the module registers its
    workloads)."""
    module_name, _, names = target.partition(":")
    if not module_name or not names:
        raise ConfigError(f"--app {target!r}: write module:Class (for example examples.kv_store:KV)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {target!r}: cannot import {module_name}: {exc}") from None
    classes = []
    for name in names.split(","):
        cls = getattr(module, name.strip(), None)
        if cls is None or spec_of(cls) is None:
            raise ConfigError(f"--app {target!r}: {module_name} has no @replicated class {name.strip()!r}")
        classes.append(cls)
    return classes


def _one(args: tuple[str, int, str, int | None, int | None, bool]) -> AppRunResult:
    target, seed, faults, members, calls, verbose = args
    return AppRun(load_target(target), seed, faults, members, calls, verbose, target).run()


def cli_main(
    target: str,
    seeds: list[int],
    faults: str,
    members: int | None,
    calls: int | None,
    verbose: bool,
    keep_going: bool,
    jobs: int,
) -> int:
    """``python -m runtime.sim --app module:Class``: run and report, as the protocol
    simulator does (transcripts and failures on standard output, a summary on standard
    error)."""
    import sys
    from concurrent.futures import ProcessPoolExecutor

    load_target(target)  # a bad target fails here, once, with a clear message
    started = time.perf_counter()
    work = [(target, s, faults, members, calls, verbose) for s in seeds]
    results: list[AppRunResult] = []
    failed = 0
    pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 and len(work) > 1 else None
    try:
        stream = pool.map(_one, work, chunksize=2) if pool is not None else map(_one, work)
        for r in stream:
            results.append(r)
            if verbose:
                print("\n".join(r.transcript))
            if not r.ok:
                failed += 1
                print(f"FAIL {r.params.describe()}")
                for v in r.violations[:5]:
                    print(f"  {v}")
                print(f"  replay: {r.replay()}")
                if not keep_going:
                    break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    real = time.perf_counter() - started
    report = SimReport(results)
    status = "ok" if failed == 0 else f"{failed} FAILED"
    print(
        f"sim --app {target}: {len(results)} runs {status} (faults: {faults}); "
        + report.describe().splitlines()[-1].split("; ", 1)[1]
        + f"; real {real:.1f}s",
        file=sys.stderr,
    )
    return 0 if failed == 0 else 1


def simulate(
    *classes: type,
    seeds: int | Iterable[int] = 100,
    faults: str = "all",
    members: int | None = None,
    calls: int | None = None,
    verbose: bool = False,
    stop_at_first: bool = True,
) -> Any:
    """Run ``classes`` (``@replicated``, each with its registered or generic workload) in
    simulated groups for each seed and check every run; returns a ``SimReport`` (``ok``,
    ``failures`` with a replay command each, ``describe()``).

    ``seeds``: a count (seeds 0..n-1) or the seeds themselves; ``faults``: "none", "crash",
    "partition", "join", "restart" or "all"; ``members``: nodes per run (default: the seed
    picks 3-5); ``calls``: calls per run (default: the seed picks); ``verbose``: keep each
    run's transcript.
    """
    return run_many(
        list(classes),
        range(seeds) if isinstance(seeds, int) else list(seeds),
        faults,
        members,
        calls,
        verbose,
        stop_at_first,
    )
