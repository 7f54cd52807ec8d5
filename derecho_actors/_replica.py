"""The pykka actor that hosts one replica of a replicated object on this node.

The protocol thread hands it whole delivered batches (one message per batch, not per call);
the actor runs the ordered calls one at a time in delivery order and P2P calls between them,
on its own thread, never on the protocol thread. Replies go back through ``send_replies``
in one hand-off per batch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import pykka

from derecho_actors import _codec
from derecho_actors._decorators import ORDERED, P2P, TypeSpec
from derecho_actors.exceptions import SerializationError
from runtime.wire.control import Reply

log = logging.getLogger("derecho.replica")
_in_handler = threading.local()

REPLY_WINDOW = 10_000  # replies kept per client for retries


def in_handler() -> bool:
    """True on a replica's thread while it runs a user method (nested calls are refused)."""
    return getattr(_in_handler, "active", False)


SendReplies = Callable[[list[tuple[int, Reply]]], None]


class ReplicaActor(pykka.ThreadingActor):
    def __init__(self, spec: TypeSpec, node_id: int, send_replies: SendReplies) -> None:
        super().__init__()
        self.spec = spec
        self.node_id = node_id
        self.send_replies = send_replies
        self.obj = spec.cls()
        self.applied = 0  # ordered calls applied, for tests and status
        # Exactly once for external clients: per client, the highest call number applied and the
        # replies of its last REPLY_WINDOW calls. Derived from the ordered stream alone, so
        # every replica holds the same table: a retried call that was applied gets its first
        # reply back and is not run again.
        self.last_by_client: dict[int, int] = {}
        self.replies_by_client: dict[int, dict[int, tuple[bool, bytes]]] = {}

    def on_receive(self, message: Any) -> None:
        kind = message[0]
        if kind == "ordered":
            _, vid, replicas, calls = message
            out = [self._ordered(call, vid, replicas) for call in calls]
            self.applied += len(calls)
            self.send_replies(out)
        elif kind == "view":
            # Between the last delivery of one view and the first of the next, as at every
            # replica: a deterministic point for view-dependent state (leases, for example).
            _, vid, members = message
            hook = getattr(self.obj, "on_view", None)
            if callable(hook):
                try:
                    hook(vid, list(members))
                except Exception:
                    log.exception("on_view of %s raised", self.spec.name)
        elif kind == "p2p":
            _, vid, caller, call_id, method, args, origin = message
            self.send_replies([self._run(caller, call_id, method, args, P2P, vid, (self.node_id,), origin)])

    def _ordered(self, call: tuple[int, int, str, bytes, int], vid: int, replicas: tuple[int, ...]) -> tuple[int, Reply]:
        caller, call_id, method, args, origin = call
        if origin:
            last = self.last_by_client.get(origin, 0)
            if call_id <= last:
                kept = self.replies_by_client.get(origin, {}).get(call_id)
                if kept is not None:
                    return caller, Reply(call_id, self.node_id, vid, replicas, kept[0], kept[1], origin)
                err = _codec.encode_error(
                    RuntimeError(f"call {call_id} of client {origin:x} was applied too long ago to repeat its reply")
                )
                return caller, Reply(call_id, self.node_id, vid, replicas, False, err, origin)
        out = self._run(caller, call_id, method, args, ORDERED, vid, replicas, origin)
        if origin:
            self.last_by_client[origin] = call_id
            kept_replies = self.replies_by_client.setdefault(origin, {})
            kept_replies[call_id] = (out[1].ok, out[1].value)
            kept_replies.pop(call_id - REPLY_WINDOW, None)
        return out

    def _run(
        self, caller: int, call_id: int, method: str, args: bytes, want: str, vid: int, replicas: tuple[int, ...],
        origin: int = 0,
    ) -> tuple[int, Reply]:
        spec = self.spec
        ok, value = True, b""
        try:
            if spec.methods.get(method) != want:
                raise AttributeError(f"{spec.name}.{method} is not a {want} method")
            a, kw = _codec.decode_args(args, spec.serializer)
            _in_handler.active = True
            try:
                result = getattr(self.obj, method)(*a, **kw)
            finally:
                _in_handler.active = False
            value = _codec.encode_result(result, spec.serializer)
        except SerializationError as exc:
            ok, value = False, _codec.encode_error(exc)
        except Exception as exc:  # the user's exception goes back to the caller; we carry on
            ok, value = False, _codec.encode_error(exc)
        return caller, Reply(call_id, self.node_id, vid, replicas, ok, value, origin)
