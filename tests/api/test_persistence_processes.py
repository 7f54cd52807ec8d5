"""Persistence with real node processes: kill -9 of every node, torn logs, signed logs and a
100 MB state transfer."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import derecho_actors as da
from derecho_actors.tools.cluster import LocalCluster
from examples.persistent_kv import LAYOUT, PersistentKV
from runtime.core.versions import format_version

pytestmark = pytest.mark.timeout(180)

FAST = {"persistence.restart_quorum_wait_ms": "200", "timeouts.heartbeat_ms": "20", "timeouts.suspicion_ms": "300"}


def write_until_killed(cluster: LocalCluster, writes: int, kill_after: int) -> list[tuple[int, int]]:
    """Pipeline ``writes`` puts; kill -9 every node once ``kill_after`` reported persisted.
    Returns (write number, version) of every write whose persisted() returned."""
    kv = cluster.handle(PersistentKV)
    pending = [kv.put(f"key-{i % 300}", f"value-{i}".encode()) for i in range(writes)]
    confirmed: list[tuple[int, int]] = []

    def confirm() -> None:
        for i, p in enumerate(pending):
            try:
                confirmed.append((i, p.persisted(timeout=30)))
            except da.DerechoError:
                return

    t = threading.Thread(target=confirm)
    t.start()
    deadline = time.monotonic() + 60
    while len(confirmed) < kill_after and time.monotonic() < deadline:
        time.sleep(0.005)
    cluster.kill_all()
    t.join(40)
    assert len(confirmed) >= kill_after
    return list(confirmed)


def check_all(cluster: LocalCluster, confirmed: list[tuple[int, int]], nodes: tuple[int, ...]) -> None:
    kv = cluster.handle(PersistentKV)
    kv.put("marker", b"x").persisted(timeout=30)  # every replica has reported its log
    versions = [v for _, v in confirmed]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for node in nodes:
        calls = [(i, kv.get_at(f"key-{i % 300}", v, node=node)) for i, v in confirmed]
        answers = {i: c.get(timeout=30)[node] for i, c in calls}
        wrong = [i for i in answers if answers[i] != f"value-{i}".encode()]
        shown = [(i, format_version(dict(confirmed)[i]), answers[i]) for i in wrong[:5]]
        assert wrong == [], (  # seen once under CI after a rejoin: say what the node answered
            f"node {node}: persisted writes {wrong[:10]} missing or changed ({len(wrong)} in all); "
            f"(write, version, answer): {shown}; status: {cluster.status(node).get('shards')}"
        )
        last = {f"key-{i % 300}": f"value-{i}".encode() for i, _ in confirmed}
        for key in list(last)[:20]:
            now = kv.get(key, node=node).get(timeout=10)[node]
            assert now is not None  # later unconfirmed writes may have replaced the value


def tear_last_record(log_file: Path, cut: int = 7) -> None:
    data = log_file.read_bytes()
    log_file.write_bytes(data[:-cut])


def test_kill_9_every_node_then_restart_keeps_every_persisted_write(tmp_path: Path) -> None:
    with LocalCluster(3, [PersistentKV], LAYOUT, overrides=FAST, workdir=str(tmp_path)) as cluster:
        confirmed = write_until_killed(cluster, writes=3000, kill_after=800)
        # Node 2 died mid-write: its last record is torn (a partial write at the crash).
        tear_last_record(cluster.data_dir(2) / "PersistentKV.0.0.log")
        t0 = time.monotonic()
        cluster.restart()
        restart_s = time.monotonic() - t0
        check_all(cluster, confirmed, (1, 2, 3))
        log2 = (tmp_path / "node-2.log").read_text()
        assert "repaired on open" in log2 and "torn" in log2
        assert restart_s < 30


def test_node_killed_with_a_torn_log_rejoins_and_catches_up(tmp_path: Path) -> None:
    with LocalCluster(3, [PersistentKV], LAYOUT, overrides=FAST, workdir=str(tmp_path)) as cluster:
        kv = cluster.handle(PersistentKV)
        first = [kv.put(f"key-{i % 300}", f"value-{i}".encode()) for i in range(500)]
        confirmed = [(i, p.persisted(timeout=30)) for i, p in enumerate(first)]
        cluster.kill(3)
        tear_last_record(cluster.data_dir(3) / "PersistentKV.0.0.log", cut=30)
        # The group goes on without it (a shard of 3 waits for 3, so the view is inadequate
        # until node 3 is back): restart it and it fetches what it lacks.
        cluster.restart([3])
        more = [kv.put(f"key-{i % 300}", f"value-{i}".encode()) for i in range(500, 700)]
        confirmed += [(500 + j, p.persisted(timeout=30)) for j, p in enumerate(more)]
        check_all(cluster, confirmed, (3, 1))
        assert "asks node" in (tmp_path / "node-3.log").read_text()


@da.replicated(signed=True)
class Ledger:
    entries = da.Persistent({})

    @da.ordered
    def add(self, key: str, amount: int) -> int:
        self.entries[key] = self.entries.get(key, 0) + amount
        return da.current_version(self)

    @da.p2p
    def total(self) -> int:
        return sum(self.entries.values())


def test_signed_log_with_one_flipped_byte_fails_verify_at_that_record(tmp_path: Path) -> None:
    layout = da.Layout({Ledger: da.ShardPolicy(min_nodes=2, max_nodes=2)})
    with LocalCluster(2, [Ledger], layout, overrides=FAST, workdir=str(tmp_path / "c")) as cluster:
        key = cluster.certs_dir / "node-1.crt"  # node 1 signs with its certificate's key
        h = cluster.handle(Ledger)
        calls = [h.add(f"a{i % 5}", i) for i in range(50)]
        [c.persisted(timeout=30) for c in calls]
        cluster.kill_all()
        log_file = cluster.data_dir(1) / "Ledger.0.0.log"
    verify = [sys.executable, "-m", "derecho_actors.tools.cli", "verify", str(log_file.parent), "--key", str(key)]
    good = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    # Flip one byte in the body of record 20: the header is 48 bytes, each record 24 + body + 64.
    data = bytearray(log_file.read_bytes())
    offset, index = 48, 0
    while index < 20:
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 24 + length + 64
        index += 1
    data[offset + 24 + 2] ^= 0x01
    log_file.write_bytes(bytes(data))
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert re.search(r"record 20 at offset %d" % offset, bad.stdout), bad.stdout


@da.replicated(serializer="cloudpickle")
class Archive:
    blobs = da.Persistent({})

    def __init__(self) -> None:
        self.bulk = b""

    @da.ordered
    def store(self, name: str, size: int, seed: int) -> int:
        self.blobs[name] = random.Random(seed).randbytes(size)
        return da.current_version(self)

    @da.ordered
    def fill(self, megabytes: int, seed: int) -> None:
        # Deterministic, so every replica holds the same bytes without sending them; made a
        # megabyte at a time so the node's protocol thread gets the GIL in between.
        rng = random.Random(seed)
        self.bulk = b"".join(rng.randbytes(1 << 20) for _ in range(megabytes))

    @da.p2p
    def digest(self) -> list[object]:
        h = hashlib.sha256(self.bulk)
        for name in sorted(self.blobs):
            h.update(name.encode() + self.blobs[name])
        return [h.hexdigest(), len(self.bulk) + sum(len(b) for b in self.blobs.values()), len(self.blobs)]


def test_a_joiner_receives_100_mb_of_state_and_serves_identical_reads(tmp_path: Path) -> None:
    layout = da.Layout({Archive: da.ShardPolicy(min_nodes=3, max_nodes=4)})
    # A 100 MB transfer keeps two of the four processes busy on two shared cores: a suspicion
    # timeout of 3 s keeps a starved heartbeat from passing for a failure (seen under CI load).
    slow = {"timeouts.suspicion_ms": "3000"}
    with LocalCluster(4, [Archive], layout, workdir=str(tmp_path), overrides=slow) as cluster:
        cluster.kill(3)
        cluster.wait_members({1, 2, 4})
        shutil.rmtree(cluster.data_dir(3), ignore_errors=True)  # node 3 comes back with nothing
        h = cluster.handle(Archive)
        h.fill(90, seed=7).get(timeout=60)
        stores = [h.store(f"blob-{i}", 512 * 1024, seed=i) for i in range(20)]  # 10 MB in the log
        last = [s.persisted(timeout=60) for s in stores][-1]
        cluster.restart([3])
        digests = {n: h.digest(node=n).get(timeout=60)[n] for n in (1, 2, 3, 4)}
        assert digests[3] == digests[1] == digests[2] == digests[4]
        assert digests[3][1] >= 100 * 1000 * 1000 and digests[3][2] == 20
        assert h.store("after", 10, seed=1).persisted(timeout=30) > last
        sent = re.findall(
            r"state of Archive/0/0 sent to node 3: ([\d.]+) MB in ([\d.]+) s", (tmp_path / "node-1.log").read_text()
        )
        # Node 3 may also have had an empty transfer when the cluster first formed.
        assert sent and max(float(mb) for mb, _ in sent) >= 100, sent


def test_restart_never_silently_starts_from_less(tmp_path: Path) -> None:
    """Every log of the shard lost its last records (a bad disk on each): the restart stops
    with a report naming the shard and versions (exit 5); only with --accept-loss does it go
    on, and the versions that are gone then read as VersionLost, never NotPersistedYet."""
    from runtime.drivers.log_store import VersionedLog

    with LocalCluster(3, [PersistentKV], LAYOUT, overrides=FAST, workdir=str(tmp_path)) as cluster:
        kv = cluster.handle(PersistentKV)
        pending = [kv.put(f"key-{i % 100}", f"value-{i}".encode()) for i in range(1500)]
        confirmed = [(i, p.persisted(timeout=30)) for i, p in enumerate(pending)]
        last = confirmed[-1][1]
        frontiers = [cluster.data_dir(n) / "frontiers.msgpack" for n in (1, 2, 3)]
        deadline = time.monotonic() + 10  # frontiers are recorded lazily (every 0.5 s)
        while time.monotonic() < deadline and not all(_recorded(f) >= last for f in frontiers):
            time.sleep(0.1)
        assert all(_recorded(f) >= last for f in frontiers)
        cluster.kill_all()
        ends = []
        for n in (1, 2, 3):  # every copy loses its last third
            log_file = cluster.data_dir(n) / "PersistentKV.0.0.log"
            data = log_file.read_bytes()
            log_file.write_bytes(data[: len(data) * 2 // 3])
            with VersionedLog.open(log_file) as lg:  # cuts the torn tail, as the node would
                ends.append(lg.last_version)
        end = max(ends)
        with pytest.raises(da.GroupClosed):
            cluster.restart(timeout=40)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(cluster.exit_code(n) is None for n in (1, 2, 3)):
            time.sleep(0.1)
        assert [cluster.exit_code(n) for n in (1, 2, 3)] == [5, 5, 5]
        report = (tmp_path / "node-1.log").read_text()
        assert "PersistentKV/0/0" in report and "accept-loss" in report
        cluster.restart(accept_loss=True, timeout=60)
        kv = cluster.handle(PersistentKV)
        kv.put("after", b"1").persisted(timeout=30)
        lost = [(i, v) for i, v in confirmed if v > end]
        kept = [(i, v) for i, v in confirmed if v <= end]
        assert lost and kept
        i, v = kept[-1]
        for node in (1, 2, 3):
            assert kv.get_at(f"key-{i % 100}", v, node=node).get(timeout=10)[node] == f"value-{i}".encode()
            with pytest.raises(da.VersionLost, match="gone"):
                kv.get_at("key-1", lost[len(lost) // 2][1], node=node).get(timeout=10)


def _recorded(path: Path) -> int:
    """The highest persistence frontier a node recorded (-1: none yet)."""
    import msgpack

    if not path.exists():
        return -1
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    return max((v for _, v in doc.get("frontiers", [])), default=-1)
