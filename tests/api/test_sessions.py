"""The exactly-once session table: verdicts, bounds and expiry, as every replica computes them."""

from __future__ import annotations

import pytest

from derecho_actors.replica.sessions import DUPLICATE, EVICTED, EXPIRED, FORGOTTEN, FULL, NEW, SessionTable, owner_of

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


# ------------------------------------------------------------------ per-identity bound
def owned(t: SessionTable, origin: int, call_id: int, ts_s: int, owner: int, session_s: int = 1000) -> str:
    """Deliver one call of a session opened by ``owner`` (as the contact stamped it)."""
    t.tick(ts_s * S)
    verdict = t.check(origin, call_id, session_s * S, owner)
    if verdict.kind == NEW:
        t.applied(origin, call_id, (True, b"r"), 0, owner, session_s * S)
    return verdict.kind


def test_one_owner_churns_only_its_own_sessions_while_others_still_get_sessions() -> None:
    t = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=3)
    # Six sessions of one identity, started one second apart: each is served; past three,
    # each new one ends that identity's least recently used session.
    got = [owned(t, origin, 1, 1000 + origin, owner=5, session_s=1000 + origin) for origin in range(1, 7)]
    assert got == [NEW] * 6
    assert t.owned[5] == {4, 5, 6}
    assert owned(t, 1, 2, 1007, owner=5, session_s=1001) == EVICTED  # an ended session: outcome unknown
    assert owned(t, 9, 1, 1007, owner=5, session_s=1002) == EVICTED  # unknown, started before the floor
    assert owned(t, 6, 2, 1007, owner=5, session_s=1006) == NEW  # the owner's live sessions go on
    assert owned(t, 50, 1, 1007, owner=6) == NEW  # another identity's first call
    assert owned(t, 60, 1, 1007, owner=0) == NEW  # no identity: only the pool bounds it
    assert len(t) == 5


@pytest.mark.parametrize(
    ("steps", "verdicts"),
    [
        # a new session past the bound ends the least recently used one
        ([(3, 1, 1010, 5, 1010)], [NEW]),
        # ... which is not the earliest started when that one is busy
        (
            [(1, 2, 1060, 5, 1000), (3, 1, 1061, 5, 1061), (2, 2, 1062, 5, 1005), (1, 3, 1062, 5, 1000)],
            [NEW, NEW, EVICTED, NEW],
        ),
        # a retry in the ended session is refused (it may have been applied), never re-run
        ([(3, 1, 1010, 5, 1010), (1, 1, 1011, 5, 1000)], [NEW, EVICTED]),
        # a session that started after the ended one goes on
        ([(3, 1, 1010, 5, 1010), (2, 2, 1011, 5, 1005)], [NEW, NEW]),
        # expired sessions free room first: nothing is ended
        ([(3, 1, 1102, 5, 1102), (2, 2, 1103, 5, 1005)], [NEW, NEW]),
    ],
)
def test_ending_sessions_is_the_same_at_every_replica(steps: list[tuple[int, ...]], verdicts: list[str]) -> None:
    a = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=2)
    b = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=2)
    for t in (a, b):
        owned(t, 1, 1, 1000, owner=5, session_s=1000)
        owned(t, 2, 1, 1050, owner=5, session_s=1005)
    b._sweep()  # one replica frees memory at another moment
    assert [owned(a, *s) for s in steps] == [owned(b, *s) for s in steps] == verdicts
    assert a.owned == b.owned and a.evicted_floor == b.evicted_floor


def test_a_session_replayed_from_the_log_is_ended_safely() -> None:
    """A replayed session learns its start and owner from its next call; ended later, its
    retries are refused, never run twice, and a refused call ends nobody else's session."""
    t = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=2)
    t.replayed(1, 5, 1000 * S)
    assert owned(t, 1, 6, 1001, owner=5, session_s=999) == NEW
    assert t.sessions[1].start_ns == 999 * S
    assert owned(t, 2, 1, 1002, owner=5, session_s=1002) == NEW
    assert owned(t, 3, 1, 1003, owner=5, session_s=1003) == NEW  # ends session 1
    assert owned(t, 1, 6, 1004, owner=5, session_s=999) == EVICTED
    assert t.owned[5] == {2, 3}  # the refused retry ended nobody
    # Past the pool, a refused call (FULL) ends no session of its owner either.
    full = SessionTable(ttl_ns=100 * S, max_sessions=2, max_per_owner=5)
    owned(full, 1, 1, 1000, owner=5, session_s=1000)
    owned(full, 2, 1, 1000, owner=6, session_s=1000)
    assert owned(full, 3, 1, 1001, owner=5, session_s=1001) == FULL
    assert full.owned == {5: {1}, 6: {2}}


def test_ending_a_session_of_unknown_start_refuses_every_older_session() -> None:
    t = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=1)
    owned(t, 1, 1, 1000, owner=5, session_s=1000)
    t.sessions[1].start_ns = 0  # as loaded from a state of the release before
    assert owned(t, 2, 1, 1010, owner=5, session_s=1010) == NEW
    assert t.evicted_floor[5] == 1010 * S
    assert owned(t, 1, 2, 1011, owner=5, session_s=1000) == EVICTED


def test_owners_and_ended_sessions_survive_a_state_transfer() -> None:
    t = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=2)
    owned(t, 1, 1, 1000, owner=5, session_s=1000)
    owned(t, 2, 1, 1000, owner=5, session_s=1001)
    owned(t, 3, 1, 1001, owner=5, session_s=1002)  # ends session 1
    copy = SessionTable(ttl_ns=100 * S, max_sessions=10, max_per_owner=2)
    copy.load_state(t.to_state())
    assert owned(copy, 1, 2, 1002, owner=5, session_s=1000) == owned(t, 1, 2, 1002, owner=5, session_s=1000) == EVICTED
    assert owned(copy, 4, 1, 1002, owner=5, session_s=1003) == owned(t, 4, 1, 1002, owner=5, session_s=1003) == NEW
    assert copy.owned == t.owned == {5: {3, 4}}


def test_replies_kept_are_bounded_in_bytes_newest_kept() -> None:
    t = SessionTable(ttl_ns=100 * S, max_sessions=10, reply_bytes=1000)
    t.tick(1000 * S)
    for i in range(1, 21):
        assert t.check(7, i, 1000 * S).kind == NEW
        t.applied(7, i, (True, b"x" * 300), 0)
    assert sorted(t.sessions[7].replies) == [18, 19, 20]
    assert t.check(7, 17, 1000 * S).kind == FORGOTTEN  # applied: never run again
    t.applied(7, 21, (True, b"y" * 5000), 0)  # larger than the bound: still kept, alone
    assert list(t.sessions[7].replies) == [21]


def test_owner_of_is_stable_and_never_zero() -> None:
    assert owner_of("alice") == owner_of("alice") != owner_of("bob")
    assert owner_of("") != 0
