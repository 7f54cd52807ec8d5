"""How large one call may be, by the way it travels.

Calls of a shard member go into the shard's ordered multicast: many small calls share one
multicast payload (up to ``batch`` bytes), and a call above that goes alone; with large objects
on (``[rdmc]``) a payload above the threshold travels as a descriptor in the order and its
bytes by the block pipeline, so one call may be as large as ``rdmc.max_object_size``. A call
that must first reach another node (relayed to a member of the shard) travels in one frame,
so it is bounded by the frame limit too; so is a P2P call, which always goes in one frame to
the replica it asks (too large, the frame would cost the caller its connections to that
replica, and its place in the view). Each limit names the setting that raises it, so the
refusal can say what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.config import NodeConfig

__all__ = ["CallLimits"]

FRAME_OVERHEAD = 64 << 10
"""Room in a frame for everything of a call but its arguments (method, ids, envelope)."""


@dataclass(frozen=True, slots=True)
class CallLimits:
    """``batch``: bytes of calls one multicast payload carries; ``ordered``: the largest call a
    shard member multicasts (``ordered_key`` raises it); ``framed``: the largest call sent in
    one frame to another node (``framed_key``)."""

    batch: int
    ordered: int
    framed: int
    ordered_key: str = "multicast.max_message_size"
    framed_key: str = "multicast.max_message_size"
    p2p: int = (64 << 20) - FRAME_OVERHEAD
    """The largest P2P call (arguments and all): one frame, ``multicast.max_frame_bytes``."""

    @classmethod
    def plain(cls, max_message_size: int) -> CallLimits:
        """Without large objects: every call fits one multicast message."""
        return cls(max_message_size, max_message_size, max_message_size)

    @classmethod
    def of(cls, config: NodeConfig) -> CallLimits:
        m, r = config.multicast, config.rdmc
        p2p = max(m.max_message_size, m.max_frame_bytes - FRAME_OVERHEAD)
        if not r.enabled:
            return replace(cls.plain(m.max_message_size), p2p=p2p)
        framed = p2p
        return cls(
            r.threshold_bytes,
            r.max_object_size,
            min(r.max_object_size, framed),
            "rdmc.max_object_size",
            "multicast.max_frame_bytes",
            p2p,
        )

    def advice(self, key: str) -> str:
        """What a caller refused by the limit ``key`` can do."""
        if key == "rdmc.max_object_size":
            return "split the argument over several calls, pass a reference (a path, a URL) instead, or raise it"
        if key == "multicast.max_frame_bytes":
            return "call from a member of the shard (its calls are not relayed), or raise it"
        return "send less per call, or turn on large objects ([rdmc] enabled = true)"
