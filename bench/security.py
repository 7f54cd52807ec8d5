"""TLS in the clusters the bench starts.

Nodes refuse to start without certificates unless ``security.insecure = true``, so every run
of our nodes gets, in its own work folder, a throwaway CA (``certs/ca.crt``), a certificate
per node and one client certificate (``client-bench``) for the bench's status requests and
clients. TLS is then on, as in production, in every experiment.

Insecure mode is an internal option, for comparison: ``python bench/run.py --insecure`` (which
calls :func:`set_insecure`) runs every experiment with ``security.insecure = true``. A
function can also ask for one mode explicitly (``tls=True`` / ``tls=False``), whatever the
default: the ``tls`` experiment does, to measure both modes in the same run.

``--transport tcp|shm|auto`` (:func:`set_transport`) sets ``node.transport`` in every group,
so two runs compare TCP and shared memory between the bench's processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

CLIENT_NAME = "bench"  # the client certificate made in every run's certs folder

_insecure = False
_transport = ""  # node.transport of every group started (run.py --transport); "": the default


def set_transport(kind: str) -> None:
    """Make ``node.transport = kind`` ("tcp", "shm", "auto") the setting of every group started
    from now on ("" leaves the nodes' default), so one run compares transports."""
    global _transport
    _transport = kind


def transport() -> str:
    return _transport


def set_insecure(flag: bool) -> None:
    """Make insecure mode (no TLS) the default of every cluster started from now on."""
    global _insecure
    _insecure = bool(flag)


def insecure() -> bool:
    """Whether clusters start without TLS unless told otherwise (``run.py --insecure``)."""
    return _insecure


def use_tls(tls: bool | None = None) -> bool:
    """``tls`` if given, else the run's default (on unless ``--insecure``)."""
    return (not _insecure) if tls is None else bool(tls)


@dataclass(frozen=True)
class GroupSecurity:
    """What one group of ``bench.ournode`` processes needs for its mode."""

    tls: bool
    settings: dict[str, str] = field(default_factory=dict)  # node settings (--set KEY=VALUE)
    credentials: Any = None  # runtime.security.tls.LoadedCredentials for status requests; None: insecure


def group_security(workdir: Path, node_ids: Iterable[int], cluster: str, tls: bool | None = None) -> GroupSecurity:
    """Node settings and client credentials for a group whose work folder is ``workdir``: with
    TLS, a throwaway CA and certificates in ``workdir/certs`` (made here); without,
    ``security.insecure = true``."""
    chosen = {"node.transport": _transport} if _transport else {}
    if not use_tls(tls):
        return GroupSecurity(False, {"security.insecure": "true", **chosen}, None)
    from runtime.drivers.dial import client_credentials
    from runtime.security.certs import ensure_cluster_certs

    certs = ensure_cluster_certs(Path(workdir) / "certs", node_ids, clients=(CLIENT_NAME,), cluster=cluster)
    return GroupSecurity(True, {"security.certs_dir": str(certs), **chosen}, client_credentials(certs, CLIENT_NAME))


def cluster_kwargs(tls: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for ``derecho_actors.local_cluster``: with TLS it makes its own
    throwaway CA in its work folder (``workdir/certs``); ``insecure=True`` otherwise."""
    return {"insecure": not use_tls(tls)}


def mode_label(tls: bool | None = None) -> str:
    label = "TLS on" if use_tls(tls) else "TLS off"
    return f"{label}, transport {_transport}" if _transport else label
