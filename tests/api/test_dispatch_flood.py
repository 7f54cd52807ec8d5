"""What a member sends that the group drops is logged a few times per node and kind, never
once per message: a node certificate outside the view sent garbage app messages at one WARNING
each (1.1M lines, 243 MB in 15 s) and held the loop while the lines were written."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from derecho_actors.node.dispatch import MessageDispatch
from derecho_actors.wire.messages import Reply, encode


def _dispatch() -> MessageDispatch:
    nothing: Any = SimpleNamespace(
        replies=SimpleNamespace(take_batch=None, take_reply=None),
        inbound=SimpleNamespace(on_member_call=None),
        on_mark=None,
        on_digest=None,
        on_request=None,
        on_chunk=None,
        on_ack=None,
    )
    return MessageDispatch(nothing, nothing, nothing, nothing)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("what", ["garbage", "a frame members do not send"])
def test_a_flood_of_dropped_member_messages_logs_a_few_lines(what: str, caplog: pytest.LogCaptureFixture) -> None:
    dispatch = _dispatch()
    dispatch._by_type.pop(Reply)  # a kind this node does not take from members

    def data(node: int) -> bytes:
        return b"\xff\xfe\x00garbage" if what == "garbage" else encode(Reply(1, node, 3, (node,), True, b"x"))

    with caplog.at_level(logging.WARNING, logger="derecho.group"):
        for _ in range(5_000):
            dispatch.from_member(7, data(7))
        dispatch.from_member(8, data(8))  # another node gets its own lines
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 4, lines[:5]
    assert any("node 8" in line for line in lines)
