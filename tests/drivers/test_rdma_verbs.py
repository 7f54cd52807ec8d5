"""The verbs layer (runtime.drivers.rdma_verbs) and a node asked for RDMA, here and on a device.

What runs on every machine: finding pyverbs (Debian's python3-pyverbs, loaded from its own
directory without putting the system's dist-packages on sys.path) or saying how to install
it; saying "no device" where the kernel has none; a real node process asked for
``transport = "rdma"`` refusing at start with one line and exit code 7. What needs an RDMA
device (an HCA, or soft-RoCE: ``modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0``)
skips here with rdma-core's reason, "No IB devices found": a one-sided write between two queue
pairs over loopback, and two transports whose rings go through the device.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from derecho_actors.tools.cluster import _free_ports
from runtime.drivers.rdma_ring import ring_buffer
from runtime.drivers.rdma_verbs import (
    SYSTEM_PYVERBS,
    Endpoint,
    Missing,
    RdmaUnavailable,
    VerbsDevice,
    _address_of,
    load_pyverbs,
    probe,
    rts_attributes,
    write_request,
)
from runtime.exitcodes import EXIT_UNAVAILABLE
from runtime.security.certs import ensure_cluster_certs

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
INSTALLED = os.path.isfile(os.path.join(os.environ.get("DERECHO_PYVERBS_DIR", SYSTEM_PYVERBS), "__init__.py"))
IN_ENV = importlib.util.find_spec("pyverbs") is not None


def _devices() -> list[str]:
    try:
        return [probe()]
    except RdmaUnavailable:
        return []


DEVICES = _devices()
needs_pyverbs = pytest.mark.skipif(
    not (INSTALLED or IN_ENV), reason="python3-pyverbs is not installed (apt-get install python3-pyverbs rdma-core)"
)
needs_device = pytest.mark.skipif(not DEVICES, reason="No IB devices found")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@needs_pyverbs
def test_pyverbs_imports_without_the_system_packages_on_the_path() -> None:
    out = _python(
        "import sys, importlib.util\n"
        "from runtime.drivers.rdma_verbs import load_pyverbs, list_devices\n"
        "m = load_pyverbs(); print(m.__file__); print(list_devices())\n"
        "print(any(p.rstrip('/') == '/usr/lib/python3/dist-packages' for p in sys.path))\n"
        "print(importlib.util.find_spec('apt_pkg') is not None)\n"
    )
    assert out.returncode == 0, out.stderr
    where, devices, on_path, apt_pkg = out.stdout.split("\n")[:4]
    assert where.endswith("pyverbs/__init__.py")
    assert devices == repr(DEVICES)
    if not IN_ENV:  # loaded from Debian's directory: only that package came with it
        assert where == os.path.join(SYSTEM_PYVERBS, "__init__.py")
        assert on_path == "False" and apt_pkg == "False"


@pytest.mark.skipif(IN_ENV, reason="pyverbs is importable from this environment itself")
def test_without_pyverbs_the_error_says_how_to_install_it() -> None:
    out = _python(
        "from runtime.drivers.rdma_verbs import probe, RdmaUnavailable\n"
        "try:\n    probe()\nexcept RdmaUnavailable as exc:\n    print(exc.missing.value); print(exc)\n",
        DERECHO_PYVERBS_DIR="/nonexistent/pyverbs",
    )
    assert out.returncode == 0, out.stderr
    kind, line = out.stdout.strip().split("\n")
    assert kind == Missing.NO_PYVERBS.value
    assert "pyverbs cannot be imported" in line and "apt-get install python3-pyverbs rdma-core" in line


@needs_pyverbs
def test_probe_says_no_device_where_there_is_none() -> None:
    if DEVICES:
        assert probe() == DEVICES[0]
        return
    with pytest.raises(RdmaUnavailable) as caught:
        probe()
    assert caught.value.missing is Missing.NO_DEVICE
    assert "no RDMA device on this host" in str(caught.value) and "get_device_list() found none" in str(caught.value)


@pytest.mark.skipif(bool(DEVICES), reason="an RDMA device is present: the node would start")
def test_a_node_asked_for_rdma_without_a_device_refuses_at_start_in_one_line(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ensure_cluster_certs(certs, [1], clients=("operator",), cluster="derecho")
    (port,) = _free_ports(1)
    cmd = [
        sys.executable, "-m", "derecho_actors.tools.cli", "node", "--id", "1", "--listen", f"127.0.0.1:{port}",
        "--certs-dir", str(certs), "--set", f"node.data_dir={tmp_path / 'data'}", "--set", "node.transport=rdma",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == EXIT_UNAVAILABLE, err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    expected = "pyverbs cannot be imported" if not (INSTALLED or IN_ENV) else "no RDMA device on this host"
    assert 'node.transport = "rdma"' in lines[0] and expected in lines[0], lines[0]


def _modules() -> SimpleNamespace:
    """What the verbs layer takes from a device, minus the device: pyverbs' own modules."""
    load_pyverbs()
    mods = {
        n: importlib.import_module(f"pyverbs.{m}")
        for n, m in (("e", "enums"), ("qp_mod", "qp"), ("addr_mod", "addr"), ("wr_mod", "wr"))
    }
    return SimpleNamespace(port=SimpleNamespace(active_mtu=mods["e"].IBV_MTU_1024), **mods)


