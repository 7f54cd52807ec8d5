"""A message's latency in hops, the protocol's own share of it (issue 21).

``bench.latency_trace.virtual_latency`` runs the cores of one shard with every frame taking
one hop and timers exact, so what it measures is what the null and push rules make a
message wait, apart from any machine. At low rate one sender's message is delivered
everywhere after two hops (its push, then the acknowledgements: the floor of all-to-all
stability) because idle members fill their slots one round ahead; three senders at phases
spread over their period take three (each message waits for a null its arrival draws).
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


def test_three_unsynchronised_senders_wait_at_most_three_hops() -> None:
    r = virtual_latency(3, 0.0001, rounds=100)
    assert r["delivered"] == 3 * 3 * 100
    assert r["p90_hops"] <= 3.0
