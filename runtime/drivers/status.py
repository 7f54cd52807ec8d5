"""``derecho-actors status``: ask any member for its view of the group and draw it; and the
member's side of it, :class:`StatusLimiter`, which keeps status requests from stalling a node.

A status is built on the node's loop (about 90 µs for a small group): 20,000 requests in one
write would hold the loop past the suspicion timeout, and the peers would remove a healthy
node. So each client identity may ask ``limits.status_per_second`` times a second (a burst of
twice that), every request within ``limits.status_cache_ms`` of the last built status shares
it, and a request over the limit gets one ``RateLimited`` answer saying when to ask again;
what the same connection asks before then is dropped unanswered (one refusal per wait, so a
flood costs a dict lookup per frame), and a connection that keeps asking regardless is closed.
"""

from __future__ import annotations

import enum
import logging
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.core.status import AppStatus, NodeStatus
from runtime.drivers.dial import dial
from runtime.drivers.ratelimit import RateLimitedLog
from runtime.drivers.tcp import split_address
from runtime.errors import DerechoError, Refused
from runtime.security.tls import LoadedCredentials
from runtime.wire.codec import FrameDecoder, frame, frames
from runtime.wire.control import PROTOCOL_VERSION, Goodbye, Hello, RateLimited, StatusReply, StatusRequest

log = logging.getLogger("derecho.status")


class StatusError(DerechoError):
    """The contact could not be reached or did not answer; check the address and that the
    node runs."""


def fetch_status(
    contact: str,
    cluster: str = "derecho",
    timeout: float = 3.0,
    credentials: LoadedCredentials | None = None,
) -> dict[str, Any]:
    """Ask the member at ``contact`` for its status. ``credentials``: a client (or node)
    certificate of the cluster; None only for a group running in insecure mode. A member that
    answers ``RateLimited`` (this identity asked too often) is asked again after the time it
    names, if that is within ``timeout``; otherwise StatusError says so."""
    host, port = split_address(contact)
    deadline = time.monotonic() + timeout
    try:
        with dial(host, port, timeout, credentials) as sock:
            sock.sendall(frames([Hello(0, cluster, "client", time.time_ns(), PROTOCOL_VERSION), StatusRequest()]))
            decoder = FrameDecoder()
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(1 << 16)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, StatusReply):
                        return item.status
                    if isinstance(item, Goodbye):
                        raise StatusError(f"{contact} refused: {item.reason}")
                    if isinstance(item, RateLimited):
                        wait = item.retry_after_ms / 1000
                        if time.monotonic() + wait >= deadline:
                            raise StatusError(
                                f"{contact} is rate limiting status requests ({item.reason}); retry after {wait:.1f} s"
                            )
                        time.sleep(wait)
                        sock.sendall(frame(StatusRequest()))
    except Refused as exc:
        raise StatusError(str(exc)) from None
    except ssl.SSLError as exc:
        raise StatusError(f"{contact} refused this certificate: {exc.reason or exc}") from None
    except OSError as exc:
        raise StatusError(f"cannot reach {contact}: {exc.strerror or exc}") from None
    raise StatusError(f"{contact} did not answer within {timeout} s")


class StatusVerdict(enum.Enum):
    """What a member does with one status request."""

    SERVE = "serve"  # answer with the (shared) status snapshot
    REFUSE = "refuse"  # answer RateLimited, naming when to ask again
    DROP = "drop"  # already refused on this connection and the wait is not over: no answer
    CUT = "cut"  # the connection kept asking after its refusal: close it


@dataclass(frozen=True, slots=True)
class StatusDecision:
    verdict: StatusVerdict
    retry_after: float = 0.0  # seconds, for REFUSE
    reason: str = ""  # for REFUSE and CUT: the limit, as the client is told


@dataclass(slots=True)
class _Bucket:
    """One identity's tokens (at time ``at``) and its connections that asked for status."""

    tokens: float
    at: float
    handles: set[Any] = field(default_factory=set)


@dataclass(slots=True)
class _Waiting:
    """A connection that was refused: what it asks before ``until`` is dropped."""

    key: str
    until: float
    dropped: int = 0


