"""Revocation: ``derecho-actors certs revoke`` and the list every node checks at every TLS
handshake (issue 19: "nothing revokes a retired node's certificate").

The list's parsing and reloading are tested directly; then a real 3-node TLS group: a client
whose certificate is revoked cannot connect (another client goes on), a revoked node's
certificate can speak neither as a member nor as a client, and the restarted process of a
revoked node stays outside the group (its own outgoing connections are refused).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

import derecho_actors as da
from derecho_actors.tools.cli import main
from derecho_actors.tools.cluster import LocalCluster
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import StatusError, fetch_status
from runtime.drivers.tcp import TcpTransport, TransportSecurity
from runtime.errors import ConfigError
from runtime.security import create_client, create_node, identity_of_cert
from runtime.security.certs import ensure_cluster_certs, list_certs
from runtime.security.pem import load_certificate
from runtime.security.revocation import (
    RevocationError,
    RevocationList,
    Revocations,
    parse_identity,
    parse_revocations,
    revoke,
)
from runtime.security.tls import TlsCredentials, load_credentials
from runtime.wire.codec import frame
from runtime.wire.control import Goodbye, Ping
from tests.security.rogue import Conn, client_context, log_of, node_context, wait_until

pytestmark = pytest.mark.timeout(120)


def cert_of(certs_dir: Path, stem: str) -> tuple[int, str]:
    """(serial, identity name) of ``<stem>.crt``."""
    cert = load_certificate(certs_dir / f"{stem}.crt", "certificate", "", ConfigError)
    ident = identity_of_cert(cert)
    return cert.serial_number, ident.name if ident.role == "node" else f"client-{ident.name}"


# ------------------------------------------------------------------------- the list itself
@pytest.mark.parametrize(
    ("text", "identities", "serials"),
    [
        ("", set(), set()),
        ("# nothing yet\n\n", set(), set()),
        ("node-3\n", {"node-3"}, set()),
        ("client-alice  # left the company\n", {"client-alice"}, set()),
        ("node-3 serial=1F\nserial=ab\n", set(), {0x1F, 0xAB}),
        ("serial=ab client-bob\n", set(), {0xAB}),
    ],
)
def test_parse_revocations(text: str, identities: set[str], serials: set[int]) -> None:
    got = parse_revocations(text)
    assert got.identities == identities and got.serials == serials


@pytest.mark.parametrize(
    "line",
    ["3", "alice", "node-03", "node-3 node-4", "serial=xyz", "client-", "node-3 serial=1 serial=2", "client-a/b"],
)
def test_a_line_that_is_not_an_entry_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(RevocationError, match="line 2"):
        parse_revocations(f"node-1\n{line}\n", "revoked.txt")


def test_a_serial_revokes_one_certificate_an_identity_all_of_them(certs_dir: Path) -> None:
    alice_serial, _ = cert_of(certs_dir, "client-alice")
    node_serial, _ = cert_of(certs_dir, "node-1")
    alice = identity_of_cert(load_certificate(certs_dir / "client-alice.crt", "c", "", ConfigError))
    node1 = identity_of_cert(load_certificate(certs_dir / "node-1.crt", "c", "", ConfigError))
    one = parse_revocations(f"client-alice serial={alice_serial:x}\n")
    assert one.refusal(alice, alice_serial) and "revoked" in str(one.refusal(alice, alice_serial))
    assert one.refusal(alice, alice_serial + 1) is None  # a new certificate of alice
    # A serial recorded for alice does not revoke another identity's certificate with it.
    assert one.refusal(node1, alice_serial) is None
    everyone = parse_revocations("client-alice\n")
    assert everyone.refusal(alice, 12345) is not None and everyone.refusal(node1, node_serial) is None
    assert Revocations().refusal(alice, alice_serial) is None


@pytest.mark.parametrize(
    ("typed", "name"),
    [("3", "node-3"), ("node-3", "node-3"), ("alice", "client-alice"), ("client-alice", "client-alice")],
)
def test_parse_identity(typed: str, name: str) -> None:
    assert parse_identity(typed) == name


def test_the_loader_rereads_a_changed_file_and_keeps_the_last_good_list(
    tmp_path: Path, certs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revoked.txt"
    rl = RevocationList(path)  # missing: nothing revoked, watched anyway
    assert len(rl.current) == 0
    path.write_text("client-alice\n")
    assert rl.current.identities == {"client-alice"}
    path.write_text("client-alice\nnode-2\n")
    assert rl.current.identities == {"client-alice", "node-2"}
    with caplog.at_level(logging.ERROR):
        path.write_text("client-alice\nnode-2\nthis is not an entry\n")
        assert rl.current.identities == {"client-alice", "node-2"}, "a malformed edit lifted revocations"
    assert any("line 3" in r.getMessage() for r in caplog.records)
    reloads = rl.reloads
    for _ in range(100):
        assert len(rl.current) == 2  # unchanged file: a stat, no read
    assert rl.reloads == reloads
    path.unlink()
    assert len(rl.current) == 0
    path.write_text("broken line\n")
    with pytest.raises(RevocationError):
        RevocationList(path)  # at start-up a malformed list stops the node


def test_certs_revoke_cli_writes_the_serial_and_list_marks_it(
    certs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial, _ = cert_of(certs_dir, "client-alice")
    assert main(["certs", "revoke", "alice", "--certs-dir", str(certs_dir)]) == 0
    text = (certs_dir / "revoked.txt").read_text()
    assert text.startswith(f"client-alice serial={serial:x}  # revoked ")
    assert main(["certs", "revoke", "node-2", "--all", "--certs-dir", str(certs_dir)]) == 0
    assert parse_revocations((certs_dir / "revoked.txt").read_text()).identities == {"node-2"}
    lines = {line.split(":")[0]: line for line in list_certs(certs_dir)}
    assert "REVOKED" in lines["client-alice.crt"] and "REVOKED" in lines["node-2.crt"]
    assert "REVOKED" not in lines["node-1.crt"] and f"serial {cert_of(certs_dir, 'node-1')[0]:x}" in lines["node-1.crt"]
    # No certificate to read the serial from: an error naming the way out, nothing written.
    before = (certs_dir / "revoked.txt").read_text()
    assert main(["certs", "revoke", "9", "--certs-dir", str(certs_dir)]) != 0
    assert "--all" in capsys.readouterr().err
    assert (certs_dir / "revoked.txt").read_text() == before
    other = certs_dir.parent / "elsewhere.txt"
    path, line = revoke(certs_dir, "9", serial=0xBEEF, revocation_file=other)
    assert path == other and other.read_text() == line and "node-9 serial=beef" in line


# --------------------------------------------------------------------- a real group, TLS on
@da.replicated
class Box:
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    @da.ordered
    def put(self, key: str, value: int) -> int:
        self.data[key] = value
        return len(self.data)


FAST = {"timeouts.heartbeat_ms": "50", "timeouts.suspicion_ms": "1500"}


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    wd = tmp_path_factory.mktemp("revocation")
    layout = da.Layout({Box: da.ShardPolicy(min_nodes=1)})
    with LocalCluster(3, [Box], layout, overrides=FAST, workdir=str(wd), cluster="rev") as c:
        ensure_cluster_certs(c.certs_dir, [], clients=("bob", "carol"), cluster="rev")
        c.handle(Box).put("seed", 0).get(timeout=20)
        yield c


def test_a_revoked_client_certificate_cannot_connect_and_others_go_on(group: LocalCluster) -> None:
    c = group
    bob = client_credentials(c.certs_dir, "bob")
    carol = client_credentials(c.certs_dir, "carol")
    assert "vid" in fetch_status(c.address(1), "rev", credentials=bob)
    with da.Client([c.address(2)], cluster="rev", credentials=bob) as client:
        assert client.handle(Box).put("bob", 1).get(timeout=20)
    assert main(["certs", "revoke", "bob", "--certs-dir", str(c.certs_dir)]) == 0
    for node in (1, 2, 3):
        with pytest.raises(StatusError, match="revoked"):
            fetch_status(c.address(node), "rev", credentials=bob)
    with pytest.raises(Exception, match="revoked"):
        with da.Client([c.address(1)], cluster="rev", credentials=bob, retry_for=2) as client:
            client.handle(Box).put("bob", 2).get(timeout=5)
    # Another client, and a new certificate issued to bob, still connect.
    with da.Client([c.address(1)], cluster="rev", credentials=carol) as client:
        assert client.handle(Box).put("carol", 1).get(timeout=20)
    create_client(c.certs_dir, "bob", force=True)
    assert "vid" in fetch_status(c.address(3), "rev", credentials=client_credentials(c.certs_dir, "bob"))
    warnings = [w for n in (1, 2, 3) for w in log_of(c.workdir, n).splitlines() if "WARNING" in w and "revoked" in w]
    assert any("client 'bob'" in w for w in warnings), "the refusal was not logged"


def test_a_revoked_node_cannot_connect_as_member_or_client_nor_rejoin(group: LocalCluster) -> None:
    c = group
    c.stop(3)  # a retired node: it leaves, then its certificate is revoked
    c.wait_members({1, 2})
    assert main(["certs", "revoke", "3", "--certs-dir", str(c.certs_dir)]) == 0
    # Its certificate can no longer say hello as a member...
    with Conn(c.address(1), node_context(c.certs_dir, 3)) as conn:
        conn.hello_member(3, "rev")
        assert conn.wait_closed(5)
        assert any("revoked" in g for g in conn.goodbyes()), conn.received
    # ...nor as a client.
    with Conn(c.address(2), node_context(c.certs_dir, 3)) as conn:
        conn.hello_client(1, "rev")
        assert conn.wait_closed(5)
        assert any(isinstance(m, Goodbye) and "revoked" in m.reason for m in conn.received)
    # Its process started again dials the members; they refuse it, and it never gets back in.
    mark = len(log_of(c.workdir, 1))
    c.start(3)
    refused = "the certificate of node 3 is revoked"
    wait_until(lambda: refused in log_of(c.workdir, 1)[mark:], 20, "node 1 refusing node 3's connection")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert sorted(c.members()) == [1, 2], "the revoked node got back in"
        time.sleep(0.2)
    # The group goes on without it.
    assert set(c.handle(Box).put("after", 1).get(timeout=20)) == {1, 2}
    c.kill(3)
    # A certificate issued for node 3 again (a new machine with the id) is not revoked.
    create_node(c.certs_dir, 3, force=True)
    with Conn(c.address(1), node_context(c.certs_dir, 3)) as conn:
        conn.hello_member(3, "rev", incarnation=int(time.time_ns()))
        assert not conn.wait_closed(1), conn.received
    assert os.path.exists(c.certs_dir / "revoked.txt")


def test_revoked_certificates_cannot_scrape_tls_metrics(tmp_path: Path) -> None:
    """The metrics endpoint with ``metrics_tls`` checks the same list."""
    import http.client
    import ssl

    from runtime.drivers.metrics import MetricsServer
    from runtime.drivers.tcp import TransportSecurity
    from runtime.security import TlsCredentials, load_credentials

    certs = ensure_cluster_certs(tmp_path / "certs", [1], clients=("scraper", "eve"), cluster="m")
    node = load_credentials(TlsCredentials.for_node(certs, 1), "node", 1)
    security = TransportSecurity(server_context=node.server_context(), revocation=RevocationList(certs / "revoked.txt"))
    refusal = security.revocation.refusal if security.revocation is not None else None
    server = MetricsServer(
        "127.0.0.1:0", lambda: {"node": 1}, ssl_context=security.server_context, refusal=refusal, timeout=3
    )
    server.start()
    try:

        def scrape(name: str) -> int:
            host, port = server.address.rsplit(":", 1)
            conn = http.client.HTTPSConnection(host, int(port), context=client_context(certs, name), timeout=5)
            try:
                conn.request("GET", "/health/live")
                return conn.getresponse().status
            finally:
                conn.close()

        assert scrape("eve") == 200 and scrape("scraper") == 200
        revoke(certs, "eve")
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            scrape("eve")
        assert scrape("scraper") == 200
    finally:
        server.stop()


def test_a_node_does_not_talk_to_a_revoked_node_it_dials(tmp_path: Path) -> None:
    """A retired node still listening at an address from a saved view or the contacts: the
    node dialling it checks its certificate against the list too, so nothing it says (a join
    reply, a view announcement) is heard, and the refusal is recorded with the reason."""
    ensure_cluster_certs(tmp_path, [1, 2], cluster="rv")
    (tmp_path / "revoked.txt").write_text("node-2\n")
    creds = {n: load_credentials(TlsCredentials.for_node(tmp_path, n), "node", node_id=n) for n in (1, 2)}
    heard: list[int] = []
    refusals: list[str] = []

    async def scenario() -> None:
        retired = TcpTransport(
            2,
            "127.0.0.1:0",
            "rv",
            lambda sender, frames: None,
            lambda node: None,
            lambda handle, msg: None,
            security=TransportSecurity(creds[2].server_context(), creds[2].client_context()),
        )
        dialler = TcpTransport(
            1,
            "127.0.0.1:0",
            "rv",
            lambda sender, frames: heard.append(sender),
            lambda node: None,
            lambda handle, msg: None,
            security=TransportSecurity(
                creds[1].server_context(),
                creds[1].client_context(),
                revocation=RevocationList(tmp_path / "revoked.txt"),
            ),
        )
        await retired.start()
        await dialler.start()
        try:
            dialler.learn(2, f"127.0.0.1:{retired.bound_port}")
            dialler.send(2, frame(Ping(1)))
            deadline = time.monotonic() + 10
            while not dialler.refusals and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            refusals.extend(dialler.refusals)
        finally:
            await dialler.close()
            await retired.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert refusals and "node 2" in refusals[0] and "revoked" in refusals[0], refusals
    assert heard == []
