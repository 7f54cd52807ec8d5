"""``derecho-actors top``: a live terminal view of every member, refreshed each second.

It asks one contact for the view, then every member for its ``status`` (the same snapshot
``derecho-actors status`` and ``/metrics`` show), and turns the differences between two
rounds into rates: messages delivered per second per shard, clients' calls per second, bytes
per second to and from peers. :class:`TopModel` is the arithmetic (pure, tested); the rest
fetches and draws with rich.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.core.status import AppStatus, NodeStatus
from runtime.core.versions import format_version

Fetch = Callable[[str], dict[str, Any] | None]
"""The status of the node at an address, or None if it did not answer."""


@dataclass
class NodeRow:
    node: int
    address: str
    state: str  # "leader", "ok", "suspected", "joining", "down", ...
    vid: int | None = None
    delivered_per_s: float = 0.0
    calls_per_s: float = 0.0
    out_per_s: float = 0.0
    in_per_s: float = 0.0
    window: str = "-"  # "used/size" over the shards it sends in
    persistence_lag: int = 0  # the most any member is behind, in versions, as this node sees it
    clients: int = 0
    transfers: str = "-"
    replicas: str = "-"


@dataclass
class ShardRow:
    shard: str
    members: list[int]
    delivered: int
    delivered_per_s: float
    persisted: int
    delivery_lag: int
    persistence_lag: int


@dataclass
class TopModel:
    """Two rounds of status snapshots in, rows with rates out."""

    previous: dict[int, tuple[float, NodeStatus]] = field(default_factory=dict)

    def update(
        self, members: list[tuple[int, str]], statuses: dict[int, dict[str, Any] | None], now: float
    ) -> tuple[list[NodeRow], list[ShardRow]]:
        typed = {n: NodeStatus.from_wire(d) if d is not None else None for n, d in statuses.items()}
        nodes: list[NodeRow] = []
        shards: dict[str, ShardRow] = {}
        health: dict[int, str] = {}
        for st in typed.values():
            for h in st.core.health if st is not None else ():
                if h.state != "ok" or h.node not in health:
                    health[h.node] = h.state
        for node, address in members:
            st = typed.get(node)
            if st is None:
                nodes.append(NodeRow(node, address, "no answer"))
                continue
            core = st.core
            if core.vid is None:
                nodes.append(NodeRow(node, address, "bootstrapping" if st.bootstrapping else "joining"))
                continue
            row = NodeRow(node, address, health.get(node, "ok"), core.vid, clients=st.clients)
            before = self.previous.get(node)
            dt = now - before[0] if before is not None else 0.0
            prev = before[1] if before is not None else None
            same_view = prev is not None and core.vid == prev.core.vid
            used = size = 0
            for sh in core.shards:
                if sh.window_free is not None:
                    used += sh.window_size - sh.window_free
                    size += sh.window_size
                row.persistence_lag = max([row.persistence_lag, *(m.persistence_lag for m in sh.members)])
            if size:
                row.window = f"{used}/{size}"
            if dt > 0 and prev is not None:
                row.delivered_per_s = _rate(_delivered(st) - _delivered(prev), dt, same_view)
                row.calls_per_s = _rate(_calls(st) - _calls(prev), dt)
                out_now, in_now = _traffic(st)
                out_before, in_before = _traffic(prev)
                row.out_per_s = _rate(out_now - out_before, dt)
                row.in_per_s = _rate(in_now - in_before, dt)
            app = st.app or AppStatus()
            active = app.transfers_active
            row.transfers = f"{len(active)} active" if active else str(app.transfers_sent)
            if app.replicas:
                row.replicas = ", ".join(f"{s}: {r}" for s, r in sorted(app.replicas.items()))
            nodes.append(row)
            for sh in core.shards:
                if sh.shard in shards:
                    continue
                ms = sh.members
                top = max((m.delivered for m in ms), default=0)
                prev_sh = next((p for p in prev.core.shards if p.shard == sh.shard), None) if prev is not None else None
                rate = _rate(sh.delivered - prev_sh.delivered, dt, same_view) if prev_sh is not None and dt > 0 else 0.0
                shards[sh.shard] = ShardRow(
                    sh.shard,
                    [m.node for m in ms],
                    sh.delivered,
                    rate,
                    sh.persisted_frontier,
                    max((top - m.delivered for m in ms), default=0),
                    max((m.persistence_lag for m in ms), default=0),
                )
            self.previous[node] = (now, st)
        return nodes, [shards[s] for s in sorted(shards)]


def _rate(delta: float, dt: float, comparable: bool = True) -> float:
    """Per second; a counter that went back (a restart, a new view) gives 0, not a negative."""
    return delta / dt if comparable and delta >= 0 else 0.0


def _delivered(st: NodeStatus) -> int:
    return sum(sh.delivered for sh in st.core.shards)


def _calls(st: NodeStatus) -> int:
    return (st.app or AppStatus()).client_calls.total


def _traffic(st: NodeStatus) -> tuple[int, int]:
    return sum(x[1] for x in st.traffic), sum(x[2] for x in st.traffic)


# ------------------------------------------------------------------ fetching and drawing
def gather(contacts: list[str], fetch: Fetch) -> tuple[str, list[tuple[int, str]], dict[int, dict[str, Any] | None]]:
    """One round: the view from the first contact that answers, then every member's status."""
    view: dict[str, Any] | None = None
    for c in contacts:
        view = fetch(c)
        if view is not None and "members" in view:
            break
    if view is None or "members" not in view:
        return "no contact answered with a view", [], {}
    members = [(int(n), str(a)) for n, a in view["members"]]
    with ThreadPoolExecutor(max_workers=min(16, len(members))) as pool:
        answers = list(pool.map(lambda m: fetch(m[1]), members))
    title = f"cluster {view.get('cluster')!r}: view {view['vid']}, leader node {view.get('leader')}"
    if not view.get("adequate", True):
        title += f" (inadequate: {view.get('shortfall')})"
    return title, members, {n: a for (n, _), a in zip(members, answers)}


