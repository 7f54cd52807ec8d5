"""The thin verbs layer of the RDMA transport: everything that touches pyverbs, and nothing else.

Above it (``rdma_ring``, ``rdma_transport``) the code is the shared-memory transport's: the same
ring layout, framing, back-pressure and wake-up policy. This module only finds pyverbs, lists
devices, and gives one peer pair what the issue asks of verbs: an RC queue pair, memory regions
registered for remote write over the two ring copies, the connection of the QP to the peer's
(from an exchange over the authenticated TCP connection), one-sided ``RDMA_WRITE`` work
requests and ``poll_cq``. pyverbs has no type stubs, so its objects are ``Any`` here and only
here.

Finding pyverbs. PyPI's ``pyverbs`` does not load against Debian's libibverbs (issue 23); the
one that works is Debian's ``python3-pyverbs`` (``apt-get install python3-pyverbs rdma-core``),
whose package lives in ``/usr/lib/python3/dist-packages``. A venv does not see that directory,
and putting it on ``sys.path`` would expose every system package to every import. So when a
plain ``import pyverbs`` fails, :func:`load_pyverbs` loads that one package from its directory
(``importlib`` with ``submodule_search_locations``) and registers it as ``pyverbs`` in
``sys.modules``; its submodules (``pyverbs.device`` ...) are then found through the package's
``__path__``, and nothing else from dist-packages becomes importable.

What runs without a device: the import and :func:`probe` (which reports "no device"). The rest
(:class:`VerbsDevice`, :class:`VerbsPair`) needs a device and is exercised only where one
exists; it follows pyverbs' API as rdma-core's own tests use it (``tests/base.py``:
``RCResources``).
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import importlib.util
import logging
import mmap
import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("derecho.rdma")

SYSTEM_PYVERBS = "/usr/lib/python3/dist-packages/pyverbs"
"""Where Debian's ``python3-pyverbs`` installs the package (override: ``DERECHO_PYVERBS_DIR``)."""

INSTALL_HINT = "apt-get install python3-pyverbs rdma-core (Debian's; PyPI's pyverbs does not load here)"

IB_PORT = 1
GID_INDEX = int(os.environ.get("DERECHO_RDMA_GID_INDEX", "0"))  # RoCE v2 often needs another
SEND_QUEUE = 1024  # work requests in flight per QP
SIGNAL_EVERY = 64  # one write in this many asks for a completion
COMPLETION_QUEUE = 4096  # completions of all pairs: SEND_QUEUE // SIGNAL_EVERY per pair at most
FULL_QUEUE_WAIT = 1.0  # seconds a write waits for send-queue room before the peer is cut off
PSN_MASK = 0xFFFFFF  # packet sequence numbers are 24 bits


class Missing(enum.Enum):
    """Why a node cannot use RDMA here."""

    NO_PYVERBS = "no-pyverbs"
    NO_DEVICE = "no-device"


@dataclass(frozen=True, slots=True)
class RdmaUnavailable(Exception):
    """RDMA cannot run on this host: ``missing`` says which part, ``detail`` what was found."""

    missing: Missing
    detail: str

    def __str__(self) -> str:
        if self.missing is Missing.NO_PYVERBS:
            return f"pyverbs cannot be imported ({self.detail}); install it with: {INSTALL_HINT}"
        return f"no RDMA device on this host ({self.detail})"


_pyverbs: Any = None


def load_pyverbs() -> Any:
    """The ``pyverbs`` package, imported from the environment or else from Debian's directory
    only (see the module docstring); raise ``RdmaUnavailable(NO_PYVERBS)`` if neither works."""
    global _pyverbs
    if _pyverbs is not None:
        return _pyverbs
    try:
        module = importlib.import_module("pyverbs")
        importlib.import_module("pyverbs.device")
    except ImportError as first:
        sys.modules.pop("pyverbs", None)
        module = _load_from(os.environ.get("DERECHO_PYVERBS_DIR", SYSTEM_PYVERBS), first)
    _pyverbs = module
    return module


