"""A contact's merged answers fed a batch at a time (``ResultsFeed.add_agreed_all``, what
``Answers.deliver`` runs) resolve every call exactly as feeding them one by one through
``add_agreed`` does: the fast path (one lock, one decode per run of equal bytes) and the
answers it leaves to ``add_agreed`` alike."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgpack
import pytest

from derecho_actors.caller.answers import Answers, MergedAnswers
from derecho_actors.caller.results import QueryResults
from derecho_actors.wire import codec as _codec
from runtime.errors import DivergenceError

R3 = (1, 2, 3)
NONE_B = msgpack.packb(None)
ERR = _codec.encode_error(RuntimeError("boom"))


def _results(lock: threading.Lock, decode: Any = msgpack.unpackb, compare: str | None = "raise") -> QueryResults:
    return QueryResults("KV.put", decode, True, compare, None, None, None, "client call", lock)


def _outcome(r: QueryResults) -> Any:
    """What a caller sees of a call: done, versions, its answers by node (errors by type)."""
    if not r.done():
        return ("waiting", r.pending, r.version)
    try:
        got: Any = r.get(0)
    except Exception as exc:  # a remote error, a divergence, a value this side cannot decode
        got = type(exc)
    return ("done", r.version, got, r.lost.keys())


# A batch's entries [call id, ok, value, version, answered], and what came before some calls
# (a replica's own answer through add_reply, by call id).
BATCH: list[list[Any]] = [
    [1, True, NONE_B, -1, ()],  # the common case: every replica, None
    [2, True, NONE_B, -1, ()],  # the same bytes again (decoded once)
    [3, True, msgpack.packb(7), 12, ()],  # a version
    [4, True, msgpack.packb([1, 2]), -1, ()],  # a mutable value: each replica its own copy
    [5, True, msgpack.packb([1, 2]), -1, ()],
    [6, False, ERR, -1, ()],  # an error from every replica
    [7, True, NONE_B, -1, (1, 2)],  # from two replicas only
    [8, True, NONE_B, -1, ()],  # a replica answered before (differently): divergence
    [9, True, b"\xc1", -1, ()],  # bytes msgpack cannot decode: each replica's error
    [10, True, NONE_B, -1, R3],  # named in full
    [11, True, NONE_B, -1, ()],  # not waiting any more (no results)
    [12, True, NONE_B, -1, ()],  # a replica known to have left (in view 5) answers all the same
]
BEFORE = {8: (3, msgpack.packb("other"))}
LEFT = {12: {3}}


def _fed(by_batch: bool) -> dict[int, QueryResults]:
    lock = threading.Lock()
    feeds: dict[int, QueryResults] = {e[0]: _results(lock) for e in BATCH if e[0] != 11}
    for call_id, (node, value) in BEFORE.items():
        feeds[call_id].add_reply(node, R3, True, value)
    for call_id, nodes in LEFT.items():
        feeds[call_id].mark_left(nodes, "left the group", 5)
    entries = [list(e) for e in BATCH]
    if by_batch:
        done = Answers([MergedAnswers(R3, 4, entries, [feeds.get(e[0]) for e in entries])]).deliver()
    else:
        done = []
        for call_id, ok, value, version, answered in entries:
            r = feeds.get(call_id)
            if r is not None and r.add_agreed(answered or R3, R3, ok, value, version, 4):
                done.append(call_id)
    assert sorted(done) == [c for c, r in sorted(feeds.items()) if r.done()]
    return feeds


def test_a_batch_resolves_every_call_as_one_by_one_does() -> None:
    one_by_one, batched = _fed(False), _fed(True)
    assert {c: _outcome(r) for c, r in batched.items()} == {c: _outcome(r) for c, r in one_by_one.items()}
    assert _outcome(batched[1]) == ("done", None, {1: None, 2: None, 3: None}, set())
    assert _outcome(batched[3])[1] == 12
    assert _outcome(batched[7])[0] == "waiting" and batched[7].pending == (3,)
    assert _outcome(batched[8])[2] is DivergenceError
    assert _outcome(batched[12]) == ("done", None, {1: None, 2: None, 3: None}, set())  # it answered: back
    # A mutable value is never shared, between replicas or between calls with the same bytes.
    four, five = batched[4].get(0), batched[5].get(0)
    assert four[1] == [1, 2] and four[1] is not four[2] and four[1] is not five[1]


def test_values_decoded_once_per_run_of_equal_bytes_per_decoder() -> None:
    """Equal bytes share one decode only under the same decoder: a call of another type (another
    serializer) decodes its own."""
    calls: list[tuple[str, bytes]] = []

    def decoder(name: str) -> Any:
        def decode(data: bytes) -> Any:
            calls.append((name, data))
            return f"{name}:{msgpack.unpackb(data)}"

        return decode

    lock = threading.Lock()
    a, b = decoder("a"), decoder("b")
    feeds = [_results(lock, a), _results(lock, a), _results(lock, b), _results(lock, a)]
    entries = [[i + 1, True, NONE_B, -1, ()] for i in range(4)]
    done = Answers([MergedAnswers(R3, 1, entries, feeds)]).deliver()
    assert done == [1, 2, 3, 4]
    assert [r.get(0)[2] for r in feeds] == ["a:None", "a:None", "b:None", "a:None"]
    assert calls == [("a", NONE_B), ("b", NONE_B), ("a", NONE_B)]


def test_results_of_another_lock_are_fed_one_by_one() -> None:
    """Only results sharing the batch's lock are recorded under it; others take their own."""
    mine, other = threading.Lock(), threading.Lock()
    feeds = [_results(mine), _results(other), _results(mine)]
    entries = [[i + 1, True, NONE_B, 3, ()] for i in range(3)]
    with other:  # held elsewhere: the batch must not write results guarded by it under its own lock

        def release_soon() -> None:
            threading.Event().wait(0.05)
            other.release()

        t = threading.Thread(target=release_soon)
        t.start()
        done = Answers([MergedAnswers(R3, 1, entries, feeds)]).deliver()
        t.join(5)
        other.acquire()  # for the with block's release
    assert sorted(done) == [1, 2, 3]
    assert all(r.get(0) == {1: None, 2: None, 3: None} and r.version == 3 for r in feeds)


