"""Build certificates the public API would never issue (wrong keys, URIs, usages, dates), to
test that identity checks and credential loading refuse them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH

PrivateKey = Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_ca(certs_dir: Path) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """The CA certificate and key that create_ca wrote in ``certs_dir``."""
    cert = x509.load_pem_x509_certificate((certs_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((certs_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return cert, key


def make_cert(
    issuer: tuple[x509.Certificate, Ed25519PrivateKey],
    *,
    uris: Sequence[str] = ("derecho://node/1",),
    dns: Sequence[str] = (),
    usages: Sequence[x509.ObjectIdentifier] | None = (SERVER, CLIENT),
    key: PrivateKey | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = False,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf certificate signed by ``issuer`` with exactly the given contents."""
    ca_cert, ca_key = issuer
    key = key if key is not None else Ed25519PrivateKey.generate()
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test leaf")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return builder.sign(ca_key, algorithm=None), key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def write_pair(cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path) -> None:
    """Write a certificate and its key as PEM, replacing what is there."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path.write_bytes(pem)
    key_path.chmod(0o600)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ecdsa_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


__all__ = ["CLIENT", "SERVER", "der", "ecdsa_key", "load_ca", "make_cert", "rsa_key", "write_pair"]
