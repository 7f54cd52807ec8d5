"""The exactly-once session table: verdicts, bounds and expiry, as every replica computes them."""

from __future__ import annotations

import pytest

from derecho_actors._sessions import DUPLICATE, EXPIRED, FORGOTTEN, FULL, NEW, SessionTable

S = 10**9  # one second in ns


def table(ttl_s: int = 100, max_sessions: int = 3, window: int = 4) -> SessionTable:
    t = SessionTable(ttl_ns=ttl_s * S, max_sessions=max_sessions, window=window)
    t.tick(1000 * S)
    return t


def apply(t: SessionTable, origin: int, call_id: int, ts_s: int, floor: int = 0, session_s: int = 1000) -> str:
    """Deliver one call the way a replica does; returns the verdict's kind."""
    t.tick(ts_s * S)
    verdict = t.check(origin, call_id, session_s * S)
    if verdict.kind == NEW:
        t.applied(origin, call_id, (True, f"r{call_id}".encode()), floor)
    return verdict.kind


# (steps, expected kinds): each step is (origin, call_id, ts in s[, floor[, session start in s]])
CASES = [
    ("first call opens a session", [(7, 1, 1000)], [NEW]),
    ("a retry gets the kept reply", [(7, 1, 1000), (7, 1, 1001)], [NEW, DUPLICATE]),
    ("numbers may skip (P2P calls share them)", [(7, 1, 1000), (7, 5, 1001), (7, 5, 1002)], [NEW, NEW, DUPLICATE]),
    ("below the floor the reply is gone", [(7, 1, 1000), (7, 2, 1001, 2), (7, 1, 1002)], [NEW, NEW, FORGOTTEN]),
    ("the window drops old replies", [(7, i, 1000 + i) for i in range(1, 7)] + [(7, 1, 1010)], [NEW] * 6 + [FORGOTTEN]),
    (
        "a silent session expires; its retry is refused",
        [(7, 1, 1000), (8, 1, 1200, 0, 1200), (7, 1, 1201)],
        [NEW, NEW, EXPIRED],
    ),
    ("a fresh session after expiry is welcome", [(7, 1, 1000), (7, 9, 1300, 0, 1300)], [NEW, NEW]),
    (
        "table full: a new session is refused, not applied",
        [(1, 1, 1000), (2, 1, 1000), (3, 1, 1000), (4, 1, 1001)],
        [NEW, NEW, NEW, FULL],
    ),
    (
        "a full table makes room once sessions expire",
        [(1, 1, 1000), (2, 1, 1000), (3, 1, 1000), (4, 1, 1150, 0, 1150)],
        [NEW, NEW, NEW, NEW],
    ),
    ("a session started long ago but unknown here is refused", [(7, 1, 1500, 0, 1000)], [EXPIRED]),
]


@pytest.mark.parametrize(("steps", "kinds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts(steps: list[tuple[int, ...]], kinds: list[str]) -> None:
    t = table()
    got = [apply(t, *step) for step in steps]
    assert got == kinds


def test_replies_kept_are_bounded_by_window_and_floor() -> None:
    t = table(window=4, max_sessions=10)
    for i in range(1, 101):
        apply(t, 7, i, 1000, floor=max(1, i - 2))
    assert sorted(t.sessions[7].replies) == [98, 99, 100]


def test_memory_freed_by_sweeps_without_changing_verdicts() -> None:
    a, b = table(ttl_s=100, max_sessions=1000), table(ttl_s=100, max_sessions=1000)
    for origin in range(1, 200):
        apply(a, origin, 1, 1000)
        apply(b, origin, 1, 1000)
    b._sweep()  # one replica frees memory at another moment than the other
    steps = [(5, 1, 1050), (6, 2, 1050), (300, 1, 1200, 0, 1200), (5, 1, 1201)]
    assert [apply(a, *s) for s in steps] == [apply(b, *s) for s in steps]
    a.tick(2000 * S)
    assert len(a) <= 1  # everything idle since 1200 is gone after the periodic sweep


def test_state_transfer_round_trip_keeps_verdicts() -> None:
    t = table(max_sessions=10)
    for i in range(1, 4):
        apply(t, 7, i, 1000 + i)
    copy = table(max_sessions=10)
    copy.load_state(t.to_state())
    assert [apply(copy, 7, 2, 1005), apply(t, 7, 2, 1005)] == [DUPLICATE, DUPLICATE]
    assert copy.check(7, 2, 1000 * S).reply == (True, b"r2")


def test_replayed_calls_count_but_keep_no_reply() -> None:
    t = SessionTable(ttl_ns=100 * S)
    t.replayed(7, 5, 1000 * S)
    assert t.check(7, 5, 1000 * S).kind == FORGOTTEN
    assert t.check(7, 6, 1000 * S).kind == NEW
