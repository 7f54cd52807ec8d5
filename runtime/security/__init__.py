"""Mutual TLS for every connection, with the cluster's own CA.

Trust model:

- The CA belongs to the cluster (``ca.crt``/``ca.key``); it is the only trust root, and it
  signs node and client certificates only (path length 0). All keys are Ed25519.
- A node certificate names exactly one node id (SAN URI ``derecho://node/<id>``) and is what
  authenticates that node; whoever holds its key is that node.
- A client certificate (``derecho://client/<name>``) can never act as a node: it names no node
  id and carries only the clientAuth key usage.
- Peers are identified by the node id or client name in their certificate, never by host name
  or address; the host names in a node certificate are for other tools only.
"""

from runtime.security.certs import (
    CertFiles,
    CertsError,
    create_ca,
    create_client,
    create_node,
    describe_cert,
    ensure_cluster_certs,
    list_certs,
)
from runtime.security.identity import (
    Identity,
    IdentityError,
    client_uri,
    identity_of,
    identity_of_cert,
    node_uri,
)
from runtime.security.paths import ca_files, client_files, node_files
from runtime.security.tls import LoadedCredentials, TlsCredentials, load_credentials, peer_identity

__all__ = [
    "CertFiles",
    "CertsError",
    "Identity",
    "IdentityError",
    "LoadedCredentials",
    "TlsCredentials",
    "ca_files",
    "client_files",
    "client_uri",
    "create_ca",
    "create_client",
    "create_node",
    "describe_cert",
    "ensure_cluster_certs",
    "identity_of",
    "identity_of_cert",
    "list_certs",
    "load_credentials",
    "node_files",
    "node_uri",
    "peer_identity",
]
