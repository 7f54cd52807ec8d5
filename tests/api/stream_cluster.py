"""What the real-process tests of clients' large calls share (streamed to a contact, relayed by a
contact outside the shard, objects between members): the replicated type they call, the
settings their clusters start with, and how they read a node's status and memory or slow a
client's stream down. One place, so every such test means the same by "applied once" and
"freed"."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import derecho_actors as da
from derecho_actors.caller import large_calls

__all__ = [
    "FAST",
    "Blobs",
    "app_status",
    "digest",
    "proc_bytes",
    "slow_blocks",
    "split",
    "stream_cluster",
    "streams",
    "wait_until",
]


@da.replicated
class Blobs:
    """Takes bytes and keeps only their digests, in the order applied: a replica's log says
    which calls ran, how often and in what order."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    @da.ordered
    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.applied.append(digest)
        return digest

    @da.ordered
    def log(self) -> list[str]:
        return self.applied


FAST = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "2500"}
"""Heartbeats fast and suspicion short: a node killed is out of the view within a few seconds.
Not shorter: with 100 MB calls through five nodes and another test worker on two cores, a
CI run saw a member's loop not run for 1.2 s (it said so) and the group rightly remove it,
which failed a test about something else."""


def digest(data: bytes) -> str:
    """What ``Blobs.put`` answers (and logs) for ``data``."""
    return hashlib.sha256(data).hexdigest()


def stream_cluster(
    nodes: int,
    layout: da.Layout,
    workdir: Path | str,
    stream_bytes: int = 160 << 20,
    types: tuple[type, ...] = (),
    overrides: dict[str, str] | None = None,
) -> Any:
    """A local cluster (real processes, TLS on) of ``nodes`` hosting ``Blobs`` (and ``types``),
    with ``FAST``, a client allowed ``stream_bytes`` of large calls at once, and ``overrides``
    (``with stream_cluster(...) as cluster:``)."""
    settings = {**FAST, "limits.client_stream_bytes": str(stream_bytes), **(overrides or {})}
    return da.local_cluster(nodes=nodes, types=[Blobs, *types], layout=layout, overrides=settings, workdir=str(workdir))


def app_status(cluster: da.LocalCluster, node: int) -> dict[str, Any]:
    """The actor layer's part of node ``node``'s status."""
    return dict(cluster.status(node).get("app") or {})


def streams(cluster: da.LocalCluster, node: int) -> dict[str, int]:
    """What node ``node`` holds for clients' streamed calls, and relays (its status)."""
    return dict(app_status(cluster, node).get("client_streams") or {})


def warnings_of(cluster: da.LocalCluster, node: int, last: int = 30) -> list[str]:
    """The last WARNING/ERROR and view lines of node ``node``'s log: what a failed assertion
    about its path needs (a CI run's logs are gone by the time anyone reads them)."""
    from pathlib import Path

    try:
        text = (Path(cluster.workdir) / f"node-{node}.log").read_text(errors="replace")
    except OSError as exc:
        return [f"(no log: {exc})"]
    keep = [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln or "view " in ln]
    return keep[-last:]


def split(cluster: da.LocalCluster) -> tuple[list[int], list[int]]:
    """The live nodes holding a replica (of any shard), and the live nodes holding none."""
    live = [n for n, p in cluster.procs.items() if p.poll() is None]
    members = sorted(n for n in live if app_status(cluster, n).get("replicas"))
    return members, sorted(set(live) - set(members))


def proc_bytes(cluster: da.LocalCluster, node: int, key: str) -> int:
    """A memory figure of node ``node``'s process from ``/proc`` (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{cluster.procs[node].pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in node {node}'s /proc status")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; ``AssertionError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def slow_blocks(monkeypatch: pytest.MonkeyPatch, pause: Callable[[int], float]) -> None:
    """Make this process's clients sleep ``pause(offset)`` seconds (0: not at all) before
    writing the block of a streamed call at byte ``offset``: the stream is still in flight when
    the test does what it tests (``monkeypatch`` undoes it)."""
    real = large_calls.block_frame

    def slowed(call_id: int, offset: int, block: memoryview) -> tuple[bytes, memoryview]:
        wait = pause(offset)
        if wait > 0:
            time.sleep(wait)
        return real(call_id, offset, block)

    monkeypatch.setattr(large_calls, "block_frame", slowed)
