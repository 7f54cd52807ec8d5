"""What every caller does to a call before it leaves, member or client alike: refuse a call
made from inside a replicated method, encode the arguments (with their read options in front)
into a ``Request``, and number the calls so that replicas may forget what no caller can ask
again (``Floor``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Container, NamedTuple

import msgpack

from derecho_actors.model.context import in_handler
from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.kinds import ORDERED
from derecho_actors.model.reads import ReadOptions
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.events import PollArgs, decode_answer, encode_poll
from derecho_actors.wire.messages import Call, CallBatch, CallKind, encode
from derecho_actors.wire.read_options import encode_read
from runtime.core.layout import ShardId
from runtime.errors import NestedCallError, PayloadTooLarge
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


def encode_call(
    spec: TypeSpec, args: tuple[Any, ...], kwargs: dict[str, Any], read: ReadOptions | None = None
) -> bytes:
    """A call's arguments as they travel: encoded by the type's serializer, its read options
    (if any) in front."""
    data = _codec.encode_args(args, kwargs, spec.serializer)
    return encode_read(read, data) if read is not None else data


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
    sent) if its arguments cannot pass the group's limit."""
    data = encode_call(spec, args, kwargs, read)
    if len(data) + 64 > max_message_size:
        raise PayloadTooLarge(
            f"{spec.name}.{method} arguments encode to {len(data)} bytes; the group's limit for a client's call "
            f"is {max_message_size} (limits.client_max_call_bytes with large objects on, else "
            "multicast.max_message_size): send less per call, or call from a member of the group"
        )
    ordered = spec.methods.get(method) == ORDERED
    return Request(
        shard,
        CallKind.METHOD,
        method,
        data,
        ordered,
        node or 0,
        f"{spec.name}.{method}",
        _codec.result_decoder(spec.serializer),
        spec.on_divergence if ordered else None,
    )


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


def calls_frame(calls: list[Call], max_frame: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Frames carrying ``calls``, as few as the contact's frame limit allows (one message
    each, whatever the number of calls in it)."""
    out: list[bytes] = []
    batch: list[Call] = []
    size = 0
    budget = max(1, max_frame - 4096)
    for call in calls:
        need = _codec.call_size(call.method, call.args) + len(call.shard.type_name) + 48  # + its shard's numbers
        if batch and size + need > budget:
            out.append(_one_frame(batch))
            batch, size = [], 0
        batch.append(call)
        size += need
    if batch:
        out.append(_one_frame(batch))
    return b"".join(out)


def _one_frame(calls: list[Call]) -> bytes:
    msg = calls[0] if len(calls) == 1 else CallBatch(tuple(calls))
    return frame(AppMessage(encode(msg)))


def encode_output(output: tuple[list[bytes], list[Call], int]) -> bytes:
    """The bytes of ``ClientSession.output``: its frames of its own, then its calls'."""
    control, calls, max_frame = output
    data = b"".join(control) if control else b""
    return data + calls_frame(calls, max_frame) if calls else data
