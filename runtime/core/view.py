"""Views: the epochs of group membership, and their wire form.

A view lists its members in rank order. Everything else a member needs to act in it (who
leads, which shards exist and who holds them) is computed from that list, deterministically,
so every member of a view agrees on it without a word exchanged. A joiner has no previous
layout to compute stickiness from, so it receives the layout with the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from runtime.core.layout import Layout, LayoutPolicy, ShardId, compute_layout


class ViewFormatError(ValueError):
    """A view or proposal from the wire is malformed."""


@dataclass(frozen=True, slots=True)
class ShardOrphan:
    """A shard whose every holder is gone: ``last_holders`` held its state last, in view
    ``last_vid``. Their logs (a persistent type's) hold every version ever reported persisted,
    so a durable shard waits for one of them to come back; any other shard starts anew."""

    shard: ShardId
    last_holders: tuple[int, ...]
    last_vid: int

    def to_wire(self) -> list[Any]:
        s = self.shard
        return [s.type_name, s.subgroup, s.shard, list(self.last_holders), self.last_vid]

    @classmethod
    def from_wire(cls, w: Any) -> ShardOrphan:
        t, g, s, holders, last_vid = w
        return cls(ShardId(_str(t), _int(g), _int(s)), tuple(_int(x) for x in holders), _int(last_vid))


@dataclass(frozen=True, slots=True)
class ReturningLog:
    """A joiner that held an orphaned shard last, and the last version in its log of it: the
    leader lists these in a proposal, and the next view takes the longest as the shard's
    source."""

    node: int
    shard: ShardId
    last_version: int

    def to_wire(self) -> list[Any]:
        s = self.shard
        return [self.node, s.type_name, s.subgroup, s.shard, self.last_version]

    @classmethod
    def from_wire(cls, w: Any) -> ReturningLog:
        node, t, g, s, version = w
        if type(version) is not int or version < -1:
            raise ViewFormatError(f"a returning log's version must be an int >= -1, got {version!r:.40}")
        return cls(_int(node), ShardId(_str(t), _int(g), _int(s)), version)


@dataclass(frozen=True, slots=True)
class View:
    vid: int
    members: tuple[int, ...]
    addresses: tuple[str, ...]
    layout: Layout
    joined: tuple[int, ...] = ()
    departed: tuple[int, ...] = ()
    # Shards that gained members who lack their state, each with the member (a holder of the
    # shard in the previous view) that transfers it to them at the start of this view.
    sources: tuple[tuple[ShardId, int], ...] = ()
    # Who holds each shard's state: the layout's shards in an adequate view; in an inadequate
    # one (replicas idle, state kept) the previous holders still in the view.
    holders: tuple[tuple[ShardId, tuple[int, ...]], ...] = ()
    # Shards whose every holder is gone and that have not started again: a durable shard (a
    # persistent type) waits here, its replicas not running and calls refused with the reason,
    # until one of its last holders comes back with its log or an operator accepts the loss.
    lost: tuple[ShardOrphan, ...] = ()
    # Shards that start anew from nothing in this view (their state is gone): every replica
    # of each says so, and they all refuse the same first calls (see the actor layer's host).
    restarted: tuple[ShardOrphan, ...] = ()
    _rank: dict[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.members) != len(self.addresses):
            raise ViewFormatError("a view needs one address per member")
        if len(set(self.members)) != len(self.members):
            raise ViewFormatError(f"view {self.vid} lists a member twice: {self.members}")
        object.__setattr__(self, "_rank", {m: r for r, m in enumerate(self.members)})

    @property
    def n(self) -> int:
        return len(self.members)

    def rank_of(self, node_id: int) -> int | None:
        return self._rank.get(node_id)

    def address_of(self, node_id: int) -> str:
        return self.addresses[self._rank[node_id]]

    def my_shards(self, node_id: int) -> tuple[ShardId, ...]:
        return self.layout.shards_of(node_id) if self.layout.adequate else ()

    def source_of(self, shard: ShardId) -> int | None:
        """Who sends ``shard``'s state to its new members in this view (None: nobody needs it,
        or the shard had no surviving holder)."""
        for sid, node in self.sources:
            if sid == shard:
                return node
        return None

    def lost_shard(self, shard: ShardId) -> ShardOrphan | None:
        """The loss ``shard`` waits on in this view (None: it is not waiting)."""
        for orphan in self.lost:
            if orphan.shard == shard:
                return orphan
        return None

    def restarted_shard(self, shard: ShardId) -> ShardOrphan | None:
        """The loss after which ``shard`` starts anew in this view (None: it does not)."""
        for orphan in self.restarted:
            if orphan.shard == shard:
                return orphan
        return None

    def state_holders(self) -> dict[ShardId, tuple[int, ...]]:
        """Who holds each shard's state: the layout's members in an adequate view, the
        previous holders still in it in an inadequate one; for a shard waiting on its lost
        holders, those holders (their logs are the only ones that vouch for it)."""
        if self.holders or self.lost or not self.layout.adequate:
            held = dict(self.holders)
        else:
            held = dict(self.layout.shards)
        for orphan in self.lost:
            held[orphan.shard] = orphan.last_holders
        return held

    # ----------------------------------------------------------------- wire form
    def to_wire(self) -> dict[str, Any]:
        return {
            "vid": self.vid,
            "members": list(self.members),
            "addresses": list(self.addresses),
            "joined": list(self.joined),
            "departed": list(self.departed),
            "adequate": self.layout.adequate,
            "shards": [[s.type_name, s.subgroup, s.shard, list(m)] for s, m in self.layout.shards.items()],
            "shortfall": [[s.type_name, s.subgroup, s.shard, n] for s, n in self.layout.shortfall],
            "sources": [[s.type_name, s.subgroup, s.shard, n] for s, n in self.sources],
            "holders": [[s.type_name, s.subgroup, s.shard, list(m)] for s, m in self.holders],
            "lost": [o.to_wire() for o in self.lost],
            "restarted": [o.to_wire() for o in self.restarted],
        }

    @classmethod
    def from_wire(cls, d: Any) -> View:
        try:
            shards = {ShardId(_str(t), _int(g), _int(s)): tuple(_int(x) for x in m) for t, g, s, m in d["shards"]}
            shortfall = tuple((ShardId(_str(t), _int(g), _int(s)), _int(n)) for t, g, s, n in d["shortfall"])
            if type(d["adequate"]) is not bool:
                raise ViewFormatError("adequate must be a bool")
            view = cls(
                vid=_int(d["vid"]),
                members=tuple(_int(m) for m in d["members"]),
                addresses=tuple(_str(a) for a in d["addresses"]),
                layout=Layout(d["adequate"], shards, shortfall),
                joined=tuple(_int(m) for m in d["joined"]),
                departed=tuple(_int(m) for m in d["departed"]),
                sources=tuple((ShardId(_str(t), _int(g), _int(s)), _int(n)) for t, g, s, n in d.get("sources", ())),
                holders=tuple(
                    (ShardId(_str(t), _int(g), _int(s)), tuple(_int(x) for x in m))
                    for t, g, s, m in d.get("holders", ())
                ),
                lost=tuple(ShardOrphan.from_wire(w) for w in d.get("lost", ())),
                restarted=tuple(ShardOrphan.from_wire(w) for w in d.get("restarted", ())),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ViewFormatError(f"malformed view: {exc}") from exc
        for sid, members in view.layout.shards.items():
            if any(view.rank_of(m) is None for m in members):
                raise ViewFormatError(f"shard {sid} lists a node outside view {view.vid}")
        for sid, node in view.sources:
            if view.rank_of(node) is None:
                raise ViewFormatError(f"shard {sid} names state source {node}, outside view {view.vid}")
        return view


def _int(x: Any) -> int:
    if type(x) is not int:
        raise ViewFormatError(f"expected an int, got {x!r:.40}")
    return x


def _str(x: Any) -> str:
    if type(x) is not str:
        raise ViewFormatError(f"expected a string, got {x!r:.40}")
    return x


def initial_view(node_id: int, address: str, policy: LayoutPolicy) -> View:
    """View 0 of a group founded by one node (usually inadequate until others join)."""
    return View(0, (node_id,), (address,), compute_layout(policy, (node_id,)))


@dataclass(frozen=True, slots=True)
class Proposal:
    """What a view change decides, as one value: the next view's membership and, for every
    shard of the current view, the ragged trim (per sender: how many messages every survivor
    delivers before the view ends).

    Deciding both in one agreement means a new leader that adopts a proposal also adopts its
    trims: nobody can deliver by one trim while another survivor delivers by a different one.
    """

    vid: int
    members: tuple[int, ...]
    addresses: tuple[str, ...]
    joined: tuple[int, ...]
    departed: tuple[int, ...]
    trims: tuple[tuple[ShardId, tuple[int, ...]], ...]
    # Joiners bringing the log of a shard that waits on its lost holders (see ShardOrphan).
    returning: tuple[ReturningLog, ...] = ()
    # An operator accepted losing what waiting shards lost (a joiner started with
    # ``--accept-loss``): they start anew in the next view instead of waiting.
    accept_loss: bool = False

    def trim_of(self, shard: ShardId) -> tuple[int, ...] | None:
        for sid, counts in self.trims:
            if sid == shard:
                return counts
        return None

    def next_view(self, policy: LayoutPolicy, previous: View) -> View:
        prev_layout = previous.layout
        layout = compute_layout(policy, self.members, prev_layout if prev_layout.adequate else None)
        held = previous.state_holders()
        # A node that left (or came back as a new process) holds nothing any more.
        gone = set(self.departed) | set(self.joined)
        before = {sid: tuple(m for m in ms if m not in gone) for sid, ms in held.items()}
        waiting = {o.shard: o for o in previous.lost}
        for sid, ms in held.items():
            if ms and sid not in waiting and not before[sid]:
                waiting[sid] = ShardOrphan(sid, ms, previous.vid)  # its last holders all went now
        for sid in waiting:
            before.pop(sid, None)
        sources = list(state_sources(before, layout, self.members))
        lost: list[ShardOrphan] = []
        restarted: list[ShardOrphan] = []
        resumed: set[ShardId] = set()
        for sid, orphan in sorted(waiting.items()):
            if not layout.adequate:
                lost.append(orphan)  # nothing runs: decide when the layout is whole again
                continue
            back = [
                r for r in self.returning if r.shard == sid and r.node in orphan.last_holders and r.node in self.members
            ]
            if back:
                best = max(back, key=lambda r: (r.last_version, -r.node))
                sources.append((sid, best.node))
                resumed.add(sid)
            elif policy.is_durable(sid.type_name) and not self.accept_loss:
                lost.append(orphan)
            elif sid in layout.shards:
                restarted.append(orphan)
        if layout.adequate:
            waits = {o.shard for o in lost}
            holders = tuple((sid, ms) for sid, ms in layout.shards.items() if sid not in waits)
        else:
            holders = tuple((sid, ms) for sid, ms in before.items() if ms)
        return View(
            self.vid,
            self.members,
            self.addresses,
            layout,
            self.joined,
            self.departed,
            tuple(sources),
            holders,
            tuple(lost),
            tuple(restarted),
        )

    def to_wire(self) -> list[Any]:
        return [
            self.vid,
            list(self.members),
            list(self.addresses),
            list(self.joined),
            list(self.departed),
            [[s.type_name, s.subgroup, s.shard, list(c)] for s, c in self.trims],
            [r.to_wire() for r in self.returning],
            self.accept_loss,
        ]

    @classmethod
    def from_wire(cls, w: Any) -> Proposal:
        try:
            vid, members, addresses, joined, departed, trims, returning, accept_loss = w
            if type(accept_loss) is not bool:
                raise ValueError("accept_loss must be a bool")
            p = cls(
                _int(vid),
                tuple(_int(m) for m in members),
                tuple(_str(a) for a in addresses),
                tuple(_int(m) for m in joined),
                tuple(_int(m) for m in departed),
                tuple((ShardId(_str(t), _int(g), _int(s)), tuple(_int(x) for x in c)) for t, g, s, c in trims),
                tuple(ReturningLog.from_wire(r) for r in returning),
                accept_loss,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise ViewFormatError(f"malformed proposal: {exc}") from exc
        if len(p.members) != len(p.addresses) or len(set(p.members)) != len(p.members):
            raise ViewFormatError("malformed proposal: members and addresses disagree")
        return p


def state_sources(
    holders: dict[ShardId, tuple[int, ...]], layout: Layout, members: Sequence[int]
) -> tuple[tuple[ShardId, int], ...]:
    """For each shard of ``layout`` with members that do not hold its state: the first holder
    still in the view, preferring one that keeps the shard."""
    if not layout.adequate:
        return ()
    alive = set(members)
    out = []
    for sid, now in layout.shards.items():
        before = holders.get(sid, ())
        if not before or all(m in before for m in now):
            continue
        survivors = [m for m in before if m in alive]
        if not survivors:
            continue
        staying = [m for m in survivors if m in now]
        out.append((sid, (staying or survivors)[0]))
    return tuple(out)


def leader_rank(suspected: Sequence[int]) -> int | None:
    """Lowest rank not suspected (``suspected`` is a 0/1 vector), or None if all are."""
    for r, s in enumerate(suspected):
        if not s:
            return r
    return None


def is_majority(count: int, n: int) -> bool:
    """More than half of ``n``."""
    return 2 * count > n
