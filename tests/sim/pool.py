"""Simulator seeds of the tests, run on every core of the machine.

pytest runs one test at a time in one process, so a test that runs seeds one after another
keeps one core busy and leaves the others idle. A seed *is* its run (``run_seed`` depends on
nothing else), so running the seeds in worker processes runs and checks exactly the same
runs, only side by side. Workers are started with ``spawn``: forking a pytest process whose
earlier tests left threads behind could copy a lock held by one of them.

Only what a seed's arguments determine can go to a worker: a test that monkeypatches the
simulator runs its seeds in its own process.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, TypeVar

from runtime.sim.runner import RunResult, run_seed

T = TypeVar("T")

WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))
"""Worker processes: the cores this process may use, at most 4 (each holds a whole run in memory)."""

_pool: ProcessPoolExecutor | None = None


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """``fn(*args, **kwargs)`` in a worker: ``fn`` and the arguments must pickle (a function
    goes by its module and name, and the worker imports that module)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    return _pool.submit(fn, *args, **kwargs)


def submit(seed: int, **kwargs: Any) -> Future[RunResult]:
    """``run_seed(seed, **kwargs)`` in a worker."""
    return call(run_seed, seed, **kwargs)


def run_seeds(seeds: range | list[int], **kwargs: Any) -> list[RunResult]:
    """``run_seed`` of each seed, side by side, results in seed order."""
    futures = [submit(seed, **kwargs) for seed in seeds]
    return [f.result() for f in futures]


def shutdown() -> None:
    """Stop the workers (the end of the session): seeds not started are dropped."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None
