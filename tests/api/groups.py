"""Groups of nodes on loopback in this process, for the API tests."""

from __future__ import annotations

import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import derecho_actors as da
from derecho_actors.tools.cluster import _free_ports
from runtime.security.certs import ensure_cluster_certs

CLIENT = "tester"  # the client certificate every test group's CA issues


def tls_overrides(root: Path, ids: Iterable[int], cluster: str) -> dict[str, str]:
    """Config overrides giving nodes ``ids`` certificates of a throwaway CA in ``root/certs``
    (made on first use; a client certificate for the tests too)."""
    certs = ensure_cluster_certs(root / "certs", ids, clients=(CLIENT,), cluster=cluster)
    return {"security.certs_dir": str(certs)}


@contextmanager
def running_groups(
    count: int,
    types: Sequence[type],
    layout: da.Layout,
    cluster: str,
    suspicion_ms: int,
    data_root: Path | None = None,
    extra: dict[str, str] | None = None,
    insecure: bool = False,
) -> Iterator[list[da.Group]]:
    """``count`` nodes (ids 1..count, node 1 founds), all in one adequate view; closed after.
    Node i keeps its data in ``data_root/node-i`` (a persistent type needs one). TLS is on
    (a throwaway CA in ``data_root/certs``) unless ``insecure``."""
    own_root = None
    if data_root is None:  # never the default ./derecho-data in the working directory
        own_root = data_root = Path(tempfile.mkdtemp(prefix="derecho-test-groups-"))
    ports = _free_ports(count)
    common = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": str(suspicion_ms), "node.cluster": cluster}
    common.update({"security.insecure": "true"} if insecure else tls_overrides(data_root, range(1, count + 1), cluster))
    common.update(extra or {})
    made: list[da.Group] = []
    try:
        for i, port in enumerate(ports, start=1):
            o = dict(common, **{"node.id": str(i), "node.listen": f"127.0.0.1:{port}"})
            o["node.data_dir"] = str(data_root / f"node-{i}")
            if i > 1:
                o["node.contacts"] = f"127.0.0.1:{ports[0]}"
            made.append(da.Group(types=types, layout=layout, overrides=o))
        for _ in range(200):
            if all(len(g.members) == count and g.view is not None and g.view.layout.adequate for g in made):
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError(f"no common view of {count} nodes: {[g.members for g in made]}")
        yield made
    finally:
        for g in made:
            g.close()
        if own_root is not None:
            shutil.rmtree(own_root, ignore_errors=True)


def address(group: da.Group) -> str:
    return f"127.0.0.1:{group.config.listen_host_port()[1]}"


def client(groups: Sequence[da.Group], contacts: Sequence[str] | None = None, **kwargs: object) -> da.Client:
    """A Client of these groups' cluster, with the test CA's client certificate (or without
    TLS if the groups run insecure)."""
    cfg = groups[0].config
    contacts = list(contacts) if contacts is not None else [address(g) for g in groups]
    if cfg.security.insecure:
        return da.Client(contacts, cluster=cfg.node.cluster, insecure=True, **kwargs)  # type: ignore[arg-type]
    return da.Client(contacts, cluster=cfg.node.cluster, certs_dir=cfg.security.certs_dir, name=CLIENT, **kwargs)  # type: ignore[arg-type]