@needs_pyverbs
def test_the_rts_attributes_name_the_peers_queue_pair_and_gid() -> None:
    """Built from pyverbs' real classes (no device needed for these), as the QP takes them."""
    dev = _modules()
    gid = bytes(range(16))
    attr = rts_attributes(dev, Endpoint(0x2A, 0x654321, 7, gid, ()), psn=0x123)
    assert (attr.dest_qp_num, attr.rq_psn, attr.sq_psn, attr.path_mtu) == (0x2A, 0x654321, 0x123, dev.e.IBV_MTU_1024)
    assert attr.qp_access_flags == dev.e.IBV_ACCESS_LOCAL_WRITE | dev.e.IBV_ACCESS_REMOTE_WRITE
    assert attr.ah_attr.dlid == 7 and attr.ah_attr.is_global == 1
    assert attr.ah_attr.dgid == "0001:0203:0405:0607:0809:0a0b:0c0d:0e0f"


@needs_pyverbs
def test_a_write_request_is_an_rdma_write_to_the_peers_address() -> None:
    dev = _modules()
    sge = dev.wr_mod.SGE(0x1000, 64, 5)
    wr = write_request(dev, 3, sge, True, rkey=0x77, remote_addr=0x9000)
    assert (wr.wr_id, wr.opcode, wr.send_flags) == (3, dev.e.IBV_WR_RDMA_WRITE, dev.e.IBV_SEND_SIGNALED)
    assert write_request(dev, 3, sge, False, 0x77, 0x9000).send_flags == 0


def test_a_ring_buffers_address_does_not_pin_it() -> None:
    buf = ring_buffer(4096)
    assert _address_of(buf) > 0
    buf.close()  # no export left behind: the mapping can go once the MR is deregistered


# ---------------------------------------------------------------- with a device only
@needs_device
def test_a_one_sided_write_lands_in_the_peers_region() -> None:
    device = VerbsDevice(DEVICES[0])
    bufs_a, bufs_b = [ring_buffer(4096)], [ring_buffer(4096)]
    a, b = device.pair(2, bufs_a), device.pair(1, bufs_b)
    try:
        a.connect(b.endpoint())
        b.connect(a.endpoint())
        bufs_a[0][5000:5011] = b"hello, rdma"
        a.write(0, 5000, 11, 0, signaled=True)
        for _ in range(1000):
            device.poll()
            if bufs_b[0][5000:5011] == b"hello, rdma":
                break
        assert bufs_b[0][5000:5011] == b"hello, rdma" and not device.failures
    finally:
        a.close()
        b.close()
        device.close()


