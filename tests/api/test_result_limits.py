"""``ResultCheck`` alone: which answers it replaces, that the replacement is the same bytes at
every replica, that it decodes to ``ResultTooLarge``, and that it is logged once per call."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable

import pytest

import derecho_actors as da
from derecho_actors.node.reply_routes import ReplyRoutes
from derecho_actors.node.result_limits import ResultCheck, ResultLimits
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import Reply, ReplyBatch

pytestmark = pytest.mark.timeout(30)

LIMITS = ResultLimits(member=100, client=50)


class _Offered:
    def __init__(self) -> None:
        self.batches: list[tuple[int, ReplyBatch]] = []

    def offer(self, dest: int, batch: ReplyBatch) -> None:
        self.batches.append((dest, batch))


def _now(fn: Callable[..., Any], *args: Any) -> bool:
    fn(*args)
    return True


def test_a_replicas_too_large_result_is_replaced_before_it_is_routed() -> None:
    """Each replica's answers go through ``send``: only the value over the limit is replaced
    (by a refusal, ok False), the others stay, and two replicas make the very same bytes."""
    made = []
    for node in (1, 2):
        offered = _Offered()
        routes = ReplyRoutes(SimpleNamespace(node_id=node, call_soon=_now), None, None, offered, LIMITS)  # type: ignore[arg-type]
        entries = ((7, True, b"a" * 10, 0, -1), (8, True, b"b" * 101, 0, 3), (9, True, b"c" * 100, 0, -1))
        routes.send([(5, ReplyBatch(node, 4, (1, 2), entries))])
        ((dest, batch),) = offered.batches
        assert dest == 5 and batch.entries[0] == entries[0] and batch.entries[2] == entries[2]
        call_id, ok, value, origin, version = batch.entries[1]
        assert (call_id, ok, origin, version) == (8, False, 0, 3)
        made.append(value)
    assert made[0] == made[1]
    exc = _codec.decode_error(made[0], 1)
    assert isinstance(exc, da.ResultTooLarge) and isinstance(exc, da.UsageError) and exc.applied
    assert "is 101 bytes encoded, over the 100 bytes" in str(exc) and "multicast.max_frame_bytes" in str(exc)


def test_a_single_reply_over_the_limit_is_replaced_and_one_within_it_kept() -> None:
    check = ResultCheck(LIMITS)
    small = Reply(1, 1, 2, (1,), True, b"x" * 100)
    replies = [(3, small)]
    assert check.replies(replies) is replies  # nothing over: the very list
    ((_, big),) = check.replies([(3, Reply(2, 1, 2, (1,), True, b"x" * 101, 9, 4))])
    assert isinstance(big, Reply) and not big.ok and (big.call_id, big.origin, big.version) == (2, 9, 4)
    assert isinstance(_codec.decode_error(big.value, 1), da.ResultTooLarge)


def test_answers_for_clients_over_their_limit_are_replaced_and_logged_once_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = ResultCheck(LIMITS)
    entries = [(1, True, b"x" * 50, 9, -1), (2, True, b"y" * 51, 9, -1)]
    with caplog.at_level(logging.WARNING, logger="derecho_actors.node.result_limits"):
        firsts = [check.for_clients(list(entries)) for _ in range(3)]  # three replicas' answers
    assert all(f == firsts[0] for f in firsts)
    assert firsts[0][0] == entries[0] and firsts[0][1][:2] == (2, False)
    exc = _codec.decode_error(firsts[0][1][2], 1)
    assert isinstance(exc, da.ResultTooLarge) and "limits.client_max_backlog_bytes" in str(exc)
    assert len([r for r in caplog.records if "client call 2" in r.getMessage()]) == 1
    assert check.for_clients(entries[:1]) == entries[:1]


def test_limits_follow_the_config() -> None:
    from runtime.config import load_config

    config = load_config(
        None,
        {
            "node.id": "1",
            "multicast.max_frame_bytes": str(32 << 20),
            "limits.client_max_backlog_bytes": str(4 << 20),
            "security.insecure": "true",
        },
    )
    limits = ResultLimits.of(config)
    assert limits.member == (32 << 20) - (4 << 10)
    assert limits.client == (4 << 20) - (256 << 10) - (4 << 10)
    assert ResultLimits() == ResultLimits.of(load_config(None, {"node.id": "1", "security.insecure": "true"}))
