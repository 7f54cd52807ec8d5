"""What the real-process shared-memory tests share (``tests/api/test_shm_processes.py``,
``tests/drivers/test_shm_rows_processes.py``): a cluster name of the test's own, so its files
in /dev/shm are told from any other run's and removed at the end whatever happened, the
listing of those files, and a bounded wait."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest


def files_of(cluster: str, node: int | None = None) -> list[str]:
    """The files in /dev/shm of ``cluster`` (of ``node`` only, if given), sorted."""
    who = "*" if node is None else str(node)
    return sorted(glob.glob(f"/dev/shm/derecho-{cluster}-n{who}-*"))


@contextmanager
def own_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    """A cluster name of this test only; whatever of it is left in /dev/shm is removed at the
    end. (Each module's ``cluster_name`` fixture is this: a fixture imported by name would
    read as unused to the linter.)"""
    name = f"shm{os.getpid()}x{abs(hash(request.node.nodeid)) % 100_000}"
    try:
        yield name
    finally:
        for path in files_of(name):
            os.unlink(path)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``cond`` until it is true; an ``AssertionError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
