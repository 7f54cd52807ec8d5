"""Loading credentials (runtime.security.tls) and real TLS 1.3 handshakes over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.security import (
    Identity,
    IdentityError,
    LoadedCredentials,
    TlsCredentials,
    create_client,
    create_node,
    load_credentials,
    peer_identity,
)
from tests.security.helpers import load_ca, make_cert, write_pair


def _node(certs: Path, node_id: int) -> LoadedCredentials:
    return load_credentials(TlsCredentials.for_node(certs, node_id), "node", node_id)


def _client(certs: Path, name: str) -> LoadedCredentials:
    return load_credentials(TlsCredentials.for_client(certs, name), "client", name=name)


# --- load_credentials --------------------------------------------------------------------------


def test_load_node_and_client(certs_dir: Path) -> None:
    node = _node(certs_dir, 2)
    expected = TlsCredentials(certs_dir / "ca.crt", certs_dir / "node-2.crt", certs_dir / "node-2.key")
    assert node.credentials == expected
    assert (node.identity.role, node.identity.node_id) == ("node", 2)
    assert node.signing_key().public_key().public_bytes_raw() == node.identity.public_key
    assert timedelta(days=824) < node.not_after - datetime.now(timezone.utc) <= timedelta(days=825)
    assert "PRIVATE" not in repr(node) and "_signing_key" not in repr(node)
    client = _client(certs_dir, "alice")
    assert client.identity.describe() == "client 'alice'"
    anyone = load_credentials(TlsCredentials.for_node(certs_dir, 1), "node")  # no id given: any node
    assert anyone.identity.node_id == 1


def test_contexts_are_tls13_mutual_and_trust_only_the_ca(certs_dir: Path) -> None:
    node = _node(certs_dir, 1)
    for context in (node.server_context(), node.client_context()):
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
        assert len(context.get_ca_certs()) == 1


@dataclass(frozen=True)
class Failure:
    """How to break a good node-2 (or client) setup, and what the error must say about which file."""

    breaks: Callable[[Path, Path], None]  # (certs_dir, other_certs_dir)
    file: str  # the file the message must name
    says: str
    role: str = "node"


def _copy(src: str, dst: str) -> Callable[[Path, Path], None]:
    return lambda d, o: shutil.copyfile(d / src, d / dst)


def _dated(start: timedelta, end: timedelta) -> Callable[[Path, Path], None]:
    def breaks(d: Path, o: Path) -> None:
        now = datetime.now(timezone.utc)
        cert, key = make_cert(load_ca(d), uris=["derecho://node/2"], not_before=now + start, not_after=now + end)
        write_pair(cert, key, d / "node-2.crt", d / "node-2.key")

    return breaks


def _foreign(d: Path, o: Path) -> None:
    """node-2 issued by the other cluster's CA."""
    create_node(o, 2)
    shutil.copyfile(o / "node-2.crt", d / "node-2.crt")
    shutil.copyfile(o / "node-2.key", d / "node-2.key")


def _unlink(name: str) -> Callable[[Path, Path], None]:
    return lambda d, o: (d / name).unlink()


def _garble(name: str) -> Callable[[Path, Path], None]:
    return lambda d, o: (d / name).write_text("hello")


FAILURES = {
    "missing CA": Failure(_unlink("ca.crt"), "ca.crt", "CA certificate not found"),
    "missing cert": Failure(_unlink("node-2.crt"), "node-2.crt", "node certificate not found"),
    "missing key": Failure(_unlink("node-2.key"), "node-2.key", "node key not found"),
    "cert is a directory": Failure(
        lambda d, o: ((d / "node-2.crt").unlink(), (d / "node-2.crt").mkdir()), "node-2.crt", "is a directory"
    ),
    "cert not PEM": Failure(_garble("node-2.crt"), "node-2.crt", "not a PEM certificate"),
    "key not PEM": Failure(_garble("node-2.key"), "node-2.key", "not a PEM private key"),
    "CA is a leaf": Failure(_copy("node-1.crt", "ca.crt"), "ca.crt", "is not a CA certificate"),
    "wrong key": Failure(_copy("node-1.key", "node-2.key"), "node-2.key", "does not belong to the cert"),
    "another CA": Failure(_foreign, "node-2.crt", "not signed by the CA in"),
    "expired": Failure(_dated(timedelta(days=-30), timedelta(days=-1)), "node-2.crt", "expired on"),
    "not yet valid": Failure(_dated(timedelta(days=1), timedelta(days=30)), "node-2.crt", "not valid until"),
    "no derecho URI": Failure(
        lambda d, o: write_pair(*make_cert(load_ca(d), uris=[]), d / "node-2.crt", d / "node-2.key"),
        "node-2.crt",
        "no derecho:// URI",
    ),
    "other node id": Failure(
        lambda d, o: (_copy("node-1.crt", "node-2.crt")(d, o), _copy("node-1.key", "node-2.key")(d, o)),
        "node-2.crt",
        "names node 1, but this node is node 2",
    ),
    "client cert as node": Failure(
        lambda d, o: (_copy("client-alice.crt", "node-2.crt")(d, o), _copy("client-alice.key", "node-2.key")(d, o)),
        "node-2.crt",
        "names client 'alice', but a node certificate is needed",
    ),
    "other client name": Failure(
        lambda d, o: (
            create_client(d, "bob"),
            _copy("client-bob.crt", "client-alice.crt")(d, o),
            _copy("client-bob.key", "client-alice.key")(d, o),
        ),
        "client-alice.crt",
        "names client 'bob', but this client is 'alice'",
        role="client",
    ),
}


