"""What a node started from the command line hosts: replicated classes named ``module:Class``
(``derecho-actors node --app examples.kv_store:KV``, or ``app = [...]`` under ``[node]``), and
the layout they run under.

Classes are imported as uvicorn imports applications: the working directory is put first on
``sys.path``, then the module is imported by name. A type's layout starts from the code's
policy (a ``da.Layout`` given to the group, or one the class's module defines at top level;
otherwise one shard holding every node); the keys a configuration's ``[layout.<Type>]`` table
sets override that policy's, and keys it leaves out keep the code's values (the operator's
file wins where it speaks, and ``shards = 2`` alone does not drop the code's ``min_nodes``).
Every member must end up with the same layout: a joiner whose layout differs is refused at join
(``JoinRequest.layout``). A layout that leaves a shard one replica is warned about by the node
that holds it (``node.hosting``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Sequence

from derecho_actors.model.decorators import spec_of
from derecho_actors.model.layout import Layout
from runtime.config import DEFAULT_LAYOUT_TYPE
from runtime.core.layout import POLICY_FIELDS, LayoutPolicy, ShardPolicy, merge_over
from runtime.errors import ConfigError, LayoutError

log = logging.getLogger("derecho.app")


def load_apps(specs: Sequence[str]) -> list[type]:
    """The ``@replicated`` classes named ``module:Class``; ``ConfigError`` saying what is wrong
    (no such module, no such class, not replicated) otherwise."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    out: list[type] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"node.app {spec!r}: cannot import module {module_name!r} ({exc}); run from the folder that holds it "
                "or install it"
            ) from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise ConfigError(f"node.app {spec!r}: module {module_name!r} has no attribute {attr!r}")
        if spec_of(cls) is None:
            raise ConfigError(f"node.app {spec!r}: {attr} is not a @replicated class")
        if cls not in out:
            out.append(cls)
    return out


def code_layout(classes: Sequence[type]) -> dict[type, ShardPolicy]:
    """Policies the classes' modules give: any top-level ``da.Layout`` naming the class."""
    found: dict[type, ShardPolicy] = {}
    for cls in classes:
        module = sys.modules.get(cls.__module__)
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, Layout) and cls in value.types:
                found[cls] = dict(value.policy.types)[spec_of(cls).name]  # type: ignore[union-attr]
                break
    return found


def hosted_layout(
    classes: Sequence[type], configured: LayoutPolicy, code: Layout | None = None, scan_modules: bool = False
) -> Layout:
    """The layout of ``classes``: per type, the code's policy (``code``; with
    ``scan_modules``, a ``da.Layout`` of the class's module; else one shard of every node) with
    the keys the configuration's table sets merged over it. Tables of types this node does not
    host are an error (a typo would otherwise go unnoticed), and so is a merge no view can
    satisfy (it names which values came from the code)."""
    tables = dict(configured.types)
    given = {cls: dict(code.policy.types)[spec_of(cls).name] for cls in code.types} if code is not None else {}  # type: ignore[union-attr]
    modules = code_layout([c for c in classes if c not in given]) if scan_modules else {}
    policies: dict[type, ShardPolicy] = {}
    names = set()
    for cls in classes:
        spec = spec_of(cls)
        assert spec is not None
        names.add(spec.name)
        base = given.get(cls) or modules.get(cls) or ShardPolicy()
        table = tables.get(spec.name)
        policies[cls] = base if table is None else _merged(spec.name, base, table, configured.fields_set(spec.name))
    unknown = [n for n in tables if n not in names and n != DEFAULT_LAYOUT_TYPE]
    if unknown:
        raise ConfigError(
            f"layout tables for types this node does not host: {', '.join(f'[layout.{n}]' for n in unknown)} "
            f"(it hosts {', '.join(sorted(names)) or 'none'}); check the names, which are the classes' names"
        )
    return Layout(policies)


def _merged(name: str, base: ShardPolicy, table: ShardPolicy, keys: frozenset[str]) -> ShardPolicy:
    """``table``'s keys over the code's ``base``, validated: a clash between what the operator
    wrote and what the code kept is a ConfigError naming both sides."""
    policy = merge_over(base, table, keys)
    try:
        policy.validate(name)
    except LayoutError as err:
        kept = sorted(POLICY_FIELDS - keys)
        text = str(err).removeprefix(f"layout of type {name!r}: ")
        raise ConfigError(
            f"layout.{name}: {text} (the [layout.{name}] table sets {', '.join(sorted(keys)) or 'nothing'}; "
            f"{', '.join(f'{k}={getattr(base, k)!r}' for k in kept)} come from the code's policy: "
            "set them in the table too)"
        ) from None
    if policy != base:
        log.info("layout of %s: the code's policy with %s from the configuration", name, _changed(base, policy))
    return policy


def _changed(base: ShardPolicy, policy: ShardPolicy) -> str:
    """``shards=2, min_nodes=2``: the fields the configuration changed, for the log."""
    return ", ".join(
        f"{k}={getattr(policy, k)!r}" for k in sorted(POLICY_FIELDS) if getattr(base, k) != getattr(policy, k)
    )
