"""``derecho-actors status``: ask any member for its view of the group and draw it."""

from __future__ import annotations

import ssl
import time
from typing import Any

from runtime.drivers.dial import dial
from runtime.drivers.tcp import split_address
from runtime.errors import DerechoError, Refused
from runtime.security.tls import LoadedCredentials
from runtime.wire.codec import FrameDecoder, frames
from runtime.wire.control import PROTOCOL_VERSION, Goodbye, Hello, StatusReply, StatusRequest


class StatusError(DerechoError):
    """The contact could not be reached or did not answer; check the address and that the
    node runs."""


def fetch_status(
    contact: str,
    cluster: str = "derecho",
    timeout: float = 3.0,
    credentials: LoadedCredentials | None = None,
) -> dict[str, Any]:
    """Ask the member at ``contact`` for its status. ``credentials``: a client (or node)
    certificate of the cluster; None only for a group running in insecure mode."""
    host, port = split_address(contact)
    deadline = time.monotonic() + timeout
    try:
        with dial(host, port, timeout, credentials) as sock:
            sock.sendall(frames([Hello(0, cluster, "client", time.time_ns(), PROTOCOL_VERSION), StatusRequest()]))
            decoder = FrameDecoder()
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(1 << 16)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, StatusReply):
                        return item.status
                    if isinstance(item, Goodbye):
                        raise StatusError(f"{contact} refused: {item.reason}")
    except Refused as exc:
        raise StatusError(str(exc)) from None
    except ssl.SSLError as exc:
        raise StatusError(f"{contact} refused this certificate: {exc.reason or exc}") from None
    except OSError as exc:
        raise StatusError(f"cannot reach {contact}: {exc.strerror or exc}") from None
    raise StatusError(f"{contact} did not answer within {timeout} s")


def render_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from runtime.core.versions import format_version

    console = Console()
    if "vid" not in status:
        what = "restarting from its data" if status.get("restarting") else "still joining"
        if status.get("bootstrapping"):
            what = f"bootstrapping: {status['bootstrapping']}"
        console.print(f"node {status.get('node')} is {what} (cluster {status.get('cluster')!r})")
        return
    title = (
        f"cluster {status['cluster']!r}: view {status['vid']}, leader node {status['leader']}"
        f"{'' if status['adequate'] else ' (inadequate: ' + status['shortfall'] + ')'}"
        f"{', view change under way' if status['wedged'] else ''}"
    )
    members = Table(title=title)
    members.add_column("rank", justify="right")
    members.add_column("node", justify="right")
    members.add_column("address")
    members.add_column("shards")
    members.add_column("health")
    members.add_column("last heard", justify="right")
    shards_of: dict[int, list[str]] = {}
    for shard, nodes in status["layout"]:
        for n in nodes:
            shards_of.setdefault(n, []).append(shard)
    health = {h["node"]: h for h in status.get("health", [])}
    for rank, (node, address) in enumerate(status["members"]):
        h = health.get(node, {})
        heard = "-" if node == status["node"] else f"{h.get('heard_ms_ago', 0):.0f} ms ago"
        members.add_row(
            str(rank), str(node), address, ", ".join(shards_of.get(node, [])) or "-", h.get("state", "?"), heard
        )
    console.print(members)
    app = status.get("app", {})
    replicas = app.get("replicas", {})
    for shard in status["shards"]:
        state = replicas.get(shard["shard"], shard.get("state", ""))
        frontier = shard.get("persisted_frontier", -1)
        persisted = f", persisted up to {format_version(frontier)}" if frontier >= 0 else ""
        t = Table(title=f"shard {shard['shard']} (as seen by node {status['node']}): {state}{persisted}")
        t.add_column("node", justify="right")
        t.add_column("delivered", justify="right")
        t.add_column("lag", justify="right")
        t.add_column("persisted", justify="right")
        t.add_column("persistence lag", justify="right")
        t.add_column("received per sender")
        top = max(m["delivered"] for m in shard["members"])
        for m in shard["members"]:
            p = m.get("persisted", -1)
            t.add_row(
                str(m["node"]),
                str(m["delivered"]),
                str(top - m["delivered"]),
                format_version(p) if p >= 0 else "-",
                _lag(m.get("persistence_lag", 0)),
                " ".join(map(str, m["received"])),
            )
        console.print(t)
    if app.get("lost"):
        console.print(f"[red]versions given up by a total restart (--accept-loss): {app['lost']}[/]")
    if app.get("stopped"):
        console.print(f"[red]node {status['node']} stopped: {app['stopped']}[/]")


def _lag(versions: int) -> str:
    return "an older view" if versions < 0 else str(versions)
