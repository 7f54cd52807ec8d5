"""Nodes started from the command line host replicated classes (``derecho-actors node --app
module:Class``, or ``app = [...]`` in the TOML file), with the layout from the configuration's
``[layout.<Type>]`` tables; a node whose layout differs from the group's is refused at join.
Real processes on loopback, TLS on; the example's own CLI client talks to them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import derecho_actors as da
from derecho_actors.node.app_host import hosted_layout, load_apps
from derecho_actors.tools.cluster import _free_ports
from examples.counter_lock import Counter, Locks
from examples.kv_store import KV
from runtime.config import load_config
from runtime.core.layout import LayoutPolicy, ShardPolicy
from runtime.drivers.dial import client_credentials
from runtime.drivers.status import fetch_status
from runtime.errors import ConfigError
from runtime.exitcodes import EXIT_CONFIG, EXIT_OK
from runtime.security.certs import ensure_cluster_certs

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


class CliNodes:
    """``derecho-actors node`` processes started as an operator would, killed at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.certs = workdir / "certs"
        ensure_cluster_certs(self.certs, range(1, 6), clients=("operator",), cluster="derecho")
        self.ports = dict(zip(range(1, 6), _free_ports(5)))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def address(self, node: int) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def start(self, node: int, *args: str) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, "-m", "derecho_actors.tools.cli", "node", "--id", str(node), "--listen", self.address(node),
            "--certs-dir", str(self.certs), "--set", f"node.data_dir={self.workdir / f'data-{node}'}", *args,
        ]  # fmt: skip
        if node != 1:
            cmd += ["--contact", self.address(1)]
        log = open(self.workdir / f"node-{node}.log", "ab")
        self.procs[node] = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[node]

    def log(self, node: int) -> str:
        return (self.workdir / f"node-{node}.log").read_text()

    def status(self, node: int) -> dict:
        creds = client_credentials(self.certs, "operator")
        return fetch_status(self.address(node), "derecho", timeout=2.0, credentials=creds)

    def wait_members(self, members: set[int], timeout: float = 30.0, via: int = 1) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = self.status(via)
                if {m for m, _ in st.get("members", [])} == members and all(
                    r == "serving" for r in st.get("app", {}).get("replicas", {}).values()
                ):
                    return st
            except Exception:
                pass
            time.sleep(0.1)
        raise AssertionError(f"no view of {sorted(members)} within {timeout} s:\n{self.logs_tail()}")

    def logs_tail(self, chars: int = 2500) -> str:
        """The end of every started node's log, without the status rate-limit lines that the
        waits themselves cause: what a failed wait needs to be understood from CI's output."""
        parts = []
        for node, proc in sorted(self.procs.items()):
            try:
                text = self.log(node)
            except OSError as exc:
                text = f"(no log: {exc})"
            lines = [line for line in text.splitlines() if "rate limiting status requests" not in line]
            parts.append(f"--- node {node} (exit code {proc.poll()}):\n" + "\n".join(lines)[-chars:])
        return "\n".join(parts)

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "examples/kv_store.py", *args, "--contact", self.address(1), "--contact",
               self.address(2), "--certs-dir", str(self.certs)]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[CliNodes]:
    made = CliNodes(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_three_cli_nodes_host_the_kv_example_and_its_client_reaches_them(nodes: CliNodes) -> None:
    # The table's key merges over the example's LAYOUT (2 shards of 3): min_nodes=1 lets three
    # nodes run both shards (one of them on a single replica, which its node warns about).
    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.min_nodes=1"]
    for n in (1, 2, 3):
        nodes.start(n, *app)
        if n == 1:
            nodes.wait_members({1})
    st = nodes.wait_members({1, 2, 3})
    assert {shard for shard, _ in st["layout"]} == {"KV/0/0", "KV/0/1"}  # the code's two shards
    lone = next(members[0] for _, members in st["layout"] if len(members) == 1)
    deadline = time.monotonic() + 10  # its node logs it as it installs the view
    while "one failure loses this shard's state" not in nodes.log(lone) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "one failure loses this shard's state" in nodes.log(lone)
    put = nodes.client("put", "colour", "teal")
    assert put.returncode == 0 and "stored at" in put.stdout, put.stderr
    got = nodes.client("get", "colour")
    assert got.returncode == 0 and got.stdout.strip() == "b'teal'", got.stdout + got.stderr
    # SIGTERM: each node leaves the group gracefully and exits 0.
    for n in (3, 2, 1):
        nodes.procs[n].send_signal(signal.SIGTERM)
        assert nodes.procs[n].wait(30) == EXIT_OK, nodes.log(n)[-1500:]


def test_a_node_whose_layout_differs_is_refused_at_join(nodes: CliNodes) -> None:
    nodes.start(1, "--app", "examples.kv_store:KV", "--set", "layout.KV.shards=2")
    nodes.wait_members({1})
    odd = nodes.start(2, "--app", "examples.kv_store:KV", "--set", "layout.KV.shards=3")
    assert odd.wait(60) == EXIT_CONFIG
    log = nodes.log(2)
    assert "join refused" in log and "layout differs from the group's" in log and "shards=3" in log, log[-1500:]
    assert {m for m, _ in nodes.status(1)["members"]} == {1}  # the group goes on, without it


def test_the_toml_file_names_the_apps_and_the_layout(nodes: CliNodes, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\napp = ["examples.counter_lock:Counter", "examples.counter_lock:Locks"]\n'
        "[layout.Counter]\nmin_nodes = 1\n[layout.Locks]\nmin_nodes = 1\noverlapping = true\n"
    )
    nodes.start(1, "--config", str(config))
    st = nodes.wait_members({1})
    assert {shard for shard, _ in st["layout"]} == {"Counter/0/0", "Locks/0/0"}
    creds = {"certs_dir": nodes.certs, "name": "operator"}
    with da.Client([nodes.address(1)], cluster="derecho", **creds) as client:  # type: ignore[arg-type]
        assert list(client.handle(Counter).add(5).get(timeout=10).values()) == [5]


def test_bad_apps_end_with_one_line_and_exit_2(nodes: CliNodes) -> None:
    for app, needle in (
        ("examples.nope:KV", "cannot import module 'examples.nope'"),
        ("examples.kv_store:Nope", "has no attribute 'Nope'"),
        ("examples.kv_store:shard_of", "is not a @replicated class"),
        ("not-a-spec", 'expected "module:Class"'),
    ):
        proc = nodes.start(1, "--app", app)
        assert proc.wait(30) == EXIT_CONFIG
        log = nodes.log(1)
        assert needle in log and "Traceback" not in log, log[-800:]
        (nodes.workdir / "node-1.log").unlink()


def test_the_readme_cluster_by_hand_keeps_an_acknowledged_write_through_a_kill(nodes: CliNodes) -> None:
    """README "A cluster by hand": five nodes, ``--set layout.KV.min_nodes=2`` merged over the
    example's 2 shards of up to 3. ``kill -9`` of a replica never makes ``get`` print None."""
    from examples.kv_store import shard_of

    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.min_nodes=2"]
    for n in (1, 2, 3, 4, 5):
        nodes.start(n, *app)
        if n == 1:
            nodes.wait_members({1})
    st = nodes.wait_members({1, 2, 3, 4, 5})
    layout = {shard: members for shard, members in st["layout"]}
    assert sorted(len(m) for m in layout.values()) == [2, 3], layout
    # A key of a shard with two replicas, one of them not a contact of the client: kill that one.
    shard, members = next((s, m) for s, m in layout.items() if len(m) == 2 and set(m) - {1, 2})
    victim = max(set(members) - {1, 2})
    key = next(f"animal-{i}" for i in range(100) if f"KV/0/{shard_of(f'animal-{i}')}" == shard)
    put = nodes.client("put", key, "otter")
    assert put.returncode == 0 and "stored at 2 replicas" in put.stdout, put.stdout + put.stderr
    nodes.procs[victim].kill()
    nodes.procs[victim].wait(10)
    nodes.wait_members({1, 2, 3, 4, 5} - {victim})
    got = nodes.client("get", key)
    assert got.returncode == 0 and got.stdout.strip() == "b'otter'", got.stdout + got.stderr
    logs = "".join(nodes.log(n) for n in (1, 2, 3, 4, 5))
    assert "lost every replica" not in logs and "one failure loses this shard's state" not in logs


# ------------------------------------------------------------------------------ layouts (pure)
def policy(**kw: object) -> LayoutPolicy:
    return LayoutPolicy.of({name: ShardPolicy(**p) for name, p in kw.items()})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "configured, code, scan, expected",
    [
        # the file's table wins over the code's policy
        (
            policy(KV={"shards": 3}),
            da.Layout({KV: ShardPolicy(shards=2, min_nodes=3)}),
            False,
            {"KV": ShardPolicy(shards=3)},
        ),
        # no table: the code's policy
        (policy(default={}), da.Layout({KV: ShardPolicy(shards=2)}), False, {"KV": ShardPolicy(shards=2)}),
        # no table, no code: the module's LAYOUT when scanning (the CLI), else one shard of all
        (policy(default={}), None, True, {"KV": ShardPolicy(shards=2, min_nodes=3, max_nodes=3)}),
        (policy(default={}), None, False, {"KV": ShardPolicy()}),
    ],
)
def test_hosted_layout(configured: LayoutPolicy, code: da.Layout | None, scan: bool, expected: dict) -> None:
    assert dict(hosted_layout([KV], configured, code, scan_modules=scan).policy.types) == expected


