"""What a replica needs from its group (:class:`ReplicaEnv`): where replies, progress and
state go, and how its log is written.

The node builds one per replica (``node.replica_env``), the simulator another. The replica
calls these functions on its actor thread (or inline in the simulator), except those its log's
writer thread calls (``report_durable``, ``report_signed``, ``storage_failed``), so each must be
safe to call from a thread other than the node's loop: most only hand it a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from derecho_actors.wire.messages import Reply, ReplyBatch

SendReplies = Callable[[Sequence[tuple[int, Reply | ReplyBatch]]], None]
"""Hands a batch's answers to the node in one piece: ``(caller, reply)`` pairs, and for the
ordered path ``(caller, batch)``: the answers of many calls to one caller, made in their wire
shape (the node sends answers as batches per caller and view anyway)."""


@dataclass
class ReplicaEnv:
    """What a replica needs from its group: where replies, progress and state go."""

    node_id: int
    send_replies: SendReplies
    scratch_dir: Path  # snapshots for state transfer are written here
    log_path: Path | None = None  # persistent types: the shard's log
    signing_key: Any = None
    # The log as the node already opened and checked it at start (restart), handed over
    # once; None: open it (``replica.state.open_store``).
    take_log: Callable[[], Any] = lambda: None
    fsync: bool = True
    report_durable: Callable[[int], None] = lambda version: None
    request_state: Callable[[int, int], None] = lambda have, digest: None
    snapshot_ready: Callable[[int, Path, int, Any], None] = lambda vid, path, boundary, store: None
    snapshot_failed: Callable[[int, str], None] = lambda vid, why: None
    transfer_failed: Callable[[str], None] = lambda why: None
    storage_failed: Callable[[str], None] = lambda why: None  # the log cannot be written: fail-stop
    internal_error: Callable[[str], None] = lambda why: None  # the replica itself broke: fail-stop
    stall_timeout: float = 30.0  # a log write or fsync taking longer is a storage failure
    lost: tuple[int, int] | None = None  # versions a total restart gave up (they read as VersionLost)
    report_lost: Callable[[int, int], None] = lambda lo, hi: None  # learnt from a state transfer
    state_installed: Callable[[int], None] = lambda version: None
    chunk_done: Callable[[int, int, int], None] = lambda source, vid, seq: None
    report_signed: Callable[[int, bytes], None] = lambda version, signature: None  # signed logs
    report_verified: Callable[[int, int], None] = lambda node, version: None  # a peer's log matches ours
    # digest_every: our state's digest at a version, for the shard's other replicas to compare
    report_digest: Callable[[int, bytes], None] | None = None
    # How the log reaches the disk: None, a writer thread (real nodes); the simulator gives
    # a function that writes at once, so everything happens in its one thread.
    inline_writes: bool = False
