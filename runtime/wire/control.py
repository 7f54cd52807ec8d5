"""Frames only drivers speak: connection handshake, status queries and polite closes.

The protocol core never sees these; they exist because a TCP connection needs to know who is
on the other end (``Hello``), an operator needs a way to ask a node how it is doing
(``StatusRequest``/``StatusReply``), and a node that drops a connection on purpose should
say why (``Goodbye``) so the peer logs a reason instead of guessing from a reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Role = Literal["member", "client"]
"""Who opened a connection: a group member (speaks the protocol) or an external client."""

ROLES: Final[frozenset[str]] = frozenset({"member", "client"})


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every TCP connection, sent by the side that connected.

    A listener cannot tell from an address alone which node dialled in (ports are ephemeral),
    so the dialler names itself, the cluster it believes it joins (two clusters sharing hosts
    must not cross-talk) and its role.
    """

    node_id: int
    cluster: str
    role: Role
    incarnation: int = 0  # differs for every process start: tells a restarted node from its past


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Asks a node for a snapshot of its state (view, shard progress) for tooling."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    """Answer to :class:`StatusRequest`; ``status`` is a msgpack-able dict."""

    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A node is closing this connection on purpose; ``reason`` is for the peer's log."""

    reason: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """A member's first frame to a client it accepted: the limits the client must respect,
    so calls that cannot pass are refused at the caller, not dropped on the way."""

    max_message_size: int  # largest encoded call (arguments) a multicast can carry
    max_frame: int  # largest frame this member accepts from a client
    idle_timeout_ms: int  # a client silent this long is disconnected: ping more often


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness check of a client: the member answers ``Pong`` with the same ``nonce`` at
    once, so a client that hears nothing knows its contact is frozen or cut off."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Call:
    """A request sent straight to one member: a P2P call to run there, or (``ordered``) a
    call that member must multicast into its shard on the caller's behalf (relaying). Replies
    go to ``caller``, whichever path the call took."""

    call_id: int
    caller: int
    shard: Any  # ShardId
    method: str
    ordered: bool
    args: bytes
    origin: int = 0  # the caller's exactly-once session, for retried calls (0: none)
    session_ns: int = 0  # when that session started (see derecho_actors._sessions)
    floor: int = 0  # the caller's oldest call still waiting for an answer


@dataclass(frozen=True, slots=True)
class Reply:
    """One replica's answer to a call. ``vid`` and ``replicas`` say which view delivered the
    call and which members will each answer it, so the caller knows when it has them all."""

    call_id: int
    node: int
    vid: int
    replicas: tuple[int, ...]
    ok: bool
    value: bytes
    origin: int = 0  # the external client the call came from, if any (see Call.origin)
    version: int = -1  # the ordered call's version in a persistent shard (-1: none)


@dataclass(frozen=True, slots=True)
class ReplyBatch:
    """Many answers of one replica in one frame (one delivered batch's worth, for one caller
    or one client): ``entries`` are ``(call_id, ok, value, origin, version)``, each as in
    :class:`Reply`. In Python the cost is per object and per frame, not per byte."""

    node: int
    vid: int
    replicas: tuple[int, ...]
    entries: tuple[tuple[int, bool, bytes, int, int], ...]


@dataclass(frozen=True, slots=True)
class SignedMark:
    """A replica of a signed shard: its log is on disk up to ``version``, whose record it
    signed with its own key: ``signature`` covers the record chain digest up to there. A peer
    checks it against its *own* chain digest with the sender's ``public_key`` (taken from the
    sender's certificate under TLS; the field must then match it): a valid signature means
    both logs are identical up to that version."""

    shard: Any  # ShardId
    version: int
    signature: bytes
    public_key: bytes = b""


@dataclass(frozen=True, slots=True)
class StateRequest:
    """A replica new to ``shard`` in view ``vid`` asks the view's state source for the state.
    ``have_version`` is the last version in its own log (-1: none) and ``digest`` the crc32 of
    that record's body: the source sends only later records if its own record agrees."""

    shard: Any  # ShardId
    vid: int
    have_version: int
    digest: int


@dataclass(frozen=True, slots=True)
class StateChunk:
    """One piece of a state transfer: ``part`` is "obj" (bytes of the object state, encoded
    with the type's serializer), "log" (msgpack list of [version, timestamp_ns, body]
    records) or "err" (the source cannot send the state; ``data`` says why, UTF-8); ``final`` ends it;
    ``reset`` (first chunk only) tells the receiver its log disagrees and must be replaced."""

    shard: Any
    vid: int
    seq: int
    part: str
    data: bytes
    final: bool
    reset: bool


@dataclass(frozen=True, slots=True)
class StateAck:
    """The receiver has written chunk ``seq``: flow control for the sender's window."""

    shard: Any
    vid: int
    seq: int


@dataclass(frozen=True, slots=True)
class RestartHello:
    """A node restarting from its data directory: its last installed view (wire form), per
    shard it logs the last version on its disk, the highest view change it accepted, the
    highest persistence frontier it recorded per shard, and the shards whose state transfer
    had not completed (see ``runtime.core.restart``)."""

    node: int
    address: str
    view: Any  # View.to_wire() dict
    logs: tuple[tuple[Any, int], ...]  # (ShardId, last version)
    accepted_vid: int = -1
    frontiers: tuple[tuple[Any, int], ...] = ()  # (ShardId, version)
    incomplete: tuple[Any, ...] = ()  # ShardIds


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """The restart leader's decision: the restart view (wire form) every reporter installs,
    and the versions an operator accepted to lose (``--accept-loss``) per shard."""

    leader: int
    view: Any
    lost: tuple[tuple[Any, int, int], ...] = ()  # (ShardId, first lost version, last lost version)


@dataclass(frozen=True, slots=True)
class GroupRunning:
    """Answer of a running member to a RestartHello: no total restart is needed; join."""

    address: str
    vid: int


ControlMessage = Welcome | Ping | Pong | Hello | StatusRequest | StatusReply | Goodbye | Call | Reply | ReplyBatch | SignedMark | StateRequest | StateChunk | StateAck | RestartHello | RestartDecision | GroupRunning
