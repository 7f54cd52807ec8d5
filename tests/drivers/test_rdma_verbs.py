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
from typing import Any

import pytest

from derecho_actors.tools.cluster import _free_ports
from runtime.drivers.rdma_ring import ring_buffer
from runtime.drivers.rdma_verbs import SYSTEM_PYVERBS, Missing, RdmaUnavailable, VerbsDevice, probe
from runtime.exitcodes import EXIT_UNAVAILABLE
from runtime.security.certs import ensure_cluster_certs

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
INSTALLED = os.path.isfile(os.path.join(SYSTEM_PYVERBS, "__init__.py"))
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
