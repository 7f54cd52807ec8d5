"""What a user writes to check a replicated class in the simulator: the calls its simulated
clients make (``SimCall``), registered per class with ``@sim_workload``, and ``simulate``.

A workload is a function of a seeded ``random.Random`` returning the next call; the simulator
runs it from several clients (most of them external clients, each a ``ClientSession`` with its
contacts; the others members' handles) while it crashes, partitions, joins and restarts the
nodes. Each call may say what it means for the history checker (``kind``, ``key``,
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
from typing import Any, Callable, Hashable, Mapping

from derecho_actors.caller.session import ClientSession
from derecho_actors.model.decorators import spec_of
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
    session: type[ClientSession] | None = None  # what the simulated clients run (None: the shipped ClientSession)


_registered: dict[type, SimWorkload] = {}


def sim_workload(
    cls: type,
    *,
    model: str | None = None,
    shards: int | None = None,
    min_nodes: int = 1,
    session: type[ClientSession] | None = None,
) -> Callable[[Ops], Ops]:
    """Register the decorated function as the simulator's workload for ``cls``. ``session``:
    a ``ClientSession`` subclass for the simulated clients to run instead of the shipped one
    (to check a changed client; the simulator's own tests plant a bug in one)."""
    if spec_of(cls) is None:
        raise NotRegistered(f"@sim_workload: {getattr(cls, '__name__', cls)!r} is not a @replicated class")
    if model is not None and model not in MODELS:
        raise ConfigError(f"@sim_workload(model={model!r}): choose one of {', '.join(MODELS)} or None")
    if shards is not None and shards < 1 or min_nodes < 1:
        raise ConfigError("@sim_workload: shards and min_nodes must be at least 1")
    if session is not None and not (isinstance(session, type) and issubclass(session, ClientSession)):
        raise ConfigError(f"@sim_workload(session={session!r}): give a subclass of ClientSession")

    def register(ops: Ops) -> Ops:
        _registered[cls] = SimWorkload(cls, ops, model, shards, min_nodes, session)
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
