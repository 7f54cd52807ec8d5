"""The replica's event log and parked polls (``_events``): pure, table-driven."""

from __future__ import annotations

import pytest

from derecho_actors.replica import events as _events
from derecho_actors.replica.events import EventLog, PollCall, WatchBoard, WatchExpire, WatchPoll
from derecho_actors.wire.events import BEGINNING, LAST, PollArgs, decode_answer, decode_poll, encode_poll
from runtime.core.versions import make_version
from runtime.errors import WatchHistoryLost, WireError

pytestmark = pytest.mark.timeout(10)


def log_of(*events: tuple[int, int], limit: int = 100) -> EventLog:
    log = EventLog(limit)
    for version, count in events:
        for _ in range(count):
            log.append(version, b"%d" % version)
    return log


def poll(cursor: tuple[int, int] | None, watch_id: int = 1, max_events: int = 100, hold: float = 5.0) -> WatchPoll:
    return WatchPoll(
        vid=1, caller=7, call_id=watch_id * 100, origin=9, args=PollArgs(watch_id, cursor, max_events, hold)
    )


@pytest.mark.parametrize(
    ("cursor", "bound", "max_events", "want", "next_cursor"),
    [
        (BEGINNING, 10, 100, [(3, 0), (3, 1), (5, 0), (9, 0)], (9, 0)),
        ((3, 0), 10, 100, [(3, 1), (5, 0), (9, 0)], (9, 0)),  # mid-call: the rest of its events
        ((3, LAST), 10, 100, [(5, 0), (9, 0)], (9, 0)),  # a version: later calls only
        (BEGINNING, 5, 100, [(3, 0), (3, 1), (5, 0)], (5, 0)),  # held back above the bound
        (BEGINNING, 10, 2, [(3, 0), (3, 1)], (3, 1)),  # at most max_events
        ((9, 0), 10, 100, None, None),  # nothing new: parked
        ((5, 0), 4, 100, None, None),  # the next one is above the bound: parked
    ],
)
def test_poll_answers_what_follows_the_cursor_up_to_the_bound(
    cursor: tuple[int, int], bound: int, max_events: int, want: list[tuple[int, int]] | None, next_cursor: object
) -> None:
    board = WatchBoard(log_of((3, 2), (5, 1), (9, 1)))
    answers = board.poll(poll(cursor, max_events=max_events), bound)
    if want is None:
        assert answers == [] and len(board.parked) == 1
        return
    ((_, payload),) = answers
    got_cursor, events = decode_answer(payload)
    assert [(v, i) for v, i, _ in events] == want
    assert got_cursor == next_cursor


def test_parked_poll_is_answered_when_events_pass_the_bound_and_the_empty_answer_advances() -> None:
    log = log_of((3, 1))
    board = WatchBoard(log)
    assert board.poll(poll((3, 0)), bound=3) == []
    log.append(4, b"x")
    assert board.release(bound=3) == []  # version 4 is not releasable yet (not persisted everywhere)
    ((p, payload),) = board.release(bound=4)
    assert p.call_id == 100 and decode_answer(payload)[1] == [(4, 0, b"x")]
    assert board.parked == {}
    # Expired with nothing new: the cursor moves up to the bound (nothing was missed there).
    assert board.poll(poll((4, 0)), bound=6) == []
    ((_, payload),) = board.expire(WatchExpire((PollCall(7, 100, 9),)), bound=6)
    assert decode_answer(payload) == ((6, LAST), [])
    assert board.expire(WatchExpire((PollCall(7, 100, 9),)), bound=6) == []  # once


def test_a_watch_asking_again_replaces_its_parked_poll_and_the_board_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = WatchBoard(log_of((3, 1)))
    assert board.poll(poll((3, 0)), 3) == []
    again = WatchPoll(1, 7, 101, 9, PollArgs(1, (3, 0), 100, 5.0))
    ((old, _),) = board.poll(again, 3)
    assert old.call_id == 100 and len(board.parked) == 1
    monkeypatch.setattr(_events, "MAX_PARKED", 2)
    assert board.poll(poll((3, 0), watch_id=2), 3) == []
    ((evicted, _),) = board.poll(poll((3, 0), watch_id=3), 3)
    assert evicted.call_id == 101 and len(board.parked) == 2


@pytest.mark.parametrize(
    ("setup", "cursor", "lost"),
    [
        ("began anew", (make_version(2, 7), 0), True),  # a position of a state that is gone
        ("began anew", BEGINNING, False),  # from the beginning: of this state
        ("began anew", (make_version(3, 0), 0), False),
        ("trimmed", BEGINNING, True),
        ("trimmed", (2, 0), True),
        ("trimmed", (3, 0), False),  # the last one dropped is the cursor itself: nothing missing
        ("restarted", (7, 0), True),
        ("restarted", (8, LAST), False),
        ("from now", None, False),
    ],
)
def test_history_lost_is_an_error_not_a_gap(setup: str, cursor: tuple[int, int] | None, lost: bool) -> None:
    if setup == "began anew":
        log = EventLog(100)
        log.began_at(3)  # an atomic type's total restart, or a shard new in view 3
        log.append(make_version(3, 0), b"x")
    elif setup == "trimmed":
        log = log_of((1, 1), (2, 1), (3, 1), (4, 1), (5, 1), limit=2)  # keeps 4 and 5; dropped up to 3
    else:
        log = log_of((1, 1))
        log.restarted_at(8)  # rebuilt from the persistent log up to version 8
    board = WatchBoard(log)
    if lost:
        with pytest.raises(WatchHistoryLost, match="read the state again"):
            board.poll(poll(cursor, hold=0), 9)
    else:
        ((_, payload),) = board.poll(poll(cursor, hold=0), 9)
        decode_answer(payload)


def test_state_round_trip_and_polls_on_the_wire() -> None:
    log = log_of((1, 2), (2, 1), limit=2)
    log.began_at(1)
    copy = EventLog(2)
    copy.load_state(log.to_state())
    assert list(copy.events) == list(log.events) and copy.floor == log.floor == (1, 0)
    assert copy.started == log.started == (make_version(1, 0) - 1, LAST)
    p = PollArgs(5, (3, 2), 10, 2.5)
    assert decode_poll(encode_poll(p)) == p
    assert decode_poll(encode_poll(PollArgs(5, None, 10**9, 1e9))) == PollArgs(5, None, 100_000, 60.0)
    for bad in (b"", b"\x93\x01\x02\x03", b"\xc1"):
        with pytest.raises(WireError, match="malformed watch request"):
            decode_poll(bad)


def test_the_log_is_bounded_in_bytes_as_in_events_the_same_at_every_replica() -> None:
    big = bytes(_events.MAX_EVENT_BYTES)
    logs = [EventLog(10_000), EventLog(10_000)]
    for log in logs:
        for v in range(40):  # 160 MiB of events, far under 10,000 of them
            log.append(make_version(1, v), big)
        assert log.bytes <= _events.MAX_LOG_BYTES and log.bytes == sum(len(e[2]) for e in log.events)
        assert len(log.events) == _events.MAX_LOG_BYTES // len(big)
    assert logs[0].floor == logs[1].floor == (make_version(1, 39 - len(logs[0].events)), 0)
    with pytest.raises(WatchHistoryLost, match="MiB"):
        WatchBoard(logs[0]).poll(poll((make_version(1, 0), 0), hold=0), make_version(1, 39))
    again = EventLog(10_000)
    again.load_state(logs[0].to_state())
    assert again.bytes == logs[0].bytes and again.floor == logs[0].floor
