"""Answers on the wire: one replica's answer to a call (:class:`Reply`), many in one frame
(:class:`ReplyBatch`), a contact's answers to its client with the replicas' identical answers
merged (:class:`AnswerBatch`, once the client said it reads them: :class:`Features`), and who
gets the answer to a call (:class:`ReplyTo`), which builds every answer the group itself makes,
a refusal above all, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import msgpack

from derecho_actors.wire.codec import encode_error, encode_refusal
from derecho_actors.wire.large_frames import BIG_BIN, unpack_large_frame
from runtime.errors import DerechoError, WireError
from runtime.wire.checks import UNPACK_ERRORS, Decoders, decode_tagged, describe, flag, nat, refuse_ext, text


@dataclass(slots=True)
class Reply:
    """One replica's answer to a call. ``vid`` and ``replicas`` say which view delivered the
    call and which members will each answer it, so the caller knows when it has them all.
    Not frozen (one is made per call: a frozen dataclass costs several times as much to
    build); nothing changes one once made."""

    call_id: int
    node: int
    vid: int
    replicas: tuple[int, ...]
    ok: bool
    value: bytes
    origin: int = 0  # the external client the call came from, if any (see Call.origin)
    version: int = -1  # the ordered call's version in a persistent shard (-1: none)


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the answer to one call goes: node ``caller`` (this node for its own calls and
    for its clients'), under ``call_id``, in view ``vid``, for session ``origin`` (an external
    client's, or 0). One value instead of four loose numbers passed along every path a call
    takes; its methods build the replies, so a refusal is made the same way everywhere."""

    caller: int
    call_id: int
    vid: int
    origin: int = 0

    def in_view(self, vid: int) -> ReplyTo:
        """The same call answered in view ``vid`` (a wait that outlived the view it began in)."""
        return ReplyTo(self.caller, self.call_id, vid, self.origin)

    def refused(
        self, node: int, why: DerechoError, replicas: tuple[int, ...] | None = None, version: int = -1
    ) -> Reply:
        """Node ``node`` (or, for an ordered call, each of ``replicas``) refuses the call: the
        group's error, without a traceback (no user code failed), so the caller gets ``why``
        back as its own type. Alone unless ``replicas`` says who else answers."""
        return Reply(
            self.call_id,
            node,
            self.vid,
            replicas if replicas is not None else (node,),
            False,
            encode_refusal(why),
            self.origin,
            version,
        )

    def failed(
        self, node: int, exc: BaseException, replicas: tuple[int, ...] | None = None, version: int = -1
    ) -> Reply:
        """The call could not be run as sent (a malformed request): ``exc`` with its traceback,
        which the caller gets as a ``RemoteError`` naming it."""
        return Reply(
            self.call_id,
            node,
            self.vid,
            replicas if replicas is not None else (node,),
            False,
            encode_error(exc),
            self.origin,
            version,
        )

    def answered(self, node: int, value: bytes) -> Reply:
        """Node ``node`` alone answers with ``value`` (encoded by whoever ran the request)."""
        return Reply(self.call_id, node, self.vid, (node,), True, value, self.origin)


ReplyEntry = tuple[int, bool, bytes, int, int]
"""``(call_id, ok, value, origin, version)``: one answer of a ``ReplyBatch``."""


@dataclass(frozen=True, slots=True)
class ReplyBatch:
    """Many answers of one replica in one frame (one delivered batch's worth, for one caller
    or one client): ``entries`` are ``(call_id, ok, value, origin, version)``, each as in
    :class:`Reply`. In Python the cost is per object and per frame, not per byte."""

    node: int
    vid: int
    replicas: tuple[int, ...]
    entries: tuple[ReplyEntry, ...]


MergedEntry = tuple[int, bool, bytes, int, tuple[int, ...]]
"""``(call_id, ok, value, version, answered)``: the answer every replica in ``answered`` gave
to one call (``answered`` empty: all of the batch's ``replicas``)."""


@dataclass(frozen=True, slots=True)
class AnswerBatch:
    """A contact's answers to its client's calls, one value per call: every replica of the call
    answered the same bytes (the contact compared them), so the client decodes one value, not
    one per replica. Answers that differ are never merged: they go as each replica's
    :class:`ReplyBatch`, so the client's divergence check sees them all. Calls delivered in view
    ``vid``, answered by (or waiting for) ``replicas``."""

    vid: int
    replicas: tuple[int, ...]
    entries: tuple[MergedEntry, ...]


@dataclass(frozen=True, slots=True)
class Features:
    """What one side of a client connection can do beyond the wire protocol both speak: a
    contact offers it (after the client's first call), a client that reads
    :class:`AnswerBatch` says so back. A contact of the release before never sends it; a client
    of the release before logs it as a bad message once per connection and goes on; so a
    rolling upgrade works in both orders."""

    merged_answers: bool


def answer_batch_fields(m: AnswerBatch) -> list[Any]:
    """The entries go as the tuples they are: msgpack writes a tuple as the array a list
    would be (the same bytes), without a list built per entry."""
    return [m.vid, m.replicas, m.entries]


def decode_answer_batch(vid: object, replicas: tuple[int, ...], entries: object) -> AnswerBatch:
    """An ``AnswerBatch`` from its wire fields, every entry checked (``WireError`` otherwise)."""
    rows = answer_rows(entries)
    return AnswerBatch(nat(vid, "AnswerBatch.vid"), replicas, tuple(map(tuple, rows)))