def _load_from(directory: str, first: ImportError) -> Any:
    init = os.path.join(directory, "__init__.py")
    if not os.path.isfile(init):
        raise RdmaUnavailable(Missing.NO_PYVERBS, f"{first}; and no {init}") from None
    spec = importlib.util.spec_from_file_location("pyverbs", init, submodule_search_locations=[directory])
    if spec is None or spec.loader is None:
        raise RdmaUnavailable(Missing.NO_PYVERBS, f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyverbs"] = module
    try:
        spec.loader.exec_module(module)
        importlib.import_module("pyverbs.device")  # the compiled part: fails on an ABI mismatch
    except Exception as exc:  # ImportError, or the extension's own error on a bad libibverbs
        for name in [n for n in sys.modules if n == "pyverbs" or n.startswith("pyverbs.")]:
            del sys.modules[name]
        raise RdmaUnavailable(Missing.NO_PYVERBS, f"{directory}: {type(exc).__name__}: {exc}") from None
    log.debug("pyverbs loaded from %s", directory)
    return module


def list_devices() -> list[str]:
    """Names of the RDMA devices here; raise ``RdmaUnavailable`` without pyverbs. pyverbs
    raises ``PyverbsRDMAError`` where the kernel has no device at all: that is an empty list."""
    load_pyverbs()
    device = importlib.import_module("pyverbs.device")
    errors = importlib.import_module("pyverbs.pyverbs_error")
    try:
        found = device.get_device_list()
    except errors.PyverbsError as exc:
        log.debug("get_device_list: %s", exc)
        return []
    return [d.name.decode() if isinstance(d.name, bytes) else str(d.name) for d in found]


def probe() -> str:
    """The device a node would use (the first listed); raise ``RdmaUnavailable`` saying which
    part is missing."""
    load_pyverbs()
    devices = list_devices()
    if not devices:
        raise RdmaUnavailable(
            Missing.NO_DEVICE,
            "pyverbs imports, get_device_list() found none: no HCA, and no soft-RoCE (modprobe rdma_rxe)",
        )
    return devices[0]


@dataclass(frozen=True, slots=True)
class RegionKey:
    """What a peer needs to write into one of our regions: its address and remote key."""

    addr: int
    rkey: int
    length: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a pair's queue pair, as the other side needs it to connect (sent only over
    the peer's authenticated TLS connection)."""

    qp_num: int
    psn: int
    lid: int
    gid: bytes  # 16 bytes
    regions: tuple[RegionKey, ...]  # in the order the transport registered them


class QueuePair(Protocol):
    """What the transport uses of one pair's verbs objects (:class:`VerbsPair`; tests put an
    in-process fabric here, so the code above the verbs calls is the production code)."""

    peer: int

    def endpoint(self) -> Endpoint: ...

    def connect(self, remote: Endpoint) -> None: ...

    def write(self, region: int, offset: int, length: int, remote_region: int, signaled: bool = False) -> None: ...

    def close(self) -> None: ...


class Device(Protocol):
    """What the transport uses of an opened device (:class:`VerbsDevice`)."""

    name: str
    failures: list[str]

    def pair(self, peer: int, buffers: list[mmap.mmap]) -> QueuePair: ...

    def poll(self) -> int: ...

    def close(self) -> None: ...


class VerbsError(Exception):
    """A verbs call failed, or a work request completed with an error status."""


def _gid_text(raw: bytes) -> str:
    """pyverbs' GID takes and gives the colon form ``"fe80:0000:...:0001"`` (8 groups)."""
    if len(raw) != 16:
        raise VerbsError("a GID is 16 bytes")
    return ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2))


