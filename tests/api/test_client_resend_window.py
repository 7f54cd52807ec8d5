"""After a failover a ``ClientSession`` resends its waiting calls only once the new contact's
``Welcome`` says its limit on calls in flight, at most that many at once, the rest as answers
free room: none is refused with ``ClientLimit`` by a contact that allows fewer than the last.
Bytes in, frames out, no sockets (the fake contact of ``test_client_session``)."""

from __future__ import annotations

import os
import random

import pytest

from derecho_actors.caller.calls import Request
from derecho_actors.caller.large_calls import StreamingSession
from derecho_actors.caller.session import encode_output
from derecho_actors.wire.messages import CallKind
from runtime.wire.codec import frame, welcome_frame
from runtime.wire.control import Welcome
from tests.api.test_client_session import SHARD, WELCOME, answer, call, connect, feed, ids, ok, session, written

pytestmark = pytest.mark.timeout(30)


def welcome(max_in_flight: int, protocol: int = 5) -> bytes:
    """A contact's Welcome as a client of ``protocol`` reads it (4: three fields, no limit said)."""
    return welcome_frame(Welcome(4096, 8192, 30_000, max_in_flight), protocol)


@pytest.mark.parametrize(
    ("waiting", "max_outstanding", "contact_welcome", "first"),
    [
        (50, 4096, welcome(10), 10),  # the new contact allows fewer than wait: 10 go, the rest as room frees
        (50, 4096, welcome(4096), 50),  # room for every one
        (50, 20, welcome(4096), 20),  # the client's own limit is the lower
        (50, 4096, welcome(10, protocol=4), 50),  # an older client's Welcome says no limit: its own
        (5, 4096, welcome(10), 5),  # fewer waiting than the limit
        (1, 4096, welcome(1), 1),
    ],
    ids=["limit-below-waiting", "room-for-all", "own-limit-lower", "protocol-4-welcome", "fewer-waiting", "limit-1"],
)
def test_a_failover_resends_after_the_welcome_at_most_the_window(
    waiting: int, max_outstanding: int, contact_welcome: bytes, first: int
) -> None:
    s = session(max_outstanding=4096)
    connect(s)
    feed(s, 0.0, WELCOME)  # the first contact allows every call
    results = [call(s, n) for n in range(1, waiting + 1)]
    assert ids(written(s.data_to_send())) == list(range(1, waiting + 1))
    s.max_outstanding = max_outstanding
    s.connection_lost(0.1, "reset")

    _, frames = connect(s, 0.2)
    assert ids(frames) == [], "nothing resent with the Hello"
    assert not s.has_output() and s.data_to_send() == b"", "nothing resent before the Welcome"
    assert "Welcome" in (s.why_waiting() or "")
    feed(s, 0.3, contact_welcome)
    sent = ids(written(s.data_to_send()))
    assert sent == list(range(1, first + 1)), "the oldest, in order, as many as the window has room for"
    if first < waiting:
        assert "wait for room" in (s.why_waiting() or "")

    # Each answer frees room for one more held call, in order; a call made meanwhile goes behind them.
    later = call(s, waiting + 1)
    now, answered = 0.4, 0
    while answered < waiting + 1:
        cid = sent[answered]
        feed(s, now, answer(2, (2,), ok(cid, cid)))
        answered += 1
        more = ids(written(s.data_to_send()))
        assert len(sent) + len(more) - answered <= s.window, "never more than the window in flight"
        sent += more
        now += 0.01
    assert sent == list(range(1, waiting + 2)), "every call sent again once, in order, the new one last"
    assert [r.get(0) for r in results + [later]] == [{2: n} for n in range(1, waiting + 2)]
    assert s.in_flight == 0 and s.why_waiting() is None


def test_calls_not_resent_when_the_connection_is_lost_again_stay_waiting() -> None:
    s = session()
    connect(s)
    feed(s, 0.0, WELCOME)
    results = [call(s, n) for n in range(1, 31)]
    s.data_to_send()
    s.connection_lost(0.1, "reset")
    connect(s, 0.2)
    feed(s, 0.3, welcome(10))
    assert ids(written(s.data_to_send())) == list(range(1, 11))
    feed(s, 0.4, answer(2, (2,), *(ok(n, n) for n in range(1, 4))))
    assert ids(written(s.data_to_send())) == [11, 12, 13]
    s.connection_lost(0.5, "reset")  # 14..30 never went on that connection
    connect(s, 0.6)
    assert s.data_to_send() == b""
    feed(s, 0.7, welcome(100))
    assert ids(written(s.data_to_send())) == list(range(4, 31)), "every unanswered call, once, in order"
    feed(s, 0.8, answer(3, (3,), *(ok(n, n) for n in range(4, 31))))
    assert [r.get(0) for r in results[:3]] == [{2: n} for n in range(1, 4)]
    assert [r.get(0) for r in results[3:]] == [{3: n} for n in range(4, 31)]


