"""A node's status as typed values: what ``derecho-actors status``, ``top`` and the metrics
endpoint read, by attribute (etcd-io/raft's typed ``Status()``), instead of string keys into
nested dicts.

The wire form (``to_wire``, a msgpack-able dict in a ``StatusReply``) is unchanged, so older
readers, ``--json`` and scripts keep working; ``from_wire`` checks nothing it does not need and
fills what a node of another phase leaves out with defaults (a joining node has no view). The
actor layer's part (``app``) travels as the mapping the layer made; :class:`AppStatus` reads
the parts the engine's readers show (clients' calls, state digests, lost shards and versions)
into the types below, which the actor layer also builds them from (it imports the engine, never
the reverse), so producer and readers share one definition instead of string keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from runtime.core.versions import format_version, make_version, parse_version

__all__ = [
    "AppStatus",
    "AwaitingLog",
    "CallCount",
    "CallLatency",
    "ClientCalls",
    "CoreStatus",
    "DigestMismatch",
    "LostRange",
    "MemberHealth",
    "NodeStatus",
    "RestartedEmpty",
    "ShardDigests",
    "ShardMemberProgress",
    "ShardProgress",
    "Stalls",
]


@dataclass(frozen=True, slots=True)
class Stalls:
    """How often this node's loop did not run for longer than a heartbeat, and the longest."""

    count: int
    longest_ms: float


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member as this node sees it: ``state`` is leader, ok, suspected or leaving."""

    node: int
    state: str
    heard_ms_ago: float


@dataclass(frozen=True, slots=True)
class ShardMemberProgress:
    """One member of a shard this node holds: how far it delivered, received (per sender) and
    persisted, and how many versions it persisted fewer than the most advanced replica (-1:
    unknown, the versions are of different views)."""

    node: int
    delivered: int
    received: tuple[int, ...]
    persisted: int
    persistence_lag: int = 0


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """A shard this node holds: its delivery, persistence frontier, send window and members."""

    shard: str
    delivered: int
    persisted_frontier: int
    window_size: int
    window_free: int | None
    state: str
    members: tuple[ShardMemberProgress, ...]


@dataclass(frozen=True, slots=True)
class CoreStatus:
    """What the protocol core knows: whether the node is joining or excluded, its stalls, and,
    once in a view, the view, leader, members' health, layout and the shards it holds."""

    joining: bool = False
    excluded: str | None = None
    stalls: Stalls | None = None
    vid: int | None = None
    members: tuple[tuple[int, str], ...] = ()
    leader: int | None = None
    adequate: bool = True
    shortfall: str = ""
    wedged: bool = False
    suspected: tuple[int, ...] = ()
    health: tuple[MemberHealth, ...] = ()
    layout: tuple[tuple[str, tuple[int, ...]], ...] = ()
    shards: tuple[ShardProgress, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"joining": self.joining, "excluded": self.excluded}
        if self.stalls is not None:
            out["stalls"] = {"count": self.stalls.count, "longest_ms": self.stalls.longest_ms}
        if self.vid is None:
            return out
        out.update(
            vid=self.vid,
            members=[[n, a] for n, a in self.members],
            leader=self.leader,
            adequate=self.adequate,
            shortfall=self.shortfall,
            wedged=self.wedged,
            suspected=list(self.suspected),
            health=[{"node": h.node, "state": h.state, "heard_ms_ago": h.heard_ms_ago} for h in self.health],
            layout=[[s, list(m)] for s, m in self.layout],
            shards=[_shard_to_wire(s) for s in self.shards],
        )
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> CoreStatus:
        stalls = d.get("stalls")
        return cls(
            joining=bool(d.get("joining", False)),
            excluded=d.get("excluded"),
            stalls=Stalls(int(stalls["count"]), float(stalls["longest_ms"])) if stalls else None,
            vid=d.get("vid"),
            members=tuple((int(n), str(a)) for n, a in d.get("members", ())),
            leader=d.get("leader"),
            adequate=bool(d.get("adequate", True)),
            shortfall=str(d.get("shortfall", "") or ""),
            wedged=bool(d.get("wedged", False)),
            suspected=tuple(int(n) for n in d.get("suspected", ())),
            health=tuple(
                MemberHealth(int(h["node"]), str(h.get("state", "?")), float(h.get("heard_ms_ago", 0.0)))
                for h in d.get("health", ())
            ),
            layout=tuple((str(s), tuple(int(n) for n in m)) for s, m in d.get("layout", ())),
            shards=tuple(_shard_from_wire(s) for s in d.get("shards", ())),
        )


def _shard_to_wire(s: ShardProgress) -> dict[str, Any]:
    return {
        "shard": s.shard,
        "delivered": s.delivered,
        "persisted_frontier": s.persisted_frontier,
        "window_size": s.window_size,
        "window_free": s.window_free,
        "state": s.state,
        "members": [
            {
                "node": m.node,
                "delivered": m.delivered,
                "received": list(m.received),
                "persisted": m.persisted,
                "persistence_lag": m.persistence_lag,
            }
            for m in s.members
        ],
    }


