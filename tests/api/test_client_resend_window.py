"""After a failover a ``ClientSession`` resends its waiting calls only once the new contact's
``Welcome`` says its limit on calls in flight, at most that many at once, the rest as answers
free room: none is refused with ``ClientLimit`` by a contact that allows fewer than the last.
Bytes in, frames out, no sockets (the fake contact of ``test_client_session``)."""

from __future__ import annotations

import pytest

from runtime.wire.codec import frame, welcome_frame
from runtime.wire.control import Welcome
from tests.api.test_client_session import WELCOME, answer, call, connect, feed, ids, ok, session, written

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