def answer_rows(entries: object) -> list[list[Any]]:
    """``AnswerBatch.entries`` as they came off the wire, every entry checked (``WireError``
    otherwise) and kept as the list msgpack made, ``[call_id, ok, value, version, answered]``,
    ``answered`` made a tuple of node ids in place."""
    if type(entries) is not list:
        raise WireError(f"AnswerBatch.entries must be a list, got {describe(entries)}")
    for e in entries:
        if type(e) is not list or len(e) != 5:
            raise WireError(f"AnswerBatch entries are [call_id, ok, value, version, answered], got {describe(e)}")
        call_id, ok, value, version, answered = e
        if (
            type(call_id) is not int
            or call_id < 0
            or type(ok) is not bool
            or type(value) is not bytes
            or type(version) is not int
            or version < -1
            or type(answered) is not list
        ):
            raise WireError(f"malformed AnswerBatch entry {describe(e)}")
        # Most name no one (every replica answered alike): no generator and tuple each.
        e[4] = node_ids(answered, "AnswerBatch.answered") if answered else ()
    return entries


AnswerRows = tuple[int, tuple[int, ...], Sequence[Sequence[Any]]]
"""An ``AnswerBatch`` as its client reads it: ``vid``, ``replicas`` and its entries,
``[call_id, ok, value, version, answered]`` each (``answered`` a tuple of node ids)."""

_ANSWER_BATCH_HEAD = bytes((0x94, 11))  # msgpack's [11, vid, replicas, entries]: wire.messages.TAG_ANSWER_BATCH


def _answer_fields(f: list[Any]) -> AnswerRows:
    replicas = node_ids(f[2], "AnswerBatch.replicas")  # checked in the order decode_answer_batch checks
    rows = answer_rows(f[3])
    return nat(f[1], "AnswerBatch.vid"), replicas, rows


_CLIENT_ANSWERS: Decoders = {11: ("AnswerBatch", 3, _answer_fields)}


def client_answers(data: bytes) -> AnswerRows | None:
    """An ``AnswerBatch`` as its client reads it, checked as ``wire.messages.decode`` checks
    it (``WireError`` otherwise), or None for any other message (for ``decode``). Most of what
    a client reads comes so, hundreds of answers a frame: as ``answer_rows``, not a tuple made
    of each, which costs the making and, while the frame is read, as many objects more for the
    garbage collector to count (its next pass comes sooner, and walks them)."""
    if data[:2] != _ANSWER_BATCH_HEAD:
        return None
    if len(data) >= BIG_BIN:  # its large values copied without the GIL (``large_frames``)
        large: AnswerRows = decode_tagged(data, _CLIENT_ANSWERS, "message", unpack_large_frame)
        return large
    rows = _answer_tuples(data)
    if rows is None:  # something is off: read as the decoder reads it, which says what
        rows = decode_tagged(data, _CLIENT_ANSWERS, "message")
    return rows


def _answer_tuples(data: bytes) -> AnswerRows | None:
    """An ``AnswerBatch`` (``data`` starts as one) unpacked into tuples, every entry checked as
    ``answer_rows`` checks it; None if any check fails (``client_answers`` then reads it the
    checked way, to raise the decoder's own error). Why tuples: msgpack makes an answer one
    tuple, and its ``answered`` (empty: all replicas agreed) the one empty tuple Python shares,
    where lists made two objects per answer. Each object the garbage collector counts brings
    its next pass nearer, and a pipelining client's collections (young ones, and the full ones
    they lead to, walking every call in flight) were ~18% of its CPU."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=refuse_ext, use_list=False)
    except UNPACK_ERRORS:
        return None
    _, vid, replicas, entries = obj  # four fields: the head said so
    if type(vid) is not int or vid < 0 or type(replicas) is not tuple or type(entries) is not tuple:
        return None
    for r in replicas:
        if type(r) is not int or r < 0:
            return None
    for e in entries:  # answer_rows' checks, inline (a call per answer is this path's cost): change both
        if type(e) is not tuple or len(e) != 5:
            return None
        call_id, ok, value, version, answered = e
        if (
            type(call_id) is not int
            or call_id < 0
            or type(ok) is not bool
            or type(value) is not bytes
            or type(version) is not int
            or version < -1
            or type(answered) is not tuple
        ):
            return None
        for r in answered:  # mostly none: every replica answered alike
            if type(r) is not int or r < 0:
                return None
    return vid, replicas, entries


def decode_features(merged_answers: object) -> Features:
    return Features(flag(merged_answers, "Features.merged_answers"))


@dataclass(frozen=True, slots=True)
class ViewNotice:
    """A contact tells its clients of a view change: who left (their replicas will not answer)
    and, when no shard can run, why."""

    vid: int
    members: tuple[int, ...]
    departed: tuple[int, ...]
    unavailable: str = ""


def decode_view_notice(vid: object, members: object, departed: object, unavailable: object) -> ViewNotice:
    return ViewNotice(
        nat(vid, "ViewNotice.vid"),
        node_ids(members, "ViewNotice.members"),
        node_ids(departed, "ViewNotice.departed"),
        text(unavailable, "ViewNotice.unavailable"),
    )


def node_ids(value: object, what: str) -> tuple[int, ...]:
    """A list of node ids on the wire (a reply's replicas, a view's members)."""
    if type(value) is not list:
        raise WireError(f"{what} must be a list, got {describe(value)}")
    return tuple(nat(r, f"{what}[]") for r in value)
