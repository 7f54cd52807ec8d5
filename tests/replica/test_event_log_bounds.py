"""The event log's bounds, kept as events come: at most ``limit`` events and
``MAX_LOG_BYTES`` bytes, the oldest dropped first, the floor at the last one dropped, the
byte count exact; the same whatever mix of small and large events (replicas record the same
events, so they must drop the same ones). The newest event always stays: one event is
never over the bytes bound (``MAX_EVENT_BYTES``)."""

from __future__ import annotations

import random
from collections import deque

import pytest

from derecho_actors.replica import events as _events
from derecho_actors.replica.events import EventLog
from derecho_actors.wire.events import BEGINNING

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("seed", range(4))
def test_the_log_drops_the_oldest_beyond_its_count_and_bytes(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_events, "MAX_LOG_BYTES", 1000)
    rng = random.Random(seed)
    log = EventLog(limit=7)
    kept: deque[tuple[int, int, bytes]] = deque()
    floor = BEGINNING
    version = 0
    for _ in range(400):
        version += rng.random() < 0.6  # else one more event of the same call
        index = kept[-1][1] + 1 if kept and kept[-1][0] == version else 0
        payload = bytes(rng.choice((1, 10, 300, 600)))  # under the bound, as MAX_EVENT_BYTES is
        log.append(version, payload)
        kept.append((version, index, payload))
        while len(kept) > 7 or sum(len(p) for _, _, p in kept) > 1000:
            v, i, _ = kept.popleft()
            floor = (v, i)
        assert list(log.events) == list(kept)
        assert log.bytes == sum(len(p) for _, _, p in kept)
        assert log.floor == floor
