"""Load a node's or client's TLS credentials, check them, and make mutual-TLS contexts.

Credentials are checked once, at start-up, with cryptography rather than left to the first
handshake: a wrong key, a certificate from another cluster's CA or an expired certificate
would otherwise show up as an opaque handshake failure on some peer, long after the node
started. Each problem is a ``ConfigError`` naming the whole path and what to do.

The contexts speak TLS 1.3 only, require a certificate from the peer in both directions, and
trust only the cluster CA. They do not check host names: a peer is identified by the node id
or client name in its certificate (``peer_identity``), which the caller compares with whom it
meant to reach.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ConfigError
from runtime.security.identity import (
    Identity,
    IdentityError,
    check_client_name,
    check_node_id,
    identity_of,
    identity_of_cert,
)
from runtime.security.paths import CA_CERT, client_files, node_files
from runtime.security.pem import load_certificate, load_private_key, one_line, shown

logger = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """Where the CA certificate, our certificate and our key are (not yet read or checked)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_node(cls, certs_dir: str | os.PathLike[str], node_id: int) -> TlsCredentials:
        """``ca.crt``, ``node-<id>.crt`` and ``node-<id>.key`` in ``certs_dir``."""
        cert, key = node_files(certs_dir, node_id)
        return cls(Path(certs_dir) / CA_CERT, cert, key)

    @classmethod
    def for_client(cls, certs_dir: str | os.PathLike[str], name: str) -> TlsCredentials:
        """``ca.crt``, ``client-<name>.crt`` and ``client-<name>.key`` in ``certs_dir``."""
        cert, key = client_files(certs_dir, name)
        return cls(Path(certs_dir) / CA_CERT, cert, key)


@dataclass(frozen=True)
class LoadedCredentials:
    """Credentials that passed every check of ``load_credentials``."""

    credentials: TlsCredentials
    identity: Identity  # of our own certificate
    not_after: datetime  # timezone-aware, UTC
    _signing_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def server_context(self) -> ssl.SSLContext:
        """A context for accepting connections: TLS 1.3, the peer must present a certificate
        issued by the cluster CA."""
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        """A context for making connections; host names are not checked (see the module
        docstring), the server's certificate must be issued by the cluster CA."""
        return self._context(ssl.PROTOCOL_TLS_CLIENT)

    def signing_key(self) -> Ed25519PrivateKey:
        """Our private key, which also signs this node's persistent logs."""
        return self._signing_key

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        creds = self.credentials
        context = ssl.SSLContext(protocol)  # loads no system CAs: the cluster CA is the only root
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(creds.ca))
            context.load_cert_chain(certfile=str(creds.cert), keyfile=str(creds.key))
        except (ssl.SSLError, OSError) as exc:
            # The files passed load_credentials, so they changed since; loading them again helps.
            raise ConfigError(
                f"{shown(creds.ca)}, {shown(creds.cert)}, {shown(creds.key)}: TLS could not load these "
                f"files ({one_line(exc)}); they changed since they were checked, load the credentials again"
            ) from None
        return context


