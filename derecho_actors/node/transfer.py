"""State transfer: the sending side of bringing a new replica of a shard up to date.

At the start of a view in which a shard gains members, the view's *state source* for that
shard (a holder of it in the previous view, named in the view itself) writes the replica's
object state to a file at exactly the view boundary; each new member asks for it with a
``StateRequest`` naming the last version in its own log. The source streams the file in
chunks, then the log records the receiver lacks (read from its log file a chunk at a time),
with at most ``window`` chunks unacknowledged: memory stays bounded by the window however
large the state, and a slow receiver slows the sender instead of piling up buffers.

Who may ask. A snapshot is the whole state of a shard, so a ``StateRequest`` is served only to
a member that the requested view (or, for a view this node no longer keeps, its current view)
assigns to that shard: any other holder of a node certificate is refused with a rate-limited
WARNING. A request for a view this node has not installed yet is kept until the view's
snapshot is ready (the joiner may be faster than its source), checked again then, and bounded:
``MAX_EARLY_PER_REQUESTER`` per requester and ``MAX_EARLY_TOTAL`` in all, the oldest dropped
with a WARNING; kept requests of views two behind the current one are dropped.

Everything here runs on the node's loop; file reads are one chunk at a time.
:class:`TransferService` is the node's side of it all: snapshots it serves, streams it runs
(``transfer_stream``), and the shards whose state it still waits for.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from derecho_actors.node.transfer_stream import BoundaryState, TransferOut
from derecho_actors.wire.messages import ChunkKind, StateAck, StateChunk, StateRequest, encode
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.exitcodes import EXIT_FAILED
from runtime.node_api import NodeHandle

log = logging.getLogger("derecho.transfer")

MAX_EARLY_PER_REQUESTER = 8  # requests kept per requester for snapshots not made yet
MAX_EARLY_TOTAL = 256  # and in all


class RequestCheck(enum.Enum):
    """Whether a StateRequest's sender may have the snapshot it asks for."""

    ALLOWED = "allowed"  # the view assigns it to the shard
    REFUSED = "refused"  # the view does not
    UNKNOWN = "unknown"  # the requested view is not installed here yet: ask again at its snapshot