@needs_device
def test_two_transports_carry_frames_through_the_device() -> None:
    from runtime.drivers.rdma_transport import RdmaTransport
    from runtime.wire.codec import frame
    from runtime.wire.control import AppMessage
    from tests.drivers.test_shm_transport import FakeTcp

    async def main() -> None:
        got: list[Any] = []
        ta = FakeTcp(1, on_frames=lambda s, f: None, on_peer_lost=lambda n: None)
        tb = FakeTcp(2, on_frames=lambda s, f: got.extend(f), on_peer_lost=lambda n: None)
        ta.addresses = tb.addresses = {1: "a", 2: "b"}
        ta.other, tb.other = tb, ta
        a = RdmaTransport(ta, ring_capacity=8192)  # type: ignore[arg-type]
        b = RdmaTransport(tb, ring_capacity=8192)  # type: ignore[arg-type]
        await a.start()
        await b.start()
        msgs = [AppMessage(i.to_bytes(4, "big") * 300) for i in range(200)]
        for m in msgs:
            a.send(2, frame(m))
            await asyncio.sleep(0.001)
        for _ in range(2000):
            if len(got) == len(msgs):
                break
            await asyncio.sleep(0.002)
        assert got == msgs and a.peer_kinds().get(2, "rdma-out").startswith("rdma")
        await a.close()
        await b.close()

    asyncio.run(main())


class _QueueOnly:
    """A device whose queue pair records posts and whose poll completes every signaled write:
    enough to run VerbsPair's send-queue accounting without hardware (the MR and QP classes
    are stand-ins; the work requests are pyverbs' own)."""

    def __init__(self) -> None:
        mods = _modules()
        self.e, self.wr_mod, self.addr_mod = mods.e, mods.wr_mod, mods.addr_mod
        self.posts: list[Any] = []
        qp = SimpleNamespace(post_send=self.posts.append, qp_num=9, close=lambda: None)
        self.qp_mod = SimpleNamespace(
            QPCap=lambda **kw: kw, QPInitAttr=lambda **kw: kw, QPAttr=lambda **kw: SimpleNamespace(), QP=lambda *a: qp
        )
        self.mr_mod = SimpleNamespace(
            MR=lambda pd, length, access, address: SimpleNamespace(length=length, lkey=1, rkey=2, close=lambda: None)
        )
        self.pd = self.cq = None
        self.port = SimpleNamespace(lid=1, active_mtu=3)
        self.gid = bytes(16)
        self.failures: list[str] = []
        self.pairs: dict[int, Any] = {}
        self.reaped = 0

    def poll(self) -> int:
        pair = self.pairs[4]
        n = sum(1 for wr in self.posts[self.reaped :] if wr.send_flags)
        self.reaped = len(self.posts)
        for _ in range(n):
            pair.completed()
        return n


@needs_pyverbs
def test_the_send_queue_never_overflows_and_every_batch_is_freed() -> None:
    from runtime.drivers.rdma_verbs import SEND_QUEUE, SIGNAL_EVERY, RegionKey, VerbsError, VerbsPair

    dev = _QueueOnly()
    buf = ring_buffer(4096)
    pair = VerbsPair(dev, 4, [buf])  # type: ignore[arg-type]
    dev.pairs[4] = pair
    pair.remote = (RegionKey(0x10000, 2, len(buf)),)
    for i in range(3 * SEND_QUEUE):  # no poll between: the pair reaps when the queue is full
        pair.write(0, i % 4096, 8, 0)
        assert pair.in_flight <= SEND_QUEUE - 1
    signaled = [i for i, wr in enumerate(dev.posts) if wr.send_flags]
    assert signaled[0] == SIGNAL_EVERY - 1 and len(dev.posts) == 3 * SEND_QUEUE
    dev.poll()
    assert pair.in_flight == pair.unsignaled < SIGNAL_EVERY  # all but the unsignaled tail freed
    with pytest.raises(VerbsError, match="past a region's end"):
        pair.write(0, len(buf) - 4, 8, 0)
    pair.close()
    buf.close()