def _gid_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class VerbsDevice:
    """An opened device: its context, one protection domain and one completion queue for all
    pairs' sends (the poller reaps it on the loop)."""

    def __init__(self, name: str) -> None:
        load_pyverbs()
        device = importlib.import_module("pyverbs.device")
        pd = importlib.import_module("pyverbs.pd")
        cq = importlib.import_module("pyverbs.cq")
        self.e: Any = importlib.import_module("pyverbs.enums")
        self.qp_mod: Any = importlib.import_module("pyverbs.qp")
        self.mr_mod: Any = importlib.import_module("pyverbs.mr")
        self.wr_mod: Any = importlib.import_module("pyverbs.wr")
        self.addr_mod: Any = importlib.import_module("pyverbs.addr")
        self.name = name
        self.ctx: Any = device.Context(name=name)
        self.pd: Any = pd.PD(self.ctx)
        self.cq: Any = cq.CQ(self.ctx, COMPLETION_QUEUE, None, None, 0)
        self.port: Any = self.ctx.query_port(IB_PORT)
        self.gid = _gid_bytes(self.ctx.query_gid(IB_PORT, GID_INDEX).gid)
        self.failures: list[str] = []
        self.pairs: dict[int, VerbsPair] = {}

    def pair(self, peer: int, buffers: list[mmap.mmap]) -> VerbsPair:
        """A queue pair to ``peer`` with ``buffers`` registered for remote write."""
        made = VerbsPair(self, peer, buffers)
        self.pairs[peer] = made
        return made

    def poll(self) -> int:
        """Reap send completions; return how many. Each success frees its batch of send-queue
        slots in its pair; a failure is recorded as ``"peer:status"`` (``wr_id`` is the peer's
        node id) for the transport to cut that peer off."""
        done = 0
        while True:
            n, wcs = self.cq.poll(64)
            if n <= 0:
                return done
            done += n
            for wc in wcs[:n]:
                pair = self.pairs.get(wc.wr_id)
                if wc.status != self.e.IBV_WC_SUCCESS:
                    self.failures.append(f"{wc.wr_id}:{wc.status}")
                elif pair is not None:
                    pair.completed()

    def close(self) -> None:
        for thing in (self.cq, self.pd, self.ctx):
            thing.close()


def rts_attributes(device: Any, remote: Endpoint, psn: int) -> Any:
    """The ``QPAttr`` that takes an RC QP to RTS towards ``remote`` (values as ibv_rc_pingpong
    and rdma-core's ``RCResources``); ``device`` gives the pyverbs modules, port and enums."""
    e, addr_mod = device.e, device.addr_mod
    attr = device.qp_mod.QPAttr(port_num=IB_PORT)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
    attr.path_mtu = device.port.active_mtu
    attr.dest_qp_num = remote.qp_num
    attr.rq_psn = remote.psn
    attr.sq_psn = psn
    attr.max_dest_rd_atomic = 1
    attr.max_rd_atomic = 1
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    gr = addr_mod.GlobalRoute(dgid=addr_mod.GID(_gid_text(remote.gid)), sgid_index=GID_INDEX)
    attr.ah_attr = addr_mod.AHAttr(port_num=IB_PORT, is_global=1, gr=gr, dlid=remote.lid)
    return attr


def write_request(device: Any, peer: int, sge: Any, signaled: bool, rkey: int, remote_addr: int) -> Any:
    """One ``IBV_WR_RDMA_WRITE`` work request (``wr_id``: the peer, for its completion)."""
    e = device.e
    flags = e.IBV_SEND_SIGNALED if signaled else 0
    wr = device.wr_mod.SendWR(wr_id=peer, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge], send_flags=flags)
    wr.set_wr_rdma(rkey, remote_addr)
    return wr


