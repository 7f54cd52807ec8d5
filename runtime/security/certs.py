"""Issue the cluster's certificates: a private CA, node certificates, client certificates.

Everything is Ed25519 (a node's key also signs its persistent logs). Each certificate goes in
one certs directory next to its key (see ``paths``); keys are written unencrypted, so they are
created with mode 0600 from the start (never widened and then narrowed) and the directory is
created 0700. An existing file is never replaced unless ``force=True``: replacing a key or the
CA silently would lock nodes out of the cluster, so it has to be asked for.

Validity starts a few minutes in the past so that a peer whose clock is slightly behind still
accepts a certificate issued just now.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.errors import ConfigError, DerechoError
from runtime.security.identity import IdentityError, client_uri, identity_of_cert, node_uri
from runtime.security.paths import CA_CERT, ca_files, client_files, node_files
from runtime.security.pem import load_certificate, load_private_key, one_line, shown
from runtime.security.revocation import REVOKED_FILE, RevocationList, Revocations

logger = logging.getLogger(__name__)

BACKDATE = timedelta(minutes=5)
_CN_MAX = 64  # X.509 upper bound of a common name, in bytes
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CA_HINT = "create the cluster CA in that directory first, or pass the directory that holds it"


class CertsError(DerechoError):
    """A certs directory cannot be used as asked: a file would be overwritten, the CA is
    missing or damaged, or a file cannot be written. The message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class CertFiles:
    """What a create_* call wrote."""

    cert: Path
    key: Path
    not_after: datetime  # timezone-aware, UTC
    identity: str  # "node 3", "client 'alice'", "CA 'derecho CA prod'"


def create_ca(
    certs_dir: str | os.PathLike[str], cluster: str = "derecho", days: int = 3650, force: bool = False
) -> CertFiles:
    """Create the cluster's self-signed CA, ``ca.crt`` and ``ca.key``.

    The CA may only sign leaf certificates (path length 0). Replacing it with ``force=True``
    makes every certificate it issued useless, which is logged."""
    if not isinstance(cluster, str) or not cluster or not cluster.isprintable():
        raise ConfigError(f"cluster: expected a non-empty printable name, got {cluster!r}")
    _check_days(days)
    cert_path, key_path = ca_files(certs_dir)
    _prepare(Path(certs_dir), (cert_path, key_path), force)

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(f"derecho CA {cluster}"))])
    now = _now()
    not_after = now + timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algorithm=None)
    )
    if force and cert_path.exists():
        logger.warning("replacing the CA in %s: certificates it issued will no longer verify", shown(certs_dir))
    _write_pair(cert_path, key_path, cert, key, force)
    identity = f"CA {_cn(cert)!r}"
    logger.info("created %s in %s, valid until %s", identity, shown(cert_path), _when(cert.not_valid_after_utc))
    return CertFiles(cert_path, key_path, cert.not_valid_after_utc, identity)


def create_node(
    certs_dir: str | os.PathLike[str],
    node_id: int,
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    days: int = 825,
    force: bool = False,
) -> CertFiles:
    """Issue ``node-<id>.crt``/``.key`` from the CA in ``certs_dir``.

    ``hosts`` go into the SAN (IP addresses as IPAddress, other names as DNSName) for tools
    that check host names; derecho itself identifies the node by ``derecho://node/<id>``."""
    uri = node_uri(node_id)
    names = _host_names(hosts)
    _check_days(days)
    cert_path, key_path = node_files(certs_dir, node_id)
    san = [x509.UniformResourceIdentifier(uri), *names]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(Path(certs_dir), cert_path, key_path, f"derecho node {node_id}", san, usages, days, force)


def create_client(certs_dir: str | os.PathLike[str], name: str, days: int = 825, force: bool = False) -> CertFiles:
    """Issue ``client-<name>.crt``/``.key`` from the CA in ``certs_dir``; clientAuth only, so
    the certificate cannot serve as a node."""
    uri = client_uri(name)
    _check_days(days)
    cert_path, key_path = client_files(certs_dir, name)
    return _issue(
        Path(certs_dir),
        cert_path,
        key_path,
        f"derecho client {name}",
        [x509.UniformResourceIdentifier(uri)],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        days,
        force,
    )


