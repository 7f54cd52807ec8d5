"""Blocking connections from outside the group to a member: for ``Client`` and ``status``.

A client proves who it is with a client certificate and checks that the other end is a node
of its cluster's CA; both happen in the TLS handshake (``runtime.security``), before any frame
of ours leaves. Without credentials (insecure mode, which the caller must have asked for
explicitly) the socket is plain TCP.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from runtime.errors import ConfigError, Refused
from runtime.security.identity import IdentityError
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials, peer_identity

# Records that are not TLS at all, or fail their MAC: bytes garbled or cut on the way (or a
# plain-TCP listener), not a decision about our certificate; the caller retries or fails over.
_GARBLED = ("WRONG_VERSION_NUMBER", "BAD_RECORD_MAC", "DECRYPTION_FAILED", "RECORD_LAYER_FAILURE", "PACKET_LENGTH")


def is_refusal(exc: ssl.SSLError) -> bool:
    """Whether a TLS error means the other end (or we) rejected a certificate or the
    protocol, which no retry can change; an end-of-file or reset during the handshake is
    not (a node dropping connections beyond its limit, or going down)."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        return False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    reason = (exc.reason or str(exc)).upper()
    if any(word in reason for word in _GARBLED):
        return False
    return any(
        word in reason for word in ("ALERT", "CERTIFICATE", "UNKNOWN_CA", "VERSION", "NO_SHARED", "HANDSHAKE_FAILURE")
    )


def client_credentials(certs_dir: str | Path, name: str | None = None) -> LoadedCredentials:
    """The client certificate ``client-<name>.crt`` in ``certs_dir``; with no name, the only
    client certificate there. Raises ConfigError naming the files when that is ambiguous."""
    folder = Path(certs_dir)
    if name is None:
        found = sorted(p.name[len("client-") : -len(".crt")] for p in folder.glob("client-*.crt"))
        if len(found) != 1:
            what = f"client certificates for {', '.join(found)}" if found else "no client certificate"
            raise ConfigError(
                f"{folder} holds {what}: pass name=... (a certificate made with `derecho-actors certs create-client NAME`)"
            )
        name = found[0]
    return load_credentials(TlsCredentials.for_client(folder, name), "client", name=name)


def dial(host: str, port: int, timeout: float, credentials: LoadedCredentials | None) -> socket.socket:
    """A connected socket to a member at ``host:port`` (TLS-wrapped when ``credentials`` are
    given, its certificate checked to be a node's). Raises OSError when unreachable and
    :class:`Refused` when the handshake or the peer's identity fails."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if credentials is None:
            return sock
        ctx = credentials.client_context()
        try:
            tls = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            if not is_refusal(exc):  # cut or garbled during the handshake (a busy or restarting node): retry
                raise ConnectionError(
                    f"TLS handshake with {host}:{port} did not complete: {exc.reason or exc}"
                ) from None
            raise Refused(f"TLS handshake with {host}:{port} failed: {exc.reason or exc}") from None
        try:
            who = peer_identity(tls)
        except IdentityError as exc:
            tls.close()
            raise Refused(f"{host}:{port} is not a member of this cluster: {exc}") from None
        if who.role != "node":
            tls.close()
            raise Refused(f"{host}:{port} presented {who.describe()}'s certificate, not a node's")
        return tls
    except BaseException:
        sock.close()
        raise
