"""Encode wire messages to msgpack frames and decode them back, without any I/O.

Layout. A frame is a 4-byte big-endian unsigned length followed by that many bytes of body.
A body is one msgpack array ``[tag, field, ...]``: a small int naming the message type, then
its fields in dataclass order. Nested values use plain msgpack forms: a ``ShardId`` is
``[type_name, subgroup, shard]``, a ``RowDelta`` is ``[rank, seq, {column: value}]``.

Trust. Bytes come from peers, so :func:`decode` checks every field and raises
:class:`~runtime.errors.WireError` with a message naming the field; the core then
only ever sees well-typed messages. :class:`FrameDecoder` goes one step further, in the h11
style: a malformed body is *returned* as a ``WireError`` object among the decoded messages, so
one bad frame is an event the driver logs, not an exception that unwinds its read loop. Only
a corrupt length prefix (the stream can no longer be re-synchronised) breaks the decoder.

Encoding our own messages is trusted: :func:`encode` does not re-validate fields (that would
double the cost of every push); it raises ``TypeError`` for values msgpack cannot represent,
which is a bug in the sender, not a peer fault, hence not a ``WireError``.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Final, Iterable

import msgpack

from runtime.core.layout import ShardId
from runtime.core.messages import GroupPush, JoinReply, JoinRequest, Message, Payload, ShardPush, ViewAnnouncement
from runtime.core.sst import RowDelta
from runtime.errors import WireError
from runtime.wire.checks import (
    PLAIN_SCALARS as _PLAIN_SCALARS,
)
from runtime.wire.checks import (
    check_plain as _check_plain,
)
from runtime.wire.checks import (
    decode_tagged,
)
from runtime.wire.checks import (
    describe as _describe,
)
from runtime.wire.checks import (
    int_vector as _int_vector,
)
from runtime.wire.checks import (
    nat as _nat,
)
from runtime.wire.checks import (
    shard_id as _shard_id,
)
from runtime.wire.checks import (
    shard_to_wire as _shard_to_wire,
)
from runtime.wire.checks import (
    str_key_dict as _str_key_dict,
)
from runtime.wire.checks import (
    text as _str,
)
from runtime.wire.control import (
    ROLES,
    WELCOME_SAYS_IN_FLIGHT,
    AppMessage,
    BootstrapHello,
    Goodbye,
    GoodbyeKind,
    GroupRunning,
    Hello,
    Ping,
    Pong,
    RateLimited,
    RestartDecision,
    RestartHello,
    StatusReply,
    StatusRequest,
    Welcome,
)
from runtime.wire.descriptors import descriptor_from_wire, pack_default
from runtime.wire.rdma_setup import (
    TAG_RDMA_SETUP,
    RdmaAnswer,
    RdmaOffer,
    RdmaSetup,
    RdmaSwitch,
    decode_rdma,
    encode_rdma,
)
from runtime.wire.shm_setup import (
    TAG_SHM_SETUP,
    ShmAnswer,
    ShmBlockInPlace,
    ShmInPlace,
    ShmObjectAnswer,
    ShmObjectOffer,
    ShmOffer,
    ShmProbe,
    ShmSegmentFree,
    ShmSetup,
    ShmSwitch,
    decode_shm,
    encode_shm,
)
from runtime.wire.transfers import (
    BLOCK_HEADER_SIZE,
    KIND_BLOCK,
    KIND_CREDIT,
    TRANSFER_MAGIC,
    BlockDropped,
    BlockLanded,
    BlockSink,
    CreditFrame,
    parse_block_header,
    parse_credit,
    transfer_kind,
)

WireMessage = (
    Message
    | Hello
    | StatusRequest
    | StatusReply
    | RateLimited
    | Goodbye
    | RestartHello
    | RestartDecision
    | GroupRunning
    | BootstrapHello
    | Welcome
    | Ping
    | Pong
    | AppMessage
    | CreditFrame
    | BlockLanded
    | BlockDropped
    | ShmSetup
    | RdmaSetup
)
"""Everything that travels in a frame: core protocol messages and driver control frames, and
what a transfer frame comes out of the decoder as (:mod:`runtime.wire.transfers`)."""

DEFAULT_MAX_FRAME: Final[int] = 64 << 20
"""Largest body :class:`FrameDecoder` accepts by default; bigger prefixes mean corruption."""

VECTOR_COLUMNS: Final[frozenset[str]] = frozenset({"received_num", "suspected"})
"""SST columns holding int vectors; decoded to tuples, as ``SST.drain_push`` produces them."""

# Type tags. Core messages use 1..15, driver control frames 16..31; never reuse a number.
TAG_SHARD_PUSH: Final = 1
TAG_GROUP_PUSH: Final = 2
TAG_VIEW_ANNOUNCEMENT: Final = 3
TAG_JOIN_REQUEST: Final = 4
TAG_JOIN_REPLY: Final = 5
TAG_HELLO: Final = 16
TAG_STATUS_REQUEST: Final = 17
TAG_STATUS_REPLY: Final = 18
TAG_GOODBYE: Final = 19
# 20-24, 28, 29: the actor layer's frames before they became opaque AppMessages (retired;
# never reuse them).
TAG_RESTART_HELLO: Final = 25
TAG_RESTART_DECISION: Final = 26
TAG_GROUP_RUNNING: Final = 27
TAG_WELCOME: Final = 30
TAG_PING: Final = 31
TAG_PONG: Final = 32
TAG_APP: Final = 33
TAG_BOOTSTRAP_HELLO: Final = 34
TAG_RATE_LIMITED: Final = 35

_HEADER: Final = struct.Struct(">I")
_MAX_PREFIX: Final[int] = 0xFFFFFFFF


# --------------------------------------------------------------------------- encoding
def _row_to_wire(row: RowDelta) -> list[Any]:
    return [row.rank, row.seq, row.values]


def _enc_shard_push(m: ShardPush) -> list[Any]:
    row = None if m.row is None else _row_to_wire(m.row)
    return [TAG_SHARD_PUSH, m.vid, _shard_to_wire(m.shard), m.rank, row, m.first, m.messages]


def _enc_group_push(m: GroupPush) -> list[Any]:
    return [TAG_GROUP_PUSH, m.vid, m.rank, _row_to_wire(m.row)]


def _enc_view_announcement(m: ViewAnnouncement) -> list[Any]:
    return [TAG_VIEW_ANNOUNCEMENT, m.view]


def _enc_join_request(m: JoinRequest) -> list[Any]:
    return [
        TAG_JOIN_REQUEST,
        m.node_id,
        m.address,
        m.layout,
        [[_shard_to_wire(s), v] for s, v in m.logs],
        m.accept_loss,
    ]


def _enc_join_reply(m: JoinReply) -> list[Any]:
    return [TAG_JOIN_REPLY, m.redirect_to, m.reason, m.final]


def _enc_hello(m: Hello) -> list[Any]:
    return [TAG_HELLO, m.node_id, m.cluster, m.role, m.incarnation, m.protocol]


def _enc_status_request(m: StatusRequest) -> list[Any]:
    return [TAG_STATUS_REQUEST]


def _enc_status_reply(m: StatusReply) -> list[Any]:
    return [TAG_STATUS_REPLY, m.status]


def _enc_rate_limited(m: RateLimited) -> list[Any]:
    return [TAG_RATE_LIMITED, m.retry_after_ms, m.reason]


def _enc_goodbye(m: Goodbye) -> list[Any]:
    return [TAG_GOODBYE, m.reason, m.kind.value]


def _enc_restart_hello(m: RestartHello) -> list[Any]:
    return [
        TAG_RESTART_HELLO,
        m.node,
        m.address,
        m.view,
        [[_shard_to_wire(s), v] for s, v in m.logs],
        m.accepted_vid,
        [[_shard_to_wire(s), v] for s, v in m.frontiers],
        [_shard_to_wire(s) for s in m.incomplete],
    ]


def _enc_restart_decision(m: RestartDecision) -> list[Any]:
    return [TAG_RESTART_DECISION, m.leader, m.view, [[_shard_to_wire(s), lo, hi] for s, lo, hi in m.lost]]


def _enc_group_running(m: GroupRunning) -> list[Any]:
    return [TAG_GROUP_RUNNING, m.address, m.vid]


def _enc_bootstrap_hello(m: BootstrapHello) -> list[Any]:
    return [TAG_BOOTSTRAP_HELLO, m.node, m.address, m.expect]


def _enc_app(m: AppMessage) -> list[Any]:
    return [TAG_APP, m.data]


def _enc_welcome(m: Welcome) -> list[Any]:
    return [TAG_WELCOME, m.max_message_size, m.max_frame, m.idle_timeout_ms, m.max_in_flight]


def _enc_ping(m: Ping) -> list[Any]:
    return [TAG_PING, m.nonce]


def _enc_pong(m: Pong) -> list[Any]:
    return [TAG_PONG, m.nonce]


_ENCODERS: Final[dict[type, Callable[[Any], list[Any]]]] = {
    AppMessage: _enc_app,
    Welcome: _enc_welcome,
    Ping: _enc_ping,
    Pong: _enc_pong,
    RestartHello: _enc_restart_hello,
    RestartDecision: _enc_restart_decision,
    GroupRunning: _enc_group_running,
    BootstrapHello: _enc_bootstrap_hello,
    ShardPush: _enc_shard_push,
    GroupPush: _enc_group_push,
    ViewAnnouncement: _enc_view_announcement,
    JoinRequest: _enc_join_request,
    JoinReply: _enc_join_reply,
    Hello: _enc_hello,
    StatusRequest: _enc_status_request,
    StatusReply: _enc_status_reply,
    RateLimited: _enc_rate_limited,
    Goodbye: _enc_goodbye,
    ShmProbe: encode_shm,
    ShmOffer: encode_shm,
    ShmAnswer: encode_shm,
    ShmSwitch: encode_shm,
    ShmObjectOffer: encode_shm,
    ShmObjectAnswer: encode_shm,
    ShmInPlace: encode_shm,
    ShmBlockInPlace: encode_shm,
    ShmSegmentFree: encode_shm,
    RdmaOffer: encode_rdma,
    RdmaAnswer: encode_rdma,
    RdmaSwitch: encode_rdma,
}


def encode(msg: WireMessage) -> bytes:
    """The msgpack body of ``msg`` (no length prefix).

    Raises ``TypeError`` if ``msg`` is not a wire message or holds a value msgpack cannot
    encode (an object, an int beyond 64 bits): a sender bug, reported with the message type.
    """
    enc = _ENCODERS.get(type(msg))
    if enc is None:
        raise TypeError(f"cannot encode {type(msg).__name__}: not a wire message")
    try:
        return msgpack.packb(enc(msg), use_bin_type=True, default=pack_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def _prefixed(body: bytes) -> bytes:
    if len(body) > _MAX_PREFIX:
        raise ValueError(f"a {len(body)}-byte body does not fit a 4-byte length prefix")
    return _HEADER.pack(len(body))


def frame(msg: WireMessage) -> bytes:
    """``msg`` as one frame: 4-byte big-endian body length, then the body."""
    body = encode(msg)
    return _prefixed(body) + body


def welcome_frame(welcome: Welcome, protocol: int) -> bytes:
    """``welcome`` as a frame a client of wire ``protocol`` reads: one of a release before
    ``max_in_flight`` decodes exactly three fields and would drop a fourth as a bad frame (it
    then never heard a Welcome and could not connect)."""
    if protocol >= WELCOME_SAYS_IN_FLIGHT:
        return frame(welcome)
    body = msgpack.packb(_enc_welcome(welcome)[:4], use_bin_type=True)
    return _prefixed(body) + body


def frames(msgs: Iterable[WireMessage]) -> bytes:
    """Several frames back to back, so a driver can flush a whole batch with one write."""
    parts: list[bytes] = []
    for msg in msgs:
        body = encode(msg)
        parts.append(_prefixed(body))
        parts.append(body)
    return b"".join(parts)


# --------------------------------------------------------------------------- decoding
def _row(value: object, what: str) -> RowDelta:
    """``[rank, seq, {column: value}]``; vector columns become tuples, the rest pass through."""
    if type(value) is not list or len(value) != 3:
        raise WireError(f"{what} must be [rank, seq, values], got {_describe(value)}")
    rank, seq, raw = value
    if type(raw) is not dict:
        raise WireError(f"{what}.values must be a map, got {_describe(raw)}")
    values: dict[str, Any] = {}
    for name, v in raw.items():
        if type(name) is not str:
            raise WireError(f"{what}.values column names must be str, got {_describe(name)}")
        if name in VECTOR_COLUMNS:
            values[name] = _int_vector(v, f"{what}.values[{name!r}]")
        else:
            if type(v) not in _PLAIN_SCALARS:
                _check_plain(v, f"{what}.values[{name!r}]")
            values[name] = v
    return RowDelta(_nat(rank, f"{what}.rank"), _nat(seq, f"{what}.seq"), values)


_PAYLOAD_TYPES: Final[frozenset[type]] = frozenset({bytes, type(None)})


def _payloads(value: object, what: str) -> tuple[Payload, ...]:
    if type(value) is not list:
        raise WireError(f"{what} must be a list, got {_describe(value)}")
    # One C-level pass over the batch (the set of its element types); only a batch with a
    # large object's descriptor (an array) or a bad one is walked in Python.
    if not _PAYLOAD_TYPES.issuperset(map(type, value)):
        out: list[Payload] = []
        for i, p in enumerate(value):
            if type(p) is list:
                out.append(descriptor_from_wire(p, f"{what}[{i}]"))
            elif p is not None and type(p) is not bytes:
                raise WireError(
                    f"{what}[{i}] must be bytes, nil (null message) or an object descriptor, got {_describe(p)}"
                )
            else:
                out.append(p)
        return tuple(out)
    return tuple(value)


def _dec_shard_push(f: list[Any]) -> ShardPush:
    _, vid, shard, rank, row, first, messages = f
    return ShardPush(
        vid=_nat(vid, "ShardPush.vid"),
        shard=_shard_id(shard, "ShardPush.shard"),
        rank=_nat(rank, "ShardPush.rank"),
        row=None if row is None else _row(row, "ShardPush.row"),
        first=_nat(first, "ShardPush.first"),
        messages=_payloads(messages, "ShardPush.messages"),
    )


def _dec_group_push(f: list[Any]) -> GroupPush:
    _, vid, rank, row = f
    return GroupPush(_nat(vid, "GroupPush.vid"), _nat(rank, "GroupPush.rank"), _row(row, "GroupPush.row"))


def _dec_view_announcement(f: list[Any]) -> ViewAnnouncement:
    return ViewAnnouncement(_str_key_dict(f[1], "ViewAnnouncement.view"))


def _dec_join_request(f: list[Any]) -> JoinRequest:
    _, node_id, address, layout, logs, accept_loss = f
    if type(accept_loss) is not bool:
        raise WireError(f"JoinRequest.accept_loss must be a bool, got {_describe(accept_loss)}")
    return JoinRequest(
        _nat(node_id, "JoinRequest.node_id"),
        _str(address, "JoinRequest.address"),
        _str(layout, "JoinRequest.layout"),
        _shard_versions(logs, "JoinRequest.logs"),
        accept_loss,
    )


def _dec_join_reply(f: list[Any]) -> JoinReply:
    _, redirect_to, reason, final = f
    redirect = None if redirect_to is None else _str(redirect_to, "JoinReply.redirect_to")
    if type(final) is not bool:
        raise WireError(f"JoinReply.final must be a bool, got {_describe(final)}")
    return JoinReply(redirect, _str(reason, "JoinReply.reason"), final)


def _dec_hello(f: list[Any]) -> Hello:
    _, node_id, cluster, role, incarnation, *rest = f  # protocol 0 peers send no protocol
    if type(role) is not str or role not in ROLES:
        raise WireError(f"Hello.role must be one of {sorted(ROLES)}, got {_describe(role)}")
    node = _nat(node_id, "Hello.node_id")
    protocol = _nat(rest[0], "Hello.protocol") if rest else 0
    return Hello(node, _str(cluster, "Hello.cluster"), role, _nat(incarnation, "Hello.incarnation"), protocol)  # type: ignore[arg-type]


def _dec_status_request(f: list[Any]) -> StatusRequest:
    return StatusRequest()


def _dec_status_reply(f: list[Any]) -> StatusReply:
    status = f[1]
    if type(status) is not dict:
        raise WireError(f"StatusReply.status must be a map, got {_describe(status)}")
    _check_plain(status, "StatusReply.status")
    return StatusReply(status)


def _dec_rate_limited(f: list[Any]) -> RateLimited:
    _, retry_after_ms, reason = f
    return RateLimited(_nat(retry_after_ms, "RateLimited.retry_after_ms"), _str(reason, "RateLimited.reason"))


_GOODBYE_KINDS: Final[dict[str, GoodbyeKind]] = {k.value: k for k in GoodbyeKind}


def _dec_goodbye(f: list[Any]) -> Goodbye:
    reason = _str(f[1], "Goodbye.reason")
    if len(f) == 2:
        return Goodbye(reason)  # a peer from before kinds sends the reason alone: CLOSED
    kind = _GOODBYE_KINDS.get(f[2]) if type(f[2]) is str else None
    if kind is None:
        raise WireError(f"Goodbye.kind must be one of {sorted(_GOODBYE_KINDS)}, got {_describe(f[2])}")
    return Goodbye(reason, kind)


def _shard_versions(value: object, what: str) -> tuple[tuple[ShardId, int], ...]:
    """``[[shard, version], ...]`` with versions >= -1."""
    if type(value) is not list:
        raise WireError(f"{what} must be a list of [shard, version], got {_describe(value)}")
    out = []
    for item in value:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not int or item[1] < -1:
            raise WireError(f"{what} entries are [shard, version], got {_describe(item)}")
        out.append((_shard_id(item[0], f"{what}[].shard"), item[1]))
    return tuple(out)


def _dec_restart_hello(f: list[Any]) -> RestartHello:
    _, node, address, view, logs, accepted, frontiers, incomplete = f
    if not isinstance(view, dict):
        raise WireError("RestartHello needs a view map")
    _check_plain(view, "RestartHello.view")
    if type(accepted) is not int or accepted < -1:
        raise WireError(f"RestartHello.accepted_vid must be an int >= -1, got {_describe(accepted)}")
    if type(incomplete) is not list:
        raise WireError(f"RestartHello.incomplete must be a list of shards, got {_describe(incomplete)}")
    return RestartHello(
        _nat(node, "RestartHello.node"),
        _str(address, "RestartHello.address"),
        view,
        _shard_versions(logs, "RestartHello.logs"),
        accepted,
        _shard_versions(frontiers, "RestartHello.frontiers"),
        tuple(_shard_id(s, "RestartHello.incomplete[]") for s in incomplete),
    )


def _dec_restart_decision(f: list[Any]) -> RestartDecision:
    _, leader, view, lost = f
    if not isinstance(view, dict):
        raise WireError("RestartDecision.view must be a map")
    _check_plain(view, "RestartDecision.view")
    if type(lost) is not list:
        raise WireError(f"RestartDecision.lost must be a list, got {_describe(lost)}")
    ranges = []
    for item in lost:
        if (
            type(item) is not list
            or len(item) != 3
            or type(item[1]) is not int
            or type(item[2]) is not int
            or not 0 <= item[1] <= item[2]
        ):
            raise WireError(f"RestartDecision.lost entries are [shard, first, last], got {_describe(item)}")
        ranges.append((_shard_id(item[0], "RestartDecision.lost[].shard"), item[1], item[2]))
    return RestartDecision(_nat(leader, "RestartDecision.leader"), view, tuple(ranges))


def _dec_group_running(f: list[Any]) -> GroupRunning:
    _, address, vid = f
    return GroupRunning(_str(address, "GroupRunning.address"), _nat(vid, "GroupRunning.vid"))


def _dec_bootstrap_hello(f: list[Any]) -> BootstrapHello:
    _, node, address, expect = f
    return BootstrapHello(
        _nat(node, "BootstrapHello.node"),
        _str(address, "BootstrapHello.address"),
        _nat(expect, "BootstrapHello.expect"),
    )


def _dec_app(f: list[Any]) -> AppMessage:
    data = f[1]
    if type(data) is not bytes:
        raise WireError(f"AppMessage.data must be bytes, got {_describe(data)}")
    return AppMessage(data)


def _dec_welcome(f: list[Any]) -> Welcome:
    # A node of a release before ``max_in_flight`` sends three fields: its window is not said.
    return Welcome(
        _nat(f[1], "Welcome.max_message_size"),
        _nat(f[2], "Welcome.max_frame"),
        _nat(f[3], "Welcome.idle_timeout_ms"),
        _nat(f[4], "Welcome.max_in_flight") if len(f) > 4 else 0,
    )


def _dec_ping(f: list[Any]) -> Ping:
    return Ping(_nat(f[1], "Ping.nonce"))


def _dec_pong(f: list[Any]) -> Pong:
    return Pong(_nat(f[1], "Pong.nonce"))


# tag -> (name, number of fields after the tag, decoder of the whole list)
_DECODERS: Final[dict[int, tuple[str, int | tuple[int, ...], Callable[[list[Any]], WireMessage]]]] = {
    TAG_SHARD_PUSH: ("ShardPush", 6, _dec_shard_push),
    TAG_GROUP_PUSH: ("GroupPush", 3, _dec_group_push),
    TAG_VIEW_ANNOUNCEMENT: ("ViewAnnouncement", 1, _dec_view_announcement),
    TAG_JOIN_REQUEST: ("JoinRequest", 5, _dec_join_request),
    TAG_JOIN_REPLY: ("JoinReply", 3, _dec_join_reply),
    TAG_HELLO: ("Hello", (4, 5), _dec_hello),
    TAG_STATUS_REQUEST: ("StatusRequest", 0, _dec_status_request),
    TAG_STATUS_REPLY: ("StatusReply", 1, _dec_status_reply),
    TAG_GOODBYE: ("Goodbye", (1, 2), _dec_goodbye),
    TAG_RESTART_HELLO: ("RestartHello", 7, _dec_restart_hello),
    TAG_RESTART_DECISION: ("RestartDecision", 3, _dec_restart_decision),
    TAG_GROUP_RUNNING: ("GroupRunning", 2, _dec_group_running),
    TAG_WELCOME: ("Welcome", (3, 4), _dec_welcome),
    TAG_PING: ("Ping", 1, _dec_ping),
    TAG_PONG: ("Pong", 1, _dec_pong),
    TAG_APP: ("AppMessage", 1, _dec_app),
    TAG_BOOTSTRAP_HELLO: ("BootstrapHello", 3, _dec_bootstrap_hello),
    TAG_RATE_LIMITED: ("RateLimited", 2, _dec_rate_limited),
    TAG_SHM_SETUP: ("ShmSetup", (2, 3, 4, 5, 6, 7, 8), decode_shm),  # 36 (runtime.wire.shm_setup)
    TAG_RDMA_SETUP: ("RdmaSetup", (1, 3, 7), decode_rdma),  # 37 (runtime.wire.rdma_setup)
}


def decode(body: bytes | bytearray | memoryview) -> WireMessage:
    """The message in one frame body (without its length prefix).

    Raises :class:`WireError` naming the problem (bad msgpack, unknown tag, wrong number of
    fields, or which field has the wrong type or range) for any body :func:`encode` could not
    have produced from a valid message. A credit frame (not msgpack) decodes here too; a block
    frame only through a :class:`FrameDecoder` with a sink (which puts its bytes in place).
    """
    if body and body[0] == TRANSFER_MAGIC:
        kind = transfer_kind(body)
        if kind == KIND_CREDIT:
            return parse_credit(body)
        if kind == KIND_BLOCK:
            raise WireError("a block frame on a connection that takes none (only members' connections do)")
        raise WireError(f"unknown transfer frame kind {kind}")
    return decode_tagged(body, _DECODERS)


class _IncomingBlock:
    """A block frame whose bytes are arriving: where they go (None: discarded) and how many
    are in place."""

    __slots__ = ("oid", "block", "dest", "reason", "filled", "length")

    def __init__(self, oid: Any, block: int, dest: memoryview | None, reason: Any, length: int) -> None:
        self.oid = oid
        self.block = block
        self.dest = dest
        self.reason = reason
        self.filled = 0
        self.length = length

    def take(self, chunk: memoryview) -> None:
        n = len(chunk)
        if self.dest is not None and n:
            self.dest[self.filled : self.filled + n] = chunk
        self.filled += n

    @property
    def done(self) -> bool:
        return self.filled >= self.length

    def result(self) -> BlockLanded | BlockDropped:
        if self.dest is not None:
            return BlockLanded(self.oid, self.block)
        return BlockDropped(self.oid, self.block, self.reason)


class FrameDecoder:
    """Turns a byte stream into messages, fed in whatever chunks the socket returns.

    ``feed`` never raises for peer data: a frame with a malformed body comes out as a
    ``WireError`` object in its place and the following frames still decode (the length
    prefix tells where the next one starts). A length prefix of zero or above ``max_frame``
    means the stream itself is corrupt (or hostile: it would make us buffer gigabytes), so
    the decoder turns :attr:`broken`, emits one ``WireError`` and ignores all later input;
    the driver must close the connection.
    """

    __slots__ = ("max_frame", "sink", "_buf", "_broken", "_block")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, sink: BlockSink | None = None) -> None:
        """``sink``: where block frames' bytes go (a member's connection); without one, a
        block frame comes out as a ``WireError``."""
        if type(max_frame) is not int or not 0 < max_frame <= _MAX_PREFIX:
            raise ValueError(f"max_frame must be an int in 1..{_MAX_PREFIX}, got {max_frame!r}")
        self.max_frame = max_frame
        self.sink = sink
        self._buf = bytearray()
        self._broken = False
        self._block: _IncomingBlock | None = None  # a block frame whose bytes are arriving

    @property
    def broken(self) -> bool:
        """True once a bad length prefix was seen: the connection must be closed."""
        return self._broken

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that has not fully arrived yet."""
        return len(self._buf)

    def block_room(self) -> memoryview | None:
        """Where the next bytes of the stream go when a block's body is arriving and has a
        place: the unfilled rest of that place (None otherwise). A reader that can read into
        a buffer (``recv_into``, a TLS read into a buffer) puts them there itself and reports
        how many with :meth:`block_filled`: the block lands in its object with no copy here."""
        block = self._block
        if block is None or block.dest is None or self._broken:
            return None
        return block.dest[block.filled : block.length]

    def block_filled(self, n: int) -> list[WireMessage | WireError]:
        """``n`` bytes were read into :meth:`block_room`'s view: the block's result once it is
        whole (as :meth:`feed` would have returned it), else nothing."""
        block = self._block
        if block is None or not 0 < n <= block.length - block.filled:
            raise ValueError(f"block_filled({n}) without that much room in a block being read")
        block.filled += n
        if not block.done:
            return []
        self._block = None
        return [block.result()]

    def feed(self, data: bytes | bytearray | memoryview) -> list[WireMessage | WireError]:
        """Every frame completed by ``data``, decoded, in stream order.

        Linear in the input: headers are read in place at an offset, bodies are decoded in
        place through a memoryview (msgpack copies what it returns, so nothing returned pins
        the caller's buffer or ours), and the unconsumed tail is kept with one copy per call.
        """
        if self._broken:
            return []
        out: list[WireMessage | WireError] = []
        block = self._block
        if block is not None:  # the rest of a block's bytes: straight to their place
            with memoryview(data) as whole:
                n = min(block.length - block.filled, len(whole))
                block.take(whole[:n])
                if not block.done:
                    return out
                self._block = None
                out.append(block.result())
                if n == len(whole):
                    return out
                data = whole[n:].tobytes() if self._buf else whole[n:]
        src: bytes | bytearray | memoryview
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data
        off = 0
        end = len(src)
        unpack_from = _HEADER.unpack_from
        max_frame = self.max_frame
        with memoryview(src) as view:
            while end - off >= 4:
                (size,) = unpack_from(src, off)
                if size == 0 or size > max_frame:
                    self._broken = True
                    self._buf = bytearray()
                    limits = f"1..{max_frame}"
                    out.append(WireError(f"frame length prefix {size} is outside {limits}; stream is corrupt"))
                    return out
                stop = off + 4 + size
                if (
                    self.sink is not None
                    and size > BLOCK_HEADER_SIZE - 1
                    and end - off > 5
                    and src[off + 4] == TRANSFER_MAGIC
                    and src[off + 5] == KIND_BLOCK
                ):
                    if end - off - 4 < BLOCK_HEADER_SIZE:
                        break  # the rest of the header comes in the next read
                    block = self._start_block(src, off + 4, size)
                    start = off + 4 + BLOCK_HEADER_SIZE
                    n = min(end, stop) - start
                    block.take(view[start : start + n])
                    if not block.done:
                        self._block = block
                        off = end
                        break
                    out.append(block.result())
                    off = stop
                    continue
                if stop > end:
                    break
                off += 4
                try:
                    out.append(decode(view[off:stop]))
                except WireError as exc:
                    # A fresh error without traceback or cause: it is an event for the driver,
                    # and must not keep this call's frames (and buffers) alive.
                    out.append(WireError(str(exc)))
                off = stop
            rest = bytearray(view[off:]) if src is not self._buf and off < end else None
        if src is self._buf:
            try:
                del self._buf[:off]
            except BufferError:  # a view of it outlived its frame: leave that buffer to it
                self._buf = bytearray(memoryview(self._buf)[off:])
        elif rest is not None:
            self._buf = rest
        return out

    def _start_block(self, src: bytes | bytearray | memoryview, body: int, size: int) -> _IncomingBlock:
        """A block frame begins at ``body``: ask the sink where its bytes go."""
        assert self.sink is not None
        oid, block = parse_block_header(src, body)
        length = size - BLOCK_HEADER_SIZE
        dest = self.sink(oid, block, length)
        if isinstance(dest, memoryview):
            return _IncomingBlock(oid, block, dest, None, length)
        return _IncomingBlock(oid, block, None, dest, length)
