"""Revoked certificates: a text file every node reads, checked at every TLS handshake.

A certificate of the cluster's CA stays valid until it expires (825 days by default), so a
retired node's certificate, a leaked client key or a decommissioned machine would otherwise
keep its access that long. ``derecho-actors certs revoke`` appends a line to the revocation
list (``<certs_dir>/revoked.txt`` unless ``security.revocation_file`` names another file) and
every node refuses, from then on, a handshake whose certificate the list names; copy the file
to every node (or put it in the Secret the nodes mount) as you do ``ca.crt``.

Format, one entry per line, ``#`` starts a comment:

- ``node-3 serial=5f1c...`` (what ``certs revoke`` writes): the one certificate with that
  serial number (hexadecimal); the identity is recorded for people and must match. A
  certificate issued later for the same node or client is not affected, so a leaked key is
  replaced by issuing a new certificate with ``--force``.
- ``node-3`` or ``client-alice`` alone (``certs revoke --all``): every certificate naming that
  identity, past and future, for a node id or client name that must never come back.
- ``serial=5f1c...`` alone: one certificate, whoever it names.

Why a list of our own rather than an X.509 CRL: the CA is the cluster's, its key is usually
offline, and a line an operator can read, diff and copy is easier to get right than a signed
CRL; the threat it answers (a certificate that should no longer work) is the same. The list
only affects new connections: a member or client already connected keeps its connection
until it closes (remove a retired node from the group first).

``parse_revocations`` is pure; ``RevocationList`` re-reads the file when its modification
time, size or inode changes (one ``stat`` per handshake, nothing read otherwise), and keeps
the last good list when the file becomes unreadable or malformed, with an ERROR, so that a
half-written edit neither crashes a node nor silently lifts every revocation.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from runtime.config import MAX_NODE_ID
from runtime.errors import ConfigError
from runtime.security.identity import Identity, IdentityError, check_client_name, check_node_id, identity_of_cert
from runtime.security.pem import load_certificate, one_line, shown

logger = logging.getLogger(__name__)

REVOKED_FILE = "revoked.txt"
_SERIAL = re.compile(r"serial=([0-9A-Fa-f]{1,64})")
_NODE = re.compile(r"node-(0|[1-9][0-9]*)")
_CLIENT = re.compile(r"client-(.+)")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RevocationError(ConfigError):
    """A revocation list cannot be read or has a line that is not an entry; the message names
    the file and the line."""


@dataclass(frozen=True, slots=True)
class Revocations:
    """What a revocation list names: whole identities and single certificates (by serial)."""

    identities: frozenset[str] = frozenset()  # "node-3", "client-alice": every certificate
    serials: frozenset[int] = frozenset()  # one certificate each
    # serial -> the identity its line named (checked, so a copied serial cannot hit another cert)
    serial_owner: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.identities) + len(self.serials)

    def refusal(self, identity: Identity, serial: int) -> str | None:
        """Why a certificate naming ``identity`` with ``serial`` may not connect (None: it may)."""
        name = identity_name(identity)
        if name in self.identities:
            return f"the certificate of {identity.describe()} is revoked (every certificate of {name})"
        if serial in self.serials:
            owner = dict(self.serial_owner).get(serial)
            if owner is None or owner == name:
                return f"the certificate of {identity.describe()} is revoked (serial {serial:x})"
        return None


def identity_name(identity: Identity) -> str:
    """``node-<id>`` or ``client-<name>``: how the list (and the certificate file) names it."""
    return identity.name if identity.role == "node" else f"client-{identity.name}"


def parse_identity(text: str) -> str:
    """``node-<id>`` or ``client-<name>`` from what an operator typed: ``node-3``, ``3`` (a
    node id), ``client-alice`` or ``alice`` (a client name). A client whose name is all
    digits must be written ``client-<name>``."""
    text = text.strip()
    if text.isdigit():
        return f"node-{check_node_id(int(text))}"
    m = _NODE.fullmatch(text)
    if m:
        return f"node-{check_node_id(int(m.group(1)))}"
    m = _CLIENT.fullmatch(text)
    name = m.group(1) if m else text
    try:
        return f"client-{check_client_name(name)}"
    except ConfigError:
        raise ConfigError(
            f"{text!r}: expected a node id (3 or node-3) or a client name (alice or client-alice)"
        ) from None


def parse_revocations(text: str, source: str = "revocation list") -> Revocations:
    """The entries of a revocation list's text (see the module docstring); RevocationError
    names the first line that is not an entry."""
    identities: set[str] = set()
    serials: set[int] = set()
    owners: dict[int, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        who: str | None = None
        serial: int | None = None
        for token in line:
            m = _SERIAL.fullmatch(token)
            if m and serial is None:
                serial = int(m.group(1), 16)
            elif who is None and (named := _file_identity(token)) is not None:
                who = named
            else:
                raise RevocationError(
                    f"{source}, line {number}: {raw.strip()!r} is not an entry; expected 'node-<id>', "
                    "'client-<name>', 'serial=<hex>' or an identity followed by its serial"
                )
        if serial is not None:
            serials.add(serial)
            if who is not None:
                owners[serial] = who
        elif who is not None:
            identities.add(who)
    return Revocations(frozenset(identities), frozenset(serials), tuple(sorted(owners.items())))


def _file_identity(token: str) -> str | None:
    """``token`` if it is ``node-<id>`` or ``client-<name>`` spelled exactly, else None (the
    file takes no bare ids or names: a typo must not revoke someone else)."""
    m = _NODE.fullmatch(token)
    if m:
        return token if int(m.group(1)) <= MAX_NODE_ID else None
    m = _CLIENT.fullmatch(token)
    if m and _CLIENT_NAME.fullmatch(m.group(1)):
        return token
    return None


def revocation_line(identity: str, serial: int | None, note: str = "") -> str:
    """One line of the list for ``identity`` (as ``parse_identity`` gives it), for one
    certificate (``serial``) or for all of them (None)."""
    entry = identity if serial is None else f"{identity} serial={serial:x}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    return f"{entry}  # revoked {when}{' ' + note if note else ''}\n"


def append_revocation(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` to the list at ``path`` (created 0644 if missing), checking first that
    the result still parses, so the CLI never leaves a file nodes would reject."""
    target = Path(path)
    try:
        old = target.read_text() if target.exists() else ""
    except OSError as exc:
        raise RevocationError(f"{shown(target)}: cannot read the revocation list ({one_line(exc)})") from None
    prefix = "\n" if old and not old.endswith("\n") else ""
    parse_revocations(old + prefix + line, shown(target))
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a") as handle:
            handle.write(prefix + line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise RevocationError(f"{shown(target)}: cannot write the revocation list ({one_line(exc)})") from None


def revoke(
    certs_dir: str | os.PathLike[str],
    who: str,
    every_certificate: bool = False,
    serial: int | None = None,
    revocation_file: str | os.PathLike[str] | None = None,
) -> tuple[Path, str]:
    """Append ``who``'s revocation to the list and return ``(the list's path, the line)``.

    By default the certificate of ``who`` in ``certs_dir`` (``node-3.crt``,
    ``client-alice.crt``) is revoked by its serial; ``serial`` names another certificate of
    that identity (one issued elsewhere, or replaced since); ``every_certificate`` revokes the
    identity itself. The list is ``revocation_file`` or ``<certs_dir>/revoked.txt``."""
    identity = parse_identity(who)
    folder = Path(certs_dir)
    path = Path(revocation_file) if revocation_file else folder / REVOKED_FILE
    if every_certificate:
        if serial is not None:
            raise ConfigError("give either a serial or --all (every certificate of the identity), not both")
        line = revocation_line(identity, None, "(every certificate)")
    else:
        note = ""
        if serial is None:
            cert_path = folder / f"{identity}.crt"
            cert = load_certificate(
                cert_path,
                "certificate",
                "give its serial (--serial, as `certs list` or openssl shows it) or revoke every certificate "
                "of the identity (--all)",
                RevocationError,
            )
            try:
                named = identity_name(identity_of_cert(cert))
            except IdentityError as exc:
                raise RevocationError(f"{shown(cert_path)}: {exc}") from None
            if named != identity:
                raise RevocationError(f"{shown(cert_path)}: names {named}, not {identity}")
            serial = cert.serial_number
            note = f"({cert_path.name}, valid until {cert.not_valid_after_utc:%Y-%m-%d})"
        line = revocation_line(identity, serial, note)
    append_revocation(path, line)
    logger.info("revoked %s in %s", line.split("#", 1)[0].strip(), shown(path))
    return path, line


def revocation_path(certs_dir: str, revocation_file: str) -> Path | None:
    """Which file a node checks: ``revocation_file`` if set, else ``<certs_dir>/revoked.txt``
    (watched even while it does not exist, so a list created later is picked up); None when
    neither is configured (explicit certificate paths without a certs_dir)."""
    if revocation_file:
        return Path(revocation_file)
    if certs_dir:
        return Path(certs_dir) / REVOKED_FILE
    return None


class RevocationList:
    """The revocation file of one node, re-read when it changes (see the module docstring).

    Called from the node's loop (handshakes) and from the metrics thread, hence the lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._current = Revocations()
        self.reloads = 0
        stamp = self._stat()
        if stamp is not None:
            self._current = self._read()
            self._stamp = stamp
            logger.info("revocation list %s: %d entries", shown(self.path), len(self._current))

    @property
    def current(self) -> Revocations:
        """The entries now in force (after re-reading the file if it changed)."""
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                self._reload(stamp)
            return self._current

    def refusal_for_cert(self, cert: x509.Certificate) -> str | None:
        """Why ``cert`` may not connect, or None."""
        try:
            identity = identity_of_cert(cert)
        except IdentityError as exc:
            return str(exc)
        return self.current.refusal(identity, cert.serial_number)

    def refusal(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
        """Why the peer of a finished TLS handshake may not connect (None: it may). No peer
        certificate is a refusal too: only a verified certificate can be checked."""
        if ssl_object is None:
            return "no TLS session"
        try:
            der = ssl_object.getpeercert(binary_form=True)
        except ValueError:
            return "the TLS handshake has not completed"
        if not der:
            return "no certificate"
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            return f"unreadable certificate ({one_line(exc)})"
        return self.refusal_for_cert(cert)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        if stamp is None:
            if self._current:
                logger.warning(
                    "revocation list %s is gone: %d revocations no longer apply",
                    shown(self.path),
                    len(self._current),
                )
            self._current, self._stamp = Revocations(), None
            return
        try:
            fresh = self._read()
        except RevocationError as exc:
            logger.error("%s; keeping the %d revocations read before", exc, len(self._current))
            self._stamp = stamp  # not re-read until it changes again
            return
        self._current, self._stamp = fresh, stamp
        self.reloads += 1
        logger.info("revocation list %s re-read: %d entries", shown(self.path), len(fresh))

    def _read(self) -> Revocations:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise RevocationError(f"{shown(self.path)}: cannot read the revocation list ({one_line(exc)})") from None
        return parse_revocations(text, shown(self.path))


__all__ = [
    "REVOKED_FILE",
    "RevocationError",
    "RevocationList",
    "Revocations",
    "append_revocation",
    "identity_name",
    "parse_identity",
    "parse_revocations",
    "revocation_line",
    "revoke",
    "revocation_path",
]
