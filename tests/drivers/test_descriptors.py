"""Client connections kept below what the descriptor limit leaves (runtime/drivers/descriptors.py)."""

from __future__ import annotations

import logging
import resource

import pytest

from runtime.drivers.descriptors import RESERVE, client_connection_room, descriptor_limit


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "configured,limit,room,warned",
    [
        (4096, None, 4096, False),  # no limit known: as configured
        (4096, 1 << 20, 4096, False),  # plenty
        (4096, 1024, 1024 - RESERVE, True),  # the common soft limit: lowered, said
        (4096, RESERVE + 3, 16, True),  # never below 16
        (100, 1024, 100, False),
    ],
)
def test_room_for_client_connections(
    configured: int, limit: int | None, room: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="derecho.node"):
        assert client_connection_room(configured, limit) == room
    assert any("ulimit -n" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.timeout(10)
def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
        got = descriptor_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got == (None if now == resource.RLIM_INFINITY else now)
        if hard != resource.RLIM_INFINITY:
            assert now == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