@pytest.mark.timeout(30)
def test_callers_waiting_on_calls_wake_when_their_batch_comes() -> None:
    """A thread in ``get`` and an ``await`` both wake (their waits are far longer than the test
    waits for them: only being woken ends them in time)."""
    lock = threading.Lock()
    feeds = [_results(lock) for _ in range(3)]
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(feeds[1].get(timeout=20)), daemon=True)
    waiter.start()

    async def awaited() -> Any:
        return await asyncio.wait_for(asyncio.shield(feeds[2]._await()), 20)

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(awaited())
        loop.run_until_complete(asyncio.sleep(0.05))  # the awaiter holds its future
        threading.Event().wait(0.05)  # the thread is on its condition
        Answers([MergedAnswers(R3, 1, [[i + 1, True, NONE_B, -1, ()] for i in range(3)], feeds)]).deliver()
        waiter.join(5)
        assert not waiter.is_alive() and got == [{1: None, 2: None, 3: None}]
        assert loop.run_until_complete(asyncio.wait_for(task, 5)) == {1: None, 2: None, 3: None}
    finally:
        loop.close()


def test_calls_answered_alike_share_values_no_call_can_change_for_another() -> None:
    """A run of calls answered with the same value shares one read-only table of it: a later
    answer to one (a node outside its replicas: a copy delivered in another view) goes into
    that call's own copy, and what a caller gets is its own dict."""
    lock = threading.Lock()
    feeds = [_results(lock) for _ in range(3)]
    entries = [(i + 1, True, NONE_B, -1, ()) for i in range(3)]  # tuples, as ``client_answers`` reads them
    assert Answers([MergedAnswers(R3, 1, entries, feeds)]).deliver() == [1, 2, 3]
    feeds[0].add_reply(4, (1, 2, 3, 4), True, NONE_B)
    got = feeds[1].get(0)
    got[9] = "mine"
    assert feeds[0].get(0) == {1: None, 2: None, 3: None, 4: None}
    assert feeds[1].get(0) == feeds[2].get(0) == {1: None, 2: None, 3: None}
    feeds[2].sending_again()  # finished: nothing to forget
    assert feeds[2].get(0) == {1: None, 2: None, 3: None}


def test_versioned_answers_each_call_its_own_value_and_a_resent_call_keeps_earlier_versions() -> None:
    """A persistent put's answers (its version, different call by call) in one batch: each call
    gets its own value and version; one answered in part before it was sent again keeps the
    version that earlier replica reported beside the batch's."""
    lock = threading.Lock()
    feeds = [_results(lock) for _ in range(4)]
    feeds[3].add_reply(4, (4, 5, 6), True, msgpack.packb(5), 5)  # from the view before the resend
    feeds[3].sending_again()
    entries = [(i + 1, True, msgpack.packb(20 + i), 20 + i, ()) for i in range(4)]
    assert Answers([MergedAnswers(R3, 2, entries, feeds)]).deliver() == [1, 2, 3, 4]
    assert [r.get(0) for r in feeds] == [dict.fromkeys(R3, 20 + i) for i in range(4)]
    assert [r.version for r in feeds] == [20, 21, 22, 23]
    assert feeds[3].versioned(0) == ([1, 2, 3, 4], 23)
    feeds[0].add_reply(4, (1, 2, 3, 4), True, msgpack.packb(20), 20)  # a later answer: that call's alone
    assert feeds[0].get(0) == dict.fromkeys((1, 2, 3, 4), 20) and feeds[1].get(0) == dict.fromkeys(R3, 21)
    assert feeds[0].versioned(0) == ([1, 2, 3, 4], 20)
