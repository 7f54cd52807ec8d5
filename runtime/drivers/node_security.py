"""What a node's transport is allowed and holds to: TLS contexts, its certificate, and the
limits on what a connection may cost, read from its config.

Loaded when a node is made (``NodeDriver.__init__``, or earlier by the actor layer so a bad
certificate fails before anything starts), never when its loop runs: a bad path is reported
with the path, at once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from runtime.config import NodeConfig
from runtime.drivers.descriptors import client_connection_room, descriptor_limit
from runtime.drivers.tcp import TransportSecurity
from runtime.errors import ConfigError
from runtime.security.revocation import RevocationList, revocation_path
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials

log = logging.getLogger("derecho.node")

INSECURE_WARNING = (
    "INSECURE MODE: security.insecure = true, so connections are neither authenticated nor "
    "encrypted: anyone who can reach %s can join this group, read its traffic, forge members' "
    "frames and run calls. Use it only on a network you fully control; make certificates with "
    "`derecho-actors certs` and set security.certs_dir instead."
)


def node_security(config: NodeConfig) -> tuple[TransportSecurity, LoadedCredentials | None]:
    """The transport's TLS contexts and limits for this node's config, and its loaded
    credentials (None in insecure mode). Raises ConfigError when no certificates are
    configured and insecure mode was not asked for explicitly, or when they are unusable."""
    sec = config.security
    limits = TransportSecurity(
        allowed_members=frozenset(sec.allowed_members),
        handshake_timeout=sec.handshake_timeout_ms / 1000,
        max_unauthenticated=sec.max_unauthenticated,
        receive_budget=sec.receive_budget_bytes,
        client_idle_timeout=sec.client_idle_timeout_ms / 1000,
        client_max_frame=config.client_frame_limit(),
        max_unauthenticated_per_address=sec.max_unauthenticated_per_address,
        frames_per_turn=config.limits.frames_per_turn,
        client_max_backlog=config.limits.client_max_backlog_bytes,
        max_clients=client_connection_room(config.limits.client_connections, descriptor_limit()),
        max_clients_per_identity=config.limits.client_connections_per_identity,
    )
    if sec.insecure:
        log.warning(INSECURE_WARNING, config.node.listen)
        return limits, None
    if not sec.tls_configured:
        raise ConfigError(
            "security: no certificates configured. Make them with `derecho-actors certs create-ca` and "
            "`derecho-actors certs create-node ID` and set security.certs_dir, or run without authentication "
            "with security.insecure = true (--insecure): anyone who can reach the port can then join"
        )
    ca, cert, key = sec.tls_paths(config.node.id)
    loaded = load_credentials(TlsCredentials(Path(ca), Path(cert), Path(key)), "node", node_id=config.node.id)
    revoked = revocation_path(sec.certs_dir, sec.revocation_file)
    return dataclasses.replace(
        limits,
        server_context=loaded.server_context(),
        client_context=loaded.client_context(),
        revocation=RevocationList(revoked) if revoked is not None else None,
    ), loaded
