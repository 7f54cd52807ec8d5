"""Streamed calls in one process, without sockets: the client's windows of blocks, the
contact's buffer laid out as the multicast payload, its digest check and its bounds (per
identity, per node, stalls, closed connections)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from blake3 import blake3

from derecho_actors.caller import large_calls
from derecho_actors.caller.calls import Request, outbound
from derecho_actors.caller.session import encode_output
from derecho_actors.node.client_streams import MIN_STREAM_RATE
from derecho_actors.wire import codec as _codec
from derecho_actors.wire.messages import CallKind
from derecho_actors.wire.stream_payload import payload_layout, stamp
from derecho_actors.wire.streams import StreamStart, block_frame, parse_stream, start_frame
from runtime.errors import ClientLimit, DerechoError, PayloadTooLarge, WireError
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.control import Welcome
from tests.api.stream_fakes import SHARD, Conn, Ident, Node, block_messages, contact_streams, start_message

pytestmark = pytest.mark.timeout(30)


class Harness:
    def __init__(self, **limits: Any) -> None:
        self.node = Node()
        self.admitted: DerechoError | None = None  # what admit answers
        self.delivered: list[tuple[StreamStart, bytes]] = []
        self.refused: list[tuple[int, DerechoError]] = []
        self.streams = contact_streams(
            self.node,
            self._deliver,
            lambda conn, call_id, error: self.refused.append((call_id, error)),
            lambda conn, start: self.admitted,
            **limits,
        )

    def _deliver(self, conn: Any, start: StreamStart, payload: bytearray, base: int) -> None:
        self.delivered.append((start, bytes(payload[base : base + start.size])))

    def send(self, conn: Conn, call_id: int, data: bytes, block: int = 1000, corrupt: int = -1) -> None:
        """The messages a client sends for one call, as a contact reads them."""
        for message in [start_message(call_id, data), *block_messages(call_id, data, block=block, corrupt=corrupt)]:
            self.streams.on_data(conn, message)  # type: ignore[arg-type]


def test_the_buffer_is_the_payload_the_ordered_path_would_make() -> None:
    args = os.urandom(70_000)
    buffer, base = payload_layout(3, 42, "put", len(args), (11, 12, 13, 14))
    buffer[base : base + len(args)] = args
    stamp(buffer, 1_800_000_000_123)
    ours = _codec.decode_ordered(bytes(buffer))
    theirs = _codec.decode_ordered(
        _codec.encode_ordered([_codec.PendingCall(3, 42, "put", args, 11, 12, 13, 14)], 1 << 30, 1_800_000_000_123)[0]
    )
    assert ours == theirs


def test_a_whole_call_is_delivered_once_with_its_bytes() -> None:
    h = Harness()
    data = os.urandom(10_500)
    h.send(Conn(77), 4, data)
    assert [(s.call_id, d) for s, d in h.delivered] == [(4, data)] and not h.refused
    assert h.streams.status()["streams"] == 0
    assert h.streams.total == len(data)  # held until a replica answers
    h.streams.replied([(4, True, b"", 77, 1)])
    assert h.streams.total == 0 and not h.streams.held


def test_a_corrupted_block_is_refused_and_not_delivered() -> None:
    h = Harness()
    h.send(Conn(77), 4, os.urandom(5000), corrupt=2000)
    assert not h.delivered
    assert [(c, type(e)) for c, e in h.refused] == [(4, WireError)]
    assert "do not match the digest" in str(h.refused[0][1])
    assert h.streams.total == 0 and not h.streams.streams


def test_a_block_out_of_order_is_refused() -> None:
    h = Harness()
    conn = Conn(77)
    data = os.urandom(3000)
    start = start_frame(4, ("Blobs", 0, 0), "put", 1, len(data), blake3(data).digest())
    h.streams.on_data(conn, start[11:])  # the frame's data: past prefix, array, tag and bin32 header
    head, view = block_frame(4, 1000, memoryview(data)[1000:2000])
    h.streams.on_data(conn, head[11:] + bytes(view))
    assert [type(e) for _, e in h.refused] == [WireError] and "where byte 0" in str(h.refused[0][1])
    assert h.streams.total == 0


def test_an_identity_is_bounded_over_all_its_connections() -> None:
    h = Harness(client_stream_bytes=10_000, client_max_streams=2)
    alice = [Conn(1, Ident("alice")), Conn(2, Ident("alice"))]
    data = os.urandom(6000)
    start = start_frame(1, ("Blobs", 0, 0), "put", 1, len(data), blake3(data).digest())[11:]
    h.streams.on_data(alice[0], start)
    h.streams.on_data(alice[1], start)  # 12,000 bytes held by alice: over her 10,000
    assert [type(e) for _, e in h.refused] == [ClientLimit]
    assert "limits.client_stream_bytes" in str(h.refused[0][1]) and "wait for earlier" in str(h.refused[0][1])
    h.streams.on_data(Conn(3, Ident("bob")), start)  # another identity has its own budget
    assert len(h.refused) == 1 and len(h.streams.streams) == 2


def test_an_identity_streams_at_most_so_many_calls_at_once() -> None:
    h = Harness(client_max_streams=1)
    conn = Conn(1, Ident("alice"))
    for call_id in (1, 2):
        h.streams.on_data(conn, start_frame(call_id, ("Blobs", 0, 0), "put", 1, 100, bytes(32))[11:])
    assert len(h.refused) == 1 and "limits.client_max_streams" in str(h.refused[0][1])


def test_the_node_bounds_every_clients_streams_together() -> None:
    h = Harness(client_streams_total_bytes=1000)
    h.streams.on_data(Conn(1), start_frame(1, ("Blobs", 0, 0), "put", 1, 800, bytes(32))[11:])
    h.streams.on_data(Conn(2), start_frame(1, ("Blobs", 0, 0), "put", 1, 800, bytes(32))[11:])
    assert len(h.refused) == 1 and "limits.client_streams_total_bytes" in str(h.refused[0][1])


def test_a_stalled_stream_is_dropped_and_refused() -> None:
    h = Harness(client_stream_stall_ms=1000)
    h.streams.on_data(Conn(1), start_frame(1, ("Blobs", 0, 0), "put", 1, 800, bytes(32))[11:])
    h.node.advance(0.5)
    assert not h.refused and h.streams.total == 800
    for _ in range(4):
        h.node.advance(0.3)
    assert [type(e) for _, e in h.refused] == [ClientLimit] and "client_stream_stall_ms" in str(h.refused[0][1])
    assert h.streams.total == 0 and not h.streams.streams and not h.node.timers


def test_a_closed_connection_frees_its_streams() -> None:
    h = Harness()
    conn = Conn(1)
    h.streams.on_data(conn, start_frame(1, ("Blobs", 0, 0), "put", 1, 5000, bytes(32))[11:])
    h.streams.on_data(conn, start_frame(2, ("Blobs", 0, 0), "put", 1, 5000, bytes(32))[11:])
    assert h.streams.total == 10_000
    h.streams.forget(conn)
    assert h.streams.total == 0 and not h.streams.streams and not h.streams.held


def test_a_refused_start_is_refused_and_its_blocks_dropped() -> None:
    h = Harness()
    h.admitted = ClientLimit("no")
    h.send(Conn(1), 3, os.urandom(2500))
    assert [c for c, _ in h.refused] == [3] and not h.delivered
    assert h.streams.dropped_blocks == 3 and h.streams.total == 0


def test_garbage_closes_the_connection() -> None:
    h = Harness()
    conn = Conn(1)
    h.streams.on_data(conn, b"\xc1\x07junk")
    assert conn.closed
    with pytest.raises(WireError):
        parse_stream(b"\xc1\x01" + b"\x93\x01\x02\x03")


def _request(size: int, ordered: bool = True) -> Request:
    return Request(SHARD, CallKind.METHOD, "put", os.urandom(size), ordered, 0, "Blobs.put", lambda b: b)


def test_the_client_streams_a_window_at_a_time_and_again_after_a_failover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(large_calls, "WINDOW", 3000)
    streams = large_calls.CallStreams()
    streams.limit((8 << 10) + 4000)
    assert (streams.above, streams.block) == (2976, 4000)  # calls above ~3 KB stream, in blocks of 4000 bytes
    streams.block = 1000
    r = _request(5500)
    assert streams.wants(r) and not streams.wants(_request(100))
    streams.add(r, outbound(r, 9, 1))
    assert streams.parts() == []  # not connected
    assert streams.connect() == 1
    first = streams.parts()
    assert len(first) == 1 + 2 * 3  # the start, then three blocks of two parts each
    rest = streams.parts()
    assert len(rest) == 2 * 3 and streams.parts() == [] and not streams.ready
    data = b"".join(bytes(p) for p in first + rest)
    got = b"".join(bytes(m.data[18:]) for m in FrameDecoder(1 << 20).feed(data)[1:])  # type: ignore[union-attr]
    assert got == r.args
    streams.connect()  # a new contact: from the first byte again
    assert streams.ready and bytes(streams.parts()[0]) == bytes(first[0])
    streams.drop([9])
    assert not streams.ready and not streams.calls


def test_a_p2p_call_too_large_for_a_frame_is_refused_at_the_caller() -> None:
    streams = large_calls.CallStreams()
    streams.limit(1 << 20)
    with pytest.raises(PayloadTooLarge, match="make the method @ordered"):
        streams.wants(_request(2 << 20, ordered=False))


def test_a_delivered_call_never_answered_stops_counting_after_a_while() -> None:
    h = Harness(client_streams_total_bytes=12_000)
    data = os.urandom(10_000)
    h.send(Conn(1), 1, data)
    assert h.streams.total == 10_000 and len(h.delivered) == 1
    h.streams.on_data(Conn(2), start_frame(1, ("Blobs", 0, 0), "put", 1, 5000, bytes(32))[11:])
    assert "client_streams_total_bytes" in str(h.refused[-1][1])  # the first still counts
    h.node.now += 121  # no answer ever came (its shard lost): taken as gone
    h.streams.on_data(Conn(2), start_frame(2, ("Blobs", 0, 0), "put", 1, 5000, bytes(32))[11:])
    assert len(h.refused) == 1 and h.streams.total == 5000 and not h.streams.sent


def _written(session: large_calls.StreamingSession) -> bytes:
    """What the socket loop would write, in its order: each turn the session's output, then a
    window of its streams, until nothing is left."""
    out = b""
    for _ in range(1000):
        if not session.has_output():
            return out
        out += encode_output(session.output())
        out += b"".join(bytes(p) for p in session.stream_output())
    raise AssertionError("the session never ran out of output")


def test_calls_made_after_a_stream_are_written_after_its_last_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's promise, calls from one caller keep their order: the contact multicasts a
    streamed call when its last block arrives, so a call made after it must not be written
    before that block (nor a later stream start before a call made ahead of it), on the first
    connection and after a failover."""
    monkeypatch.setattr(large_calls, "WINDOW", 3000)
    session = large_calls.StreamingSession(["127.0.0.1:1", "127.0.0.1:2"], session_ns=1)
    welcome = frame(Welcome(1 << 20, (8 << 10) + 4000, 30_000, 4096))  # its frame limit: the streams'
    session.connected(1.0, "127.0.0.1:1")
    session.receive_data(1.0, welcome)
    session.streams.block = 1000
    big, small, big2, small2 = _request(5500), _request(100), _request(4200), _request(120)
    for r in (big, small, big2, small2):
        session.call(r)

    def check(data: bytes) -> None:
        at = [data.find(r.args[-100:]) for r in (big, small, big2, small2)]
        assert all(a >= 0 for a in at), at
        assert at == sorted(at), f"written out of call order: {at}"
        assert data.find(big2.args[:100]) > at[1]  # the second stream starts after the call before it

    check(_written(session))
    session.connection_lost(2.0, "reset")
    hello = session.connected(2.0, "127.0.0.1:2")
    assert hello.find(small.args) < 0 and hello.find(small2.args) < 0  # held for the streams ahead
    assert not session.has_output() and session.stream_output() == [], "nothing before the Welcome"
    session.receive_data(2.1, welcome)
    check(hello + _written(session))
    assert session.resent == 4
    session.answered([1])  # the first stream answered: nothing waits for it any more
    assert not session.streams.ready or session.streams.first_unfinished() == 3