class TransferService:
    """State transfers of one node: what it serves to new members of its shards and what it
    receives for shards it is new to."""

    def __init__(
        self,
        node: NodeHandle,
        host: Any,
        chunk_bytes: int,
        window: int,
        views: Callable[[int], View | None],
        view: Callable[[], View | None],
        fail_stop: Callable[[str, int], None],
        installed: Callable[[ShardId], None] = lambda sid: None,
    ) -> None:
        """``host``: the replica host (its ``tell`` and ``retire``); ``views(vid)``: a recent
        view by id; ``installed(shard)``: a state this node waited for has landed."""
        self.node = node
        self.node_id = node.node_id
        self.host = host
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.views = views
        self.view = view
        self.fail_stop = fail_stop
        self.installed = installed
        self.snapshots: dict[tuple[ShardId, int], BoundaryState] = {}
        # Requests before their snapshot: (shard, vid) -> requester -> request; with their
        # order overall and per requester, so the oldest goes in O(1) whatever a peer sends.
        self.early: dict[tuple[ShardId, int], dict[int, StateRequest]] = {}
        self._early_order: OrderedDict[tuple[int, tuple[ShardId, int]], None] = OrderedDict()
        self._early_of: dict[int, OrderedDict[tuple[ShardId, int], None]] = {}
        self._warn = RateLimitedLog(log, interval=10.0, burst=2)
        self.snapshot_errors: dict[tuple[ShardId, int], str] = {}  # snapshots that could not be made
        self.streams: dict[tuple[ShardId, int, int], TransferOut] = {}
        self.awaiting: dict[ShardId, tuple[int, int]] = {}  # shard -> (source, vid)
        self.stats: list[dict[str, Any]] = []

    @property
    def early_count(self) -> int:
        """Requests kept for snapshots not made yet (at most MAX_EARLY_TOTAL)."""
        return len(self._early_order)

    def status(self) -> dict[str, Any]:
        """Transfers sent (finished), their bytes, those under way (``[shard, to, bytes so
        far]``) and requests waiting for a snapshot not made yet."""
        return {
            "state_requests_waiting": self.early_count,
            "transfers_sent": len(self.stats),
            "transfer_bytes_sent": sum(s["bytes"] for s in self.stats),
            "transfers_active": [[str(sid), to, t.sent_bytes] for (sid, _vid, to), t in self.streams.items()],
        }

    # ------------------------------------------------------------------ receiving
    def await_state(self, sid: ShardId, source: int, vid: int) -> None:
        self.awaiting[sid] = (source, vid)

    def request(self, sid: ShardId, vid: int, source: int | None, have: int, digest: int) -> None:
        if source is None or sid not in self.awaiting:
            return
        log.info(
            "node %s asks node %s for the state of %s (view %d, has up to version %d)",
            self.node_id,
            source,
            sid,
            vid,
            have,
        )
        self.node.send_app(source, encode(StateRequest(sid, vid, have, digest)))

    def on_chunk(self, sender: int, chunk: StateChunk) -> None:
        from derecho_actors.replica.replica import StatePart

        expected = self.awaiting.get(chunk.shard)
        if expected is None or expected[0] != sender:
            return  # only the source the view named may send it
        self.host.tell(
            chunk.shard, StatePart(chunk.seq, chunk.part, chunk.data, chunk.final, chunk.reset, sender, chunk.vid)
        )

    def chunk_done(self, sid: ShardId, source: int, vid: int, seq: int) -> None:
        """The replica wrote chunk ``seq``: acknowledge it to the chunk's sender."""
        self.node.send_app(source, encode(StateAck(sid, vid, seq)))

    def state_installed(self, sid: ShardId, version: int) -> None:
        self.installed(sid)
        entry = self.awaiting.pop(sid, None)
        if entry is not None:
            log.info(
                "node %s installed the state of %s (up to version %d) from node %s",
                self.node_id,
                sid,
                version,
                entry[0],
            )

    def failed(self, sid: ShardId, why: str) -> None:
        """This node could not receive the state of a shard it now holds: it cannot serve it,
        so it leaves (and may join again) rather than hold a replica that never answers."""
        self.awaiting.pop(sid, None)
        self.fail_stop(why, EXIT_FAILED)

    def why_waiting(self, sid: ShardId) -> str | None:
        entry = self.awaiting.get(sid)
        return (
            None if entry is None else f"node {self.node_id} is still receiving the state of {sid} from node {entry[0]}"
        )

    # ------------------------------------------------------------------ serving
    def snapshot_ready(self, sid: ShardId, vid: int, path: Path, boundary: int, store: Any) -> None:
        snap = BoundaryState(sid, vid, path, boundary, store)
        view, prev = self.views(vid), self.views(vid - 1)
        if view is not None:
            before = set(prev.layout.members_of(sid)) if prev is not None else set()
            snap.receivers = {m for m in view.layout.members_of(sid) if m not in before and m != self.node_id}
        self.snapshots[(sid, vid)] = snap
        for sender, req in self._take_early((sid, vid)):
            if self._check(sender, req) is RequestCheck.ALLOWED:
                self._start(sender, req)
            else:
                self._refused(sender, req)
        self.retire_unused()

    def snapshot_failed(self, sid: ShardId, vid: int, why: str) -> None:
        """The replica could not write its state for new members: tell each who asks (they
        stop with this reason rather than wait for ever)."""
        self.snapshot_errors[(sid, vid)] = why
        if len(self.snapshot_errors) > 64:
            self.snapshot_errors.pop(next(iter(self.snapshot_errors)))
        for sender, req in self._take_early((sid, vid)):
            if self._check(sender, req) is RequestCheck.ALLOWED:
                self._refuse(sender, req, why)
            else:
                self._refused(sender, req)

    def _refuse(self, receiver: int, req: StateRequest, why: str) -> None:
        self.node.send_app(
            receiver, encode(StateChunk(req.shard, req.vid, 0, ChunkKind.ERROR, why.encode(), True, False))
        )

    def on_request(self, sender: int, req: StateRequest) -> None:
        check = self._check(sender, req)
        if check is RequestCheck.REFUSED:
            self._refused(sender, req)
            return
        why = self.snapshot_errors.get((req.shard, req.vid))
        if why is not None and check is RequestCheck.ALLOWED:
            self._refuse(sender, req, why)
        elif (req.shard, req.vid) in self.snapshots and check is RequestCheck.ALLOWED:
            self._start(sender, req)
        else:
            self._keep_early(sender, req)

    def _check(self, sender: int, req: StateRequest) -> RequestCheck:
        """Whether the requested view (or the current one, for a view no longer kept here)
        assigns ``sender`` to the shard it asks the state of."""
        view = self.views(req.vid)
        if view is None:
            current = self.view()
            if current is None or req.vid > current.vid:
                return RequestCheck.UNKNOWN
            view = current
        return RequestCheck.ALLOWED if sender in view.layout.members_of(req.shard) else RequestCheck.REFUSED

    def _refused(self, sender: int, req: StateRequest) -> None:
        self._warn.warning(
            ("state-request", str(sender)),
            "refused a state request of node %s for %s (view %d): that view does not assign node %s to the shard",
            sender,
            req.shard,
            req.vid,
            sender,
        )

    def _keep_early(self, sender: int, req: StateRequest) -> None:
        """Keep a request until its snapshot exists (one per requester and pair: a repeat
        replaces it), within MAX_EARLY_PER_REQUESTER per requester and MAX_EARLY_TOTAL in
        all, the oldest dropped (with a rate-limited WARNING)."""
        key = (req.shard, req.vid)
        kept = self.early.get(key)
        if kept is not None and sender in kept:
            kept[sender] = req
            return
        mine = self._early_of.get(sender)
        if mine is not None and len(mine) >= MAX_EARLY_PER_REQUESTER:
            self._drop_early(sender, next(iter(mine)), f"node {sender} has {len(mine)} requests waiting")
        elif len(self._early_order) >= MAX_EARLY_TOTAL:
            oldest_sender, oldest_key = next(iter(self._early_order))
            self._drop_early(oldest_sender, oldest_key, f"{len(self._early_order)} requests are waiting")
        self.early.setdefault(key, {})[sender] = req
        self._early_order[(sender, key)] = None
        self._early_of.setdefault(sender, OrderedDict())[key] = None

    def _forget_early(self, sender: int, key: tuple[ShardId, int]) -> None:
        self._early_order.pop((sender, key), None)
        mine = self._early_of.get(sender)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._early_of[sender]

    def _drop_early(self, sender: int, key: tuple[ShardId, int], why: str) -> None:
        kept = self.early[key]
        req = kept.pop(sender)
        if not kept:
            del self.early[key]
        self._forget_early(sender, key)
        self._warn.warning(
            ("state-request-dropped", str(sender)),
            "dropped a waiting state request of node %s for %s (view %d): %s",
            sender,
            req.shard,
            req.vid,
            why,
        )

    def _take_early(self, key: tuple[ShardId, int]) -> list[tuple[int, StateRequest]]:
        kept = self.early.pop(key, {})
        for sender in kept:
            self._forget_early(sender, key)
        return list(kept.items())

    def _start(self, receiver: int, req: StateRequest) -> None:
        snap = self.snapshots[(req.shard, req.vid)]
        key = (req.shard, req.vid, receiver)
        if key in self.streams:
            return

        def send(node: int, chunk: StateChunk) -> None:
            self.node.send_app(node, encode(chunk))

        t = TransferOut(snap, receiver, req, send, self.chunk_bytes, self.window)
        snap.active += 1
        snap.requests_seen.add(receiver)
        self.streams[key] = t
        log.info(
            "node %s sends the state of %s (view %d, up to version %d) to node %s%s",
            self.node_id,
            req.shard,
            req.vid,
            snap.boundary,
            receiver,
            " replacing its log" if t.reset else "",
        )
        try:
            t.pump()
        except Exception as exc:
            log.exception("state transfer of %s to node %s failed", req.shard, receiver)
            self._end(key, str(exc))

    def on_ack(self, sender: int, ack: StateAck) -> None:
        key = (ack.shard, ack.vid, sender)
        t = self.streams.get(key)
        if t is None:
            return
        try:
            finished = t.ack(ack.seq)
        except Exception as exc:
            log.exception("state transfer of %s to node %s failed", ack.shard, sender)
            self._end(key, str(exc))
            return
        if finished:
            self._end(key, None)

    def _end(self, key: tuple[ShardId, int, int], error: str | None) -> None:
        t = self.streams.pop(key, None)
        if t is None:
            return
        seconds = time.monotonic() - t.started_at
        self.stats.append(
            {
                "shard": str(key[0]),
                "vid": key[1],
                "to": key[2],
                "bytes": t.sent_bytes,
                "seconds": seconds,
                "error": error,
            }
        )
        if error is None:
            log.info("state of %s sent to node %s: %.1f MB in %.2f s", key[0], key[2], t.sent_bytes / 1e6, seconds)
        t.snap.active -= 1
        self.retire_unused()

    def retire_unused(self) -> None:
        """Drop snapshots of finished views nobody is fetching, and retired replicas."""
        view = self.view()
        for k, snap in list(self.snapshots.items()):
            if snap.active == 0 and view is not None and (view.vid > snap.vid + 1 or not self._needed(snap, view)):
                snap.path.unlink(missing_ok=True)
                del self.snapshots[k]
                self.host.retire(snap.shard)

    @staticmethod
    def _needed(snap: BoundaryState, view: View) -> bool:
        """Whether a member may still ask for the snapshot: until every member that was new
        to the shard in its view has fetched it, or the view after next."""
        return view.vid <= snap.vid + 1 and not snap.requests_seen.issuperset(snap.receivers)

    def on_view(self, view: View) -> None:
        """A new view: streams to members that left stop; a member waiting for state whose
        source left cannot get it any more and leaves (it may join again)."""
        members = set(view.members)
        for old in [k for k in self.early if k[1] < view.vid - 1]:
            self._take_early(old)  # their snapshots are retired (or never come) by now
        for key in [k for k in self.streams if k[2] not in members]:
            self._end(key, f"node {key[2]} left")
        for sid, (source, _vid) in list(self.awaiting.items()):
            if source not in members:
                self.failed(
                    sid,
                    f"state transfer of {sid} failed: its source node {source} left in view {view.vid} "
                    "before sending it; restart this node to join again",
                )
                return
        self.retire_unused()
