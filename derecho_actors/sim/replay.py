"""How a failed run of users' classes is run again: the ``python -m runtime.sim --app`` line
that replays it exactly, or, when no module can give the classes, the ``da.simulate`` call.

A failing seed is a bug report only if its replay line reproduces it; finding a module that
binds the classes and registers the very workloads the run used is subtle enough to live alone.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from derecho_actors.sim.api import SimWorkload
from derecho_actors.sim.params import AppParams


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


def replay_command(target: str | ReplayTarget, params: AppParams) -> str:
    """A command that runs the run of ``params`` again (same seed, faults, members and calls,
    and the same workload), or, when no module can be imported to give the classes, the
    ``da.simulate`` call that does, with the reason."""
    t = target if isinstance(target, ReplayTarget) else ReplayTarget(target)
    p = params
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
