"""Fixtures the driver tests share."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def shm_dir() -> Iterator[str]:
    """A directory of this test's own in /dev/shm for rings, boards and segments, removed with
    whatever is left in it at the end."""
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="derecho-test-") as d:
        yield d