@pytest.fixture
def deep_certs_dir(certs_dir: Path) -> Path:
    """The certs directory moved under a path well over 200 characters long."""
    deep = certs_dir.parent.joinpath(*(["a-rather-long-directory-name-" + "x" * 20] * 6), "certs")
    deep.parent.mkdir(parents=True)
    certs_dir.rename(deep)
    assert len(str(deep)) > 250
    return deep


@pytest.mark.parametrize("case", FAILURES)
def test_load_credentials_failures_name_the_whole_path(deep_certs_dir: Path, other_certs_dir: Path, case: str) -> None:
    failure = FAILURES[case]
    failure.breaks(deep_certs_dir, other_certs_dir)
    with pytest.raises(ConfigError) as info:
        if failure.role == "node":
            _node(deep_certs_dir, 2)
        else:
            _client(deep_certs_dir, "alice")
    message = str(info.value)
    assert str(deep_certs_dir / failure.file) in message
    assert failure.says in message
    assert "\n" not in message


def test_role_mismatch_without_an_id(certs_dir: Path) -> None:
    with pytest.raises(ConfigError, match="names node 1, but a client certificate is needed"):
        load_credentials(
            TlsCredentials(certs_dir / "ca.crt", certs_dir / "node-1.crt", certs_dir / "node-1.key"), "client"
        )


