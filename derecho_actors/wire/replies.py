"""Answers on the wire: one replica's answer to a call (:class:`Reply`), many in one frame
(:class:`ReplyBatch`), and who gets the answer to a call (:class:`ReplyTo`), which builds every
answer the group itself makes, a refusal above all, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from derecho_actors.wire.codec import encode_error, encode_refusal
from runtime.errors import DerechoError


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


@dataclass(frozen=True, slots=True)
class ReplyBatch:
    """Many answers of one replica in one frame (one delivered batch's worth, for one caller
    or one client): ``entries`` are ``(call_id, ok, value, origin, version)``, each as in
    :class:`Reply`. In Python the cost is per object and per frame, not per byte."""

    node: int
    vid: int
    replicas: tuple[int, ...]
    entries: tuple[tuple[int, bool, bytes, int, int], ...]
