"""Builds each replica's ``ReplicaEnv``: the callbacks through which a replica (on its own
thread) reports to the group's services, each scheduled onto the node's loop so the services
are only ever touched from there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.node.frontiers import PersistenceTracker
from derecho_actors.node.transfer import TransferService
from derecho_actors.replica.replica import ReplicaEnv, SendReplies
from derecho_actors.replica.store import log_path
from runtime.config import PersistenceSection
from runtime.core.layout import ShardId
from runtime.exitcodes import EXIT_FAILED, EXIT_STORAGE
from runtime.node_api import NodeHandle


@dataclass
class ReplicaEnvFactory:
    node_id: int
    node: NodeHandle
    data_dir: Path
    send_replies: SendReplies
    transfer: TransferService
    tracker: PersistenceTracker
    fail_stop: Callable[[str, int], None]
    signing_key: Any
    persistence: PersistenceSection
    inline_writes: bool
    take_log: Callable[[Path], Any] = lambda path: None  # logs the node opened at start (restart)

    def __call__(self, sid: ShardId, spec: TypeSpec, vid: int, source: int | None) -> ReplicaEnv:
        node, transfer, tracker, fail_stop = self.node, self.transfer, self.tracker, self.fail_stop

        def on_loop(fn: Callable[..., None]) -> Callable[..., None]:
            def later(*args: Any) -> None:
                node.call_soon(fn, *args)

            return later

        path = log_path(self.data_dir, sid.type_name, sid.subgroup, sid.shard) if spec.persistent else None
        take_log = self.take_log
        return ReplicaEnv(
            node_id=self.node_id,
            send_replies=self.send_replies,
            scratch_dir=self.data_dir / "transfer",
            log_path=path,
            take_log=(lambda: take_log(path)) if path is not None else (lambda: None),
            signing_key=self.signing_key if spec.signed else None,
            fsync=self.persistence.fsync,
            report_durable=lambda version: node.report_persisted(sid, version),
            request_state=on_loop(lambda have, digest: transfer.request(sid, vid, source, have, digest)),
            snapshot_ready=on_loop(
                lambda svid, path, boundary, store: transfer.snapshot_ready(sid, svid, path, boundary, store)
            ),
            snapshot_failed=on_loop(lambda svid, why: transfer.snapshot_failed(sid, svid, why)),
            transfer_failed=on_loop(lambda why: transfer.failed(sid, why)),
            state_installed=on_loop(lambda version: transfer.state_installed(sid, version)),
            chunk_done=on_loop(lambda src, svid, seq: transfer.chunk_done(sid, src, svid, seq)),
            report_signed=on_loop(lambda version, sig: tracker.signed(sid, version, sig)),
            report_digest=on_loop(lambda version, digest: tracker.digested(sid, version, digest))
            if spec.digest_every
            else None,
            report_verified=on_loop(lambda peer, version: tracker.verified_by(sid, peer, version)),
            storage_failed=on_loop(lambda why: fail_stop(why, EXIT_STORAGE)),
            internal_error=on_loop(lambda why: fail_stop(why, EXIT_FAILED)),
            stall_timeout=self.persistence.stall_timeout_ms / 1000,
            lost=tracker.lost.get(sid),
            report_lost=on_loop(lambda lo, hi: tracker.record_lost({sid: (lo, hi)})),
            inline_writes=self.inline_writes,
        )
