"""A node's own multicast payloads read back without decoding (``node.outbox.SentBatches``):
what it gives for a payload the node sent must be what decoding that payload gives, and any
other payload is decoded as always. Deterministic, no loop: a fake node records what is sent."""

from __future__ import annotations

from typing import Any

import pytest

from derecho_actors.node.call_limits import CallLimits
from derecho_actors.node.outbox import CALL_BYTES, Outbox, SentBatches
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.call_views import MIN_VIEW_BYTES
from runtime.core.layout import ShardId

pytestmark = pytest.mark.timeout(30)

SHARD = ShardId("KV", 0, 0)
NOW = 1_700_000_000_123_456_789


class Node:
    """Records what the outbox multicasts; runs its end-of-turn flush when asked."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.later: list[Any] = []

    def wall_ns(self) -> int:
        return NOW

    def call_later(self, _delay: float, fn: Any) -> None:
        self.later.append(fn)

    def send_ordered(self, _shard: ShardId, payloads: list[bytes]) -> None:
        self.sent += payloads

    def turn(self) -> None:
        later, self.later = self.later, []
        for fn in later:
            fn()


def calls(n: int, args: Any = b"\x92\xa3key\xa5value") -> list[_codec.PendingCall]:
    return [_codec.PendingCall(1, k, "put", args, 77 if k % 2 else 0, 5, k // 2, 9 * (k % 3)) for k in range(n)]


def outbox(batch: int = 1 << 20) -> tuple[Node, Outbox]:
    node = Node()
    limits = CallLimits(batch=batch, ordered=1 << 20, framed=1 << 20)
    return node, Outbox(node, limits)  # type: ignore[arg-type]


def test_own_payload_gives_what_decoding_gives() -> None:
    node, box = outbox()
    box.submit_all(SHARD, calls(50))
    node.turn()
    [payload] = node.sent
    decoded = _codec.decode_ordered(payload)
    got = box.sent.decode(payload)
    assert got == decoded
    assert [type(x) for c in got for x in c] == [type(x) for c in decoded for x in c]  # type: ignore[union-attr]
    # Taken once: delivered again (it is not), it would be decoded as any other.
    assert box.sent.decode(payload) == decoded
    assert not box.sent._calls


def test_an_equal_payload_of_another_sender_is_decoded() -> None:
    node, box = outbox()
    box.submit_all(SHARD, calls(3))
    node.turn()
    [payload] = node.sent
    other = bytes(bytearray(payload))  # equal bytes, another object: a peer's message
    assert other is not payload
    assert box.sent.decode(other) == _codec.decode_ordered(payload)
    assert box.sent._calls  # still kept for its own delivery
    assert box.sent.decode(payload) == _codec.decode_ordered(payload)


def test_payloads_not_kept_decode_as_always() -> None:
    # Several payloads for one turn (the size limit split them): none kept, all decode.
    node, box = outbox(batch=200)
    box.submit_all(SHARD, calls(20))
    node.turn()
    assert len(node.sent) > 1 and not box.sent._calls
    # Arguments that are not bytes: decoding gives bytes, so the calls as sent are not kept.
    node, box = outbox()
    box.submit_all(SHARD, calls(2, bytearray(b"\xc0")))
    node.turn()
    assert not box.sent._calls
    assert box.sent.decode(node.sent[0]) == _codec.decode_ordered(node.sent[0])
    # A payload large enough to be read as views is not kept.
    kept = SentBatches()
    big = calls(1, b"x" * MIN_VIEW_BYTES)
    payload = _codec.encode_ordered(big, 1 << 30, NOW)[0]
    kept.sent(payload, big, NOW)
    assert not kept._calls


def test_payloads_never_delivered_are_forgotten_oldest_first() -> None:
    kept = SentBatches(limit=4)
    payloads = []
    for k in range(6):
        batch = calls(1 + k)
        payload = _codec.encode_ordered(batch, 1 << 20, NOW)[0]
        payloads.append(payload)
        kept.sent(payload, batch, NOW)
    assert len(kept._calls) == 4
    for payload in payloads:  # the two oldest are decoded, the others taken as sent: all alike
        assert kept.decode(payload) == _codec.decode_ordered(payload)
    assert not kept._calls


def test_payloads_never_delivered_hold_a_bounded_number_of_bytes() -> None:
    """Counted with the calls' own memory (CALL_BYTES each), not the payload bytes alone:
    small calls cost several times their bytes once kept as tuples."""
    batch = calls(10)
    size = len(_codec.encode_ordered(batch, 1 << 20, NOW)[0]) + CALL_BYTES * len(batch)
    kept = SentBatches(limit=100, max_bytes=3 * size)
    payloads = [_codec.encode_ordered(batch, 1 << 20, NOW + k)[0] for k in range(5)]
    for k, payload in enumerate(payloads):
        kept.sent(payload, batch, NOW + k)
    assert len(kept._calls) == 3 and kept.bytes == 3 * size
    for payload in payloads:
        kept.decode(payload)
    assert not kept._calls and kept.bytes == 0
