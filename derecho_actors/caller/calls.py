"""What every caller does to a call before it leaves, member or client alike: refuse a call
made from inside a replicated method, encode the arguments (with their read options in front)
into a ``Request``, and number the calls so that replicas may forget what no caller can ask
again (``Floor``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Container, NamedTuple

import msgpack

from derecho_actors.model.context import in_handler
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.kinds import ORDERED
from derecho_actors.model.reads import ReadOptions
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.calls import LEGACY_KINDS, call_fields
from derecho_actors.wire.events import PollArgs, decode_answer, encode_poll
from derecho_actors.wire.messages import TAG_CALL, TAG_CALL_BATCH, Call, CallKind
from derecho_actors.wire.packing import packb
from derecho_actors.wire.read_options import encode_read
from runtime.core.layout import ShardId
from runtime.errors import NestedCallError, PayloadTooLarge
from runtime.wire.checks import shard_to_wire
from runtime.wire.codec import frame
from runtime.wire.control import AppMessage

DEFAULT_MAX_PAYLOAD = 1 << 20  # a client's limits until its contact's Welcome says otherwise


def refuse_nested(spec: TypeSpec, method: str, through: str = "") -> None:
    """Raise ``NestedCallError`` when called from inside a replicated method: the replica runs
    one call at a time and would wait for itself (or for a call ordered after its own)."""
    if in_handler():
        raise NestedCallError(
            f"{spec.name}.{method} was called{' ' + through if through else ''} from inside a replicated method; the "
            "replica runs one call at a time and would wait for itself (or for a call ordered after the one it is "
            "running). Do the call from outside the method (for example after its result arrives)"
        )


class Request(NamedTuple):
    """One call, encoded and ready to number and send (what a client's session keeps until
    it is answered, to send again after a failover). A named tuple: one is made per call."""

    shard: ShardId
    kind: CallKind
    method: str  # the user's method ("" for the group's own requests)
    args: bytes
    ordered: bool
    target: int  # a P2P call's replica (0: any)
    what: str  # for messages: "KV.put", "watch of KV/0/0"
    decode: Callable[[bytes], Any]  # one replica's encoded answer -> its value
    compare: str | None = None  # an ordered call's on_divergence ("raise", "warn")
    overhead: int = -1  # what the call takes of a frame beyond ``args`` (-1: not worked out yet)


new_request = tuple.__new__
"""``new_request(Request, fields)``: a ``Request`` of all ten fields, made without the named
tuple's generated ``__new__`` (a Python function: one call less per call made)."""


def method_request(
    spec: TypeSpec,
    shard: ShardId,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    node: int | None,
    read: ReadOptions | None,
    max_message_size: int,
) -> Request:
    """A call of the user's ``method``; ``PayloadTooLarge`` (at the caller, before anything is
    sent) if its arguments cannot pass the group's limit. One call alone: a handle's calls go
    through ``method_requests``, made once per method."""
    return method_requests(spec, shard, method)(args, kwargs, node, read, max_message_size)


def _too_large(spec: TypeSpec, method: str, size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{spec.name}.{method} arguments encode to {size} bytes; the group's limit for a client's call "
        f"is {limit} (rdmc.max_object_size with large objects on, else multicast.max_message_size): "
        "send less per call, split the argument over several calls, or pass a reference (a path, a URL)"
    )


MakeRequest = Callable[[tuple[Any, ...], dict[str, Any], "int | None", "ReadOptions | None", int], Request]
"""``(args, kwargs, node, read, max_message_size) -> Request``: calls of one method of one shard."""


def method_requests(spec: TypeSpec, shard: ShardId, method: str) -> MakeRequest:
    """``method_request`` for one method of one shard, with what is the same for all its calls
    (its kind, name, decoder, the serializer's encoder, its size on the wire) worked out once:
    a handle's method makes thousands of calls, and each lookup costs per call."""
    ordered = spec.methods.get(method) == ORDERED
    what = f"{spec.name}.{method}"
    decode = _codec.result_decoder(spec.serializer)
    compare = spec.on_divergence if ordered else None
    encode = args_encoder(spec.serializer)
    overhead = call_overhead(shard, method)
    kind = CallKind.METHOD

    def make(
        args: tuple[Any, ...], kwargs: dict[str, Any], node: int | None, read: ReadOptions | None, limit: int
    ) -> Request:
        data = encode(args, kwargs)
        if read is not None:
            data = encode_read(read, data)
        if len(data) + 64 > limit:
            raise _too_large(spec, method, len(data), limit)
        return new_request(Request, (shard, kind, method, data, ordered, node or 0, what, decode, compare, overhead))

    return make