def test_hosted_layout_refuses_tables_of_types_not_hosted() -> None:
    with pytest.raises(ConfigError, match=r"\[layout.Lock\]"):
        hosted_layout([Counter, Locks], policy(Lock={}))


def test_a_group_takes_its_layout_from_the_config_file(tmp_path: Path) -> None:
    """``[layout.KV]`` in the configuration wins over the layout given in code."""
    from tests.api.groups import running_groups

    code = da.Layout({KV: da.ShardPolicy(shards=1)})
    with running_groups(2, [KV], code, "layout-test", 1000, data_root=tmp_path,
                        extra={"layout.KV.shards": "2"}) as groups:  # fmt: skip
        assert {str(s) for s in groups[0].view.layout.shards} == {"KV/0/0", "KV/0/1"}


def test_app_specs_parse_like_a_shell_list() -> None:
    cfg = load_config(None, {"node.app": "examples.counter_lock:Counter,Locks"})
    assert cfg.node.app == ("examples.counter_lock:Counter", "examples.counter_lock:Locks")
    assert load_apps(cfg.node.app) == [Counter, Locks]
    env = load_config(None, {}, {"DERECHO_NODE_APP": "examples.kv_store:KV"})
    assert env.node.app == ("examples.kv_store:KV",)
    assert os.getcwd() in sys.path


