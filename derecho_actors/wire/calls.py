"""Calls on the wire: a request sent straight to one member (:class:`Call`), a client's calls in
one frame (:class:`CallBatch`), and what kind of request each is (:class:`CallKind`).

Encoded as arrays of fields (see ``messages`` for the framing); decoding checks every field and
names the one that is wrong. A client's frame is decoded in one pass over the common case (its
batch may hold thousands of calls); anything off goes through the checks that name the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from runtime.errors import WireError
from runtime.wire.checks import blob, describe, flag, nat, shard_id, shard_to_wire, text


class CallKind(IntEnum):
    """What a call asks for: a method of the user's type, or one of the group's own requests,
    which the node answers itself (they never reach the user's object, whatever its methods
    are called). On the wire as its number."""

    METHOD = 0
    """A method of the replicated type, named by ``Call.method``."""
    WATCH_POLL = 1
    """A watch's poll: the events after a position (``wire.events.PollArgs`` as arguments)."""
    PERSISTED_QUERY = 2
    """Answered once a version (msgpack int as arguments) is on disk at every replica."""

    @property
    def label(self) -> str:
        """How status and metrics name the group's own requests (as they always have)."""
        return _LABELS[self]


_LABELS: Final = {CallKind.METHOD: "", CallKind.WATCH_POLL: "__watch__", CallKind.PERSISTED_QUERY: "__persisted__"}

LEGACY_KINDS: Final = {"__watch__": CallKind.WATCH_POLL, "__persisted__": CallKind.PERSISTED_QUERY}
"""The group's own requests as callers before ``CallKind`` sent them: P2P calls of these method
names, with no kind on the wire. The decoder reads them as their kind (an old client keeps
working); nothing else looks at a method's name."""


@dataclass(slots=True)
class Call:
    """A request sent straight to one member: a P2P call to run there, or (``ordered``) a
    call that member must multicast into its shard on the caller's behalf (relaying). Replies
    go to ``caller``, whichever path the call took. A client's call names no caller (0: its
    contact answers it on the client's connection); ``target`` is the replica a client's P2P
    call asks for (``node=``; 0: any). ``kind``: a user's method (``method``), or one of the
    group's own P2P requests (``method`` is then empty).

    Not frozen: one is made per call at the client and again at its contact, and a frozen
    dataclass of twelve fields costs six times as much to build. Nothing changes one once made."""

    call_id: int
    caller: int
    shard: Any  # ShardId
    method: str
    ordered: bool
    args: bytes
    origin: int = 0  # the caller's exactly-once session, for retried calls (0: none)
    session_ns: int = 0  # when that session started (see derecho_actors.replica.sessions)
    floor: int = 0  # the caller's oldest call still waiting for an answer
    target: int = 0  # a client's P2P call: the replica it asks for (0: any)
    # A client's ordered call relayed by its contact: the identity owning its session
    # (``replica.sessions.owner_of``), stamped by the contact. On the wire only when set, so a
    # client's frames are as before; a contact ignores what a client puts here.
    owner: int = 0
    kind: CallKind = CallKind.METHOD  # on the wire only for the group's own requests


@dataclass(frozen=True, slots=True)
class CallBatch:
    """A client's calls sent in one frame (its writer thread takes whatever queued)."""

    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class OverfullBatch:
    """A client's ``CallBatch`` holding more calls than it may have unanswered: the first
    ``calls`` decoded, and only the numbers of the others (``overflow``), to refuse them."""

    calls: tuple[Call, ...]
    overflow: tuple[int, ...]


_LEGACY_NAMES: Final = {kind: name for name, kind in LEGACY_KINDS.items()}
_METHOD: Final = CallKind.METHOD  # a global: an enum member read off its class costs ~10x (3.11)


def call_fields(m: Call) -> list[Any]:
    """A call as its array of fields: the owner only when set. The group's own requests still
    travel under their legacy method names, with no kind field: a node of the release before
    reads nothing else (11 fields at most), and a rolling upgrade mixes both. The decoder
    reads either form; the kind field is sent from the next protocol version on."""
    method = _LEGACY_NAMES[m.kind] if m.kind is not _METHOD else m.method
    fields = [
        m.call_id,
        m.caller,
        shard_to_wire(m.shard),
        method,
        m.ordered,
        m.args,
        m.origin,
        m.session_ns,
        m.floor,
        m.target,
    ]
    if m.owner:
        fields.append(m.owner)
    return fields


def _kind(f: list[Any], method: str, ordered: bool, what: str) -> tuple[CallKind, str]:
    """The call's kind and method name: the kind as sent (12th field), else a legacy name's."""
    if len(f) < 12:
        legacy = None if ordered else LEGACY_KINDS.get(method)
        return (CallKind.METHOD, method) if legacy is None else (legacy, "")
    raw = f[11]
    if type(raw) is not int or raw not in _KIND_NUMBERS:
        raise WireError(f"{what}.kind must be one of {sorted(_KIND_NUMBERS)}, got {describe(raw)}")
    kind = CallKind(raw)
    if kind is CallKind.METHOD:
        return kind, method
    if ordered:
        raise WireError(f"{what}.kind {kind.name} is a P2P request, but the call is ordered")
    return kind, ""