def _start(call_id: int, size: int) -> bytes:
    return start_frame(call_id, ("Blobs", 0, 0), "put", 1, size, bytes(32))[11:]


def test_a_start_costs_its_own_bytes_not_the_size_it_declares() -> None:
    """A 68-byte start declaring 512 MiB made the contact zero-fill 512 MiB on its loop (~0.23 s),
    as often as a client sent one: the buffer now grows with the blocks that arrive."""
    h = Harness()
    h.streams.on_data(Conn(1, Ident("alice")), _start(1, 512 << 20))
    (stream,) = h.streams.streams.values()
    assert len(stream.buffer) < 200 and h.streams.total == 512 << 20  # counted against the bound all the same


def test_a_start_again_on_the_same_connection_closes_it() -> None:
    h = Harness()
    conn, other = Conn(1, Ident("alice")), Conn(2, Ident("alice"))
    h.streams.on_data(other, _start(1, 5000))
    h.streams.on_data(conn, _start(1, 5000))
    h.streams.on_data(conn, _start(1, 5000))  # a client starts a call again only on a new connection
    assert conn.closed and not other.closed
    assert list(h.streams.streams) == [(other, 1)] and h.streams.total == 5000


def test_a_trickling_stream_is_dropped_once_under_the_least_rate() -> None:
    """One byte every few seconds kept a stream (and its share of the node's bound) for ever."""
    h = Harness(client_stream_stall_ms=10_000)
    conn = Conn(1)
    data = os.urandom(4 << 20)
    h.streams.on_data(conn, start_frame(1, ("Blobs", 0, 0), "put", 1, len(data), blake3(data).digest())[11:])
    allowed = 10.0 + len(data) / MIN_STREAM_RATE  # 14 s
    sent = 0
    while h.node.now + 5.0 - 10.0 < allowed:  # a byte every 5 s: never silent for 10 s
        head, view = block_frame(1, sent, memoryview(data)[sent : sent + 1])
        h.streams.on_data(conn, head[11:] + bytes(view))
        sent += 1
        h.node.advance(5.0)
    assert not h.refused
    h.node.advance(5.0)
    assert [type(e) for _, e in h.refused] == [ClientLimit] and "bytes/s" in str(h.refused[0][1])
    assert h.streams.total == 0 and not h.streams.streams


