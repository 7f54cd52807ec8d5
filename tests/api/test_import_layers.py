"""The actor layer's folders say which thread runs their code, and imports run one way:

    model <- wire <- replica, caller <- node <- sim <- tools

A module may import its own folder and the folders below it; ``replica`` and ``caller`` do
not import each other (a replica never calls back into a caller's objects, a caller never
reaches into a replica). ``exceptions`` (the public errors) is below everything; the package's
``__init__`` (the public face) may import anything and nothing imports it but ``tools`` (for
``__version__``). ``model`` is what users write, so it imports nothing else of the package.
Imports under ``TYPE_CHECKING`` count too: a type named in a signature is a dependency of its
reader. And no module imports itself back through others (no circle), even lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(__file__).resolve().parents[2] / "derecho_actors"
RANK = {"exceptions": -1, "model": 0, "wire": 1, "replica": 2, "caller": 2, "node": 3, "sim": 4, "tools": 5}
MAX_LINES = 400  # no module of the actor layer may grow past this (issue 20)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path) -> set[str]:
    """Every module of the package ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "derecho_actors":
                found.update(f"derecho_actors.{a.name}" for a in node.names)
            elif node.module.startswith("derecho_actors."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("derecho_actors."))
    return found


def folder(module: str) -> str | None:
    """``derecho_actors.node.group`` -> ``node``; the root and its ``__init__`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def known(name: str, mods: dict[str, Path]) -> str:
    """The module ``name`` refers to (``from derecho_actors import __version__`` is the root)."""
    while name not in mods and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_every_module_sits_in_a_folder_that_says_its_thread() -> None:
    loose = [m for m in modules() if m.count(".") == 1 and folder(m) not in RANK]
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_imports_run_one_way() -> None:
    mods = modules()
    wrong = []
    for module, path in mods.items():
        mine = folder(module)
        if mine is None:
            continue  # the package's public face
        for dep in sorted(imports_of(path)):
            theirs = folder(known(dep, mods))
            if theirs == mine:
                continue
            if theirs is None:
                if mine != "tools":
                    wrong.append(f"{module} imports the package root ({dep})")
                continue
            if RANK[theirs] >= RANK[mine] or {mine, theirs} == {"replica", "caller"}:
                wrong.append(f"{module} ({mine}) imports {dep} ({theirs})")
            if mine == "model" and theirs != "exceptions":
                wrong.append(f"{module} (model) imports {dep}: model imports nothing else of the package")
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circle() -> None:
    mods = modules()
    graph = {m: {known(d, mods) for d in imports_of(p)} - {m} for m, p in mods.items() if folder(m) is not None}
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d) :] + [d])
            elif d in graph and d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_module_is_huge() -> None:
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The checker itself: a model module importing the node layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from derecho_actors.node.group import Group\n")
    assert imports_of(bad) == {"derecho_actors.node.group"}
    assert RANK[folder("derecho_actors.node.group") or ""] > RANK["model"]
