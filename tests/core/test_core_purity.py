"""The protocol core stays sans-I/O: no sockets, threads, clocks, files, randomness or drivers.

Two checks. A static one parses every module under ``runtime/core`` and lists each import (at
any depth: in functions, classes, ``if TYPE_CHECKING`` and ``try`` blocks) of a forbidden
module. A dynamic one imports the core in a fresh interpreter and checks which modules that
import pulled in. The interpreter may load some stdlib modules (``threading``) at start-up,
so the dynamic check only looks at what the core's import added; the static check covers the
rest. The scanner is itself tested on snippets, so a scanner that sees nothing fails.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = ROOT / "runtime" / "core"

FORBIDDEN_STDLIB = frozenset(
    {
        "socket", "threading", "asyncio", "time", "os", "subprocess", "selectors",
        "multiprocessing", "random", "io", "pathlib",
        # The same capabilities under other names; dynamic imports would hide any of them.
        "_socket", "_thread", "_asyncio", "select", "ssl", "concurrent", "secrets", "importlib",
    }
)  # fmt: skip
FORBIDDEN_PACKAGES = ("runtime.sim", "runtime.drivers", "derecho_actors")
ALLOWED = ("runtime.errors",)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_forbidden(module: str) -> bool:
    if module.split(".")[0] in FORBIDDEN_STDLIB:
        return True
    if any(_within(module, ok) for ok in ALLOWED):
        return False
    return any(_within(module, pkg) for pkg in FORBIDDEN_PACKAGES)


def module_package(path: pathlib.Path) -> str:
    """The package a module's relative imports start from: runtime/core/x.py -> runtime.core."""
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1])


def imported_names(node: ast.AST, package: str) -> list[str]:
    """Fully qualified names an import statement binds (``from m import a`` gives ``m.a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parent = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parent + ([base] if base else []))
        return [f"{base}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
        arg = node.args[0] if node.args else None
        return [arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "__import__(?)"]
    return []


def offending_imports(source: str, filename: str, package: str) -> list[str]:
    """``file:line: name`` for every forbidden import in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        for name in imported_names(node, package):
            if name == "__import__(?)" or is_forbidden(name):
                out.append(f"{filename}:{node.lineno}: {name}")  # type: ignore[attr-defined]
    return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def core_files() -> list[pathlib.Path]:
    return sorted(CORE.rglob("*.py"))


# --------------------------------------------------------------------------------------------
# The scanner finds what it must (so the real check can fail)
# --------------------------------------------------------------------------------------------

SNIPPETS: list[tuple[str, str, list[str]]] = [
    ("plain import", "import socket\n", ["socket"]),
    ("aliased, inside a function", "def f():\n    import time as t\n    return t\n", ["time"]),
    ("from-import in a method", "class C:\n    def m(self):\n        from os.path import join\n", ["os.path.join"]),
    ("under TYPE_CHECKING", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n", ["asyncio"]),
    ("in try/except", "try:\n    import threading\nexcept ImportError:\n    pass\n", ["threading"]),
    ("several names on one line", "import json, random, dataclasses\n", ["random"]),
    ("submodule", "import multiprocessing.pool\n", ["multiprocessing.pool"]),
    ("star import", "from io import *\n", ["io.*"]),
    ("dynamic import", "m = __import__('subprocess')\n", ["subprocess"]),
    ("dynamic import of a computed name", "m = __import__(name)\n", ["__import__(?)"]),
    ("importlib", "import importlib\n", ["importlib"]),
    ("relative import of the simulator", "from ..sim import cluster\n", ["runtime.sim.cluster"]),
    ("relative import of a sim module", "from ..sim.cluster import Cluster\n", ["runtime.sim.cluster.Cluster"]),
    ("drivers", "import runtime.drivers.tcp\n", ["runtime.drivers.tcp"]),
    ("sim package by name", "from runtime import sim\n", ["runtime.sim"]),
    ("public package", "import derecho_actors\n", ["derecho_actors"]),
    ("public API name", "from derecho_actors import LayoutError\n", ["derecho_actors.LayoutError"]),
    ("other public module", "from derecho_actors.tools.cli import main\n", ["derecho_actors.tools.cli.main"]),
    ("allowed: exceptions module", "from runtime.errors import LayoutError\n", []),
    ("allowed: errors by from-import", "from runtime import errors\n", []),
    ("the public errors module", "from derecho_actors import exceptions\n", ["derecho_actors.exceptions"]),
    ("allowed: sibling, relative", "from . import sst\nfrom .ordering import position\n", []),
    ("allowed: sibling, absolute", "from runtime.core import ordering\n", []),
    ("allowed: pure stdlib", "import typing, dataclasses, enum\nfrom collections.abc import Mapping\n", []),
    ("prefixes are not matches", "import timeit_like, osmium, randomize, iota, runtime.simple\n", []),
]


@pytest.mark.parametrize(("source", "names"), [s[1:] for s in SNIPPETS], ids=[s[0] for s in SNIPPETS])
def test_scanner_on_snippets(source: str, names: list[str]) -> None:
    path = CORE / "snippet.py"
    found = offending_imports(source, "snippet.py", module_package(path))
    assert [f.split(": ", 1)[1] for f in found] == names


def test_scanner_reports_file_and_line() -> None:
    source = "import dataclasses\n\n\ndef f():\n    import socket\n"
    assert offending_imports(source, "runtime/core/x.py", "runtime.core") == ["runtime/core/x.py:5: socket"]


# --------------------------------------------------------------------------------------------
# The core itself
# --------------------------------------------------------------------------------------------


def test_core_modules_import_nothing_forbidden() -> None:
    files = core_files()
    names = {f.name for f in files}
    assert {"__init__.py", "sst.py", "ordering.py", "node_core.py", "layout.py"} <= names, names
    offenders: list[str] = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        offenders += offending_imports(f.read_text(encoding="utf-8"), rel, module_package(f))
    assert not offenders, "the sans-I/O core imports forbidden modules:\n" + "\n".join(offenders)


PROBE = """
import json, sys
before = set(sys.modules)
import runtime.core.node_core, runtime.core.layout
for name in json.loads(sys.argv[1]):
    __import__(name)
print(json.dumps({"added": sorted(set(sys.modules) - before), "all": sorted(sys.modules)}))
"""


def loaded_forbidden(module: str) -> bool:
    """Like :func:`is_forbidden`, for modules found loaded rather than import statements.

    The stdlib's own ``inspect`` (via ``dataclasses``) loads ``importlib.machinery``; that is
    fine.
    """
    if module.split(".")[0] == "importlib":
        return False
    return is_forbidden(module)


def core_module_names() -> list[str]:
    out = []
    for f in core_files():
        rel = f.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join(parts))
    return out


def test_importing_the_core_loads_no_io_or_driver_modules() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(core_module_names())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    added: list[str] = loaded["added"]
    assert "runtime.core.sst" in added and "runtime.core.node_core" in added, added
    bad = [m for m in added if loaded_forbidden(m)]
    assert not bad, f"importing runtime.core loaded: {bad}"
    outside = [
        m
        for m in added
        if _within(m, "runtime") and not _within(m, "runtime.core") and m not in ("runtime", "runtime.errors")
    ]
    assert not outside, f"importing runtime.core loaded other runtime packages: {outside}"
    # Never needed by anything the core may import, so they must be absent even at start-up.
    assert "socket" not in loaded["all"] and "asyncio" not in loaded["all"], "socket/asyncio loaded"