def test_without_tls_a_host_is_one_budget_over_all_its_connections() -> None:
    h = Harness(client_stream_bytes=10_000)
    h.streams.on_data(Conn(1, address="127.0.0.5:4000"), _start(1, 6000))
    h.streams.on_data(Conn(2, address="127.0.0.5:4001"), _start(1, 6000))  # same host, another port
    assert [type(e) for _, e in h.refused] == [ClientLimit] and "client_stream_bytes" in str(h.refused[0][1])
    h.streams.on_data(Conn(3, address="127.0.0.6:4000"), _start(1, 6000))  # another host
    assert len(h.refused) == 1 and h.streams.total == 12_000


def test_one_call_streamed_again_and_again_holds_at_most_two_copies() -> None:
    """A failover back here may stream a delivered call again (forgiven: one copy's worth);
    every copy stays counted until the answer, so a client cannot keep a call's copies
    flowing into the order while only the last is counted."""
    h = Harness(client_stream_bytes=10_000, client_streams_total_bytes=10_000)
    one, other = Conn(5, Ident("alice")), Conn(5, Ident("alice"))  # two connections of one session
    data = os.urandom(9000)
    for i in range(6):
        h.send(one if i % 2 == 0 else other, 1, data)
    assert len(h.delivered) == 2 and len(h.refused) == 4
    assert all(isinstance(e, ClientLimit) for _, e in h.refused)
    assert h.streams.total == 18_000  # both delivered copies, unanswered
