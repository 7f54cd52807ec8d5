"""``ClientProxy.forward``: answers for clients go on to them (``ClientAnswers``) and, while a
streamed call is in flight or relayed, free what it holds (``ClientStreams.replied``); with no
stream in flight (a pipelined client's every batch) the streams are not walked per answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from derecho_actors.node.client_proxy import ClientProxy
from derecho_actors.wire.messages import ReplyBatch

pytestmark = pytest.mark.timeout(30)

ENTRIES = [(5, True, b"x", 77, 1), (6, True, b"y", 77, 2)]
BATCH = ReplyBatch(2, 4, (1, 2, 3), tuple(ENTRIES))


def proxy(sent: dict[Any, Any], relaying: dict[Any, Any]) -> tuple[Any, list[Any], list[Any]]:
    replied: list[Any] = []
    forwarded: list[Any] = []
    streams = SimpleNamespace(sent=sent, relaying=relaying, replied=replied.append)
    answers = SimpleNamespace(forward=lambda batch, entries: forwarded.append((batch, entries)))
    return SimpleNamespace(streams=streams, answers=answers), replied, forwarded


@pytest.mark.parametrize(
    "sent, relaying, walked",
    [
        ({}, {}, False),
        ({(77, 5): ("id", 10, 0.0)}, {}, True),
        ({}, {(77, 6): (object(), 1)}, True),
    ],
    ids=["no stream in flight", "a stream delivered, its answer awaited", "a stream being relayed"],
)
def test_streams_hear_of_answers_only_while_one_is_in_flight(
    sent: dict[Any, Any], relaying: dict[Any, Any], walked: bool
) -> None:
    fake, replied, forwarded = proxy(sent, relaying)
    ClientProxy.forward(fake, BATCH, ENTRIES)
    assert replied == ([ENTRIES] if walked else [])
    assert forwarded == [(BATCH, ENTRIES)]  # the answers go on either way
