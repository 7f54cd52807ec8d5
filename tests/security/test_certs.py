"""Issuing certificates (runtime.security.certs) and reading identities from them
(runtime.security.identity)."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.errors import ConfigError
from runtime.security import (
    CertsError,
    IdentityError,
    client_uri,
    create_ca,
    create_client,
    create_node,
    describe_cert,
    identity_of,
    list_certs,
    node_uri,
)
from tests.security.helpers import CLIENT, SERVER, der, ecdsa_key, load_ca, make_cert, rsa_key, write_pair


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _public_of_key_file(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.public_key().public_bytes_raw()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


# --- creating ----------------------------------------------------------------------------------


def test_create_ca_writes_a_restricted_self_signed_ca(tmp_path: Path) -> None:
    certs = tmp_path / "new" / "certs"
    files = create_ca(certs, cluster="prod", days=10)
    assert files.cert == certs / "ca.crt" and files.key == certs / "ca.key"
    assert _mode(certs) == 0o700
    assert _mode(files.key) == 0o600
    cert = _cert(files.cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "derecho CA prod"
    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    _ext(cert, x509.SubjectKeyIdentifier)
    assert files.not_after == cert.not_valid_after_utc
    assert timedelta(days=9) < files.not_after - datetime.now(timezone.utc) <= timedelta(days=10)
    assert _public_of_key_file(files.key) == cert.public_key().public_bytes_raw()  # type: ignore[union-attr]


def test_create_node_names_the_node_and_its_hosts(tmp_path: Path) -> None:
    create_ca(tmp_path)
    files = create_node(tmp_path, 7, hosts=["localhost", "10.0.0.7", "::1", "n7.example.com", "10.0.0.7"])
    assert (files.cert.name, files.key.name, files.identity) == ("node-7.crt", "node-7.key", "node 7")
    assert _mode(files.key) == 0o600
    cert = _cert(files.cert)
    identity = identity_of(der(cert))
    assert (identity.role, identity.node_id, identity.name) == ("node", 7, "node-7")
    assert identity.public_key == _public_of_key_file(files.key) and len(identity.public_key) == 32
    assert identity.describe() == "node 7"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "derecho node 7"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["derecho://node/7"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "n7.example.com"]
    ips = [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.IPAddress) == ips
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == {SERVER, CLIENT}
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    ca_cert, _ = load_ca(tmp_path)
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)  # type: ignore[call-arg]


def test_create_client_is_client_auth_only(tmp_path: Path) -> None:
    create_ca(tmp_path)
    files = create_client(tmp_path, "alice")
    assert (files.cert.name, files.key.name) == ("client-alice.crt", "client-alice.key")
    assert files.identity == "client 'alice'"
    assert _mode(files.key) == 0o600
    cert = _cert(files.cert)
    identity = identity_of(der(cert))
    assert (identity.role, identity.node_id, identity.name) == ("client", None, "alice")
    assert identity.public_key == _public_of_key_file(files.key)
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "derecho client alice"


def test_a_64_character_client_name_fits_although_the_cn_is_cut(tmp_path: Path) -> None:
    create_ca(tmp_path)
    name = "x" * 64
    cert = _cert(create_client(tmp_path, name).cert)
    cn = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert len(cn) <= 64 and cn.startswith("derecho client x")
    assert identity_of(der(cert)).name == name


CREATORS: dict[str, Callable[..., object]] = {
    "ca": lambda d, **kw: create_ca(d, **kw),
    "node": lambda d, **kw: create_node(d, 1, **kw),
    "client": lambda d, **kw: create_client(d, "alice", **kw),
}


@pytest.mark.parametrize("kind", CREATORS)
def test_refuses_to_overwrite_unless_forced(tmp_path: Path, kind: str) -> None:
    create_ca(tmp_path / "c")
    certs = tmp_path / "c"
    if kind != "ca":
        CREATORS[kind](certs)
    files = sorted(p for p in certs.iterdir())
    before = {p: p.read_bytes() for p in files}
    with pytest.raises(CertsError, match="already exists; replace it with --force") as info:
        CREATORS[kind](certs)
    assert str(certs.absolute()) in str(info.value)
    assert {p: p.read_bytes() for p in certs.iterdir()} == before  # nothing written, no temp files left
    if kind == "ca":
        return  # forcing a new CA is covered below
    key = next(p for p in files if p.suffix == ".key" and p.name != "ca.key")
    key.chmod(0o644)  # the replacement must be a new 0600 file, not the old one rewritten
    CREATORS[kind](certs, force=True)
    assert key.read_bytes() != before[key] and _mode(key) == 0o600
    assert sorted(certs.iterdir()) == files


def test_forcing_a_new_ca_replaces_it(tmp_path: Path) -> None:
    old = create_ca(tmp_path).cert.read_bytes()
    new = create_ca(tmp_path, force=True)
    assert new.cert.read_bytes() != old and _mode(new.key) == 0o600


def test_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    create_ca(tmp_path)
    (tmp_path / "node-1.key").write_bytes(b"precious")
    with pytest.raises(CertsError, match="node-1.key: already exists"):
        create_node(tmp_path, 1)
    assert not (tmp_path / "node-1.crt").exists()


@pytest.mark.parametrize("create", [CREATORS["node"], CREATORS["client"]], ids=["node", "client"])
def test_leaf_needs_the_ca(tmp_path: Path, create: Callable[..., object]) -> None:
    certs = tmp_path / "empty"
    with pytest.raises(CertsError, match="CA certificate not found; create the cluster CA") as info:
        create(certs)
    assert str(certs / "ca.crt") in str(info.value)
    assert not certs.exists()
    create_ca(certs)
    (certs / "ca.key").unlink()
    with pytest.raises(CertsError, match="ca.key: CA key not found"):
        create(certs)


def test_leaf_refuses_a_ca_key_that_does_not_match(tmp_path: Path) -> None:
    create_ca(tmp_path / "a")
    create_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertsError, match="does not belong to"):
        create_node(tmp_path / "a", 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda d: create_node(d, -1),
        lambda d: create_node(d, True),
        lambda d: create_node(d, "1"),
        lambda d: create_node(d, 2**32),
        lambda d: create_node(d, 1, hosts=["bad host"]),
        lambda d: create_node(d, 1, hosts=["-x.example"]),
        lambda d: create_node(d, 1, days=0),
        lambda d: create_client(d, ""),
        lambda d: create_client(d, "a b"),
        lambda d: create_client(d, "../x"),
        lambda d: create_client(d, "x" * 65),
        lambda d: create_ca(d, cluster=""),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, call: Callable[[Path], object]) -> None:
    create_ca(tmp_path / "c")
    before = sorted((tmp_path / "c").iterdir())
    with pytest.raises(ConfigError):
        call(tmp_path / "c")
    assert sorted((tmp_path / "c").iterdir()) == before


def test_uris() -> None:
    assert node_uri(0) == "derecho://node/0" and node_uri(12) == "derecho://node/12"
    assert client_uri("a.b_c-9") == "derecho://client/a.b_c-9"
    with pytest.raises(ConfigError):
        client_uri("a/b")


# --- identity_of -------------------------------------------------------------------------------


def test_identity_ignores_other_uris(certs_dir: Path) -> None:
    cert, _ = make_cert(load_ca(certs_dir), uris=["https://example.com/", "derecho://node/4"])
    assert identity_of(der(cert)).node_id == 4


ALICE = "derecho://client/alice"
REJECTED = {
    "no derecho URI": ({"uris": [], "dns": ["node1.example"]}, "no derecho:// URI"),
    "other URI only": ({"uris": ["https://example.com/node/1"]}, "no derecho:// URI"),
    "two node URIs": ({"uris": ["derecho://node/1", "derecho://node/2"]}, "2 derecho URIs"),
    "node and client URI": ({"uris": ["derecho://node/1", "derecho://client/a"]}, "2 derecho URIs"),
    "leading zero": ({"uris": ["derecho://node/01"]}, "malformed derecho URI"),
    "negative id": ({"uris": ["derecho://node/-1"]}, "malformed derecho URI"),
    "id too large": ({"uris": ["derecho://node/4294967296"]}, "malformed derecho URI"),
    "empty id": ({"uris": ["derecho://node/"]}, "malformed derecho URI"),
    "empty client": ({"uris": ["derecho://client/"], "usages": [CLIENT]}, "malformed derecho URI"),
    "bad client name": ({"uris": ["derecho://client/a/b"], "usages": [CLIENT]}, "malformed derecho URI"),
    "unknown role": ({"uris": ["derecho://admin/x"]}, "malformed derecho URI"),
    "miscased scheme": ({"uris": ["DERECHO://node/1"]}, "malformed derecho URI"),
    "RSA key": ({"key": "rsa"}, "Ed25519"),
    "ECDSA key": ({"key": "ecdsa"}, "Ed25519"),
    "node without serverAuth": ({"usages": [CLIENT]}, "lacks the serverAuth and clientAuth"),
    "node without clientAuth": ({"usages": [SERVER]}, "lacks the serverAuth and clientAuth"),
    "node without EKU": ({"usages": None}, "lacks the serverAuth and clientAuth"),
    "client without clientAuth": ({"uris": [ALICE], "usages": [SERVER]}, "not clientAuth only"),
    "client with serverAuth": ({"uris": [ALICE], "usages": [SERVER, CLIENT]}, "not clientAuth only"),
    "CA flag": ({"ca": True}, "is a CA certificate"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_identity_of_rejects(certs_dir: Path, case: str) -> None:
    kwargs, message = REJECTED[case]
    kwargs = dict(kwargs)
    if kwargs.get("key") == "rsa":
        kwargs["key"] = rsa_key()
    elif kwargs.get("key") == "ecdsa":
        kwargs["key"] = ecdsa_key()
    cert, _ = make_cert(load_ca(certs_dir), **kwargs)
    with pytest.raises(IdentityError, match=message):
        identity_of(der(cert))


def test_identity_of_rejects_garbage() -> None:
    with pytest.raises(IdentityError, match="not a DER X.509 certificate"):
        identity_of(b"\x30\x03garbage")


def test_identity_of_a_ca_certificate_is_refused(certs_dir: Path) -> None:
    with pytest.raises(IdentityError, match="no derecho:// URI"):
        identity_of(der(load_ca(certs_dir)[0]))


# --- describing --------------------------------------------------------------------------------


def test_list_certs_describes_every_certificate_in_order(certs_dir: Path) -> None:
    create_node(certs_dir, 10)
    now = datetime.now(timezone.utc)
    expired, key = make_cert(
        load_ca(certs_dir),
        uris=["derecho://node/3"],
        not_before=now - timedelta(days=9),
        not_after=now - timedelta(days=2),
    )
    write_pair(expired, key, certs_dir / "node-3.crt", certs_dir / "node-3.key")
    plain, key = make_cert(load_ca(certs_dir), uris=[])
    write_pair(plain, key, certs_dir / "web.crt", certs_dir / "web.key")
    (certs_dir / "junk.crt").write_text("not a certificate")
    lines = list_certs(certs_dir)
    assert [line.split(":")[0] for line in lines] == [
        "ca.crt",
        "node-1.crt",
        "node-2.crt",
        "node-3.crt",
        "node-10.crt",
        "client-alice.crt",
        "junk.crt",
        "web.crt",
    ]
    assert lines[0].startswith("ca.crt: CA 'derecho CA test', issued by 'derecho CA test', valid until ")
    assert lines[1].startswith("node-1.crt: node 1, issued by 'derecho CA test', valid until ")
    assert lines[1].endswith("(824 days left)")
    assert "EXPIRED 2 days ago" in lines[3]
    assert lines[5].startswith("client-alice.crt: client 'alice',")
    assert "unusable" in lines[6] and "not a PEM certificate" in lines[6]
    assert "not a valid derecho certificate" in lines[7]
    assert all("\n" not in line for line in lines)


def test_describe_cert_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match="certificate not found"):
        describe_cert(tmp_path / "nope.crt")
    with pytest.raises(CertsError, match="no such certs directory"):
        list_certs(tmp_path / "nope")
