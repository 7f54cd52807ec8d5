"""``derecho-actors status``: ask any member for its view of the group and draw it."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from runtime.drivers.dial import dial
from runtime.drivers.tcp import split_address
from runtime.errors import DerechoError, Refused
from runtime.security.tls import LoadedCredentials
from runtime.wire.codec import FrameDecoder, frames
from runtime.wire.control import Goodbye, Hello, StatusReply, StatusRequest


class StatusError(DerechoError):
    """The contact could not be reached or did not answer; check the address and that the
    node runs."""


def fetch_status(
    contact: str, cluster: str = "derecho", timeout: float = 3.0, credentials: LoadedCredentials | None = None,
) -> dict[str, Any]:
    """Ask the member at ``contact`` for its status. ``credentials``: a client (or node)
    certificate of the cluster; None only for a group running in insecure mode."""
    host, port = split_address(contact)
    deadline = time.monotonic() + timeout
    try:
        with dial(host, port, timeout, credentials) as sock:
            sock.sendall(frames([Hello(0, cluster, "client", time.time_ns()), StatusRequest()]))
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

    console = Console()
    if "vid" not in status:
        console.print(f"node {status.get('node')} is still joining cluster {status.get('cluster')!r}")
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
    members.add_column("state")
    shards_of: dict[int, list[str]] = {}
    for shard, nodes in status["layout"]:
        for n in nodes:
            shards_of.setdefault(n, []).append(shard)
    for rank, (node, address) in enumerate(status["members"]):
        state = "suspected" if node in status["suspected"] else ("leader" if node == status["leader"] else "ok")
        members.add_row(str(rank), str(node), address, ", ".join(shards_of.get(node, [])) or "-", state)
    console.print(members)
    for shard in status["shards"]:
        t = Table(title=f"shard {shard['shard']} (as seen by node {status['node']})")
        t.add_column("node", justify="right")
        t.add_column("delivered", justify="right")
        t.add_column("lag", justify="right")
        t.add_column("received per sender")
        top = max(m["delivered"] for m in shard["members"])
        for m in shard["members"]:
            t.add_row(str(m["node"]), str(m["delivered"]), str(top - m["delivered"]), " ".join(map(str, m["received"])))
        console.print(t)