class StatusLimiter:
    """Per client identity, a token bucket of status requests (``rate`` a second, ``burst``
    at once). The table is bounded: at most ``max_identities`` buckets (least recently used
    dropped first), and a bucket goes when its identity's last connection closes while it is
    full again (it then holds nothing a new bucket would not). Loop thread only."""

    CUT_AFTER = 64  # requests a refused connection may send before its wait is over, before it is closed

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        max_identities: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self.max_identities = max_identities
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._waiting: dict[Any, _Waiting] = {}  # connection -> its refusal
        self._log = RateLimitedLog(log, interval=10.0, burst=1, clock=clock)
        self.refused = 0  # requests answered RateLimited since start (status and metrics)
        self.dropped = 0  # requests dropped unanswered since start

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, handle: Any, key: str) -> StatusDecision:
        """Whether ``handle`` (a client connection of identity ``key``) gets an answer now."""
        now = self.clock()
        waiting = self._waiting.get(handle)
        if waiting is not None:
            if now < waiting.until:
                waiting.dropped += 1
                self.dropped += 1
                if waiting.dropped > self.CUT_AFTER:
                    del self._waiting[handle]
                    return StatusDecision(
                        StatusVerdict.CUT,
                        reason=f"{waiting.dropped} status requests sent after being told to wait; closing",
                    )
                return StatusDecision(StatusVerdict.DROP)
            del self._waiting[handle]
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.max_identities:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        bucket.handles.add(handle)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return StatusDecision(StatusVerdict.SERVE)
        retry = (1.0 - bucket.tokens) / self.rate
        self._waiting[handle] = _Waiting(key, now + retry)
        self.refused += 1
        reason = f"at most {self.rate:g} status requests per second per client (burst {self.burst:g})"
        self._log.warning(
            ("status-rate", key),
            "rate limiting status requests of %s: over %s; told to retry after %.2f s",
            key,
            reason,
            retry,
        )
        return StatusDecision(StatusVerdict.REFUSE, retry, reason)

    def closed(self, handle: Any, key: str | None) -> None:
        """``handle`` closed: forget its refusal, and its identity's bucket if that holds
        nothing any more (no other connection asked, and the bucket has refilled)."""
        self._waiting.pop(handle, None)
        if key is None:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.handles.discard(handle)
        if not bucket.handles:
            now = self.clock()
            if bucket.tokens + (now - bucket.at) * self.rate >= self.burst:
                del self._buckets[key]


def render_status(status: dict[str, Any]) -> None:
    """Print a status reply for an operator (``derecho-actors status``)."""
    from rich.console import Console
    from rich.table import Table

    from runtime.core.versions import format_version

    st = NodeStatus.from_wire(status)
    core = st.core
    console = Console()
    if core.vid is None:
        what = "restarting from its data" if st.restarting else "still joining"
        if st.bootstrapping:
            what = f"bootstrapping: {st.bootstrapping}"
        console.print(f"node {st.node} is {what} (cluster {st.cluster!r})")
        return
    title = (
        f"cluster {st.cluster!r}: view {core.vid}, leader node {core.leader}"
        f"{'' if core.adequate else ' (inadequate: ' + core.shortfall + ')'}"
        f"{', view change under way' if core.wedged else ''}"
    )
    members = Table(title=title)
    members.add_column("rank", justify="right")
    members.add_column("node", justify="right")
    members.add_column("address")
    members.add_column("shards")
    members.add_column("health")
    members.add_column("last heard", justify="right")
    members.add_column("transport")  # what carries this node's frames to and from it
    transports = dict(st.transports)
    shards_of: dict[int, list[str]] = {}
    for sid, nodes in core.layout:
        for n in nodes:
            shards_of.setdefault(n, []).append(sid)
    health = {h.node: h for h in core.health}
    for rank, (node, address) in enumerate(core.members):
        h = health.get(node)
        heard = "-" if node == st.node or h is None else f"{h.heard_ms_ago:.0f} ms ago"
        members.add_row(
            str(rank),
            str(node),
            address,
            ", ".join(shards_of.get(node, [])) or "-",
            h.state if h else "?",
            heard,
            "-" if node == st.node else transports.get(node, "tcp"),
        )
    console.print(members)
    app = st.app or AppStatus()
    for shard in core.shards:
        state = app.replicas.get(shard.shard, shard.state)
        frontier = shard.persisted_frontier
        persisted = f", persisted up to {format_version(frontier)}" if frontier >= 0 else ""
        t = Table(title=f"shard {shard.shard} (as seen by node {st.node}): {state}{persisted}")
        t.add_column("node", justify="right")
        t.add_column("delivered", justify="right")
        t.add_column("lag", justify="right")
        t.add_column("persisted", justify="right")
        t.add_column("persistence lag", justify="right")
        t.add_column("received per sender")
        top = max((m.delivered for m in shard.members), default=0)
        for m in shard.members:
            t.add_row(
                str(m.node),
                str(m.delivered),
                str(top - m.delivered),
                format_version(m.persisted) if m.persisted >= 0 else "-",
                _lag(m.persistence_lag),
                " ".join(map(str, m.received)),
            )
        console.print(t)
    for waiting in app.awaiting_log:
        console.print(
            f"[red]shard {waiting.shard} waits for a node that held it last ({list(waiting.last_holders)}, view "
            f"{waiting.last_view}) to come back with its data folder (or a node started with --accept-loss)[/]"
        )
    for lost in app.restarted_empty:
        console.print(
            f"[red]shard {lost.shard} started anew in view {lost.view}: its updates before "
            f"{format_version(lost.lost_before)} are gone (held last by {list(lost.last_holders)})[/]"
        )
    if core.stalls is not None:
        console.print(
            f"[yellow]node {st.node} stalled {core.stalls.count} time(s) (its loop did not run for longer than a "
            f"heartbeat; longest {core.stalls.longest_ms} ms)[/]"
        )
    if app.lost:
        given_up = {r.shard: [r.first, r.last] for r in app.lost}  # printed as the wire has it
        console.print(f"[red]versions given up by a total restart (--accept-loss): {given_up}[/]")
    if app.stopped:
        console.print(f"[red]node {st.node} stopped: {app.stopped}[/]")


def _lag(versions: int) -> str:
    return "an older view" if versions < 0 else str(versions)