def _shard_from_wire(d: Mapping[str, Any]) -> ShardProgress:
    return ShardProgress(
        shard=str(d["shard"]),
        delivered=int(d.get("delivered", 0)),
        persisted_frontier=int(d.get("persisted_frontier", -1)),
        window_size=int(d.get("window_size", 0)),
        window_free=d.get("window_free"),
        state=str(d.get("state", "")),
        members=tuple(
            ShardMemberProgress(
                int(m["node"]),
                int(m.get("delivered", 0)),
                tuple(int(x) for x in m.get("received", ())),
                int(m.get("persisted", -1)),
                int(m.get("persistence_lag", 0)),
            )
            for m in d.get("members", ())
        ),
    )


@dataclass(frozen=True, slots=True)
class CallCount:
    """Clients' calls of one method through this contact that ended one way (``ok``,
    ``error``, ``refused``)."""

    method: str
    outcome: str
    calls: int


@dataclass(frozen=True, slots=True)
class CallLatency:
    """One method's time from a client's call to its first answer at the contact: calls per
    bucket of :attr:`ClientCalls.bounds_ms` (one more bucket: above the last bound), and the
    sum of their times."""

    method: str
    buckets: tuple[int, ...]
    sum_ms: float


@dataclass(frozen=True, slots=True)
class ClientCalls:
    """Clients' calls through this node as its contact (``status`` ``client_calls``, the
    metrics' call counters and latency histograms)."""

    calls: tuple[CallCount, ...] = ()
    latency: tuple[CallLatency, ...] = ()
    bounds_ms: tuple[float, ...] = ()

    @property
    def total(self) -> int:
        """Every call counted, whatever its method and outcome (``top``'s calls/s)."""
        return sum(c.calls for c in self.calls)

    def to_wire(self) -> dict[str, Any]:
        return {
            "calls": [[c.method, c.outcome, c.calls] for c in self.calls],
            "latency_ms": {m.method: {"buckets": list(m.buckets), "sum": m.sum_ms} for m in self.latency},
            "bounds_ms": list(self.bounds_ms),
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ClientCalls:
        return cls(
            calls=tuple(CallCount(str(m), str(o), int(n)) for m, o, n in d.get("calls", ())),
            latency=tuple(
                CallLatency(str(m), tuple(int(n) for n in e.get("buckets", ())), float(e.get("sum", 0.0)))
                for m, e in d.get("latency_ms", {}).items()
            ),
            bounds_ms=tuple(float(b) for b in d.get("bounds_ms", ())),
        )


@dataclass(frozen=True, slots=True)
class DigestMismatch:
    """Two replicas whose state digests differed at ``version``: ``(node, digest in hex)``,
    this node's first."""

    version: int
    digests: tuple[tuple[int, str], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"version": format_version(self.version), "nodes": {str(n): h for n, h in self.digests}}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> DigestMismatch:
        return cls(parse_version(str(d["version"])), tuple((int(n), str(h)) for n, h in d.get("nodes", {}).items()))


@dataclass(frozen=True, slots=True)
class ShardDigests:
    """The state digests of one shard's replicas compared here (types with ``digest_every``):
    how many comparisons, how many differed (the last few kept), and the last version each
    peer was found equal at."""

    shard: str
    compared: int
    mismatches: int
    last_mismatches: tuple[DigestMismatch, ...] = ()
    agreed: tuple[tuple[int, int], ...] = ()  # (peer, version)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"compared": self.compared, "mismatches": self.mismatches}
        if self.last_mismatches:
            out["last_mismatches"] = [m.to_wire() for m in self.last_mismatches]
        if self.agreed:
            out["agreed"] = {str(p): format_version(v) for p, v in self.agreed}
        return out

    @classmethod
    def from_wire(cls, shard: str, d: Mapping[str, Any]) -> ShardDigests:
        return cls(
            shard=shard,
            compared=int(d.get("compared", 0)),
            mismatches=int(d.get("mismatches", 0)),
            last_mismatches=tuple(DigestMismatch.from_wire(m) for m in d.get("last_mismatches", ())),
            agreed=tuple((int(p), parse_version(str(v))) for p, v in d.get("agreed", {}).items()),
        )


@dataclass(frozen=True, slots=True)
class RestartedEmpty:
    """A shard this node started anew in view ``view`` because every replica holding its state
    was gone; ``last_holders`` held it last, in ``last_view``."""

    shard: str
    view: int
    last_holders: tuple[int, ...]
    last_view: int

    @property
    def lost_before(self) -> int:
        """Every version below this one is gone (the first of the view it restarted in)."""
        return make_version(self.view, 0)

    def to_wire(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "view": self.view,
            "last_holders": list(self.last_holders),
            "last_view": self.last_view,
            "lost_before": format_version(self.lost_before),
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> RestartedEmpty:
        return cls(
            str(d["shard"]), int(d["view"]), tuple(int(n) for n in d.get("last_holders", ())), int(d["last_view"])
        )


@dataclass(frozen=True, slots=True)
class AwaitingLog:
    """A shard waiting for a node that held it last (``last_holders``, in ``last_view``) to
    come back with its log."""

    shard: str
    last_holders: tuple[int, ...]
    last_view: int

    def to_wire(self) -> dict[str, Any]:
        return {"shard": self.shard, "last_holders": list(self.last_holders), "last_view": self.last_view}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> AwaitingLog:
        return cls(str(d["shard"]), tuple(int(n) for n in d.get("last_holders", ())), int(d["last_view"]))


@dataclass(frozen=True, slots=True)
class LostRange:
    """Versions ``first`` to ``last`` of a shard, given up by a total restart (--accept-loss)."""

    shard: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class AppStatus:
    """The actor layer's part, as far as the engine's readers show it: each replica here and
    whether it serves, state transfers, clients' calls, state digests, shards restarted empty
    or waiting for a log, versions given up by a restart, and why the group stopped. ``raw``
    keeps everything the layer said (``--json`` prints it whole)."""

    replicas: Mapping[str, str] = field(default_factory=dict)
    transfers_sent: int = 0
    transfers_active: tuple[tuple[str, int, int], ...] = ()  # (shard, to node, bytes sent so far)
    transfer_bytes_sent: int = 0
    client_calls: ClientCalls = ClientCalls()
    digests: tuple[ShardDigests, ...] = ()
    shards_restarted_empty: int = 0
    restarted_empty: tuple[RestartedEmpty, ...] = ()
    shards_awaiting_log: int = 0
    awaiting_log: tuple[AwaitingLog, ...] = ()
    lost: tuple[LostRange, ...] = ()
    stopped: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any] | None) -> AppStatus:
        d = d or {}
        return cls(
            replicas=dict(d.get("replicas", {})),
            transfers_sent=int(d.get("transfers_sent", 0)),
            transfers_active=tuple((str(s), int(t), int(b)) for s, t, b in d.get("transfers_active", ())),
            transfer_bytes_sent=int(d.get("transfer_bytes_sent", 0)),
            client_calls=ClientCalls.from_wire(d.get("client_calls", {})),
            digests=tuple(ShardDigests.from_wire(str(s), e) for s, e in d.get("digests", {}).items()),
            shards_restarted_empty=int(d.get("shards_restarted_empty", 0)),
            restarted_empty=tuple(RestartedEmpty.from_wire(r) for r in d.get("restarted_empty", ())),
            shards_awaiting_log=int(d.get("shards_awaiting_log", 0)),
            awaiting_log=tuple(AwaitingLog.from_wire(a) for a in d.get("awaiting_log", ())),
            lost=tuple(LostRange(str(s), int(lo), int(hi)) for s, (lo, hi) in d.get("lost", {}).items()),
            stopped=d.get("stopped"),
            raw=dict(d),
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's whole status: who it is, its phase (restarting, bootstrapping), the core's
    part, its transport's figures, and the actor layer's part."""

    node: int
    cluster: str
    core: CoreStatus
    restarting: bool = False
    bootstrapping: str | None = None
    bad_frames: int = 0
    clients: int = 0
    traffic: tuple[tuple[int, int, int], ...] = ()  # (peer, bytes sent, bytes received)
    transports: tuple[tuple[int, str], ...] = ()  # (peer, what carries its frames: "tcp", "shm", ...)
    views_installed: int = 0
    status_rate_limited: int = 0
    delivered_total: tuple[tuple[str, int], ...] = ()
    app: AppStatus | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "cluster": self.cluster}
        out.update(self.core.to_wire())
        out["restarting"] = self.restarting
        if self.bootstrapping is not None:
            out["bootstrapping"] = self.bootstrapping
        out.update(
            bad_frames=self.bad_frames,
            clients=self.clients,
            traffic=[list(t) for t in self.traffic],
            transports=[list(t) for t in self.transports],
            views_installed=self.views_installed,
            status_rate_limited=self.status_rate_limited,
            delivered_total=[list(t) for t in self.delivered_total],
        )
        if self.app is not None:
            out["app"] = dict(self.app.raw)
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> NodeStatus:
        """Read a status reply (or ``--json`` output) back; what is missing takes its default."""
        return cls(
            node=int(d["node"]),
            cluster=str(d.get("cluster", "")),
            core=CoreStatus.from_wire(d),
            restarting=bool(d.get("restarting", False)),
            bootstrapping=d.get("bootstrapping"),
            bad_frames=int(d.get("bad_frames", 0)),
            clients=int(d.get("clients", 0)),
            traffic=tuple((int(p), int(s), int(r)) for p, s, r in d.get("traffic", ())),
            transports=tuple((int(p), str(k)) for p, k in d.get("transports", ())),
            views_installed=int(d.get("views_installed", 0)),
            status_rate_limited=int(d.get("status_rate_limited", 0)),
            delivered_total=tuple((str(s), int(n)) for s, n in d.get("delivered_total", ())),
            app=AppStatus.from_wire(d["app"]) if "app" in d else None,
        )
