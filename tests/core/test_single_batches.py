"""A delivery of one real message among nulls (a serial call's) takes a short path through
``DeliveredBatch``: it must read exactly as the general layout would."""

from __future__ import annotations

import random

import pytest

from runtime.core.smc import DeliveredBatch

pytestmark = pytest.mark.timeout(60)


def _general(start: int, stop: int, n: int, parts: list) -> list:
    """The batch's tuples computed from first principles: slot g is sender g % n's message
    g // n; nulls are left out."""
    by_slot = {}
    for pos, node, k0, seg in parts:
        for j, p in enumerate(seg):
            by_slot[(k0 + j) * n + pos] = (node, k0 + j, p)
    return [(g, *by_slot[g]) for g in range(start, stop) if by_slot[g][2] is not None]


@pytest.mark.parametrize("seed", range(40))
def test_one_real_message_among_nulls_reads_as_the_general_layout(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 5)
    start = rng.randint(0, 50)
    stop = start + rng.randint(1, 4 * n)
    real = rng.randrange(start, stop)
    parts = []
    for pos in range(n):
        slots = [g for g in range(start, stop) if g % n == pos]
        if not slots:
            continue
        seg = [b"m%d" % g if g == real else None for g in slots]
        parts.append((pos, 100 + pos, slots[0] // n, seg))
    nulls = (stop - start) - 1
    expected = _general(start, stop, n, parts)
    assert len(expected) == 1

    iterated = DeliveredBatch(start, stop, n, [(p, nd, k, list(s)) for p, nd, k, s in parts], nulls)
    assert len(iterated) == 1
    assert list(iterated) == expected
    assert iterated[0] == expected[0] and iterated[-1] == expected[0]
    assert list(iterated.payloads()) == [expected[0][3]]

    payloads_first = DeliveredBatch(start, stop, n, [(p, nd, k, list(s)) for p, nd, k, s in parts], nulls)
    assert list(payloads_first.payloads()) == [expected[0][3]]
    assert payloads_first == expected and repr(payloads_first) == repr(expected)


def test_one_message_without_nulls() -> None:
    b = DeliveredBatch(7, 8, 3, [(1, 42, 2, [b"x"])])
    assert list(b) == [(7, 42, 2, b"x")] and list(b.payloads()) == [b"x"] and len(b) == 1