def load_credentials(
    creds: TlsCredentials,
    role: Literal["node", "client"],
    node_id: int | None = None,
    name: str | None = None,
) -> LoadedCredentials:
    """Read and check ``creds`` for a ``role``; with ``node_id`` (or ``name``) the certificate
    must name exactly that node (or client).

    Checks, in order: the files can be read and parsed, the CA is an Ed25519 CA, the key
    belongs to the certificate, the CA signed the certificate, both are valid now, and the
    certificate names the expected identity. Logs a warning when it expires within 30 days."""
    if role not in ("node", "client"):
        raise ConfigError(f"role: expected 'node' or 'client', got {role!r}")
    if node_id is not None:
        check_node_id(node_id)
    if name is not None:
        check_client_name(name)

    ca = load_certificate(creds.ca, "CA certificate", "copy the cluster's ca.crt there, or fix the path", ConfigError)
    cert = load_certificate(
        creds.cert, f"{role} certificate", "issue one from the cluster CA, or fix the path", ConfigError
    )
    key = load_private_key(
        creds.key,
        f"{role} key",
        "it was written next to the certificate when that was issued; fix the path or issue a new certificate and key",
        ConfigError,
    )
    ca_public = _check_ca(creds.ca, ca)
    if key.public_key().public_bytes_raw() != _public_bytes(cert):
        raise ConfigError(
            f"{shown(creds.key)}: this key does not belong to the certificate {shown(creds.cert)}; use the "
            "key that was issued with it, or issue a new certificate and key"
        )
    try:
        ca_public.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        raise ConfigError(
            f"{shown(creds.cert)}: not signed by the CA in {shown(creds.ca)} (another cluster's CA?); "
            "issue it from this cluster's CA, or use the ca.crt of the CA that issued it"
        ) from None

    now = datetime.now(timezone.utc)
    _check_validity(creds.ca, ca, now, "CA certificate")
    _check_validity(creds.cert, cert, now, "certificate")
    try:
        identity = identity_of_cert(cert)
    except IdentityError as exc:
        raise ConfigError(f"{shown(creds.cert)}: {exc}") from None
    _check_identity(creds.cert, identity, role, node_id, name)

    not_after = cert.not_valid_after_utc
    if not_after - now < EXPIRY_WARNING:
        logger.warning(
            "%s: the certificate of %s expires on %s (in %d days); issue a new one from the cluster CA",
            shown(creds.cert),
            identity.describe(),
            not_after.strftime("%Y-%m-%d %H:%M UTC"),
            (not_after - now).days,
        )
    _warn_if_key_readable_by_others(creds.key)
    return LoadedCredentials(creds, identity, not_after, key)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> Identity:
    """Whom the peer's certificate names, after a handshake in which our context verified it
    against the cluster CA (asyncio: ``transport.get_extra_info("ssl_object")``)."""
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:
        raise IdentityError("the TLS handshake has not completed, so the peer is not known yet") from None
    if not der:
        raise IdentityError(
            "the peer presented no certificate; use a context from LoadedCredentials, which requires one"
        )
    return identity_of(der)


def _check_ca(path: Path, ca: x509.Certificate) -> Ed25519PublicKey:
    """The CA's public key, if the certificate is an Ed25519 CA certificate."""
    try:
        basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        basic = None
    if basic is None or not basic.ca:
        raise ConfigError(f"{shown(path)}: is not a CA certificate; give the cluster's ca.crt")
    public = ca.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(
            f"{shown(path)}: the CA has a {type(public).__name__} key, but the cluster CA is Ed25519; "
            "give the cluster's ca.crt"
        )
    return public


def _public_bytes(cert: x509.Certificate) -> bytes | None:
    public = cert.public_key()
    return public.public_bytes_raw() if isinstance(public, Ed25519PublicKey) else None


def _check_validity(path: Path, cert: x509.Certificate, now: datetime, what: str) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise ConfigError(
            f"{shown(path)}: the {what} is not valid until {start:%Y-%m-%d %H:%M:%S} UTC (it is now "
            f"{now:%Y-%m-%d %H:%M:%S} UTC); check this machine's clock, or wait"
        )
    if now >= end:
        raise ConfigError(
            f"{shown(path)}: the {what} expired on {end:%Y-%m-%d %H:%M:%S} UTC "
            f"({(now - end).days} days ago); issue a new one from the cluster CA"
        )


def _check_identity(path: Path, identity: Identity, role: str, node_id: int | None, name: str | None) -> None:
    if identity.role != role:
        raise ConfigError(
            f"{shown(path)}: the certificate names {identity.describe()}, but a {role} certificate is needed "
            f"here; give a {role}-*.crt issued by the cluster CA"
        )
    if role == "node" and node_id is not None and identity.node_id != node_id:
        raise ConfigError(
            f"{shown(path)}: the certificate names node {identity.node_id}, but this node is node {node_id}; "
            f"use node-{node_id}.crt and node-{node_id}.key, or fix node.id"
        )
    if role == "client" and name is not None and identity.name != name:
        raise ConfigError(
            f"{shown(path)}: the certificate names client {identity.name!r}, but this client is {name!r}; "
            f"use client-{name}.crt and client-{name}.key"
        )


def _warn_if_key_readable_by_others(path: Path) -> None:
    """The key is unencrypted, so anyone who can read the file can act as us. A group that
    this process is in does not count (a Kubernetes Secret mounted for the pod's fsGroup)."""
    try:
        st = path.stat()
    except OSError:
        return
    mode = st.st_mode
    own_groups = {os.getgid(), *os.getgroups()}
    if mode & 0o007 or (mode & 0o070 and st.st_gid not in own_groups):
        logger.warning(
            "%s: the private key is readable by other users (mode %o); chmod 600 it",
            shown(path),
            mode & 0o777,
        )


__all__ = ["LoadedCredentials", "TlsCredentials", "load_credentials", "peer_identity"]
