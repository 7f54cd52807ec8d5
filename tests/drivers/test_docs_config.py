"""The configuration sample in the docs ("Running a group") shows the real defaults.

A reader copies that sample; a value in it that is not the default would silently change their
node. Only the keys that must name this node or its neighbours (marked as examples in the
prose) may differ, and every key shown must be one the loader knows.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "running.md"
# Keys that name this node, its peers or its files: the sample shows an example value.
EXAMPLE_KEYS = {
    ("node", "id"),
    ("node", "listen"),
    ("node", "contacts"),
    ("node", "app"),
    ("node", "metrics"),
    ("security", "certs_dir"),
}


def _sample_text() -> str:
    text = DOC.read_text()
    start = text.index("Every field of the node's TOML config")
    block = re.search(r"```toml\n(.*?)```", text[start:], re.S)
    assert block is not None, "docs/running.md lost its TOML sample"
    return block.group(1)


def _sample() -> dict[str, Any]:
    return tomllib.loads(_sample_text())


def test_the_docs_sample_loads(tmp_path: Path) -> None:
    """Every key shown is known and every value valid (load_config raises otherwise)."""
    path = tmp_path / "node.toml"
    path.write_text(_sample_text())
    cfg = load_config(str(path), environ={})
    assert cfg.node.id == _sample()["node"]["id"]
    assert "KV" in {name for name, _ in cfg.layout.types}


@pytest.mark.parametrize("section", ["node", "timeouts", "multicast", "rdmc", "persistence", "security", "limits"])
def test_the_docs_sample_shows_the_defaults(section: str) -> None:
    sample = _sample()
    assert section in sample, f"the docs' sample has no [{section}] section"
    defaults = getattr(load_config(None, environ={}), section)
    names = {f.name for f in dataclasses.fields(defaults)}
    shown = sample[section]
    assert isinstance(shown, dict)
    for key, value in shown.items():
        assert key in names, f"{section}.{key} in the docs is not a setting"
        if (section, key) in EXAMPLE_KEYS:
            continue
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            default = list(default)
        assert value == default, f"docs show {section}.{key} = {value!r}; the default is {default!r}"