def describe_cert(path: str | os.PathLike[str], revoked: Revocations | None = None) -> str:
    """One line about a certificate file: whom it names, who issued it, until when it is valid,
    its serial (what ``certs revoke`` records) and whether ``revoked`` names it.

    A certificate that names no valid derecho identity is described, not refused, so that a
    listing shows what is wrong with it."""
    cert_path = Path(path)
    cert = load_certificate(cert_path, "certificate", "give the path of a .crt file", CertsError)
    basic = _basic_constraints(cert)
    if basic is not None and basic.ca:
        who = f"CA {_cn(cert)!r}"
    else:
        try:
            identity = identity_of_cert(cert)
        except IdentityError as exc:
            who = f"not a valid derecho certificate ({exc})"
        else:
            who = identity.describe()
            why = revoked.refusal(identity, cert.serial_number) if revoked is not None else None
            if why is not None:
                who += " REVOKED"
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer_cn = str(issuer[0].value) if issuer else cert.issuer.rfc4514_string()
    not_after, now = cert.not_valid_after_utc, _now()
    if not_after > now:
        status = f"{(not_after - now).days} days left"
    else:
        status = f"EXPIRED {(now - not_after).days} days ago"
    return (
        f"{cert_path.name}: {who}, issued by {issuer_cn!r}, valid until {_when(not_after)}, "
        f"serial {cert.serial_number:x} ({status})"
    )


def list_certs(certs_dir: str | os.PathLike[str]) -> list[str]:
    """``describe_cert`` of every ``.crt`` in ``certs_dir``: the CA, nodes by id, clients, others,
    each marked REVOKED when ``revoked.txt`` there names it.

    A file that cannot be read gets a line saying why instead of stopping the listing."""
    base = Path(certs_dir)
    if not base.is_dir():
        raise CertsError(f"{shown(base)}: no such certs directory; create the CA there first")
    revoked = RevocationList(base / REVOKED_FILE).current if (base / REVOKED_FILE).exists() else None
    lines = []
    for path in sorted(base.glob("*.crt"), key=_listing_order):
        try:
            lines.append(describe_cert(path, revoked))
        except CertsError as exc:
            lines.append(f"{path.name}: unusable ({exc})")
    return lines


def _issue(
    certs_dir: Path,
    cert_path: Path,
    key_path: Path,
    common_name: str,
    san: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    days: int,
    force: bool,
) -> CertFiles:
    """Sign a leaf certificate for a fresh key with the CA in ``certs_dir`` and write both."""
    ca_cert, ca_key = _load_ca(certs_dir)
    _prepare(certs_dir, (cert_path, key_path), force)
    key = Ed25519PrivateKey.generate()
    now = _now()
    not_after = now + timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        # A leaf that outlives its CA would fail verification after the CA expires anyway.
        not_after = ca_cert.not_valid_after_utc
        logger.warning("%s: validity cut to the CA's, until %s", shown(cert_path), _when(not_after))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(common_name))]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, algorithm=None)
    )
    _write_pair(cert_path, key_path, cert, key, force)
    identity = identity_of_cert(cert).describe()
    logger.info("issued %s in %s, valid until %s", identity, shown(cert_path), _when(not_after))
    return CertFiles(cert_path, key_path, cert.not_valid_after_utc, identity)


def _load_ca(certs_dir: Path) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """The CA certificate and key in ``certs_dir``, checked to be a usable, matching pair."""
    cert_path, key_path = ca_files(certs_dir)
    cert = load_certificate(cert_path, "CA certificate", _CA_HINT, CertsError)
    key = load_private_key(key_path, "CA key", _CA_HINT, CertsError)
    basic = _basic_constraints(cert)
    if basic is None or not basic.ca:
        raise CertsError(f"{shown(cert_path)}: is not a CA certificate; recreate the cluster CA")
    public = cert.public_key()
    ours = key.public_key().public_bytes_raw()
    if not isinstance(public, Ed25519PublicKey) or public.public_bytes_raw() != ours:
        raise CertsError(
            f"{shown(key_path)}: this key does not belong to {shown(cert_path)}; put the CA's own key next to it"
        )
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CertsError(f"{shown(cert_path)}: the CA has no SubjectKeyIdentifier; recreate the cluster CA") from None
    if cert.not_valid_after_utc <= _now():
        raise CertsError(
            f"{shown(cert_path)}: the CA expired on {_when(cert.not_valid_after_utc)}; create a new CA "
            "and reissue every certificate"
        )
    return cert, key


