"""A fresh certs directory per test: a CA, nodes 1 and 2, client alice (Ed25519 is fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.security import create_ca, create_client, create_node


@pytest.fixture
def certs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "certs"
    create_ca(path, cluster="test")
    create_node(path, 1)
    create_node(path, 2)
    create_client(path, "alice")
    return path


@pytest.fixture
def other_certs_dir(tmp_path: Path) -> Path:
    """Another cluster: its own CA, with a node 1 and a client alice of its own."""
    path = tmp_path / "other"
    create_ca(path, cluster="other")
    create_node(path, 1)
    create_client(path, "alice")
    return path
