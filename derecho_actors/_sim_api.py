"""What a user writes to check a replicated class in the simulator: the calls its simulated
clients make (``SimCall``), registered per class with ``@sim_workload``, and ``simulate``.

A workload is a function of a seeded ``random.Random`` returning the next call; the simulator
runs it from several clients on several nodes while it crashes, partitions, joins and
restarts them. Each call may say what it means for the history checker (``kind``, ``key``,
``value``; the model is given at registration): then the whole client-observed history must be
linearizable under that model. Without a model the other checks still run: replicas' states
identical at every version they share, replies of each ordered call identical, every call
answered, and the protocol's own invariants.

A class with no registered workload gets a generic one: random calls of its methods with
arguments drawn from their type hints (str, bytes, int, float, bool), no history model.
"""

from __future__ import annotations

import inspect
import random
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping

from derecho_actors._decorators import spec_of
from runtime.errors import ConfigError, NotRegistered

MODELS = ("register", "append", "counter")


@dataclass(frozen=True, slots=True)
class SimCall:
    """One call a simulated client makes: ``handle(shard).<method>(*args, **kwargs)``.

    ``kind``/``key``/``value`` describe it to the history checker ("write"/"read" for a
    register, "append"/"read", "add"/"read" for a counter; ``key`` is the object it touches);
    ``result`` maps the reply's value to what the model expects (default: the value itself).
    ``shard`` is reduced modulo the number of shards the run has.
    """

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shard: int = 0
    kind: str | None = None
    key: Hashable = None
    value: Any = None
    result: Callable[[Any], Any] | None = None


Ops = Callable[[random.Random], SimCall]


@dataclass(frozen=True, slots=True)
class SimWorkload:
    cls: type
    ops: Ops
    model: str | None = None  # one of MODELS, or None: no history check
    shards: int | None = None  # shards of the type (None: the seed picks 1 or 2)
    min_nodes: int = 1


_registered: dict[type, SimWorkload] = {}


def sim_workload(
    cls: type, *, model: str | None = None, shards: int | None = None, min_nodes: int = 1
) -> Callable[[Ops], Ops]:
    """Register the decorated function as the simulator's workload for ``cls``."""
    if spec_of(cls) is None:
        raise NotRegistered(f"@sim_workload: {getattr(cls, '__name__', cls)!r} is not a @replicated class")
    if model is not None and model not in MODELS:
        raise ConfigError(f"@sim_workload(model={model!r}): choose one of {', '.join(MODELS)} or None")
    if shards is not None and shards < 1 or min_nodes < 1:
        raise ConfigError("@sim_workload: shards and min_nodes must be at least 1")

    def register(ops: Ops) -> Ops:
        _registered[cls] = SimWorkload(cls, ops, model, shards, min_nodes)
        return ops

    return register


def workload_of(cls: type) -> SimWorkload:
    """The registered workload of ``cls``, else a generic one from its type hints."""
    found = _registered.get(cls)
    return found if found is not None else SimWorkload(cls, generic_ops(cls))


_GENERATORS: dict[Any, Callable[[random.Random], Any]] = {
    str: lambda rng: f"k{rng.randrange(8)}",
    bytes: lambda rng: b"v%d" % rng.randrange(1000),
    int: lambda rng: rng.randrange(-5, 20),
    float: lambda rng: rng.choice((0.0, 0.5, 1.5, -2.0)),
    bool: lambda rng: rng.random() < 0.5,
}


def generic_ops(cls: type) -> Ops:
    """Random calls of ``cls``'s methods whose parameters all have a type hint the simulator
    can generate; a class with none fails here, saying to register a workload."""
    spec = spec_of(cls)
    if spec is None:
        raise NotRegistered(f"{getattr(cls, '__name__', cls)!r} is not a @replicated class")
    callable_methods: list[tuple[str, list[tuple[str, Callable[[random.Random], Any]]]]] = []
    skipped: list[str] = []
    for name in sorted(spec.methods):
        fn = getattr(cls, name)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        params: list[tuple[str, Callable[[random.Random], Any]]] | None = []
        for p in list(inspect.signature(fn).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is not p.empty and p.name not in hints:
                continue  # optional and unknown: leave it at its default
            gen = _GENERATORS.get(hints.get(p.name))
            if gen is None:
                if p.default is not p.empty:
                    continue
                params = None
                break
            params.append((p.name, gen))  # type: ignore[union-attr]  # not None inside the loop
        if params is None:
            skipped.append(name)
        else:
            callable_methods.append((name, params))
    if not callable_methods:
        raise ConfigError(
            f"the simulator cannot make up arguments for any method of {spec.name} (skipped: {', '.join(skipped)}): "
            "register a workload with @da.sim_workload"
        )

    def ops(rng: random.Random) -> SimCall:
        name, params = rng.choice(callable_methods)
        return SimCall(name, kwargs={p: gen(rng) for p, gen in params}, shard=rng.randrange(4))

    return ops


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
    from derecho_actors._simulate import run_many

    return run_many(
        list(classes),
        range(seeds) if isinstance(seeds, int) else list(seeds),
        faults,
        members,
        calls,
        verbose,
        stop_at_first,
    )