class VerbsPair:
    """One RC queue pair to one peer and our memory regions for it (each region registered with
    remote write, over a buffer the ring code reads and writes directly).

    Send-queue accounting: one write in ``SIGNAL_EVERY`` is signaled, and its completion frees
    the slots of the writes before it (an RC QP completes in order); a write that would find
    the queue full first reaps completions, briefly, rather than fail."""

    def __init__(self, device: VerbsDevice, peer: int, buffers: list[mmap.mmap]) -> None:
        e = device.e
        self.device = device
        self.peer = peer
        self.psn = secrets.randbelow(PSN_MASK)
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
        self.mrs: list[Any] = []
        self.addrs: list[int] = []
        for buf in buffers:
            addr = _address_of(buf)
            self.mrs.append(device.mr_mod.MR(device.pd, len(buf), access, address=addr))
            self.addrs.append(addr)
        qp_mod = device.qp_mod
        cap = qp_mod.QPCap(max_send_wr=SEND_QUEUE, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
        init = qp_mod.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=device.cq, rcq=device.cq, cap=cap, sq_sig_all=0)
        attr = qp_mod.QPAttr(port_num=IB_PORT)
        attr.qp_access_flags = access
        self.qp: Any = qp_mod.QP(device.pd, init, attr)  # RC with a qp_attr: left in INIT
        self.remote: tuple[RegionKey, ...] = ()
        self.posted = 0
        self.in_flight = 0  # posted, not known complete
        self.unsignaled = 0  # posted since the last signaled write
        self.batches: deque[int] = deque()  # per signaled write in flight: the writes it frees

    def endpoint(self) -> Endpoint:
        regions = tuple(RegionKey(addr, mr.rkey, mr.length) for addr, mr in zip(self.addrs, self.mrs))
        return Endpoint(self.qp.qp_num, self.psn, self.device.port.lid, self.device.gid, regions)

    def connect(self, remote: Endpoint) -> None:
        """INIT -> RTR -> RTS towards the peer's QP."""
        self.qp.to_rts(rts_attributes(self.device, remote, self.psn))
        self.remote = remote.regions

    def write(self, region: int, offset: int, length: int, remote_region: int, signaled: bool = False) -> None:
        """One-sided write of ``length`` bytes at ``offset`` of our region ``region`` to the
        same offset of the peer's region ``remote_region``. Writes on one RC QP are placed in
        the order posted, which is what the ring's "data, then head" publication relies on."""
        mr = self.mrs[region]
        target = self.remote[remote_region]
        if offset + length > min(mr.length, target.length):
            raise VerbsError(f"write of {length} at {offset} is past a region's end")
        if self.in_flight >= SEND_QUEUE - 1:
            self._make_room()
        sge = self.device.wr_mod.SGE(self.addrs[region] + offset, length, mr.lkey)
        signaled = signaled or self.unsignaled + 1 >= SIGNAL_EVERY or self.in_flight + 1 >= SEND_QUEUE - 1
        wr = write_request(self.device, self.peer, sge, signaled, target.rkey, target.addr + offset)
        try:
            self.qp.post_send(wr)
        except Exception as exc:  # PyverbsRDMAError: the QP broke
            raise VerbsError(f"post_send to node {self.peer}: {exc}") from None
        self.posted += 1
        self.in_flight += 1
        self.unsignaled += 1
        if signaled:
            self.batches.append(self.unsignaled)
            self.unsignaled = 0

    def completed(self) -> None:
        """A signaled write completed: it and the unsignaled ones before it left the queue."""
        if self.batches:
            self.in_flight -= self.batches.popleft()

    def _make_room(self) -> None:
        deadline = time.monotonic() + FULL_QUEUE_WAIT
        while self.in_flight >= SEND_QUEUE - 1:
            self.device.poll()
            if self.device.failures or time.monotonic() > deadline:
                raise VerbsError(f"the send queue to node {self.peer} does not drain")

    def close(self) -> None:
        """Destroy the QP, then deregister (before the ring buffers are unmapped)."""
        if self.device.pairs.get(self.peer) is self:
            del self.device.pairs[self.peer]
        self.qp.close()
        for mr in self.mrs:
            mr.close()


def _address_of(buf: mmap.mmap) -> int:
    """The address of a mapping's first byte. The ctypes view exports the buffer only while it
    lives, so the mapping can still be closed later (after the MR is deregistered)."""
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view
