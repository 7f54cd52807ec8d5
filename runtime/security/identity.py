"""Who a certificate speaks for: one node id or one client name, read from its SAN URI.

A derecho certificate carries its identity in exactly one SubjectAlternativeName URI,
``derecho://node/<id>`` or ``derecho://client/<name>``. The subject CN is only a label for
people (it may be cut short to fit X.509's 64-character limit); nothing reads identity from it,
and nothing reads it from host names either, because a node's address can change while its id
cannot. The extended key usages must match the role, so that a client certificate can never
pass as a node: a node needs serverAuth and clientAuth (it accepts and makes connections), a
client needs clientAuth and must not have serverAuth.

Pure: this module parses bytes it is given and does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.config import MAX_NODE_ID
from runtime.errors import ConfigError, DerechoError

Role = Literal["node", "client"]
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

URI_SCHEME = "derecho"
NODE_URI_PREFIX = "derecho://node/"
CLIENT_URI_PREFIX = "derecho://client/"

# Decimal without leading zeros, so that one node id has exactly one spelling.
_NODE_ID_TEXT = re.compile(r"0|[1-9][0-9]*")
# Also safe as part of a file name (client-<name>.crt) and of a URI path.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class IdentityError(DerechoError):
    """A certificate does not name exactly one valid derecho node or client, or names it in
    a way that does not fit its key or key usages. The message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The node or client a certificate authenticates."""

    role: Role
    node_id: int | None  # set for role "node" only
    name: str  # the client name; "node-<id>" for a node
    public_key: bytes  # raw 32-byte Ed25519 public key of the certificate

    def describe(self) -> str:
        """``node 3`` or ``client 'alice'``, for messages and logs."""
        if self.role == "node":
            return f"node {self.node_id}"
        return f"client {self.name!r}"


def check_node_id(node_id: int) -> int:
    """Return ``node_id`` if it is a valid node id (an int in 0..MAX_NODE_ID, not a bool)."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id <= MAX_NODE_ID:
        raise ConfigError(f"node id: expected an integer 0..{MAX_NODE_ID}, got {node_id!r}")
    return node_id


def check_client_name(name: str) -> str:
    """Return ``name`` if it is a valid client name (1-64 of ``A-Z a-z 0-9 . _ -``)."""
    if not isinstance(name, str) or not _CLIENT_NAME.fullmatch(name):
        raise ConfigError(f"client name: expected 1-64 characters from A-Z, a-z, 0-9, '.', '_', '-', got {name!r}")
    return name


def node_uri(node_id: int) -> str:
    """The SAN URI that makes a certificate speak for ``node_id``."""
    return f"{NODE_URI_PREFIX}{check_node_id(node_id)}"


def client_uri(name: str) -> str:
    """The SAN URI that makes a certificate speak for client ``name``."""
    return f"{CLIENT_URI_PREFIX}{check_client_name(name)}"


def parse_uri(uri: str) -> tuple[Role, int | None, str]:
    """``(role, node_id, name)`` from a derecho URI; IdentityError if it is malformed."""
    if uri.startswith(NODE_URI_PREFIX):
        text = uri[len(NODE_URI_PREFIX) :]
        if _NODE_ID_TEXT.fullmatch(text) and int(text) <= MAX_NODE_ID:
            node_id = int(text)
            return "node", node_id, f"node-{node_id}"
    elif uri.startswith(CLIENT_URI_PREFIX):
        text = uri[len(CLIENT_URI_PREFIX) :]
        if _CLIENT_NAME.fullmatch(text):
            return "client", None, text
    raise IdentityError(
        f"malformed derecho URI {uri!r}: expected {NODE_URI_PREFIX}<id> (decimal 0..{MAX_NODE_ID}, "
        f"no leading zeros) or {CLIENT_URI_PREFIX}<name> (1-64 of A-Z a-z 0-9 . _ -); "
        "issue a new certificate from the cluster CA"
    )


def identity_of(cert_der: bytes) -> Identity:
    """The identity of a DER certificate, as ``getpeercert(binary_form=True)`` returns it."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise IdentityError(f"not a DER X.509 certificate ({_one_line(exc)})") from None
    return identity_of_cert(cert)


def identity_of_cert(cert: x509.Certificate) -> Identity:
    """The identity of a parsed certificate; see the module docstring for the rules."""
    label = _label(cert)
    try:
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise IdentityError(f"{label}: unreadable extensions ({_one_line(exc)})") from None

    uris = _derecho_uris(extensions)
    if not uris:
        raise IdentityError(
            f"{label}: no {URI_SCHEME}:// URI in its SubjectAlternativeName, so it names no node or "
            "client; use a certificate issued by the cluster CA for this node or client"
        )
    if len(uris) > 1:
        raise IdentityError(
            f"{label}: {len(uris)} derecho URIs in its SubjectAlternativeName ({', '.join(uris)}); "
            "a certificate must name exactly one node or client"
        )
    role, node_id, name = parse_uri(uris[0])

    basic = _extension(extensions, x509.BasicConstraints)
    if basic is not None and basic.ca:
        raise IdentityError(f"{label}: is a CA certificate, so it cannot name a node or client")

    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise IdentityError(
            f"{label}: has a {type(public).__name__} key, but derecho certificates use Ed25519 keys; "
            "issue a new certificate from the cluster CA"
        )

    eku = _extension(extensions, x509.ExtendedKeyUsage)
    usages = set(eku) if eku is not None else set()
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    if role == "node" and not {server, client} <= usages:
        raise IdentityError(
            f"{label}: names node {node_id} but lacks the serverAuth and clientAuth key usages a "
            "node needs; issue a node certificate from the cluster CA"
        )
    if role == "client" and (client not in usages or server in usages):
        raise IdentityError(
            f"{label}: names client {name!r} but its key usages are not clientAuth only; "
            "issue a client certificate from the cluster CA"
        )
    return Identity(role=role, node_id=node_id, name=name, public_key=public.public_bytes_raw())


def _derecho_uris(extensions: x509.Extensions) -> list[str]:
    """Every SAN URI whose scheme is derecho (in any case, so a miscased one is not ignored)."""
    san = _extension(extensions, x509.SubjectAlternativeName)
    if san is None:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [uri for uri in uris if uri.lower().startswith(f"{URI_SCHEME}:")]


def _extension(extensions: x509.Extensions, kind: type[_Ext]) -> _Ext | None:
    """The value of an extension of class ``kind``, or None if the certificate has none."""
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _label(cert: x509.Certificate) -> str:
    """How a message names a certificate: its subject CN (or the whole subject)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(names[0].value) if names else cert.subject.rfc4514_string() or "(empty subject)"
    return f"certificate {text!r}"


def _one_line(exc: BaseException) -> str:
    """An exception's text with its whitespace collapsed, so messages stay on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = [
    "Identity",
    "IdentityError",
    "Role",
    "check_client_name",
    "check_node_id",
    "client_uri",
    "identity_of",
    "identity_of_cert",
    "node_uri",
    "parse_uri",
]
