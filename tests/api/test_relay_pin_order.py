"""A stream's relay keeps its session's later calls behind it while it is unanswered, also
when a small call taken after the stream's start is answered first.

A contact starts relaying a stream as soon as its ``StreamStart`` arrives, while calls the
client made before the stream may still wait in the connection's inbox: taken afterwards, one
of them is the session's latest relayed call. Once it is answered, the stream (still relayed
to its member, unanswered) must still pin the session: a view that adds a member to the shard
would otherwise send the next call to the new default member, ordered before the stream, and
the stream would be answered "applied already, reply no longer kept": lost. A review found a
single-mechanism rewrite of the pins that failed this; it is kept as the case any rewrite must
pass."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from blake3 import blake3

from derecho_actors.wire.streams import StreamStart
from tests.api.test_client_stream_relay_unit import ORIGIN_2, SHARD, Conn, View, _contact, _take

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("last_block_in", [False, True], ids=["mid-stream", "last-block-in"])
def test_a_stream_pins_its_session_after_an_earlier_call_is_answered(last_block_in: bool) -> None:
    views = [View(1, (1, 2, 3, 4, 5), (1, 2))]
    proxy, glue, queue = _contact(views)
    conn = Conn(origin=ORIGIN_2)
    data = os.urandom(3000)
    start = StreamStart(9, SHARD, "put", 0, len(data), blake3(data).digest())
    payload = bytearray(data)
    assert glue.begin(conn, start, payload, 0, "host h")  # stream 9 starts: relayed to node 1
    assert queue.sent[-1][0] == 1
    assert _take(proxy, glue, conn, "call 8") == 1  # made before the stream, taken after its start
    del proxy.table.relays[(ORIGIN_2, 8)]  # call 8 answered
    views.append(View(2, (1, 2, 3, 4, 5), (1, 2, 5)))  # node 5 joins the shard; node 1 stays
    if last_block_in:
        proxy.streams = SimpleNamespace(relay=glue.relay, not_sent=lambda c, i: pytest.fail("refused"))
        glue.deliver(conn, start, payload, 0)
        assert glue.relay.relays[(ORIGIN_2, 9)].whole
    assert _take(proxy, glue, conn, "call 10") == 1  # stream 9 is unanswered at node 1: follow it
