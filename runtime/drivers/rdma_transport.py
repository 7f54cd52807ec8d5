"""The RDMA transport (``node.transport = "rdma"``): every peer's frames through a ring mirrored
by one-sided RDMA writes over an RC queue pair, set up over the peer's authenticated TCP
connection; the node driver sees one ``Transport`` and cannot tell which runs.

It is the shared-memory transport (``shm_transport.ShmTransport``, which it extends) with two
things replaced: where a pair's rings live (two private mappings per pair registered with the
NIC, ``rdma_ring``; the verbs calls in ``rdma_verbs``) and how a pair is agreed on (the frames
of ``runtime.wire.rdma_setup`` instead of shm's probe and offer). Sending, back-pressure, the
switch from TCP to the ring, reading and the handling of lost peers are ShmTransport's code.

Setup, per pair, over its TLS connection (whose certificate proved the peer's node id):

1. On the first frame this node sends a peer, it creates the pair (a QP in INIT, its ring
   copies registered for remote write) and sends an ``RdmaOffer``: QP number, PSN, LID, GID,
   and address, rkey and length of both copies. A peer that receives an offer first does the
   same, so both offer once.
2. On the other's offer each side checks it (capacity, regions), connects its QP to the
   other's (RTR, RTS) and answers ``RdmaAnswer``; or answers why not, and the pair stays TCP.
3. On the other's accepting answer both QPs are ready, so the side builds its ring ends and
   sends ``RdmaSwitch``, its last frame on TCP; the other reads the ring from there on.

Trust: the rkeys and addresses are sent only on the pair's own authenticated connection, so
only that peer can write into this node's copies, and each region holds only that pair's
rings. An RDMA-capable host on the same fabric that learns an rkey could write into them (as
with any RDMA application without protection-domain-per-peer hardware isolation); the rkeys
never leave the TLS connection.

Blocks of large objects go through the ring behind the frames waiting there, as on shared
memory; RDMC-style sends with immediate data are not built. Wake-ups are by polling (every
``POLL_INTERVAL`` seconds on the loop, which also reaps send completions). TCP stays per peer
for identity, setup and death detection, and clients, joins and contacts use TCP only. Peers on
one host also go through the NIC (loopback RDMA), not shared memory.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.drivers.rdma_ring import MirroredRing, PolledBell, Publish, ring_buffer
from runtime.drivers.rdma_verbs import (
    Device,
    Endpoint,
    QueuePair,
    RdmaUnavailable,
    RegionKey,
    VerbsDevice,
    VerbsError,
    probe,
)
from runtime.drivers.shm_link import RingReader, RingWriter
from runtime.drivers.shm_names import RingNames
from runtime.drivers.shm_ring import HEADER
from runtime.drivers.shm_transport import RING_CAPACITY, ShmTransport, TransportMode, _Pair
from runtime.drivers.tcp import TcpTransport
from runtime.errors import ConfigError
from runtime.exitcodes import EXIT_UNAVAILABLE
from runtime.wire.codec import FrameDecoder
from runtime.wire.rdma_setup import RdmaAnswer, RdmaOffer, RdmaRegion, RdmaSwitch
from runtime.wire.shm_setup import ShmAnswer, ShmOffer, ShmProbe, ShmSwitch

log = logging.getLogger("derecho.rdma")

POLL_INTERVAL = 0.001  # seconds between polls of the rings and the completion queue
OUT, IN = 0, 1  # region indices: our ring to the peer, the peer's ring to us (its are swapped)
_SETUP: frozenset[type] = frozenset({RdmaOffer, RdmaAnswer, RdmaSwitch, ShmProbe, ShmOffer, ShmAnswer, ShmSwitch})


class TransportUnavailable(ConfigError):
    """The transport ``node.transport`` names cannot run on this host: the node refuses to
    start, with exit code ``EXIT_UNAVAILABLE``."""

    exit_code = EXIT_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class NoFiles(RingNames):
    """A ring end's names where there are no files (the RDMA rings are private mappings)."""

    def remove(self) -> None:
        return None


@dataclass(slots=True)
class _RdmaPair(_Pair):
    """ShmTransport's pair plus its verbs objects and ring copies."""

    verbs: QueuePair | None = None
    buffers: list[mmap.mmap] = field(default_factory=list)
    connected: bool = False  # our QP is connected to the peer's (we answered its offer)


def check_offer(offer: RdmaOffer, capacity: int) -> str:
    """Why a peer's offer cannot be used ("" if it can): both sides use one ring size, and the
    offer must name exactly our two ring copies' mirrors, each a whole ring."""
    if offer.capacity != capacity:
        return f"its rings hold {offer.capacity} bytes, this node's {capacity}"
    if len(offer.regions) != 2:
        return f"it offered {len(offer.regions)} memory regions, not 2"
    if any(r.length != HEADER + capacity for r in offer.regions):
        return "a memory region it offered is not one ring long"
    return ""


