"""``derecho-actors demo``: a sharded, replicated key-value store on a local cluster.

Six node processes hold two shards of three replicas. The demo writes keys through a client
(progress bar), kills one replica with SIGKILL halfway, keeps writing while the group
reconfigures, then reads every acknowledged write back from the survivors and prints a
summary. It exits 0 only if nothing acknowledged was lost, and leaves no process behind.
"""

from __future__ import annotations

import time
import zlib

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from runtime.errors import DerechoError


@da.replicated(name="DemoKV")
class DemoKV:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    @da.ordered
    def put(self, key: str, value: str) -> int:
        self.data[key] = value
        return len(self.data)

    @da.p2p
    def get(self, key: str) -> str | None:
        return self.data.get(key)

    @da.p2p
    def size(self) -> int:
        return len(self.data)


SHARDS = 2


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


class DemoFailed(DerechoError):
    """The demo saw the cluster misbehave; its node logs are kept in the work folder."""


def run_demo(nodes: int = 6, writes: int = 4000, workdir: str | None = None) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    # One spare replica per shard: the layout stays adequate after the kill.
    layout = da.Layout(
        {DemoKV: da.ShardPolicy(shards=SHARDS, min_nodes=max(1, nodes // SHARDS - 1), max_nodes=nodes // SHARDS)}
    )
    fast = {"timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "500"}
    console.print(f"[bold]derecho-actors demo[/]: {nodes} node processes, a key-value store in {SHARDS} shards")
    started = time.monotonic()
    with LocalCluster(nodes, [DemoKV], layout, overrides=fast, workdir=workdir, cluster="demo") as cluster:
        console.print(f"group formed in {time.monotonic() - started:.2f} s; layout:")
        st = cluster.status(1)
        for shard, members in st["layout"]:
            console.print(f"  shard {shard}: nodes {members}")
        victim = st["layout"][0][1][-1]
        acked: dict[str, str] = {}
        pending: list[tuple[str, str, da.QueryResults]] = []
        t0 = time.monotonic()
        killed_at = None
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("writing", total=writes)
            for i in range(writes):
                key, value = f"key-{i}", f"value-{i}"
                pending.append((key, value, cluster.handle(DemoKV, shard=shard_of(key)).put(key, value)))
                if i == writes // 2:
                    cluster.kill(victim)
                    killed_at = time.monotonic()
                    progress.console.print(f"[red]kill -9 node {victim}[/] (a replica of shard {st['layout'][0][0]})")
                if len(pending) >= 200 or i == writes - 1:
                    for k, v, r in pending:
                        replies = r.wait_all(timeout=60)
                        if any(not isinstance(x, Exception) for x in replies.values()):
                            acked[k] = v
                    progress.advance(task, len(pending))
                    pending.clear()
        took = time.monotonic() - t0
        survivors = {n for n in cluster.ports if n != victim}
        cluster.wait_members(survivors)
        after = cluster.status(min(survivors))
        lost = [
            k
            for k, v in acked.items()
            if list(cluster.handle(DemoKV, shard=shard_of(k)).get(k).get(timeout=10).values())[0] != v
        ]
        summary = Table(title="summary")
        summary.add_column("what")
        summary.add_column("value", justify="right")
        summary.add_row("writes acknowledged", f"{len(acked)} of {writes}")
        summary.add_row("writes/s through the client (2 shards, 3 replicas each)", f"{writes / took:,.0f}")
        summary.add_row("view after the kill", f"{after['vid']}: nodes {[m for m, _ in after['members']]}")
        for shard, members in after["layout"]:
            summary.add_row(f"shard {shard}", f"nodes {members}")
        summary.add_row("acknowledged writes missing after the kill", str(len(lost)))
        console.print(summary)
        if killed_at is None or lost or len(acked) != writes:
            raise DemoFailed(f"{len(lost)} acknowledged writes lost, {writes - len(acked)} not acknowledged")
    console.print("[green]every acknowledged write survived the failure[/]")
    return 0