def test_warns_when_expiry_is_near_or_the_key_is_readable(certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.now(timezone.utc)
    cert, key = make_cert(load_ca(certs_dir), uris=["derecho://node/2"], not_after=now + timedelta(days=10))
    write_pair(cert, key, certs_dir / "node-2.crt", certs_dir / "node-2.key")
    (certs_dir / "node-2.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="runtime.security.tls"):
        _node(certs_dir, 2)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("node 2 expires on" in m and "(in 9 days)" in m for m in messages)
    assert any("readable by other users" in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.security.tls"):
        _node(certs_dir, 1)
    assert not caplog.records
    # Readable by a group this process is in (a Kubernetes Secret mounted for the pod's fsGroup): fine.
    (certs_dir / "node-1.key").chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="runtime.security.tls"):
        _node(certs_dir, 1)
    assert not caplog.records


# --- handshakes --------------------------------------------------------------------------------


@dataclass
class Outcome:
    server: tuple[Identity, str] | BaseException  # (peer identity, TLS version) or the handshake error
    client: tuple[Identity, bytes] | BaseException  # (peer identity, what the server sent) or the error


async def _connect(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    """One connection over loopback; the server does its handshake with start_tls so that a
    refused handshake surfaces as an exception in the handler rather than in asyncio's log."""
    loop = asyncio.get_running_loop()
    server_done: asyncio.Future[tuple[Identity, str] | BaseException] = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(server_ctx)
            tls = writer.get_extra_info("ssl_object")
            server_done.set_result((peer_identity(tls), tls.version()))
            writer.write(b"welcome\n")
            await writer.drain()
        except (ssl.SSLError, OSError, IdentityError) as exc:
            server_done.set_result(exc)
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client: tuple[Identity, bytes] | BaseException
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            try:
                identity = peer_identity(writer.get_extra_info("ssl_object"))
                client = (identity, await reader.readline())
            finally:
                writer.close()
                with contextlib.suppress(ssl.SSLError, OSError):
                    await writer.wait_closed()
        except (ssl.SSLError, OSError) as exc:
            client = exc
        return Outcome(await asyncio.wait_for(server_done, 5), client)
    finally:
        server.close()
        await server.wait_closed()


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    return asyncio.run(_connect(server_ctx, client_ctx))


def _client_failed(outcome: Outcome) -> bool:
    """In TLS 1.3 the client may finish its side before the server refuses its certificate;
    then the refusal shows as an error or an immediate end of stream on the first read."""
    return isinstance(outcome.client, BaseException) or outcome.client[1] == b""


@pytest.mark.timeout(10)
def test_node_to_node(certs_dir: Path) -> None:
    outcome = _handshake(_node(certs_dir, 1).server_context(), _node(certs_dir, 2).client_context())
    assert not isinstance(outcome.server, BaseException), outcome.server
    assert not isinstance(outcome.client, BaseException), outcome.client
    seen_by_server, version = outcome.server
    seen_by_client, greeting = outcome.client
    assert (seen_by_server.role, seen_by_server.node_id) == ("node", 2)
    assert (seen_by_client.role, seen_by_client.node_id) == ("node", 1)
    assert seen_by_client.public_key == _node(certs_dir, 1).identity.public_key
    assert version == "TLSv1.3" and greeting == b"welcome\n"


@pytest.mark.timeout(10)
def test_client_to_node(certs_dir: Path) -> None:
    outcome = _handshake(_node(certs_dir, 1).server_context(), _client(certs_dir, "alice").client_context())
    assert not isinstance(outcome.server, BaseException), outcome.server
    assert outcome.server[0].describe() == "client 'alice'"
    assert not isinstance(outcome.client, BaseException) and outcome.client[0].describe() == "node 1"


def _bare_client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context trusting ``ca`` that presents ``cert`` (or nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.mark.timeout(10)
def test_a_client_certificate_from_another_ca_is_refused(certs_dir: Path, other_certs_dir: Path) -> None:
    client_ctx = _bare_client_context(
        certs_dir / "ca.crt", other_certs_dir / "client-alice.crt", other_certs_dir / "client-alice.key"
    )
    outcome = _handshake(_node(certs_dir, 1).server_context(), client_ctx)
    assert isinstance(outcome.server, ssl.SSLError), outcome.server
    assert "certificate verify failed" in str(outcome.server) or "unknown ca" in str(outcome.server).lower()
    assert _client_failed(outcome), outcome.client


@pytest.mark.timeout(10)
def test_a_client_without_a_certificate_is_refused(certs_dir: Path) -> None:
    outcome = _handshake(_node(certs_dir, 1).server_context(), _bare_client_context(certs_dir / "ca.crt"))
    assert isinstance(outcome.server, ssl.SSLError), outcome.server
    assert "certificate" in str(outcome.server)
    assert _client_failed(outcome), outcome.client


@pytest.mark.timeout(10)
def test_a_server_of_another_ca_is_refused_by_the_client(certs_dir: Path, other_certs_dir: Path) -> None:
    outcome = _handshake(_node(other_certs_dir, 1).server_context(), _node(certs_dir, 2).client_context())
    assert isinstance(outcome.client, ssl.SSLError) and "certificate verify failed" in str(outcome.client)
    assert isinstance(outcome.server, BaseException)


@pytest.mark.timeout(10)
def test_a_client_certificate_cannot_serve_as_a_node(certs_dir: Path) -> None:
    outcome = _handshake(_client(certs_dir, "alice").server_context(), _node(certs_dir, 2).client_context())
    assert isinstance(outcome.client, ssl.SSLError) and "certificate verify failed" in str(outcome.client)
    assert isinstance(outcome.server, BaseException)


@pytest.mark.timeout(10)
def test_tls12_is_refused(certs_dir: Path) -> None:
    client_ctx = _bare_client_context(certs_dir / "ca.crt", certs_dir / "node-2.crt", certs_dir / "node-2.key")
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = _handshake(_node(certs_dir, 1).server_context(), client_ctx)
    assert isinstance(outcome.server, ssl.SSLError) and "unsupported protocol" in str(outcome.server)
    assert isinstance(outcome.client, OSError)  # an SSLError or a reset, depending on timing


def test_peer_identity_before_a_handshake() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(IdentityError, match="handshake has not completed"):
        peer_identity(tls)