# ------------------------------------------------------------------------------ metrics
def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (the first whose labels include these)."""
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text[:3000]}")


def test_metrics_and_health_endpoints_answer_while_a_load_runs(nodes: CliNodes) -> None:
    ports = _free_ports(3)
    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.shards=2", "--set", "layout.KV.min_nodes=1"]
    for n, port in zip((1, 2, 3), ports):
        nodes.start(n, *app, "--set", f"node.metrics=127.0.0.1:{port}")
        if n == 1:
            nodes.wait_members({1})
            # Node 1 alone holds both shards at once (min_nodes=1): ready.
    nodes.wait_members({1, 2, 3})
    base = f"http://127.0.0.1:{ports[0]}"
    assert _get(base + "/health/live")[0] == 200
    creds = {"certs_dir": nodes.certs, "name": "operator"}
    with da.Client([nodes.address(1)], cluster="derecho", **creds) as client:  # type: ignore[arg-type]
        results = [client.handle(KV, shard=i % 2).put(f"k{i}", b"v") for i in range(300)]
        code, text = _get(base + "/metrics")  # scraped while the puts are in flight
        for r in results:
            r.get(timeout=30)
        client.handle(KV).get("k0", node=1).get(timeout=10)
    code, text = _get(base + "/metrics")
    assert code == 200
    assert _value(text, "derecho_up") == 1 and _value(text, "derecho_ready") == 1
    assert _value(text, "derecho_view_id") >= 1 and _value(text, "derecho_members") == 3
    assert _value(text, "derecho_views_installed_total") >= 2  # the founding view and the one of three
    assert _value(text, "derecho_client_calls_total", method="put", outcome="ok") == 300
    assert _value(text, "derecho_client_calls_total", method="get", outcome="ok") == 1
    assert _value(text, "derecho_client_call_seconds_count", method="put") == 300
    assert _value(text, "derecho_client_call_seconds_bucket", method="put", le="+Inf") == 300
    assert _value(text, "derecho_shard_delivered", shard="KV/0/0") > 0
    assert (
        _value(text, "derecho_shard_delivered_messages_total", shard="KV/0/0") > 0
    )  # a counter: rate() is delivered/s
    assert _value(text, "derecho_replica_serving", shard="KV/0/0") in (0.0, 1.0)
    assert "derecho_member_persistence_lag" in text and "derecho_suspected_members 0.0" in text
    held = [sid for sid in ("KV/0/0", "KV/0/1") if f'derecho_shard_window_size{{shard="{sid}"}}' in text]
    assert held and all(0 <= _value(text, "derecho_shard_window_used", shard=sid) <=
                        _value(text, "derecho_shard_window_size", shard=sid) for sid in held)  # fmt: skip
    for peer in ("2", "3"):
        assert _value(text, "derecho_peer_sent_bytes_total", peer=peer) > 0
        assert _value(text, "derecho_peer_received_bytes_total", peer=peer) > 0
    assert _value(text, "derecho_state_transfers_sent_total") >= 0 and "derecho_state_transfer_sent_bytes_total" in text
    code, body = _get(base + "/health/ready")
    assert code == 200 and '"ok": true' in body
    assert _get(base + "/nowhere")[0] == 404
    # derecho-actors top: every member's row and the shards, from one contact.
    top = subprocess.run(
        [sys.executable, "-m", "derecho_actors.tools.cli", "top", "--rounds", "2", "--interval", "0.3",
         "--contact", nodes.address(2), "--certs-dir", str(nodes.certs), "--name", "operator"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    for n in (1, 2, 3):
        assert any(re.match(rf"│\s+{n} │ 127\.0\.0\.1:\d+ │ (leader|ok) ", line) for line in lines), top.stdout
    assert "delivered/s" in top.stdout and "KV/0/0" in top.stdout and "KV/0/1" in top.stdout, top.stdout


def test_readiness_says_why_a_node_is_not_ready(nodes: CliNodes) -> None:
    (port,) = _free_ports(1)
    nodes.start(1, "--app", "examples.kv_store:KV", "--set", "layout.KV.min_nodes=3",
                "--set", f"node.metrics=127.0.0.1:{port}")  # fmt: skip
    deadline = time.monotonic() + 30
    code, body = 0, ""
    while time.monotonic() < deadline:
        try:
            code, body = _get(f"http://127.0.0.1:{port}/health/ready")
            if code == 503 and "too small" in body:
                break
        except OSError:
            pass
        time.sleep(0.1)
    assert code == 503 and "too small for the layout" in body and "KV/0/0 needs 2 more nodes" in body, body
    assert _get(f"http://127.0.0.1:{port}/health/live")[0] == 200


# ------------------------------------------------------------------------------ pods
@pytest.mark.parametrize(
    "hostname, expected",
    [("derecho-0", 1), ("derecho-12", 13), ("kv-store-2", 3)],
)
def test_id_from_the_statefulset_ordinal_is_kept_on_the_volume(tmp_path: Path, hostname: str, expected: int) -> None:
    from derecho_actors.tools.node_command import id_from_ordinal

    assert id_from_ordinal(hostname, tmp_path / "data") == expected
    assert (tmp_path / "data" / "node-id").read_text().strip() == str(expected)
    assert id_from_ordinal(hostname, tmp_path / "data") == expected  # the same pod again


def test_id_from_ordinal_refuses_a_foreign_volume_or_hostname(tmp_path: Path) -> None:
    from derecho_actors.tools.node_command import id_from_ordinal

    id_from_ordinal("derecho-0", tmp_path)
    with pytest.raises(ConfigError, match="belongs to node 1"):
        id_from_ordinal("derecho-1", tmp_path)
    with pytest.raises(ConfigError, match="does not end in -N"):
        id_from_ordinal("laptop", tmp_path / "other")


def test_no_leave_stops_without_leaving_and_the_others_see_a_failure(nodes: CliNodes) -> None:
    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.min_nodes=1"]
    nodes.start(1, *app)
    nodes.wait_members({1})
    nodes.start(2, *app)
    nodes.start(3, *app, "--no-leave")
    nodes.wait_members({1, 2, 3})
    nodes.procs[3].send_signal(signal.SIGTERM)
    assert nodes.procs[3].wait(30) == EXIT_OK
    nodes.wait_members({1, 2})
    assert "stopping without leaving the group" in nodes.log(3)
    assert "leaving the group (signal)" not in nodes.log(3)


def test_a_watch_follows_every_change_in_order_when_its_contact_is_killed(nodes: CliNodes) -> None:
    """The example's ``watch`` command, connected to node 1 first, keeps printing every change
    in order after node 1 is killed (kill -9) mid-stream: no change skipped or repeated."""
    app = ["--app", "examples.kv_store:KV", "--set", "layout.KV.shards=1", "--set", "layout.KV.min_nodes=2"]
    for n in (1, 2, 3):
        nodes.start(n, *app)
        if n == 1:
            nodes.wait_members({1})
    nodes.wait_members({1, 2, 3})
    total = 400
    cmd = [sys.executable, "examples/kv_store.py", "watch", "0", "--since", "-1", "--count", str(total),
           "--certs-dir", str(nodes.certs)]  # fmt: skip
    for n in (1, 2, 3):
        cmd += ["--contact", nodes.address(n)]
    out = open(nodes.workdir / "watch.out", "w+")
    watcher = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        creds = {"certs_dir": nodes.certs, "name": "operator"}
        with da.Client([nodes.address(2), nodes.address(3)], **creds) as writer:  # type: ignore[arg-type]
            kv = writer.handle(KV)
            first = [kv.put(f"k{i}", b"v%d" % i) for i in range(total // 2)]
            first[-1].get(timeout=30)
            deadline = time.monotonic() + 30
            while len((nodes.workdir / "watch.out").read_text().splitlines()) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            nodes.procs[1].kill()  # the watcher's contact, and the replica it polled
            # Puts sent before the new view are delivered in the old one (its ragged edge): the
            # rest go once the group has moved on, so some changes surely come from a later view.
            nodes.wait_members({2, 3}, via=2)
            rest = [kv.put(f"k{i}", b"v%d" % i) for i in range(total // 2, total)]
            for r in first + rest:
                r.get(timeout=60)
        _, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    lines = (nodes.workdir / "watch.out").read_text().splitlines()
    assert watcher.returncode == 0, err[-2000:]
    keys = [line.split()[2] for line in lines]
    assert keys == [f"k{i}" for i in range(total)], f"{len(keys)} changes; watcher said: {err[-1500:]}"
    versions = [tuple(int(x) for x in line.split()[0].split(".")) for line in lines]
    assert versions == sorted(versions) and len(set(versions)) == total, "versions out of order or repeated"
    assert versions[-1][0] > versions[0][0], "no view change between the first and last change: nothing failed over"


@pytest.mark.parametrize(
    ("app", "layout", "steps"),
    [
        (
            "examples.persistent_kv:PersistentKV",
            ["layout.PersistentKV.min_nodes=3"],
            [
                (["put", "colour", "teal"], r"stored as version (\d+\.\d+), persisted at every replica"),
                (["put", "colour", "plum"], r"stored as version \d+\.\d+"),
                (["get", "colour"], r"^b'plum'$"),
                (["get", "colour", "--at", "{0}"], r"^b'teal'$"),  # {0}: the first put's version
            ],
        ),
        (
            "examples.counter_lock:Counter,Locks",
            ["layout.Counter.min_nodes=2", "layout.Locks.min_nodes=2", "layout.Locks.overlapping=true"],
            [
                (["add", "5"], r"^5$"),
                (["add"], r"^6$"),
                (["read"], r"^6$"),
                (["acquire", "printer", "2"], r"^True$"),
                (["acquire", "printer", "3"], r"^False$"),
                (["holder", "printer"], r"^2$"),
                (["release", "printer", "2"], r"^True$"),
            ],
        ),
        (
            "examples.chat:ChatRoom",
            ["layout.ChatRoom.min_nodes=3"],
            [
                (["post", "ann", "hello"], r"^message 1$"),
                (["post", "bob", "hi ann"], r"^message 2$"),
                (["history"], r"^ann: hello\nbob: hi ann$"),
                (["history", "1"], r"^bob: hi ann$"),
            ],
        ),
    ],
    ids=["persistent_kv", "counter_lock", "chat"],
)
def test_every_example_is_served_by_cli_nodes_and_reached_by_its_own_client(
    nodes: CliNodes, app: str, layout: list[str], steps: list[tuple[list[str], str]]
) -> None:
    args = ["--app", app]
    for setting in layout:
        args += ["--set", setting]
    for n in (1, 2, 3):
        nodes.start(n, *args)
        if n == 1:
            nodes.wait_members({1})
    nodes.wait_members({1, 2, 3})
    script = "examples/" + app.split(":")[0].split(".")[1] + ".py"
    found: list[str] = []
    for command, expected in steps:
        command = [c.format(*found) for c in command]
        cmd = [sys.executable, script, *command, "--contact", nodes.address(2), "--contact", nodes.address(3),
               "--certs-dir", str(nodes.certs)]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        m = re.search(expected, done.stdout.strip(), re.M)
        assert m, f"{command} printed {done.stdout!r}, expected {expected!r}"
        found += m.groups()