class RdmaTransport(ShmTransport):
    """See the module docstring. Wraps a ``TcpTransport``; create it on the loop thread."""

    setup_kinds = _SETUP  # its own setup frames, and shm's probes (answered with a no)

    def __init__(
        self,
        tcp: TcpTransport,
        ring_capacity: int = RING_CAPACITY,
        open_device: Callable[[], Device] | None = None,
    ) -> None:
        super().__init__(tcp, TransportMode.SHM, ring_capacity)
        self.device: Device | None = None
        self._open_device = open_device or (lambda: VerbsDevice(probe()))

    def _local_refusal(self) -> str:
        if not self.tcp.security.tls:
            return "RDMA is only set up over TLS connections, and this node runs insecure"
        return ""

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the device first: a node asked for RDMA that cannot have it does not start."""
        if self.refusal:
            raise ConfigError(f'node.transport = "rdma": {self.refusal}')
        try:
            self.device = self._open_device()
        except RdmaUnavailable as exc:
            raise TransportUnavailable(f'node.transport = "rdma": {exc}') from None
        except Exception as exc:  # pyverbs' own: the device is there but cannot be opened
            raise TransportUnavailable(f'node.transport = "rdma": cannot open the RDMA device: {exc}') from None
        log.info("RDMA device %s opened; peers' frames go through it once set up", self.device.name)
        await self.tcp.start()
        self._sweeper = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._sweep)

    async def close(self) -> None:
        await super().close()
        if self.device is not None:
            self.device.close()
            self.device = None

    def peer_kinds(self) -> dict[int, str]:
        """Per peer: "rdma" (both directions), "rdma-out", "rdma-in" or "tcp", for ``status``."""
        names = {"shm": "rdma", "shm-out": "rdma-out", "shm-in": "rdma-in", "tcp": "tcp"}
        return {n: names[kind.value] for n, kind in self.peer_transports().items()}

    # ------------------------------------------------------------ receiving setup frames
    def _setup(self, sender: int, msg: Any) -> None:
        if type(msg) is RdmaOffer:
            self._on_offer_rdma(sender, msg)
        elif type(msg) is RdmaAnswer:
            self._on_answer_rdma(sender, msg)
        elif type(msg) is RdmaSwitch:
            pair = self.pairs.get(sender)
            if pair is None or pair.reader is None:
                log.warning("node %s switched to RDMA before this node accepted: ignored", sender)
                return
            pair.reader.start()
            log.info("node %s: its frames arrive through RDMA", sender)
        elif type(msg) is ShmProbe:  # a peer on shared memory: this node uses RDMA or TCP
            self._send_setup(sender, ShmAnswer("", False, f'node {self.node_id}: node.transport = "rdma"'))
        elif type(msg) is ShmOffer:
            self._send_setup(sender, ShmAnswer(msg.base, False, f'node {self.node_id}: node.transport = "rdma"'))

    # ------------------------------------------------------------ setup
    def _stay_on_tcp(self, sender: int, why: str) -> None:
        log.warning("node %s: no RDMA with it, TCP: %s", sender, why)

    def _probe(self, node_id: int) -> None:
        """ShmTransport calls this on the first frame to a peer: create the pair, offer it."""
        pair = self.pairs[node_id] = _RdmaPair(node_id, self.tcp.incarnations.get(node_id), probed=True)
        self._offer(pair)

    def _offer(self, pair: _RdmaPair) -> None:
        device = self.device
        if device is None:
            return
        try:
            pair.buffers = [ring_buffer(self.ring_capacity), ring_buffer(self.ring_capacity)]
            pair.verbs = device.pair(pair.peer, pair.buffers)
        except Exception as exc:  # VerbsError or pyverbs' own: this pair stays on TCP
            pair.why_not = f"cannot create its queue pair: {exc}"
            self._stay_on_tcp(pair.peer, pair.why_not)
            self._release(pair)
            return
        ep = pair.verbs.endpoint()
        regions = tuple(RdmaRegion(r.addr, r.rkey, r.length) for r in ep.regions)
        self._send_setup(pair.peer, RdmaOffer(ep.qp_num, ep.psn, ep.lid, ep.gid, self.ring_capacity, regions))

    def _on_offer_rdma(self, sender: int, offer: RdmaOffer) -> None:
        pair = self.pairs.get(sender)
        if isinstance(pair, _RdmaPair) and pair.connected:
            self._drop_pair(sender)  # a new process of the peer: anew
            pair = None
        if not isinstance(pair, _RdmaPair):
            pair = _RdmaPair(sender, self.tcp.incarnations.get(sender), probed=True)
            self.pairs[sender] = pair
            self._offer(pair)
        why = pair.why_not or check_offer(offer, self.ring_capacity)
        if not why and pair.verbs is not None:
            try:
                pair.verbs.connect(_endpoint(offer))
                pair.connected = True
            except Exception as exc:  # pyverbs' errors on modify_qp
                why = f"cannot connect its queue pair: {exc}"
        if not pair.connected:
            why = why or "no queue pair"
            pair.why_not = why
            self._stay_on_tcp(sender, why)
            self._release(pair)
            self._send_setup(sender, RdmaAnswer(False, f"node {self.node_id}: {why}"))
            return
        self._send_setup(sender, RdmaAnswer(True))

    def _on_answer_rdma(self, sender: int, answer: RdmaAnswer) -> None:
        pair = self.pairs.get(sender)
        if not isinstance(pair, _RdmaPair):
            log.warning("node %s answered an RDMA offer this node did not make: ignored", sender)
            return
        if not answer.accepted:
            pair.why_not = answer.reason
            self._stay_on_tcp(sender, answer.reason)
            self._release(pair)
            return
        if not pair.connected or pair.verbs is None or pair.writer is not None:
            log.warning("node %s accepted an RDMA pair this node is not ready for: ignored", sender)
            return
        self._build_ends(pair, pair.verbs)
        pair.accepted = True
        self._try_switch(pair)

    def _build_ends(self, pair: _RdmaPair, verbs: QueuePair) -> None:
        """Both QPs can send now: our writer on our copy of our ring, our reader on our copy of
        the peer's (each store published to the peer's mirror)."""
        loop = asyncio.get_running_loop()
        out_ring = MirroredRing(pair.buffers[OUT], self.ring_capacity, self._publisher(verbs, OUT, IN), "rdma-out")
        in_ring = MirroredRing(pair.buffers[IN], self.ring_capacity, self._publisher(verbs, IN, OUT), "rdma-in")
        pair.writer = RingWriter(
            loop,
            NoFiles(f"rdma:{pair.peer}"),
            out_ring,
            PolledBell.local(),
            PolledBell.local(),
            self.tcp.max_backlog,
            lambda: self._stuck(pair.peer),
        )
        decoder = FrameDecoder(self.tcp.max_frame)
        sink = self._sink
        if sink is not None:
            decoder.sink = lambda oid, block, length: sink(pair.peer, oid, block, length)
        pair.reader = RingReader(
            loop,
            in_ring,
            PolledBell.local(),
            PolledBell.local(),
            decoder,
            lambda items: self._ring_items(pair.peer, items),
        )

    def _publisher(self, verbs: QueuePair, region: int, remote_region: int) -> Publish:
        def publish(offset: int, length: int) -> None:
            try:
                verbs.write(region, offset, length, remote_region)
            except VerbsError as exc:
                log.warning("node %s: %s: cutting it off", verbs.peer, exc)
                asyncio.get_running_loop().call_soon(self.disconnect, verbs.peer, "an RDMA write failed")

        return publish

    def _try_switch(self, pair: _Pair) -> None:
        tcp_peer = self.tcp.peers.get(pair.peer)
        if pair.writer is None or pair.switched or (tcp_peer is not None and tcp_peer.blocks):
            return
        self._send_setup(pair.peer, RdmaSwitch())
        log.info("node %s: frames to it go through RDMA", pair.peer)
        self._switched_now(pair)  # with the blocks that waited for the ring since the accept

    # ------------------------------------------------------------ polling and teardown
    def _sweep(self) -> None:
        """Reap send completions (a failed write cuts its peer off), then ShmTransport's sweep
        work: read rings with bytes waiting, write what waits, switch pairs that can."""
        try:
            self._poll_once()
        finally:  # whatever went wrong with one peer, the others' rings are still polled
            if not self._closing:
                self._sweeper = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._sweep)

    def _poll_once(self) -> None:
        device = self.device
        if device is not None:
            device.poll()
            failed, device.failures = device.failures, []
            for item in failed:
                peer = int(item.split(":", 1)[0])
                log.warning("node %s: an RDMA write completed with status %s: cutting it off", peer, item)
                self.disconnect(peer, "an RDMA write failed")
        for pair in list(self.pairs.values()):
            if pair.accepted and not pair.switched:
                self._try_switch(pair)
            reader, writer = pair.reader, pair.writer
            if reader is not None and reader.started and not reader.closed and reader.ring.readable():
                reader.read()
            if writer is not None and not writer.closed and (writer.unit or writer.frames or writer.blocks):
                writer.pump()

    def _drop_pair(self, node_id: int) -> None:
        pair = self.pairs.pop(node_id, None)
        if pair is None:
            return
        was_up = pair.switched or pair.reader is not None
        if isinstance(pair, _RdmaPair):
            self._release(pair)
        if was_up:
            log.info("node %s: RDMA with it closed; TCP until it is set up again", node_id)

    @staticmethod
    def _release(pair: _RdmaPair) -> None:
        """The QP and the registrations go before the mappings they cover."""
        if pair.verbs is not None:
            pair.verbs.close()
            pair.verbs = None
        if pair.writer is not None:
            pair.writer.close()
        if pair.reader is not None:
            pair.reader.close()
        for buf in pair.buffers:
            try:
                buf.close()
            except BufferError:  # a ring view still holds it: the GC unmaps it later
                pass
        pair.buffers = []


def _endpoint(offer: RdmaOffer) -> Endpoint:
    return Endpoint(
        offer.qp_num, offer.psn, offer.lid, offer.gid, tuple(RegionKey(r.addr, r.rkey, r.length) for r in offer.regions)
    )
