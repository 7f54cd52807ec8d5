"""Frames only drivers speak: connection handshake, status queries and polite closes.

The protocol core never sees these; they exist because a TCP connection needs to know who is
on the other end (``Hello``), an operator needs a way to ask a node how it is doing
(``StatusRequest``/``StatusReply``), and a node that drops a connection on purpose should
say why (``Goodbye``) so the peer logs a reason instead of guessing from a reset.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Literal

Role = Literal["member", "client"]
"""Who opened a connection: a group member (speaks the protocol) or an external client."""

ROLES: Final[frozenset[str]] = frozenset({"member", "client"})


PROTOCOL_VERSION: Final = 5
"""The wire protocol this code speaks: frames, their fields and what they mean. Any change a
peer of the previous release could not read bumps it. 3: large objects (descriptors among a
shard push's messages, block and credit frames between members). 4: shared-memory and RDMA setup
frames between members; an object's digest is BLAKE3 (was blake2b-256, the same size). 5: a
contact's ``Welcome`` says its ``client_max_in_flight`` (a client of 4 or before, which reads
exactly three fields, gets the three: ``welcome_frame``); members' frames as in 4."""

MEMBER_PROTOCOLS: Final = frozenset({4, PROTOCOL_VERSION})
"""Protocols this code accepts from members: a node of protocol 3 cannot read the
shared-memory setup frames and checks objects against another digest, so a group cannot mix
them (stop, upgrade, restart); 4 and 5 differ only in what a client is told."""

WELCOME_SAYS_IN_FLIGHT: Final = 5
"""The first protocol whose clients read ``Welcome.max_in_flight``."""

COMPATIBLE_PROTOCOLS: Final = frozenset({2, 3, 4, PROTOCOL_VERSION})
"""Protocols this code accepts from clients (a client's frames did not change in 3 or 4). The promise (README "Versions and upgrades"): a
release also accepts the protocol of the release before it whenever the change allows, so a
rolling upgrade between adjacent releases works; where it cannot, the release notes say so
and the group must be stopped and restarted from its logs."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every TCP connection, sent by the side that connected.

    A listener cannot tell from an address alone which node dialled in (ports are ephemeral),
    so the dialler names itself, the cluster it believes it joins (two clusters sharing hosts
    must not cross-talk), its role, and the wire protocol it speaks (a peer whose protocol is
    not one this node speaks is refused with one line saying both; a hello without the field
    is protocol 0, from before versions existed).
    """

    node_id: int
    cluster: str
    role: Role
    incarnation: int = 0  # differs for every process start: tells a restarted node from its past
    protocol: int = PROTOCOL_VERSION  # a decoded hello without one says 0


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Asks a node for a snapshot of its state (view, shard progress) for tooling."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    """Answer to :class:`StatusRequest`; ``status`` is a msgpack-able dict."""

    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A member's answer, in place of the one asked for, to a request over its sender's rate
    (today: ``StatusRequest``, ``limits.status_per_second`` per client identity). It says when
    asking again will be served, so a client waits instead of timing out, and the connection
    stays open. Requests sent before that time are dropped unanswered: one refusal per wait.
    A client of a release before this frame sees a bad frame here and times out."""

    retry_after_ms: int  # ask again after this many milliseconds
    reason: str  # which limit, for the client's error message


class GoodbyeKind(enum.Enum):
    """What a :class:`Goodbye` means for the peer, so it acts on a value, never on the
    reason's words."""

    CLOSED = "closed"  # this connection ends (idle, cut off, not serving now): another member, or later, may serve
    REFUSED = "refused"  # final: this peer is never accepted as it is (certificate, cluster name, protocol)


@dataclass(frozen=True, slots=True)
class Goodbye:
    """A node is closing this connection on purpose; ``reason`` is for the peer's log, ``kind``
    for its code (a client gives up on ``REFUSED`` and fails over on ``CLOSED``). A Goodbye
    from a peer that sends no kind reads as ``CLOSED``."""

    reason: str
    kind: GoodbyeKind = GoodbyeKind.CLOSED


@dataclass(frozen=True, slots=True)
class Welcome:
    """A member's first frame to a client it accepted: the limits the client must respect,
    so calls that cannot pass are refused at the caller, not dropped on the way."""

    max_message_size: int  # largest encoded call (arguments) a multicast can carry
    max_frame: int  # largest frame this member accepts from a client
    idle_timeout_ms: int  # a client silent this long is disconnected: ping more often
    max_in_flight: int = (
        0  # calls a client may have unanswered (limits.client_max_in_flight); 0: not said (an older node)
    )


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness check of a client: the member answers ``Pong`` with the same ``nonce`` at
    once, so a client that hears nothing knows its contact is frozen or cut off."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class AppMessage:
    """The actor layer's own messages (calls, replies, state transfer, signed marks), opaque to
    the engine: member to member, and between a client and its contact. The engine carries
    them under the sender's proven identity; their encoding and checks are the actor layer's."""

    data: bytes


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


@dataclass(frozen=True, slots=True)
class BootstrapHello:
    """A node with an empty data directory and ``node.bootstrap_expect`` set, looking for its
    group or for peers as new as itself (see ``runtime.drivers.bootstrap``). A running member
    answers ``GroupRunning``; a bootstrapping one counts it; a restarting one is heard from
    through its own ``RestartHello``."""

    node: int
    address: str
    expect: int


ControlMessage = (
    Welcome
    | Ping
    | Pong
    | Hello
    | StatusRequest
    | StatusReply
    | RateLimited
    | Goodbye
    | AppMessage
    | RestartHello
    | RestartDecision
    | GroupRunning
    | BootstrapHello
)