_KIND_NUMBERS: Final = frozenset(int(k) for k in CallKind)


def decode_call(f: list[Any], what: str) -> Call:
    """One call's fields (``what`` names them in errors); ``WireError`` for any that is wrong."""
    if type(f) is not list or len(f) not in (10, 11, 12):
        raise WireError(f"{what} needs 10 to 12 fields, got {describe(f)}")
    call_id, caller, shard, method, ordered, args, origin, session_ns, floor, target = f[:10]
    owner = f[10] if len(f) > 10 else 0
    # The common case in one test (a client's batch may hold thousands of calls); anything
    # off goes through the field-by-field checks below, which name the field.
    if (
        type(call_id) is int
        and type(caller) is int
        and type(method) is str
        and type(ordered) is bool
        and type(args) is bytes
        and type(origin) is int
        and type(session_ns) is int
        and type(floor) is int
        and type(target) is int
        and type(owner) is int
        and min(call_id, caller, origin, session_ns, floor, target, owner) >= 0
    ):
        if ordered and len(f) < 12:  # the common case: a method, no kind to read
            return Call(
                call_id,
                caller,
                shard_id(shard, f"{what}.shard"),
                method,
                True,
                args,
                origin,
                session_ns,
                floor,
                target,
                owner,
            )
        kind, method = _kind(f, method, ordered, what)
        return Call(
            call_id,
            caller,
            shard_id(shard, f"{what}.shard"),
            method,
            ordered,
            args,
            origin,
            session_ns,
            floor,
            target,
            owner,
            kind,
        )
    ordered = flag(ordered, f"{what}.ordered")
    kind, method = _kind(f, text(method, f"{what}.method"), ordered, what)
    return Call(
        nat(call_id, f"{what}.call_id"),
        nat(caller, f"{what}.caller"),
        shard_id(shard, f"{what}.shard"),
        method,
        ordered,
        blob(args, f"{what}.args"),
        nat(origin, f"{what}.origin"),
        nat(session_ns, f"{what}.session_ns"),
        nat(floor, f"{what}.floor"),
        nat(target, f"{what}.target"),
        nat(owner, f"{what}.owner"),
        kind,
    )


def decode_calls(calls: object) -> CallBatch:
    """A ``CallBatch``'s calls."""
    if type(calls) is not list:
        raise WireError(f"CallBatch.calls must be a list, got {describe(calls)}")
    return CallBatch(_batch_calls(calls))


def _batch_calls(calls: list[Any]) -> tuple[Call, ...]:
    """A batch's calls, each checked as :func:`decode_call` checks it. A client's call as its
    release sends it (10 fields: no owner, no kind; a method, or a P2P request under a name no
    legacy request has) is checked and built here in one test, without a call per call; any
    other goes through :func:`decode_call`, which names what is wrong. Why: a contact decodes
    ~100 calls per client frame, and this was ~5% of its loop."""
    out: list[Call] = []
    append = out.append
    legacy = LEGACY_KINDS
    last: object = None  # the shard field of the call before, as sent, and its key
    sid: Any = None
    for f in calls:
        if type(f) is list and len(f) == 10:
            call_id, caller, shard, method, ordered, args, origin, session_ns, floor, target = f
            if (
                type(call_id) is int
                and type(caller) is int
                and type(method) is str
                and type(ordered) is bool
                and type(args) is bytes
                and type(origin) is int
                and type(session_ns) is int
                and type(floor) is int
                and type(target) is int
                and call_id >= 0
                and caller >= 0
                and origin >= 0
                and session_ns >= 0
                and floor >= 0
                and target >= 0
                and (ordered or method not in legacy)
            ):
                # A frame's calls mostly name one shard: equal to the last one checked (``==``
                # takes False for 0: the ints' exact types are checked again) is the same key.
                if shard != last or type(shard[1]) is not int or type(shard[2]) is not int:
                    sid, last = shard_id(shard, "CallBatch.calls[].shard"), shard
                append(
                    Call(
                        call_id,
                        caller,
                        sid,
                        method,
                        ordered,
                        args,
                        origin,
                        session_ns,
                        floor,
                        target,
                    )
                )
                continue
        append(decode_call(f, "CallBatch.calls[]"))
    return tuple(out)


def decode_client_calls(calls: object, max_calls: int) -> CallBatch | OverfullBatch:
    """A client's ``CallBatch``: only the first ``max_calls`` calls decoded, the others' numbers."""
    if type(calls) is not list or len(calls) <= max_calls:
        return decode_calls(calls)
    overflow = []
    for c in calls[max_calls:]:  # only each call's number: it is refused, not run
        if type(c) is not list or not c or type(c[0]) is not int or c[0] < 0:
            raise WireError(f"CallBatch.calls[] must be calls, got {describe(c)}")
        overflow.append(c[0])
    return OverfullBatch(_batch_calls(calls[:max_calls]), tuple(overflow))
