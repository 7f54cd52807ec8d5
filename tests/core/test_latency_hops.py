"""A message's latency in hops, the protocol's own share of it (issue 21).

``bench.latency_trace.virtual_latency`` runs the cores of one shard with every frame taking
one hop and timers exact, so what it measures is what the null and push rules make a
message wait, apart from any machine. At low rate one sender's message is delivered
everywhere after two hops (its push, then the acknowledgements: the floor of all-to-all
stability) because idle members fill their slots one round ahead. Three senders at phases
spread over their period take two as well: each message waits for the nulls its arrival
draws, which come back with the acknowledgements, and a null's slot needs only to be held by
the member that passes it, not acknowledged by every member (that took a third hop); the
nulls ride with the acknowledgements that go anyway, whenever they fall due (with a limit of
one null push per half ``null_interval``, paced senders' batches waited up to half of one).
"""

from __future__ import annotations

import pytest

from bench.latency_trace import virtual_latency

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("hop", [0.0001, 0.0003])
def test_one_sender_at_low_rate_is_delivered_after_two_hops(hop: float) -> None:
    r = virtual_latency(1, hop, rounds=100)
    assert r["delivered"] == 3 * 100
    assert r["p90_hops"] == pytest.approx(2.0)
    assert r["pushes_per_msg"] <= 3.1  # one push per member per message


@pytest.mark.parametrize("hop", [0.0001, 0.0003])
def test_three_unsynchronised_senders_are_delivered_after_two_hops(hop: float) -> None:
    r = virtual_latency(3, hop, rounds=100)
    assert r["delivered"] == 3 * 3 * 100
    assert r["p90_hops"] == pytest.approx(2.0)  # was 3
    assert r["pushes_per_msg"] <= 3.1  # one push per member per message (was 4.5-7)


@pytest.mark.parametrize("hop", [0.0001, 0.0003])
def test_paced_batches_of_three_senders_are_delivered_after_two_hops(hop: float) -> None:
    """Half load on the bench's shape: 3 senders, a batch each per millisecond tick."""
    r = virtual_latency(3, hop, batch=140, rounds=100)
    assert r["delivered"] == 3 * 3 * 140 * 100
    assert r["p90_hops"] == pytest.approx(2.0)  # was 3.1-4.7
    assert r["mean_hops"] == pytest.approx(2.0)  # was 2.6-4.7
