"""Persistence as the group sees it: frontiers, who waits for them, signed logs, lost ranges.

The core reports each shard's *persistence frontier* (every version up to it is on disk at
every replica); this module passes it to the replica (reads of the past check it), answers
the callers of ``persisted()`` once their version is under it, calls ``on_persisted``
callbacks, records it on disk now and then (a restart needs a lower bound), and exchanges the
signed marks of signed logs, and the state digests of types with ``digest_every`` (``wire.digest``),
with the shard's other replicas. Everything runs on the node's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import msgpack

from derecho_actors.node.disk_state import FRONTIER_WRITE_INTERVAL, NodeDiskState
from derecho_actors.node.hosting import ReplicaHost
from derecho_actors.replica.replica import FrontierMoved, PeerMark
from derecho_actors.wire.digest import DigestBook
from derecho_actors.wire.messages import Reply, ReplyTo, SignedMark, StateDigest, encode
from runtime.core.layout import ShardId
from runtime.core.status import LostRange, ShardDigests
from runtime.core.view import View
from runtime.errors import ReplicaLost
from runtime.exitcodes import EXIT_STORAGE
from runtime.node_api import NodeHandle

log = logging.getLogger("derecho.persistence")

RouteReplies = Callable[[list[tuple[int, Reply]]], None]


@dataclass(frozen=True, slots=True)
class PersistenceStatus:
    """This node's part of ``status`` on persistence: each shard's persistence frontier here,
    versions a total restart gave up, and the state digests compared."""

    frontiers: tuple[tuple[str, int], ...]  # (shard, frontier)
    lost: tuple[LostRange, ...]
    digests: tuple[ShardDigests, ...]

    def to_wire(self) -> dict[str, Any]:
        """``frontiers`` always; ``lost`` and ``digests`` only when there are some."""
        out: dict[str, Any] = {"frontiers": dict(self.frontiers)}
        if self.lost:
            out["lost"] = {r.shard: [r.first, r.last] for r in self.lost}
        if self.digests:
            out["digests"] = {d.shard: d.to_wire() for d in self.digests}
        return out


class Waiter(NamedTuple):
    """A ``persisted()`` query waiting for ``version`` to be on disk at every replica."""

    version: int
    to: ReplyTo


class PersistenceTracker:
    def __init__(
        self,
        node: NodeHandle,
        host: ReplicaHost,
        disk: NodeDiskState | None,
        public_key: bytes,
        route_replies: RouteReplies,
        view: Callable[[], View | None],
        fail_stop: Callable[[str, int], None],
    ) -> None:
        """``disk``: where frontiers and lost ranges are kept (None: no persistent types)."""
        self.node = node
        self.node_id = node.node_id
        self.host = host
        self.disk = disk
        self.public_key = public_key
        self.route_replies = route_replies
        self.view = view
        self.fail_stop = fail_stop
        self.frontier: dict[ShardId, int] = {}
        self.waiters: dict[ShardId, list[Waiter]] = {}
        self.callbacks: list[Callable[[ShardId, int], None]] = []
        self.verified: dict[ShardId, dict[int, int]] = {}  # signed logs: peer -> version checked equal
        self.lost: dict[ShardId, tuple[int, int]] = disk.lost() if disk is not None else {}
        self._frontiers_due = False
        self.digests = DigestBook(self.node_id, node.send_app, view)

    # ------------------------------------------------------------------ frontier
    def on_persisted(self, sid: ShardId, version: int) -> None:
        if version <= self.frontier.get(sid, -1):
            return
        self.frontier[sid] = version
        if self.disk is not None and self.disk.note_frontier(sid, version) and not self._frontiers_due:
            self._frontiers_due = True
            self.node.call_later(FRONTIER_WRITE_INTERVAL, self._write_frontiers)
        self.host.tell(sid, FrontierMoved(version))
        waiters = self.waiters.get(sid)
        if waiters:
            due = [w for w in waiters if w.version <= version]
            if due:
                self.waiters[sid] = [w for w in waiters if w.version > version]
                value = msgpack.packb(version)
                vid = self._vid()
                self.route_replies([(w.to.caller, w.to.in_view(vid).answered(self.node_id, value)) for w in due])
        for fn in self.callbacks:
            try:
                fn(sid, version)
            except Exception:
                log.exception("on_persisted callback raised")

    def _vid(self) -> int:
        view = self.view()
        return view.vid if view is not None else 0

    def _write_frontiers(self) -> None:
        """Record the persistence frontiers (lazily: a lower bound is all a restart needs),
        off the loop."""
        self._frontiers_due = False
        disk = self.disk
        if disk is None:
            return

        def write() -> None:
            try:
                disk.write_frontiers()
            except OSError as exc:
                self.node.call_soon(
                    self.fail_stop, f"storage failure: recording frontiers in {disk.data_dir}: {exc}", EXIT_STORAGE
                )

        self.node.run_blocking(write)

    def query(self, shard: ShardId, to: ReplyTo, args: bytes) -> None:
        """A ``persisted()`` query: answer once ``version`` is under the frontier here."""
        me = self.node_id
        try:
            version = msgpack.unpackb(args)
            if type(version) is not int:
                raise TypeError(f"bad version {version!r:.40}")
        except Exception as exc:
            self.route_replies([(to.caller, to.failed(me, ValueError(f"malformed persistence query: {exc}")))])
            return
        if version <= self.frontier.get(shard, -1):
            self.route_replies([(to.caller, to.answered(me, msgpack.packb(self.frontier[shard])))])
        elif self.host.holds(shard):
            self.waiters.setdefault(shard, []).append(Waiter(version, to))
        else:
            why = self.host.refusal(shard) or ReplicaLost(f"node {me} holds no replica of {shard}", applied=False)
            self.route_replies([(to.caller, to.refused(me, why))])

    def fail_waiters(self, sid: ShardId, why: str) -> None:
        """This node no longer holds ``sid``: answer its ``persisted()`` waiters with ``why``."""
        self.digests.forget(sid)
        waiters = self.waiters.pop(sid, [])
        if waiters:
            lost = ReplicaLost(why, applied=False)
            vid = self._vid()
            self.route_replies([(w.to.caller, w.to.in_view(vid).refused(self.node_id, lost)) for w in waiters])

    # ------------------------------------------------------------------ lost versions
    def record_lost(self, lost: dict[ShardId, tuple[int, int]]) -> None:
        """Versions a total restart gave up (--accept-loss), or learnt from a transfer."""
        if self.disk is not None:
            self.disk.record_lost(lost)
        for sid, rng in lost.items():
            old = self.lost.get(sid)
            self.lost[sid] = (min(rng[0], old[0]), max(rng[1], old[1])) if old else rng

    # ------------------------------------------------------------------ signed logs
    def signed(self, sid: ShardId, version: int, signature: bytes) -> None:
        """Our signed log is on disk up to ``version``: tell the shard's other replicas."""
        view = self.view()
        if view is None:
            return
        data = encode(SignedMark(sid, version, signature, self.public_key))
        for node in view.layout.members_of(sid):
            if node != self.node_id:
                self.node.send_app(node, data)

    def on_mark(self, sender: int, mark: SignedMark) -> None:
        proven = self.node.peer_public_key(sender)
        if proven is not None and proven != mark.public_key:
            log.warning("node %s sent a log signature under a key that is not its certificate's; ignored", sender)
            return
        self.host.tell(mark.shard, PeerMark(sender, mark.version, mark.signature, mark.public_key))

    def verified_by(self, sid: ShardId, node: int, version: int) -> None:
        seen = self.verified.setdefault(sid, {})
        if version > seen.get(node, -1):
            seen[node] = version

    def verified_frontier(self, sid: ShardId) -> int:
        view = self.view()
        if view is None:
            return -1
        seen = self.verified.get(sid, {})
        others = [n for n in view.layout.members_of(sid) if n != self.node_id]
        return min((seen.get(n, -1) for n in others), default=self.frontier.get(sid, -1))

    # ------------------------------------------------------------------ state digests
    def digested(self, sid: ShardId, version: int, digest: bytes) -> None:
        """Our replica of ``sid`` digested its state at ``version`` (``digest_every``): compare
        it with the peers' and send it to them. (``ReplicaEnv.report_digest``, on the loop.)"""
        self.digests.digested(sid, version, digest)

    def on_digest(self, sender: int, msg: StateDigest) -> None:
        self.digests.on_digest(sender, msg.shard, msg.version, msg.digest)

    def status(self) -> PersistenceStatus:
        return PersistenceStatus(
            frontiers=tuple((str(s), v) for s, v in self.frontier.items()),
            lost=tuple(LostRange(str(s), lo, hi) for s, (lo, hi) in self.lost.items()),
            digests=self.digests.status(),
        )
