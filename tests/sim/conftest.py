"""The simulator tests' worker processes (``tests/sim/pool.py``) end with the session."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.sim import pool


@pytest.fixture(scope="session", autouse=True)
def _sim_workers() -> Iterator[None]:
    """No worker outlives the tests (each is started on a test's first seed, if any)."""
    yield
    pool.shutdown()
