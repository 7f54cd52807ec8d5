"""A node that is not a member yet takes the leader's frames only from the node it asked
(``runtime.drivers.leader_word``): the id a contact's certificate proved must outlive the
contact connection, whose answer may arrive on another connection after it closed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runtime.drivers.tcp import MAX_CONTACTS_KEPT, TcpTransport, TransportSecurity
from runtime.security.certs import ensure_cluster_certs
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import frame
from runtime.wire.control import Ping

pytestmark = pytest.mark.timeout(60)


def transport(node_id: int, certs: Path) -> TcpTransport:
    creds = load_credentials(TlsCredentials.for_node(certs, node_id), "node", node_id=node_id)
    return TcpTransport(
        node_id,
        "127.0.0.1:0",
        "ci",
        lambda sender, frames: None,
        lambda node: None,
        lambda handle, msg: None,
        security=TransportSecurity(creds.server_context(), creds.client_context()),
    )


def test_the_node_a_contact_proved_is_remembered_after_its_connection_closes(tmp_path: Path) -> None:
    ensure_cluster_certs(tmp_path, [1, 2], cluster="ci")
    seen: dict[str, int | None] = {}

    async def scenario() -> None:
        contact, joiner = transport(1, tmp_path), transport(2, tmp_path)
        await contact.start()
        await joiner.start()
        address = f"127.0.0.1:{contact.bound_port}"
        try:
            joiner.send_to_address(address, frame(Ping(1)))
            deadline = time.monotonic() + 10
            while joiner.contact_node(address) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            seen["connected"] = joiner.contact_node(address)
            for conn in list(joiner.contacts.values()):
                conn.close()
            await asyncio.sleep(0.1)
            seen["closed"] = joiner.contact_node(address)
        finally:
            await joiner.close()
            await contact.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen == {"connected": 1, "closed": 1}


def test_remembered_contacts_are_bounded_oldest_first(tmp_path: Path) -> None:
    tcp = TcpTransport(1, "127.0.0.1:0", "ci", lambda s, f: None, lambda n: None, lambda h, m: None)
    for i in range(MAX_CONTACTS_KEPT + 10):
        tcp.remember_contact(f"h{i}:1", i)
    assert len(tcp.contact_nodes) == MAX_CONTACTS_KEPT
    assert tcp.contact_node("h0:1") is None and tcp.contact_node(f"h{MAX_CONTACTS_KEPT + 9}:1") == MAX_CONTACTS_KEPT + 9
