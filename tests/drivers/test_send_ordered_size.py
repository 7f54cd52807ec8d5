"""``NodeDriver.send_ordered`` refuses a payload larger than the group multicasts at the
caller (``PayloadTooLarge``), instead of scheduling it for the loop, where the window refused
it with a ValueError no caller heard (asyncio logged "Exception in callback") and the rest of
its batch was dropped."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from runtime.config import MulticastSection, NodeConfig, NodeSection, RdmcSection
from runtime.drivers.node import NodeDriver
from runtime.drivers.node_io import NodeIO
from runtime.errors import PayloadTooLarge
from tests.drivers.test_node_guards_unit import ADDR, POLICY, SID, TLS_FLAG, FakeTransport

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def attached(loop: asyncio.AbstractEventLoop, rdmc: bool) -> NodeDriver:
    cfg = NodeConfig(
        node=NodeSection(id=5, listen=ADDR[5], contacts=(ADDR[1],)),
        layout=POLICY,
        multicast=MulticastSection(max_message_size=1 << 16),
        rdmc=RdmcSection(enabled=rdmc, block_size=1 << 14, max_object_size=1 << 20, max_bytes_in_flight=1 << 20),
    )
    d = NodeDriver(cfg, security=(TLS_FLAG, None))
    d._attach(NodeIO(loop, FakeTransport({ADDR[1]: 1}), d._flush, d._tick))  # type: ignore[arg-type]
    return d


@pytest.mark.parametrize(
    ("rdmc", "limit", "key"),
    [(False, 1 << 16, "multicast.max_message_size"), (True, 1 << 20, "rdmc.max_object_size")],
)
def test_a_payload_over_the_limit_is_refused_at_the_caller(
    loop: asyncio.AbstractEventLoop, rdmc: bool, limit: int, key: str
) -> None:
    d = attached(loop, rdmc)
    with pytest.raises(PayloadTooLarge, match=rf"a payload of {limit + 1} bytes .* {limit} \({key}\)"):
        d.send_ordered(SID, [b"a", b"x" * (limit + 1)])
    d.send_ordered(SID, [b"a", b"x" * limit])  # at the limit: taken (queued for the loop)
