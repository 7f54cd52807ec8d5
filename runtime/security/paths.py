"""Where a certs directory keeps each file, in one place so that the code that writes
certificates and the code that loads them cannot disagree about names.

Layout: ``ca.crt``/``ca.key`` (the cluster CA), ``node-<id>.crt``/``.key`` and
``client-<name>.crt``/``.key``. Node ids and client names are checked before they become part
of a path, so a name cannot reach outside the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.security.identity import check_client_name, check_node_id

CA_CERT = "ca.crt"
CA_KEY = "ca.key"


def ca_files(certs_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(ca.crt, ca.key)`` in ``certs_dir``."""
    base = Path(certs_dir)
    return base / CA_CERT, base / CA_KEY


def node_files(certs_dir: str | os.PathLike[str], node_id: int) -> tuple[Path, Path]:
    """``(node-<id>.crt, node-<id>.key)`` in ``certs_dir``."""
    stem = f"node-{check_node_id(node_id)}"
    base = Path(certs_dir)
    return base / f"{stem}.crt", base / f"{stem}.key"


def client_files(certs_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(client-<name>.crt, client-<name>.key)`` in ``certs_dir``."""
    stem = f"client-{check_client_name(name)}"
    base = Path(certs_dir)
    return base / f"{stem}.crt", base / f"{stem}.key"


__all__ = ["CA_CERT", "CA_KEY", "ca_files", "client_files", "node_files"]
