"""The node's transport: TCP (with TLS) to every peer, and shared-memory rings to the peers on
this host, chosen per peer; the node driver sees one ``Transport`` and cannot tell which runs.

TCP stays for each peer whatever carries its frames: it is where the peer's identity is proven
(its certificate names its node id), where the rings are agreed on, and what tells this node
that the peer died (a killed process's sockets close; its rings say nothing). Clients, joins
and contacts use TCP only.

Setup, per direction, over the peer's authenticated TCP connection (frames of
``runtime.wire.shm_setup``; the driver never sees them):

1. On the first frame this node sends a peer, it sends a ``ShmProbe`` first: its host key
   (machine id and boot id) and uid.
2. The peer, if its ``node.transport`` allows, the host key is its own and the uid its own,
   creates a ring for its frames to us (``runtime.drivers.shm_names``: /dev/shm, mode 0600,
   O_EXCL, a random name) and sends a ``ShmOffer`` with its path and a 16-byte token held in
   the segment's header. Otherwise it answers why not, and both log it: the pair stays on TCP.
3. We check the path names a ring that peer made for us, open and check the segment (our
   uid, mode 0600, size, magic, token) and its doorbells, and answer ``ShmAnswer``.
4. The peer sends ``ShmSwitch`` on TCP, its last frame there for this direction, and writes
   every later frame (and block) into the ring; we read the ring from the switch on, so no
   frame overtakes an earlier one.

A pair whose TCP connection breaks (the peer died, or was cut off) loses its rings with it:
both are unmapped, and whatever comes next starts again on TCP with a probe. A peer that
restarted probes afresh, which replaces what the old process had. The owner of a ring removes
its files as soon as the peer has accepted it (both hold it open; see ``shm_names``), on a
refusal, and on close; at start a node removes what its killed predecessors left behind
mid-setup. A peer never removes a file.

Block frames of large objects go through the ring too, behind the frames waiting there (so
control frames wait behind at most one block, as on TCP's connection). From the moment the peer
accepted our ring until the switch (which waits for TCP to have written the blocks it holds for
the peer), new blocks wait here for the ring instead of joining TCP's queue: given to TCP, they
kept that queue from ever emptying while an object streamed, and the switch waited for a gap
between objects (an object started as the group formed went whole over TCP and TLS, at a third
of the ring's rate, in a third of the bench's runs).

SST pushes (``write_rows``) to a peer whose ring is switched: a push of a row alone is a
one-sided write into the board next to the ring (``shm_rows``), no frame; a push with
messages stays a frame through the ring.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Sequence

from runtime.core.rdmc_descriptor import ObjectId
from runtime.core.rdmc_events import Refusal
from runtime.drivers.shm_board import RowCopy
from runtime.drivers.shm_doorbell import Doorbell
from runtime.drivers.shm_link import RingReader, RingWriter
from runtime.drivers.shm_names import host_key, new_names, offered_names, remove_stale
from runtime.drivers.shm_objects import ObjectSegments, guard_sink
from runtime.drivers.shm_ring import SUPPORTED, RingError, RingSpec, ShmRing
from runtime.drivers.shm_rows import RowImage, RowPlanner
from runtime.drivers.tcp import TcpTransport
from runtime.drivers.transport import BlockDestination, ContactProblem, FramesHandler, PeerLostHandler, RowPush
from runtime.errors import ConfigError
from runtime.wire.codec import FrameDecoder, frame
from runtime.wire.shm_setup import (
    ShmAnswer,
    ShmBlockInPlace,
    ShmInPlace,
    ShmObjectAnswer,
    ShmObjectOffer,
    ShmOffer,
    ShmProbe,
    ShmSegmentFree,
    ShmSwitch,
)

log = logging.getLogger("derecho.shm")

RING_CAPACITY = 4 << 20  # bytes per direction per pair (8 and 16 MiB measured: no faster, more CPU per MB)
MAX_OFFERED_CAPACITY = 1 << 30  # a peer's ring we map at most (it is memory it may make us map)
SWEEP_INTERVAL = 0.02  # seconds between checks for a missed wake-up (see shm_ring)
_OBJECTS: frozenset[type] = frozenset({ShmObjectOffer, ShmObjectAnswer, ShmInPlace, ShmBlockInPlace, ShmSegmentFree})
_SETUP: frozenset[type] = frozenset({ShmProbe, ShmOffer, ShmAnswer, ShmSwitch}) | _OBJECTS
# Object frames that count over TCP too (see ``_objects_allowed``): they open and map nothing.
_OVER_TCP_TOO: frozenset[type] = frozenset({ShmInPlace, ShmBlockInPlace})


class TransportMode(enum.Enum):
    """``node.transport``: which transports a node may use for its peers."""

    AUTO = "auto"  # shared memory where a peer allows it, TCP otherwise
    TCP = "tcp"
    SHM = "shm"  # as AUTO, and a peer that cannot use shared memory is a warning


class PeerTransport(enum.Enum):
    """What carries frames between this node and one peer, as ``status`` shows it."""

    TCP = "tcp"
    SHM = "shm"  # both directions through rings
    SHM_OUT = "shm-out"  # our frames through a ring, the peer's on TCP (its setup pending or refused)
    SHM_IN = "shm-in"


@dataclass(slots=True)
class _Pair:
    """Shared memory with one peer: our ring to it (``writer``, switched once it accepted),
    its ring to us (``reader``), and why not, if not."""

    peer: int
    incarnation: int | None  # the peer's process these rings belong to (TCP's hello)
    probed: bool = False
    writer: RingWriter | None = None
    accepted: bool = False  # the peer opened our ring
    switched: bool = False  # ... and our frames go through it
    reader: RingReader | None = None
    why_not: str = ""
    held: list[bytes] = field(default_factory=list)  # setup frames waiting for its address
    # Blocks waiting for the switch (accepted, TCP still writing its own blocks for the peer).
    blocks: list[tuple[bytes, memoryview]] = field(default_factory=list)


class ShmTransport:
    """See the module docstring. Wraps a ``TcpTransport``; create it on the loop thread."""

    setup_kinds: frozenset[type] = _SETUP  # frames of ours on TCP (a subclass adds its own)

    def __init__(
        self,
        tcp: TcpTransport,
        mode: TransportMode,
        ring_capacity: int = RING_CAPACITY,
        shm_dir: str | None = None,
    ) -> None:
        """Takes over ``tcp``'s frames and peer-lost handlers: what they were is what this
        transport hands the driver, from TCP and from the rings alike."""
        self.tcp = tcp
        self.mode = mode
        self.on_frames: FramesHandler = tcp.on_frames
        self.on_peer_lost: PeerLostHandler = tcp.on_peer_lost
        tcp.on_frames = self.frames_from_tcp
        tcp.on_peer_lost = self.lost_on_tcp
        self.ring_capacity = ring_capacity
        self.shm_dir = shm_dir
        self.cluster = tcp.cluster
        self.node_id = tcp.node_id
        self.pairs: dict[int, _Pair] = {}
        self.host = host_key()
        self.uid = os.getuid()
        self.bad_ring_frames = 0
        self.planner = RowPlanner()  # this node's SST rows as the peers' boards get them
        self._sink: BlockDestination | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        self.refusal = self._local_refusal()
        self.objects = ObjectSegments(self)  # large objects written once, read in place (shm_objects)
        self._objects_ignored: set[int] = set()  # peers whose object frames were ignored (logged once)

    def _local_refusal(self) -> str:
        """Why this node offers no shared memory at all ("" if it does)."""
        if self.mode is TransportMode.TCP:
            return 'node.transport = "tcp"'
        if not SUPPORTED:
            return "this CPU's memory order is not x86's (the rings rely on it): TCP only"
        if not self.tcp.security.tls:
            return "shared memory is only set up over TLS connections, and this node runs insecure"
        if not os.path.isdir(self.shm_dir or "/dev/shm"):
            return "no /dev/shm on this host"
        return ""

    # ------------------------------------------------------------ what the driver reads and sets
    @property
    def contact_reached(self) -> bool:
        return self.tcp.contact_reached

    @contact_reached.setter
    def contact_reached(self, value: bool) -> None:
        self.tcp.contact_reached = value

    @property
    def refusals(self) -> list[str]:
        return self.tcp.refusals

    @refusals.setter
    def refusals(self, value: list[str]) -> None:
        self.tcp.refusals = value

    @property
    def contact_problems(self) -> dict[str, ContactProblem]:
        return self.tcp.contact_problems

    @contact_problems.setter
    def contact_problems(self, value: dict[str, ContactProblem]) -> None:
        self.tcp.contact_problems = value

    @property
    def bad_frames(self) -> int:
        return self.tcp.bad_frames + self.bad_ring_frames

    @bad_frames.setter
    def bad_frames(self, value: int) -> None:
        self.tcp.bad_frames = value - self.bad_ring_frames

    @property
    def view_members(self) -> set[int]:
        return self.tcp.view_members

    @view_members.setter
    def view_members(self, value: set[int]) -> None:
        self.tcp.view_members = value

    @property
    def block_sink(self) -> BlockDestination | None:
        return self._sink

    @block_sink.setter
    def block_sink(self, sink: BlockDestination | None) -> None:
        self._sink = sink
        self.tcp.block_sink = None if sink is None else guard_sink(sink)

    @property
    def object_memory(self) -> ObjectSegments | None:
        """Where this node's engine places objects for co-located members (None: nowhere).
        Only between processes of this host: a subclass's pairs (RDMA) span hosts."""
        return self.objects if type(self) is ShmTransport and not self.refusal else None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.refusal:
            remove_stale(self.cluster, self.node_id, **self._dir())
        elif self.mode is TransportMode.SHM:
            raise ConfigError(f'node.transport = "shm": {self.refusal}')
        else:
            log.info("peers on this host use TCP: %s", self.refusal)
        await self.tcp.start()
        if not self.refusal:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.objects.close()
        for node in list(self.pairs):
            self._drop_pair(node)
        await self.tcp.close()

    def _dir(self) -> dict[str, str]:
        return {"directory": self.shm_dir} if self.shm_dir is not None else {}

    # ------------------------------------------------------------ sending
    def send(self, node_id: int, data: bytes) -> None:
        pair = self.pairs.get(node_id)
        if pair is not None and pair.switched:
            assert pair.writer is not None
            pair.writer.send(data)
            return
        if pair is None and not self.refusal and not self._closing:
            self._probe(node_id)
        self.tcp.send(node_id, data)

    def write_rows(self, node_id: int, data: bytes, pushes: Sequence[RowPush]) -> None:
        """SST pushes: one-sided writes into the peer's board where its ring is switched and
        has one, frames otherwise (see ``shm_rows``)."""
        pair = self.pairs.get(node_id)
        writer = pair.writer if pair is not None and pair.switched else None
        if writer is None or writer.rows is None:
            if pushes:
                if not self.refusal:
                    plan = self.planner.plan
                    for p in pushes:  # keep the images whole for when this peer switches
                        plan(p)
                data = b"".join([data, *(p.frame() for p in pushes)])
            if data:
                self.send(node_id, data)
            return
        frames = [data]
        images: list[RowImage] = []
        plan = self.planner.plan
        for p in pushes:
            step = plan(p)
            f = step.frame(p)
            if f is not None:
                frames.append(f)
            if step.image is not None:
                images.append(step.image)
        out = b"".join(frames)
        if out:
            writer.send(out)
        if images:
            writer.write_rows(images)

    def send_block(self, node_id: int, head: bytes, data: memoryview) -> None:
        if self.objects.block_out(node_id, head, data):
            return  # the peer reads the object in place, or the send waits for the block's write
        self.send_block_bytes(node_id, head, data)

    def send_block_bytes(self, node_id: int, head: bytes, data: memoryview) -> None:
        """Send the block's bytes to ``node_id`` (its ring, or TCP until the pair switched)."""
        pair = self.pairs.get(node_id)
        if pair is not None and pair.writer is not None:
            if pair.switched:
                pair.writer.send_block(head, data)
                return
            if pair.accepted:  # the switch waits for TCP's blocks: this one waits for the ring
                pair.blocks.append((head, data))
                self._try_switch(pair)
                return
        self.tcp.send_block(node_id, head, data)

    def backlog(self, node_id: int) -> int:
        pair = self.pairs.get(node_id)
        ring = pair.writer.backlog() if pair is not None and pair.writer is not None and pair.switched else 0
        return self.tcp.backlog(node_id) + ring

    def traffic(self) -> dict[int, tuple[int, int]]:
        out = self.tcp.traffic()
        for node, pair in self.pairs.items():
            sent = pair.writer.sent if pair.writer is not None else 0
            got = pair.reader.received if pair.reader is not None else 0
            if sent or got:
                s, g = out.get(node, (0, 0))
                out[node] = (s + sent, g + got)
        return out

    def peer_transports(self) -> dict[int, PeerTransport]:
        """Per peer this node exchanged frames with: what carries them now."""
        out = {n: PeerTransport.TCP for n in self.tcp.traffic()}
        for node, pair in self.pairs.items():
            outgoing = pair.switched
            incoming = pair.reader is not None and pair.reader.started
            if outgoing and incoming:
                out[node] = PeerTransport.SHM
            elif outgoing:
                out[node] = PeerTransport.SHM_OUT
            elif incoming:
                out[node] = PeerTransport.SHM_IN
        return out

    # ------------------------------------------------------------ delegated as they are
    def learn(self, node_id: int, address: str) -> None:
        new = node_id not in self.tcp.addresses
        self.tcp.learn(node_id, address)
        pair = self.pairs.get(node_id)
        if pair is None or not new:
            return
        held, pair.held = pair.held, []
        for data in held:
            self.tcp.send(node_id, data)
        if (
            pair.probed
            and not held
            and not (self.refusal or pair.why_not)
            and pair.writer is None
            and pair.reader is None
        ):
            self.tcp.send(node_id, frame(ShmProbe(self.host, self.uid)))  # the first was dropped

    def _send_setup(self, node_id: int, msg: Any) -> None:
        """A setup frame on TCP; held until the peer's address is known (a frame to a node
        without one would be dropped)."""
        data = frame(msg)
        pair = self.pairs.get(node_id)
        if node_id not in self.tcp.addresses and pair is not None:
            pair.held.append(data)
            return
        self.tcp.send(node_id, data)

    def send_to_address(self, address: str, data: bytes) -> None:
        self.tcp.send_to_address(address, data)

    def contact_node(self, address: str) -> int | None:
        return self.tcp.contact_node(address)

    def reply(self, handle: Any, data: bytes) -> bool:
        return self.tcp.reply(handle, data)

    def doom(self, node_id: int) -> None:
        self.tcp.doom(node_id)

    def warn(self, kind: str, address: str, msg: str, *args: Any) -> None:
        self.tcp.warn(kind, address, msg, *args)

    def peer_public_key(self, node_id: int) -> bytes | None:
        return self.tcp.peer_public_key(node_id)

    def client_count(self) -> int:
        return self.tcp.client_count()

    # ------------------------------------------------------------ peers coming and going
    def forget(self, node_id: int) -> None:
        self._drop_pair(node_id)
        self.tcp.forget(node_id)

    def welcome(self, node_id: int) -> None:
        pair = self.pairs.get(node_id)
        now = self.tcp.incarnations.get(node_id)
        if pair is not None and None not in (pair.incarnation, now) and pair.incarnation != now:
            self._drop_pair(node_id)  # rings of its previous process
        self.tcp.welcome(node_id)

    def disconnect(self, node_id: int, reason: str) -> None:
        self._drop_pair(node_id)
        self.tcp.disconnect(node_id, reason)

    def lost_on_tcp(self, node_id: int) -> None:
        """TCP's peer-lost handler: the rings go with the connection, then the driver hears."""
        self._drop_pair(node_id)
        self.on_peer_lost(node_id)

    def _drop_pair(self, node_id: int) -> None:
        pair = self.pairs.pop(node_id, None)
        if pair is None:
            return
        pair.blocks.clear()  # as the ring's writer drops what it holds: the peer is gone or new
        self.objects.owner_gone(node_id)
        if pair.writer is not None:
            pair.writer.close()
        if pair.reader is not None:
            pair.reader.close()
        if pair.switched or pair.reader is not None:
            log.info("node %s: shared memory with it closed; TCP until it is set up again", node_id)

    # ------------------------------------------------------------ receiving
    def frames_from_tcp(self, sender: int, frames: list[Any]) -> None:
        """TCP's frames handler: setup frames are ours, the rest goes to the driver in order.
        Ours are handled after the driver had the others of the same read: a join reply that
        came with a probe tells the driver the prober's address, which the answer needs; and a
        switch is the sender's last frame on TCP, so nothing of the read comes after it."""
        setup = self.setup_kinds
        if not any(type(f) in setup for f in frames):
            self.on_frames(sender, frames)
            return
        others = [f for f in frames if type(f) not in setup]
        if others:
            self.on_frames(sender, others)
        for item in frames:
            if type(item) in setup:
                self._setup(sender, item)

    def _ring_items(self, sender: int, items: list[Any]) -> None:
        good = []
        objects = _OBJECTS
        for item in items:
            if isinstance(item, Exception):
                self.bad_ring_frames += 1
                self.tcp.warn("bad-frame", "shm:0", "dropped a bad frame from node %s's ring: %s", sender, item)
            elif type(item) in objects:  # at once: an offer before the descriptor after it
                if not self._objects_allowed(sender, item):
                    continue
                if type(item) is ShmBlockInPlace:
                    good.append(self.objects.landed(sender, item, self._sink))
                else:
                    self._object_frame(sender, item)
            else:
                good.append(item)
        if good:
            self.on_frames(sender, good)
        pair = self.pairs.get(sender)
        reader = pair.reader if pair is not None else None
        if reader is not None and reader.decoder.broken and not reader.closed:
            self.disconnect(sender, "its ring's stream cannot be re-synchronised")

    def _sweep(self) -> None:
        """Catch a missed wake-up (see shm_ring): read rings with bytes waiting, write what waits."""
        self.objects.sweep()
        for pair in list(self.pairs.values()):
            if pair.accepted and not pair.switched:
                self._try_switch(pair)
            reader, writer = pair.reader, pair.writer
            if reader is not None and reader.started and not reader.closed and reader.waiting():
                reader.read()
            if writer is not None and not writer.closed and (writer.unit or writer.frames or writer.blocks):
                writer.pump()
        if not self._closing:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    # ------------------------------------------------------------ setup
    def _probe(self, node_id: int) -> None:
        self.pairs[node_id] = _Pair(node_id, None, probed=True)
        self.tcp.send(node_id, frame(ShmProbe(self.host, self.uid)))

    def _objects_allowed(self, sender: int, msg: Any) -> bool:
        """Object frames count only where objects are placed in shared memory (not refused
        here, not a subclass's pairs across hosts). Those about segments only from a peer
        whose ring to us is mapped: otherwise a peer could make this node open and map files.
        An "in place" and a block in place also over TCP: a member reads in place once its
        own rings to the others are switched, and a relay whose ring to it could not be made
        (or fell back) sends them over TCP; dropped, the block never landed and the object
        hung. They open nothing: a block in place counts only for an object read in place
        here, a note only from a member of the object. Logged once a peer."""
        pair = self.pairs.get(sender)
        if self.object_memory is not None and (
            (pair is not None and pair.reader is not None) or type(msg) in _OVER_TCP_TOO
        ):
            return True
        if sender not in self._objects_ignored:
            self._objects_ignored.add(sender)
            log.warning(
                "node %s sent %s, but objects do not go through shared memory with it: ignored",
                sender,
                type(msg).__name__,
            )
        return False

    def _object_frame(self, sender: int, msg: Any) -> None:
        if not self._objects_allowed(sender, msg):
            return
        if type(msg) is ShmObjectOffer:
            self.objects.offered(sender, msg)
        elif type(msg) is ShmObjectAnswer:
            self.objects.answered(sender, msg)
        elif type(msg) is ShmInPlace:
            self.objects.reads_in_place(sender, msg)
        elif type(msg) is ShmSegmentFree:
            self.objects.segment_free(sender, msg)
        elif type(msg) is ShmBlockInPlace:
            self.on_frames(sender, [self.objects.landed(sender, msg, self._sink)])

    def _setup(self, sender: int, msg: Any) -> None:
        if type(msg) in _OBJECTS:
            self._object_frame(sender, msg)
        elif type(msg) is ShmProbe:
            self._on_probe(sender, msg)
        elif type(msg) is ShmOffer:
            self._on_offer(sender, msg)
        elif type(msg) is ShmAnswer:
            self._on_answer(sender, msg)
        elif type(msg) is ShmSwitch:
            pair = self.pairs.get(sender)
            if pair is None or pair.reader is None or pair.reader.ring.path != msg.base + ".ring":
                log.warning("node %s switched to a ring this node did not accept (%s): ignored", sender, msg.base)
                return
            pair.reader.start()
            log.info("node %s: its frames arrive through shared memory (%s)", sender, msg.base)

    def _stay_on_tcp(self, sender: int, why: str) -> None:
        level = logging.WARNING if self.mode is TransportMode.SHM else logging.INFO
        log.log(level, "node %s: no shared memory with it, TCP: %s", sender, why)

    def _on_probe(self, sender: int, probe: ShmProbe) -> None:
        """The peer asks for a ring for our frames to it."""
        why = self.refusal
        if not why and probe.host != self.host:
            why = "it runs on another host (or in another network or mount namespace)"
        if not why and probe.uid != self.uid:
            why = f"it runs as uid {probe.uid}, this node as uid {self.uid}"
        if why:
            self._stay_on_tcp(sender, why)
            if sender not in self.pairs:  # where the answer waits for the prober's address
                self.pairs[sender] = _Pair(sender, None, probed=True, why_not=why)
            self._send_setup(sender, ShmAnswer("", False, f"node {self.node_id}: {why}"))
            return
        pair = self.pairs.get(sender)
        if (
            pair is not None
            and pair.probed
            and pair.writer is not None
            and not pair.accepted
            and pair.reader is None
            and pair.incarnation == self.tcp.incarnations.get(sender)
        ):
            # Our offer to this very process is on its way and gives what its probe asks for
            # (a repeated probe, or probes crossing): it answers that offer. Answered by dropping
            # and probing anew, two such probes in flight kept each side tearing down the
            # ring the other was about to open, for good (a setup storm, found in CI).
            return
        if pair is not None and (pair.writer is not None or pair.reader is not None):
            self._drop_pair(sender)  # a new process of the peer, or it dropped its side: anew
            pair = None
        if pair is None:
            pair = self.pairs[sender] = _Pair(sender, None)
        pair.incarnation = self.tcp.incarnations.get(sender)
        if not pair.probed:
            pair.probed = True
            self._send_setup(sender, ShmProbe(self.host, self.uid))
        names = new_names(self.cluster, self.node_id, sender, **self._dir())
        token = secrets.token_bytes(16)
        try:
            pair.writer = RingWriter.create(
                asyncio.get_running_loop(),
                names,
                self.ring_capacity,
                token,
                self.tcp.max_backlog,
                lambda: self._stuck(sender),
            )
        except (OSError, RingError) as exc:
            self._stay_on_tcp(sender, f"cannot create a ring: {exc}")
            return
        self._send_setup(sender, ShmOffer(names.base, self.ring_capacity, token))

    def _on_offer(self, sender: int, offer: ShmOffer) -> None:
        """The peer made a ring for its frames to us: check it, map it, say so."""
        pair = self.pairs.get(sender)
        if pair is None or not pair.probed:
            log.warning("node %s offered a ring this node did not ask for: refused", sender)
            self._send_setup(sender, ShmAnswer(offer.base, False, "not asked for"))
            return
        names = offered_names(offer.base, self.cluster, sender, self.node_id, **self._dir())
        why = ""
        if names is None:
            why = f"the ring's path {offer.base!r} is not one node {sender} may offer this node"
        elif not 0 < offer.capacity <= MAX_OFFERED_CAPACITY:
            why = f"ring capacity {offer.capacity} is out of range"
        reader = None
        if names is not None and not why:
            opened: list[Any] = []
            try:
                ring = ShmRing.attach(RingSpec(names.ring, offer.capacity, offer.token))
                opened.append(ring)
                data_bell = Doorbell.open(names.data)
                opened.append(data_bell)
                room_bell = Doorbell.open(names.room)
                opened.append(room_bell)
                rows = RowCopy.attach(names.rows, offer.token)
            except RingError as exc:
                for thing in opened:
                    thing.close()
                why = str(exc)
            else:
                sink = self._sink
                decoder = FrameDecoder(self.tcp.max_frame)
                if sink is not None:
                    decoder.sink = lambda oid, block, length: self._block_to(sink, sender, oid, block, length)
                reader = RingReader(
                    asyncio.get_running_loop(),
                    ring,
                    data_bell,
                    room_bell,
                    decoder,
                    lambda items: self._ring_items(sender, items),
                    rows,
                )
        if reader is None:
            pair.why_not = why
            self._stay_on_tcp(sender, why)
            self._send_setup(sender, ShmAnswer(offer.base, False, f"node {self.node_id}: {why}"))
            return
        if pair.reader is not None:
            pair.reader.close()
        pair.reader = reader
        self._send_setup(sender, ShmAnswer(offer.base, True))

    @staticmethod
    def _block_to(sink: BlockDestination, sender: int, oid: ObjectId, block: int, length: int) -> memoryview | Refusal:
        got = sink(sender, oid, block, length)
        if isinstance(got, memoryview) and got.readonly:
            return Refusal.IN_PLACE  # read in place here: its bytes are never written (shm_objects)
        return got

    def _on_answer(self, sender: int, answer: ShmAnswer) -> None:
        pair = self.pairs.get(sender)
        if not answer.accepted:
            if pair is not None:
                pair.why_not = answer.reason
                if pair.writer is not None and answer.base == pair.writer.names.base:
                    pair.writer.close()
                    pair.writer = None
            self._stay_on_tcp(sender, answer.reason)
            return
        if pair is None or pair.writer is None or pair.accepted or answer.base != pair.writer.names.base:
            log.warning("node %s accepted a ring this node did not offer it (%s): ignored", sender, answer.base)
            return
        pair.accepted = True
        pair.writer.names.remove()  # both sides hold it open: the names have done their job
        self._try_switch(pair)

    def _try_switch(self, pair: _Pair) -> None:
        """Send the switch (our last frame to the peer on TCP) and write to the ring from now on;
        unless TCP still holds blocks of large objects for the peer, which it would write after
        the switch, behind later blocks in the ring: then the sweep tries again."""
        tcp_peer = self.tcp.peers.get(pair.peer)
        if pair.writer is None or pair.switched or (tcp_peer is not None and tcp_peer.blocks):
            return
        self._send_setup(pair.peer, ShmSwitch(pair.writer.names.base))
        log.info("node %s: frames to it go through shared memory (%s)", pair.peer, pair.writer.names.base)
        self._switched_now(pair)

    def _switched_now(self, pair: _Pair) -> None:
        """The switch went (our last frame to the peer on TCP): frames and blocks go to the
        ring from now on, first the blocks that waited for it since the peer accepted (a
        subclass's ``_try_switch`` calls this too, or those blocks are never sent)."""
        assert pair.writer is not None
        pair.switched = True
        held, pair.blocks = pair.blocks, []
        for head, data in held:
            pair.writer.send_block(head, data)

    def _stuck(self, node_id: int) -> None:
        """Our ring to ``node_id`` is full and frames past the backlog limit wait: it stopped
        reading. Cut it off as TCP does (the core then suspects it)."""
        pair = self.pairs.get(node_id)
        waiting = pair.writer.backlog() + pair.writer.unread() if pair is not None and pair.writer is not None else 0
        log.warning("node %s stopped reading its ring (%d bytes waiting): cutting it off", node_id, waiting)
        self._drop_pair(node_id)
        asyncio.get_running_loop().call_soon(self.on_peer_lost, node_id)