def test_a_call_resolved_while_held_is_not_sent() -> None:
    """A view notice can resolve a held call (its replica left): it is skipped."""
    s = session()
    connect(s)
    feed(s, 0.0, WELCOME)
    [call(s, n) for n in range(1, 5)]
    s.data_to_send()
    s.connection_lost(0.1, "reset")
    connect(s, 0.2)
    feed(s, 0.3, welcome(2))
    assert ids(written(s.data_to_send())) == [1, 2]
    s.answered([3])  # as ``Answers.deliver`` reports a call resolved by a departure
    assert ids(written(s.data_to_send())) == []
    feed(s, 0.4, answer(2, (2,), ok(1, 1)))
    assert ids(written(s.data_to_send())) == [4]


def test_the_first_connection_sends_calls_made_before_it_once_welcomed() -> None:
    s = session()
    [call(s, n) for n in range(1, 8)]
    _, frames = connect(s)
    assert ids(frames) == []
    feed(s, 0.1, frame(Welcome(4096, 8192, 30_000, 3)))
    assert ids(written(s.data_to_send())) == [1, 2, 3]


def test_a_streaming_session_resends_its_calls_before_a_stream_within_the_window() -> None:
    """Calls made before a streamed one are held to the window like any; the stream restarts
    only once they are all sent, and a call made after the stream still goes after its blocks."""
    s = StreamingSession(["a:1", "b:2"], session_ns=1, rng=random.Random(3))
    small_frame = frame(Welcome(1 << 20, (8 << 10) + 4000, 30_000, 2))  # calls above ~3 KB stream
    s.next_step(0.0)
    s.connected(0.0, "a:1")
    s.receive_data(0.0, frame(Welcome(1 << 20, (8 << 10) + 4000, 30_000, 4096)))
    requests = [_request(100), _request(100), _request(100), _request(5000), _request(100)]
    for r in requests:
        s.call(r)
    s.data_to_send(), s.stream_output()
    s.connection_lost(0.1, "reset")
    s.next_step(0.2)
    s.connected(0.2, "b:2")
    assert not s.has_output() and s.stream_output() == [], "nothing, not even the stream, before the Welcome"
    s.receive_data(0.3, small_frame)
    first = _everything(s)
    assert [first.find(r.args) >= 0 for r in requests] == [True, True, False, False, False], "the window: 2"
    s.answered([1])
    rest = _everything(s)
    at = [rest.find(r.args[-100:]) for r in requests[2:]]
    # The third call, then the stream (a stream restarting goes regardless of the window: in
    # flight may pass it by the large calls waiting); the call made after it waits for room.
    assert at[0] >= 0 and at[1] > at[0] and at[2] == -1, f"the third call, then the stream: {at}"
    s.answered([2, 3])
    assert _everything(s).find(requests[4].args) >= 0, "the call after the stream, once there is room"


def test_calls_after_a_stream_wait_for_room_and_an_answered_stream_frees_none() -> None:
    """After a failover to a window of 2: calls 1 and 2 go, then the stream 3 (regardless); 4
    and 5 behind it wait for answers. A stream answered while held (a departure resolves it)
    counts as answered, not as room beyond the window (rev17)."""
    requests = [_request(100), _request(100), _request(5000), _request(100), _request(100)]
    s, sent = _failed_over_to_a_window_of_2(requests)
    assert [sent.find(r.args[-100:]) >= 0 for r in requests] == [True, True, True, False, False]
    s.answered([1])
    assert _everything(s) == b"", "2 and the stream in flight: no room for 4"
    s.answered([2, 3])
    sent = _everything(s)
    assert [sent.find(r.args[-100:]) >= 0 for r in requests[3:]] == [True, True]

    requests = [_request(100), _request(100), _request(100), _request(5000)]
    s, sent = _failed_over_to_a_window_of_2(requests)
    assert [sent.find(r.args[-100:]) >= 0 for r in requests] == [True, True, False, False]
    s.answered([4])  # the stream, resolved while held: 1 and 2 still in flight
    assert _everything(s).find(requests[2].args) == -1, "window 2 with 1 and 2 in flight, yet 3 went"


def _failed_over_to_a_window_of_2(requests: list[Request]) -> tuple[StreamingSession, bytes]:
    """A streaming session that made ``requests`` on a contact taking 4096 in flight, wrote them
    all, and failed over to one taking 2: the session and what it wrote after the Welcome."""
    s = StreamingSession(["a:1", "b:2"], session_ns=1, rng=random.Random(3))
    s.next_step(0.0)
    s.connected(0.0, "a:1")
    s.receive_data(0.0, frame(Welcome(1 << 20, (8 << 10) + 4000, 30_000, 4096)))
    for r in requests:
        s.call(r)
    _everything(s)
    s.connection_lost(0.1, "reset")
    s.next_step(0.2)
    s.connected(0.2, "b:2")
    s.receive_data(0.3, frame(Welcome(1 << 20, (8 << 10) + 4000, 30_000, 2)))
    return s, _everything(s)


def _request(size: int) -> Request:
    return Request(SHARD, CallKind.METHOD, "put", os.urandom(size), True, 0, "Blobs.put", lambda b: b)


def _everything(s: StreamingSession) -> bytes:
    """What the socket loop writes until the session has nothing more: its output, then its streams' windows."""
    out = b""
    while s.has_output():
        out += encode_output(s.output()) + b"".join(bytes(p) for p in s.stream_output())
    return out