def _prepare(certs_dir: Path, targets: tuple[Path, ...], force: bool) -> None:
    """Create the directory (0700) and refuse, before any key is made, to overwrite a file."""
    try:
        certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsError(f"{shown(certs_dir)}: cannot create the certs directory ({one_line(exc)})") from None
    if not force:
        for target in targets:
            if target.exists() or target.is_symlink():
                raise CertsError(_exists_message(target))


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: Ed25519PrivateKey, force: bool) -> None:
    """Write the key (0600) and then its certificate (0644)."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_file(key_path, key_pem, 0o600, force)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def _write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to a new file created with ``mode``, then move it into place.

    A temporary file is written and synced first so that a crash never leaves half a key under
    the real name; it is hard-linked into place when overwriting is not allowed (which fails if
    the name exists) and renamed over the old file when it is."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise CertsError(_exists_message(path)) from None
    except OSError as exc:
        raise CertsError(f"{shown(path)}: cannot write ({one_line(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _exists_message(path: Path) -> str:
    return f"{shown(path)}: already exists; replace it with --force (force=True), or use another certs directory"


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts``: IPAddress for what parses as an address, DNSName otherwise."""
    if isinstance(hosts, str):
        hosts = (hosts,)
    names: list[x509.GeneralName] = []
    for host in hosts:
        if not isinstance(host, str):
            raise ConfigError(f"hosts: expected host names or IP addresses, got {host!r}")
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            labels = host.rstrip(".").split(".")
            if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
                raise ConfigError(
                    f"hosts: {host!r} is neither an IP address nor a host name (ASCII letters, digits, '-' and '.')"
                ) from None
            name = x509.DNSName(host)
        if name not in names:
            names.append(name)
    return names


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days: expected a whole number of days >= 1, got {days!r}")


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """keyCertSign + cRLSign for the CA, digitalSignature for a leaf."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _common_name(text: str) -> str:
    """``text`` cut to fit X.509's 64-byte CN bound (the CN is a label; identity is the URI)."""
    if len(text.encode()) <= _CN_MAX:
        return text
    while len(text.encode()) > _CN_MAX - 3:
        text = text[:-1]
    return text + "..."


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _listing_order(path: Path) -> tuple[int, int, str]:
    """The CA first, then nodes by numeric id, then clients by name, then anything else."""
    stem = path.stem
    if path.name == CA_CERT:
        return (0, 0, "")
    if stem.startswith("node-") and stem[5:].isdigit():
        return (1, int(stem[5:]), "")
    if stem.startswith("client-"):
        return (2, 0, stem)
    return (3, 0, path.name)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


__all__ = [
    "CertFiles",
    "CertsError",
    "create_ca",
    "create_client",
    "create_node",
    "describe_cert",
    "list_certs",
]


def ensure_cluster_certs(
    certs_dir: str | os.PathLike[str],
    node_ids: Iterable[int],
    clients: Iterable[str] = (),
    cluster: str = "derecho",
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
) -> Path:
    """A CA in ``certs_dir`` (made if missing) and a certificate for each node id and client
    name that lacks one: the throwaway PKI of a ``local_cluster``, the demos and the tests, so
    that TLS is on in every one of them. Returns ``certs_dir``."""
    folder = Path(certs_dir)
    if not (folder / CA_CERT).exists():
        create_ca(folder, cluster=cluster)
    for node_id in node_ids:
        if not node_files(folder, node_id)[0].exists():
            create_node(folder, node_id, hosts=hosts)
    for name in clients:
        if not client_files(folder, name)[0].exists():
            create_client(folder, name)
    return folder