def render(title: str, nodes: list[NodeRow], shards: list[ShardRow]) -> Any:
    from rich.console import Group
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col, right in (
        ("node", True), ("address", False), ("state", False), ("view", True), ("delivered/s", True),
        ("calls/s", True), ("window", True), ("out KB/s", True), ("in KB/s", True), ("clients", True),
        ("persist lag", True), ("transfers", True), ("replicas", False),
    ):  # fmt: skip
        t.add_column(col, justify="right" if right else "left")
    for r in nodes:
        style = "red" if r.state in ("no answer", "suspected") else ("yellow" if r.vid is None else "")
        t.add_row(
            str(r.node), r.address, r.state, "-" if r.vid is None else str(r.vid), f"{r.delivered_per_s:,.0f}",
            f"{r.calls_per_s:,.0f}", r.window, f"{r.out_per_s / 1e3:,.1f}", f"{r.in_per_s / 1e3:,.1f}",
            str(r.clients), str(r.persistence_lag), r.transfers, r.replicas, style=style,
        )  # fmt: skip
    s = Table(title="shards", title_justify="left")
    for col in ("shard", "members", "delivered", "delivered/s", "persisted", "delivery lag", "persist lag"):
        s.add_column(col, justify="left" if col in ("shard", "members") else "right")
    for sh in shards:
        s.add_row(
            sh.shard, " ".join(map(str, sh.members)), f"{sh.delivered:,}", f"{sh.delivered_per_s:,.0f}",
            format_version(sh.persisted) if sh.persisted >= 0 else "-", str(sh.delivery_lag), str(sh.persistence_lag),
        )  # fmt: skip
    return Group(t, s)


def run_top(contacts: list[str], fetch: Fetch, interval: float, rounds: int | None) -> None:
    """Refresh every ``interval`` seconds; ``rounds``: stop after so many (None: until ^C)."""
    from rich.console import Console
    from rich.live import Live

    model = TopModel()
    console = Console()
    done = 0
    if rounds is not None:  # printed once, not live: two rounds make the rates
        for k in range(max(2, rounds)):
            title, members, statuses = gather(contacts, fetch)
            nodes, shards = model.update(members, statuses, time.monotonic())
            if k < max(2, rounds) - 1:
                time.sleep(interval)
        console.print(render(title, nodes, shards))
        return
    with Live(console=console, refresh_per_second=4, screen=False) as live:
        while True:
            title, members, statuses = gather(contacts, fetch)
            nodes, shards = model.update(members, statuses, time.monotonic())
            live.update(render(title, nodes, shards))
            done += 1
            time.sleep(interval)
