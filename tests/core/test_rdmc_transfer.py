"""The block transfer engine among n = 2..16 nodes, through a small in-test network.

Each node runs its own ``TransferEngine``; :class:`Net` carries its blocks and credits and
delivers them in a random order (any order of frames in flight is causally valid: a frame is
only in flight once its sender emitted it), per link in order (as TCP) or not at all in order
(as a network that reorders). Announcements of the descriptor happen at random points too, so
credits often reach a relay before it knows the object. While running, the net checks the
engine's promises at every effect: a node only sends a block it holds, with the object's bytes,
never more than its credit, never more than ``window`` blocks in flight on a link; at the end
every receiver holds identical bytes with the descriptor's digest, got every block exactly once,
and every node released the object. Faults (removed members, ended epochs, corrupt frames) and
forged or duplicated blocks are in ``test_rdmc_transfer_faults.py``, which reuses this net.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.rdmc_descriptor import ObjectDescriptor, ObjectId, describe, object_digest
from runtime.core.rdmc_events import (
    BlockArrived,
    BlockRefused,
    BlockWritten,
    CreditGranted,
    CreditRefused,
    Effect,
    GrantCredit,
    ObjectAnnounced,
    ObjectComplete,
    ObjectFailed,
    ObjectReleased,
    SendBlock,
    StartSending,
    TransferEvent,
)
from runtime.core.rdmc_schedule import ScheduleKind, plan
from runtime.core.rdmc_transfer import TransferConfig, TransferEngine

pytestmark = pytest.mark.timeout(120)

KINDS = list(ScheduleKind)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Frame:
    src: int
    dst: int
    oid: ObjectId
    block: int = -1  # a block frame; -1: a credit frame
    data: memoryview | None = None
    upto: int = 0


@dataclass
class Net:
    """Engines of every node plus the frames between them, delivered in a seeded random order."""

    nodes: tuple[int, ...]
    seed: int
    config: TransferConfig = field(default_factory=TransferConfig)
    fifo: bool = True  # per link in order (TCP); False: any frame in flight may go next
    in_place: bool = False  # receivers read blocks straight into their buffer (destination())
    check_bytes: bool = True  # every block sent holds the object's bytes (off when frames are corrupted)
    engines: dict[int, TransferEngine] = field(init=False)
    rng: random.Random = field(init=False)
    frames: list[Frame] = field(default_factory=list)
    agenda: list[tuple[int, StartSending | ObjectAnnounced]] = field(default_factory=list)
    opened: set[tuple[ObjectId, int]] = field(default_factory=set)  # (object, node) started or announced
    objects: dict[ObjectId, tuple[ObjectDescriptor, bytes]] = field(default_factory=dict)
    # What happened, for the checks at the end.
    received: dict[tuple[ObjectId, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    sent: Counter[tuple[ObjectId, int, int]] = field(default_factory=Counter)  # (oid, src, dst)
    link_order: dict[tuple[ObjectId, int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    granted: dict[tuple[ObjectId, int, int], int] = field(default_factory=dict)  # at src, by dst
    complete: dict[tuple[ObjectId, int], ObjectComplete] = field(default_factory=dict)
    released: set[tuple[ObjectId, int]] = field(default_factory=set)
    failed: dict[tuple[ObjectId, int], ObjectFailed] = field(default_factory=dict)
    refused: list[tuple[int, BlockRefused | CreditRefused]] = field(default_factory=list)
    relay_views: list[tuple[int, SendBlock]] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self.engines = {node: TransferEngine(node, self.config) for node in self.nodes}
        self.rng = random.Random(self.seed)

    # -- setting up ----------------------------------------------------------------------------

    def add_object(
        self, oid: ObjectId, members: tuple[int, ...], data: bytes, block_size: int, kind: ScheduleKind
    ) -> ObjectDescriptor:
        """Queue the sender's start and every receiver's announcement (run in random order)."""
        d = describe(oid, members, data, block_size, kind)
        self.objects[oid] = (d, data)
        self.agenda.append((oid.sender, StartSending(d, data)))
        self.agenda += [(m, ObjectAnnounced(d)) for m in members[1:]]
        return d

    # -- running -------------------------------------------------------------------------------

    def run(self, max_events: int | None = None) -> int:
        """Deliver until nothing is in flight (or ``max_events``); how many events ran."""
        count = 0
        while (self.frames or self.agenda) and (max_events is None or count < max_events):
            self.step_once()
            count += 1
        return count

    def step_once(self) -> None:
        # A node opens a sender's objects in seq order (the ordered multicast delivers a
        # sender's descriptors in order): only the first pending one per (node, sender) may run.
        ready, seen = [], set()
        for i, (node, event) in enumerate(self.agenda):
            key = (node, event.descriptor.oid.sender)
            if key not in seen:
                seen.add(key)
                ready.append(i)
        pick = self.rng.randrange(len(self.frames) + len(ready))
        if pick >= len(self.frames):
            node, event = self.agenda.pop(ready[pick - len(self.frames)])
            self.opened.add((event.descriptor.oid, node))
            self.apply(node, self.engines[node].step(event))
            return
        frame = self.frames[pick]
        if self.fifo:  # the oldest frame of the picked frame's link goes first
            frame = next(f for f in self.frames if (f.src, f.dst) == (frame.src, frame.dst))
        self.frames.remove(frame)
        self.deliver(frame)

    def deliver(self, frame: Frame) -> None:
        engine = self.engines[frame.dst]
        if frame.data is None:
            self.apply(frame.dst, engine.step(CreditGranted(frame.oid, frame.src, frame.upto)))
            return
        if self.in_place:
            dest = engine.destination(frame.oid, frame.src, frame.block, frame.data.nbytes)
            if isinstance(dest, memoryview):
                dest[:] = frame.data
                effects = engine.step(BlockWritten(frame.oid, frame.src, frame.block))
            else:
                effects = [BlockRefused(frame.oid, frame.src, frame.block, dest)]
        else:
            effects = engine.step(BlockArrived(frame.oid, frame.src, frame.block, frame.data))
        if not any(isinstance(e, BlockRefused) for e in effects):
            self.received[frame.oid, frame.dst].append(frame.block)
        self.apply(frame.dst, effects)

    def apply(self, node: int, effects: list[Effect]) -> None:
        """Carry out a node's effects, checking each against the engine's promises."""
        for e in effects:
            match e:
                case SendBlock(oid, to, block, data):
                    self.check_send(node, e)
                    self.sent[oid, node, to] += 1
                    self.link_order[oid, node, to].append(block)
                    self.frames.append(Frame(node, to, oid, block, data))
                case GrantCredit(oid, to, upto):
                    self.frames.append(Frame(node, to, oid, upto=upto))
                case ObjectComplete(d, data):
                    assert (d.oid, node) not in self.complete, f"node {node} completed {d.oid} twice"
                    assert (d.oid, node) not in self.failed, f"node {node} completed {d.oid} after failing"
                    self.complete[d.oid, node] = e
                case ObjectReleased(oid):
                    self.released.add((oid, node))
                case ObjectFailed(oid):
                    assert (oid, node) not in self.failed, f"node {node} failed {oid} twice"
                    self.failed[oid, node] = e
                case BlockRefused() | CreditRefused():
                    self.refused.append((node, e))
        # Credits seen by the sender bound what it sends on each link.
        for e in effects:
            if isinstance(e, GrantCredit):
                key = (e.oid, e.to, node)
                self.granted[key] = max(self.granted.get(key, 0), e.upto)

    def check_send(self, node: int, send: SendBlock) -> None:
        oid, to, block = send.oid, send.to, send.block
        d, data = self.objects[oid]
        engine = self.engines[node]
        if oid in engine.in_flight():  # else released by this very step, its last send included
            assert engine.holds(oid, block), f"node {node} sends block {block} it does not hold"
        if node != oid.sender:
            assert block in self.received[oid, node], f"node {node} forwards block {block} before receiving it"
            self.relay_views.append((node, send))
        offset, size = d.block_span(block)
        if self.check_bytes:
            assert bytes(send.data) == data[offset : offset + size], f"node {node} sends wrong bytes of block {block}"
        assert self.sent[oid, node, to] + 1 <= self.granted.get((oid, node, to), 0), "a send beyond the credit"
        in_flight = sum(1 for f in self.frames if (f.src, f.dst, f.oid) == (node, to, oid) and f.data is not None)
        self.max_in_flight = max(self.max_in_flight, in_flight + 1)
        assert in_flight + 1 <= self.config.window, f"{in_flight + 1} blocks in flight on {node}->{to}"

    # -- checking the outcome --------------------------------------------------------------------

    def check_delivered(self, oid: ObjectId) -> None:
        """Every member got the object whole, once, by the schedule; every node released it."""
        d, data = self.objects[oid]
        for node in d.members[1:]:
            got = self.complete.get((oid, node))
            assert got is not None, f"node {node} never completed {oid}"
            assert bytes(got.data) == data and object_digest(got.data) == d.digest
            assert sorted(self.received[oid, node]) == list(range(d.blocks)), f"node {node}: {self.received[oid, node]}"
        assert (oid, oid.sender) not in self.complete  # the sender has nothing to receive
        assert all((oid, node) in self.released for node in d.members), "a node never released the object"
        assert not any(key[0] == oid for key in self.failed)
        steps = plan(d.kind, len(d.members), d.blocks)
        for (o, src, dst), blocks in self.link_order.items():
            if o == oid:  # each link carries its blocks in schedule order
                rank_src, rank_dst = d.members.index(src), d.members.index(dst)
                expected = [t.block for ts in steps for t in ts if (t.sender, t.receiver) == (rank_src, rank_dst)]
                assert blocks == expected, f"link {src}->{dst} out of schedule order"

    def check_idle(self) -> None:
        for node, engine in self.engines.items():
            assert engine.in_flight() == () and engine.bytes_in_flight == 0, f"node {node} still holds objects"


def one_object(
    n: int, kind: ScheduleKind, size: int, block_size: int, seed: int, **net_options: object
) -> tuple[Net, ObjectDescriptor]:
    members = tuple(range(10, 10 + n))  # node ids are not ranks
    order = list(members[1:])
    random.Random(seed).shuffle(order)
    members = (members[0], *order)
    net = Net(nodes=members, seed=seed, **net_options)  # type: ignore[arg-type]
    d = net.add_object(ObjectId(members[0], 0, 1), members, payload(size, seed), block_size, kind)
    return net, d


# --------------------------------------------------------------------------------------------
# Every n, every schedule: seeded runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
@pytest.mark.parametrize("n", range(2, 17))
def test_every_receiver_gets_identical_bytes_for_every_group_size(n: int, kind: ScheduleKind) -> None:
    rng = random.Random(n * 31 + len(kind.value))
    for trial in range(3):
        blocks = rng.randint(1, 24)
        block_size = rng.choice((1, 7, 64))
        size = max(0, (blocks - 1) * block_size + rng.randint(1, block_size))
        window = rng.randint(1, 4)
        net, d = one_object(n, kind, size, block_size, seed=trial, config=TransferConfig(window=window))
        net.run()
        assert d.blocks == blocks
        net.check_delivered(d.oid)
        net.check_idle()
        assert not net.refused
        assert sum(net.sent.values()) == (n - 1) * blocks  # each receiver gets each block once


@pytest.mark.parametrize("n", range(2, 17))
def test_binomial_sender_link_carries_each_block_about_once(n: int) -> None:
    k = n.bit_length() - 1
    for blocks in (1, 2, 5, 16, 33):
        net, d = one_object(n, ScheduleKind.BINOMIAL, blocks * 8, 8, seed=blocks)
        net.run()
        net.check_delivered(d.oid)
        root_sends = sum(c for (_, src, _), c in net.sent.items() if src == d.oid.sender)
        assert root_sends == blocks + k - 1  # each block once, plus the last block's tree
        assert root_sends <= blocks + n.bit_length()


# --------------------------------------------------------------------------------------------
# Properties over random shapes, orders and windows
# --------------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 16),
    kind=st.sampled_from(KINDS),
    blocks=st.integers(1, 40),
    block_size=st.integers(1, 40),
    tail=st.integers(0, 39),
    window=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    fifo=st.booleans(),
    in_place=st.booleans(),
)
def test_random_delivery_orders_deliver_identical_objects(
    n: int,
    kind: ScheduleKind,
    blocks: int,
    block_size: int,
    tail: int,
    window: int,
    seed: int,
    fifo: bool,
    in_place: bool,
) -> None:
    size = (blocks - 1) * block_size + 1 + tail % block_size
    config = TransferConfig(window=window)
    net, d = one_object(n, kind, size, block_size, seed, config=config, fifo=fifo, in_place=in_place)
    net.run()
    assert not net.refused, net.refused[:3]
    if fifo:
        net.check_delivered(d.oid)
    else:  # link order is what the senders issued, not what arrived: check the rest
        for node in d.members[1:]:
            assert bytes(net.complete[d.oid, node].data) == net.objects[d.oid][1]
            assert sorted(net.received[d.oid, node]) == list(range(d.blocks))
    assert net.max_in_flight <= window
    net.check_idle()


@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 9), senders=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS))
def test_objects_from_several_senders_at_once(n: int, senders: int, seed: int, kind: ScheduleKind) -> None:
    """Objects overlap at every node (each node sends one and relays the others)."""
    rng = random.Random(seed)
    nodes = tuple(range(n))
    net = Net(nodes=nodes, seed=seed, config=TransferConfig(window=2), fifo=rng.random() < 0.5)
    oids = []
    for s in range(min(senders, n)):
        others = [m for m in nodes if m != s]
        rng.shuffle(others)
        data = payload(rng.randint(0, 300), seed + s)
        oids.append(net.add_object(ObjectId(s, 0, 3), (s, *others), data, rng.randint(1, 50), kind).oid)
    net.run()
    assert not net.refused
    for oid in oids:
        for node in net.objects[oid][0].members[1:]:
            assert bytes(net.complete[oid, node].data) == net.objects[oid][1]
        assert all((oid, m) in net.released for m in nodes)
    net.check_idle()


# --------------------------------------------------------------------------------------------
# Small and edge shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
@pytest.mark.parametrize(
    ("size", "block_size", "blocks"),
    [(0, 4, 1), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (100, 1, 100)],
)
def test_block_geometry(kind: ScheduleKind, size: int, block_size: int, blocks: int) -> None:
    net, d = one_object(5, kind, size, block_size, seed=size)
    assert d.blocks == blocks
    assert sum(d.block_span(b)[1] for b in range(blocks)) == size
    net.run()
    net.check_delivered(d.oid)


def test_a_group_of_one_releases_at_once() -> None:
    engine = TransferEngine(7)
    d = describe(ObjectId(7, 0, 0), (7,), b"alone", 2)
    assert engine.step(StartSending(d, b"alone")) == [ObjectReleased(d.oid)]
    assert engine.in_flight() == ()


def test_receivers_grant_credit_only_for_blocks_they_expect() -> None:
    """Two members, window 4, ten blocks: the receiver grants 4, then tops up by 2s to 10."""
    engine = TransferEngine(2, TransferConfig(window=4))
    d = describe(ObjectId(1, 0, 0), (1, 2), bytes(10), 1, ScheduleKind.CHAIN)
    assert engine.step(ObjectAnnounced(d)) == [GrantCredit(d.oid, 1, 4)]
    grants = []
    for b in range(10):
        grants += [e.upto for e in engine.step(BlockArrived(d.oid, 1, b, b"\0")) if isinstance(e, GrantCredit)]
    assert grants == [6, 8, 10]


def test_a_sender_streams_objects_one_after_another() -> None:
    """Four objects of one sender in flight together, opened in seq order everywhere; early
    credits for a later object wait at the relays until it is announced there."""
    nodes = (1, 2, 3, 4, 5)
    net = Net(nodes=nodes, seed=11, config=TransferConfig(window=2, max_objects=4), fifo=False)
    oids = [
        net.add_object(ObjectId(1, seq, 0), nodes, payload(50 + seq, seq), 8, ScheduleKind.BINOMIAL).oid
        for seq in range(4)
    ]
    net.run()
    for oid in oids:
        for node in nodes[1:]:
            assert bytes(net.complete[oid, node].data) == net.objects[oid][1]
    assert not net.refused
    net.check_idle()


def test_a_chain_of_three_step_by_step() -> None:
    """The effects of a whole transfer, pinned: 1 -> 2 -> 3, two blocks of two bytes, window 1."""
    d = describe(ObjectId(1, 0, 0), (1, 2, 3), b"abcd", 2, ScheduleKind.CHAIN)
    e = {n: TransferEngine(n, TransferConfig(window=1)) for n in (1, 2, 3)}

    def trace(node: int, event: TransferEvent) -> list[str]:
        out = []
        for x in e[node].step(event):
            match x:
                case SendBlock(_, to, block, data):
                    out.append(f"send {block}={bytes(data).decode()} to {to}")
                case GrantCredit(_, to, upto):
                    out.append(f"credit {upto} to {to}")
                case ObjectComplete(_, data):
                    out.append(f"complete {bytes(data).decode()}")
                case ObjectReleased():
                    out.append("released")
                case _:
                    out.append(repr(x))
        return out

    assert trace(1, StartSending(d, b"abcd")) == []
    assert trace(3, ObjectAnnounced(d)) == ["credit 1 to 2"]
    assert trace(2, CreditGranted(d.oid, 3, 1)) == []  # early: 2 does not know the object yet
    assert trace(2, ObjectAnnounced(d)) == ["credit 1 to 1"]
    assert trace(1, CreditGranted(d.oid, 2, 1)) == ["send 0=ab to 2"]
    assert trace(2, BlockArrived(d.oid, 1, 0, b"ab")) == ["credit 2 to 1", "send 0=ab to 3"]
    assert trace(1, CreditGranted(d.oid, 2, 2)) == ["send 1=cd to 2", "released"]
    assert trace(3, BlockArrived(d.oid, 2, 0, b"ab")) == ["credit 2 to 2"]
    assert trace(2, BlockArrived(d.oid, 1, 1, b"cd")) == ["complete abcd"]  # no credit from 3 yet
    assert trace(2, CreditGranted(d.oid, 3, 2)) == ["send 1=cd to 3", "released"]
    assert trace(3, BlockArrived(d.oid, 2, 1, b"cd")) == ["complete abcd", "released"]