def args_encoder(serializer: str) -> Callable[[tuple[Any, ...], dict[str, Any]], bytes]:
    """``encode_args`` for one serializer, the same bytes. For msgpack, packed straight away
    (msgpack packs the tuple as the array ``encode_args``' list makes) and only on an error
    through ``encode_args``, which raises the error users see: two calls less per call."""
    if serializer != "msgpack":
        return lambda args, kwargs: _codec.encode_args(args, kwargs, serializer)

    def encode(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            return packb([args, kwargs])
        except (TypeError, ValueError, OverflowError):
            return _codec.encode_args(args, kwargs, serializer)  # raises the SerializationError

    return encode


def call_overhead(shard: ShardId, method: str) -> int:
    """What a call takes of a frame beyond its arguments' bytes (an upper bound, as
    ``calls_frame`` counts it)."""
    return _codec.call_size(method, b"") + len(shard.type_name) + 48  # + its shard's numbers


def poll_request(shard: ShardId, what: str, poll: PollArgs, node: int | None) -> Request:
    """One long poll of a watch."""
    return Request(shard, CallKind.WATCH_POLL, "", encode_poll(poll), False, node or 0, what, decode_answer)


def persist_request(call: Request, version: int, replica: int) -> Request:
    """The query ``QueryResults.persisted`` sends: is ``version`` on disk at every replica?"""
    return Request(
        call.shard,
        CallKind.PERSISTED_QUERY,
        "",
        msgpack.packb(version),
        False,
        replica,
        f"persistence of {call.what}",
        msgpack.unpackb,
    )


@dataclass(slots=True)
class Floor:
    """The oldest of a caller's calls still waiting for an answer: replicas keep their replies
    to a session's calls (for a resend after failover) only from there on. Call numbers only
    grow, so the floor only moves up, each number passed once: ``advance`` costs nothing
    amortised."""

    oldest: int = 1

    def advance(self, waiting: Container[int], upto: int) -> int:
        """The oldest number below ``upto`` still in ``waiting`` (``upto`` if none is)."""
        oldest = self.oldest
        while oldest < upto and oldest not in waiting:
            oldest += 1
        self.oldest = oldest
        return oldest


Outbound = tuple[Any, ...]
"""A numbered call as it goes on the wire: its fields (``wire.calls.call_fields``), made once
when the call is issued and sent as they are again after a failover. A tuple, packed as the
array a list is: holding nothing the garbage collector tracks, it is untracked at its first
collection, not walked again and again while the call waits."""


_METHOD = CallKind.METHOD  # a module global: looked up per call


def outbound(request: Request, call_id: int, floor: int) -> Outbound:
    """Call ``call_id`` of a client's session (its oldest unanswered call ``floor``), made of
    ``request``. A user's method call is the ten fields ``call_fields`` gives a client's
    ``Call`` (no caller, no session: the contact fills those in; no owner; no kind), built
    here without the ``Call``: one tuple per call instead of an object and a list."""
    c = request
    if c.kind is _METHOD:
        return (call_id, 0, _wire_shard(c.shard), c.method, c.ordered, c.args, 0, 0, floor, c.target)
    return tuple(call_fields(Call(call_id, 0, c.shard, c.method, c.ordered, c.args, 0, 0, floor, c.target, 0, c.kind)))


@functools.lru_cache(maxsize=256)
def _wire_shard(shard: ShardId) -> tuple[Any, ...]:
    """A shard as it goes in a call's fields: a plain tuple (packed as the ``ShardId`` is), one
    per shard. The garbage collector stops tracking a plain tuple of plain values, never a
    named tuple, nor so a call's fields holding one."""
    return tuple(shard_to_wire(shard))


def request_size(request: Request) -> int:
    """What a call takes of a frame (an upper bound: ``call_overhead`` and its arguments)."""
    overhead = request.overhead
    return len(request.args) + (overhead if overhead >= 0 else call_overhead(request.shard, request.method))


def outbound_size(call: Outbound) -> int:
    """``request_size`` of a call from its fields alone (the group's own requests travel under
    a legacy name, P2P, but count as nameless)."""
    method = "" if not call[4] and call[3] in LEGACY_KINDS else call[3]
    return _codec.call_size(method, call[5]) + len(call[2][0]) + 48


def calls_frame(calls: list[Outbound], max_frame: int = DEFAULT_MAX_PAYLOAD, size: int = -1) -> bytes:
    """Frames carrying ``calls``, as few as the contact's frame limit allows (one message
    each, whatever the number of calls in it): the bytes ``wire.messages.encode`` makes of a
    ``Call`` (alone) or a ``CallBatch``. ``size``: the calls' ``request_size`` summed, if known
    (then, in the common case of one frame, no call is sized again)."""
    budget = max(1, max_frame - 4096)
    if size < 0:
        size = sum(map(outbound_size, calls))
    if size <= budget:  # the common case: one frame
        return _one_frame(calls)
    out: list[bytes] = []
    batch: list[Outbound] = []
    size = 0
    for call in calls:
        need = outbound_size(call)
        if batch and size + need > budget:
            out.append(_one_frame(batch))
            batch, size = [], 0
        batch.append(call)
        size += need
    if batch:
        out.append(_one_frame(batch))
    return b"".join(out)


def _one_frame(calls: list[Outbound]) -> bytes:
    body = [TAG_CALL, *calls[0]] if len(calls) == 1 else [TAG_CALL_BATCH, calls]
    return frame(AppMessage(packb(body)))


Output = tuple[list[bytes], list[Outbound], int, int]
"""What ``ClientSession.output`` hands its driver to encode: frames of its own, calls, the
contact's frame limit and the calls' size (``calls_frame``)."""


def encode_output(output: Output) -> bytes:
    """The bytes of ``ClientSession.output``: its frames of its own, then its calls'."""
    control, calls, max_frame, size = output
    data = b"".join(control) if control else b""
    return data + calls_frame(calls, max_frame, size) if calls else data
