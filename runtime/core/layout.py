"""Layout policy: a pure, deterministic map from a view's members to shard membership.

Every member of a view computes the layout on its own, so the function must give the same
answer everywhere from the same inputs: no randomness, no clocks, no reliance on set or hash
order. Everything is decided by the policy order (type, subgroup, shard) and the members' rank
order in the view.

Allocation, per *pool* of mutually disjoint shards:

- All shards of all disjoint types (``overlapping=False``) share one pool: a node holds at most
  one of them. Each subgroup of an overlapping type is a pool of its own drawn from all
  members: its shards are disjoint from each other but may share nodes with anything else.
- Within a pool, shards are filled in four steps:

  1. reserved ids present in the view join their shard;
  2. stickiness: members of the shard in ``previous`` that are still in the view and still free
     stay, in two phases. Phase A keeps up to the shard's remaining deficit (``min_nodes``
     minus what it already holds); that never hurts any other shard, because each kept node
     removes one node from the pool and one from the total demand. Phase B keeps further
     sticky members, up to ``max_nodes``, one per shard per round in policy order, only while
     the pool has *slack* (free nodes beyond the demand still open). Stickiness therefore
     never starves another shard's minimum, and when members must move, the moves come from
     the shards that held the most extra members (ties: the later shard in policy order);
  3. every shard is brought up to ``min_nodes`` from the free nodes in rank order, shards
     visited in policy order;
  4. the remaining free nodes are dealt round-robin (policy order) to shards below
     ``max_nodes``; what is left belongs to no shard.

Adequacy is decided before stickiness: a pool is adequate when its free nodes (after
reserved ids) cover the sum of remaining minimums. For policies without reserved ids that is a
function of the member count alone, whatever ``previous`` was. The shortfall of an inadequate
layout is computed without stickiness too, so it depends only on the policy and the view.

Reserved ids apply to every subgroup of their type. A disjoint type cannot give one node to
several subgroups, so reserved ids on a disjoint type with more than one subgroup are rejected,
as is one node reserved by two disjoint types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import NamedTuple

from runtime.errors import LayoutError

__all__ = [
    "POLICY_FIELDS",
    "Layout",
    "LayoutPolicy",
    "ShardId",
    "ShardPolicy",
    "compute_layout",
    "merge_over",
    "nodes_needed",
    "single_replica_shards",
]


class ShardId(NamedTuple):
    """Names one shard: the type, the subgroup index within the type, the shard index."""

    type_name: str
    subgroup: int
    shard: int

    def __str__(self) -> str:
        """``KV/0/1``: short enough for log lines and error messages."""
        return f"{self.type_name}/{self.subgroup}/{self.shard}"


def _is_int(value: object) -> bool:
    """True for real ints; bools are ints to Python but always a mistake in a policy."""
    return isinstance(value, int) and not isinstance(value, bool)


def _as_tuple_of_tuples(value: object) -> object:
    """Turn lists into tuples so that a policy written with lists stays hashable.

    Anything that is not a list or tuple of lists or tuples is returned unchanged for
    ``validate`` to reject with a message.
    """
    if not isinstance(value, (list, tuple)):
        return value
    if not all(isinstance(inner, (list, tuple)) for inner in value):
        return value
    return tuple(tuple(inner) for inner in value)


@dataclass(frozen=True, slots=True)
class ShardPolicy:
    """How one replicated type is split into subgroups and shards.

    ``reserved``, when given, holds one tuple of node ids per shard: those nodes belong to that
    shard (in every subgroup of the type) whenever they are in the view. The policy is checked
    by ``validate`` rather than on construction, because good error messages need the type name
    the policy is registered under.
    """

    subgroups: int = 1
    shards: int = 1
    min_nodes: int = 1
    max_nodes: int | None = None
    reserved: tuple[tuple[int, ...], ...] | None = None
    overlapping: bool = False

    def __post_init__(self) -> None:
        if self.reserved is not None:
            object.__setattr__(self, "reserved", _as_tuple_of_tuples(self.reserved))

    def validate(self, type_name: str) -> None:
        """Raise LayoutError, naming the type and the field, if no view could satisfy this.

        Checking up front means a bad policy fails at startup with a clear message instead of
        producing an inadequate layout forever.
        """
        where = f"layout of type {type_name!r}"
        for name in ("subgroups", "shards", "min_nodes"):
            value = getattr(self, name)
            if not _is_int(value):
                raise LayoutError(
                    f"{where}: {name} must be an int, got {value!r} ({type(value).__name__}); write {name}=1 or more"
                )
            if value < 1:
                raise LayoutError(f"{where}: {name} must be at least 1, got {value}; set {name}=1 or more")
        if self.max_nodes is not None:
            if not _is_int(self.max_nodes):
                raise LayoutError(
                    f"{where}: max_nodes must be an int or None, got {self.max_nodes!r} "
                    f"({type(self.max_nodes).__name__}); use None for no upper bound"
                )
            if self.max_nodes < self.min_nodes:
                raise LayoutError(
                    f"{where}: max_nodes ({self.max_nodes}) is below min_nodes ({self.min_nodes}); "
                    f"raise max_nodes or lower min_nodes"
                )
        if not isinstance(self.overlapping, bool):
            raise LayoutError(f"{where}: overlapping must be True or False, got {self.overlapping!r}")
        if self.reserved is not None:
            self._validate_reserved(where)

    def _validate_reserved(self, where: str) -> None:
        """Reserved ids: one tuple of distinct ints per shard, each fitting under max_nodes."""
        reserved = self.reserved
        if not isinstance(reserved, tuple) or not all(isinstance(i, tuple) for i in reserved):
            raise LayoutError(
                f"{where}: reserved must be a tuple with one tuple of node ids per shard, "
                f"got {reserved!r}; write e.g. reserved=((1, 2), (3,))"
            )
        if len(reserved) != self.shards:
            raise LayoutError(
                f"{where}: reserved lists {len(reserved)} shard(s) but shards={self.shards}; "
                f"give one tuple of node ids per shard (use () for a shard with none)"
            )
        if self.subgroups > 1 and not self.overlapping and any(reserved):
            raise LayoutError(
                f"{where}: reserved ids apply to every subgroup, but with "
                f"subgroups={self.subgroups} and overlapping=False a node can hold only one "
                f"shard; set overlapping=True or use a single subgroup"
            )
        owner: dict[int, int] = {}
        for index, ids in enumerate(reserved):
            for node in ids:
                if not _is_int(node):
                    raise LayoutError(
                        f"{where}: reserved[{index}] holds {node!r} ({type(node).__name__}); node ids must be ints"
                    )
                if node in owner:
                    first = owner[node]
                    detail = (
                        f"twice in reserved[{index}]"
                        if first == index
                        else f"in reserved[{first}] and reserved[{index}]"
                    )
                    raise LayoutError(
                        f"{where}: node {node} is listed {detail}; a node can be reserved for one shard of a type only"
                    )
                owner[node] = index
            if self.max_nodes is not None and len(ids) > self.max_nodes:
                raise LayoutError(
                    f"{where}: reserved[{index}] holds {len(ids)} node ids but "
                    f"max_nodes={self.max_nodes}; raise max_nodes or reserve fewer nodes"
                )


@dataclass(frozen=True, slots=True)
class LayoutPolicy:
    """The policies of every replicated type, in allocation order.

    Order matters: earlier types, subgroups and shards get the lower-ranked nodes and are
    filled first when nodes are scarce. Construction validates, so a LayoutPolicy that exists
    is one some view can satisfy.
    """

    types: tuple[tuple[str, ShardPolicy], ...]
    # Which fields of each type's policy someone wrote (a configuration table): only those
    # override a policy given in code (``merge_over``). None: every field was written.
    explicit: tuple[tuple[str, frozenset[str]], ...] | None = field(default=None, compare=False)
    # Types whose state outlives their replicas (persistent types: logs on disk). A shard of
    # one whose every holder is gone waits for one to come back (``View.lost``) instead of
    # starting anew. Set by the actor layer from the types, never by configuration.
    durable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        types = self.types
        if isinstance(types, list):
            types = tuple(types)
            object.__setattr__(self, "types", types)
        if not isinstance(types, tuple):
            raise LayoutError(
                f"layout policy: types must be a tuple of (name, ShardPolicy) pairs, "
                f"got {types!r}; use LayoutPolicy.of({{'Name': ShardPolicy(...)}})"
            )
        seen: set[str] = set()
        for entry in types:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise LayoutError(
                    f"layout policy: each entry of types must be a (name, ShardPolicy) pair, got {entry!r}"
                )
            name, policy = entry
            if not isinstance(name, str) or not name.strip():
                raise LayoutError(
                    f"layout policy: type name {name!r} is not a non-empty string; name each type, e.g. its class name"
                )
            if name in seen:
                raise LayoutError(f"layout policy: type {name!r} appears twice; give each type one ShardPolicy")
            seen.add(name)
            if not isinstance(policy, ShardPolicy):
                raise LayoutError(
                    f"layout of type {name!r}: expected a ShardPolicy, "
                    f"got {type(policy).__name__}; wrap the settings in ShardPolicy(...)"
                )
            policy.validate(name)
        self._check_reserved_across_disjoint_types()

    def describe(self) -> str:
        """The policy as one line of text, equal for equal policies (a joiner's must be the
        group's): ``KV(subgroups=1, shards=2, min_nodes=1, max_nodes=3, reserved=None,
        overlapping=False); Locks(...)``."""
        return "; ".join(
            f"{name}(subgroups={p.subgroups}, shards={p.shards}, min_nodes={p.min_nodes}, max_nodes={p.max_nodes}, "
            f"reserved={p.reserved}, overlapping={p.overlapping})"
            for name, p in self.types
        )

    def _check_reserved_across_disjoint_types(self) -> None:
        """Disjoint types share one pool, so one node cannot be reserved by two of them."""
        owner: dict[int, str] = {}
        for name, policy in self.types:
            if policy.overlapping or policy.reserved is None:
                continue
            for ids in policy.reserved:
                for node in ids:
                    if node in owner:
                        raise LayoutError(
                            f"layout policy: node {node} is reserved by both {owner[node]!r} and "
                            f"{name!r}, which are disjoint types (a node holds at most one of "
                            f"their shards); reserve it for one type or set overlapping=True on one"
                        )
                    owner[node] = name

    @classmethod
    def of(cls, mapping: Mapping[str, ShardPolicy], durable: frozenset[str] = frozenset()) -> LayoutPolicy:
        """Build from a mapping; its iteration order (insertion order for a dict) is kept."""
        return cls(tuple(mapping.items()), durable=durable)

    def is_durable(self, type_name: str) -> bool:
        """True if ``type_name``'s shards wait for a holder's log when every holder is gone."""
        return type_name in self.durable

    def fields_set(self, type_name: str) -> frozenset[str]:
        """The fields of ``type_name``'s policy that were written (all of them when the policy
        does not say), so a partial table overrides only what it names."""
        if self.explicit is not None:
            for name, keys in self.explicit:
                if name == type_name:
                    return keys
        return POLICY_FIELDS


POLICY_FIELDS = frozenset(("subgroups", "shards", "min_nodes", "max_nodes", "reserved", "overlapping"))
"""Every field of a ShardPolicy, by name."""


def merge_over(base: ShardPolicy, table: ShardPolicy, keys: frozenset[str]) -> ShardPolicy:
    """``base`` with the fields ``keys`` taken from ``table``: an operator who writes one key of
    a type's layout (``shards = 2``) changes that key only. Replacing the whole policy instead
    silently dropped the code's ``min_nodes`` to 1, leaving shards on one replica, where one
    failure loses their state. Not validated here: the caller names the sources in its error."""
    return replace(base, **{key: getattr(table, key) for key in sorted(keys & POLICY_FIELDS)})


def single_replica_shards(layout: Layout) -> tuple[tuple[ShardId, int], ...]:
    """Shards an adequate layout gives exactly one member, with that member: their state lives
    on one node, so one failure loses it."""
    if not layout.adequate:
        return ()
    return tuple((sid, members[0]) for sid, members in layout.shards.items() if len(members) == 1)


def nodes_needed(policy: LayoutPolicy, have: int, limit: int = 4096) -> int | None:
    """The fewest nodes (ids 1..n) with which ``policy`` is adequate, starting from ``have``;
    None if none up to ``limit`` (reserved ids beyond it). Lets a launcher that knows how many
    nodes it will start refuse a layout those nodes cannot run, before starting any."""
    for n in range(max(1, have), limit + 1):
        if compute_layout(policy, tuple(range(1, n + 1))).adequate:
            return n
    return None


@dataclass(frozen=True, slots=True)
class Layout:
    """The result of ``compute_layout`` for one view.

    ``shards`` lists every shard in policy order with its members in view rank order when the
    layout is adequate, and is empty when it is not: an inadequate view runs no subgroup, so
    a partial assignment would only invite mistakes. ``shortfall`` then says what is missing.
    """

    adequate: bool
    shards: Mapping[ShardId, tuple[int, ...]]
    shortfall: tuple[tuple[ShardId, int], ...] = ()
    _by_node: Mapping[int, tuple[ShardId, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A private read-only copy: a Layout is shared by the whole engine and must not change
        # under it because a caller kept and mutated the dict it passed in.
        shards = {ShardId(*sid): tuple(members) for sid, members in self.shards.items()}
        object.__setattr__(self, "shards", MappingProxyType(shards))
        object.__setattr__(self, "shortfall", tuple((ShardId(*s), n) for s, n in self.shortfall))
        by_node: dict[int, list[ShardId]] = {}
        for sid, members in shards.items():
            for node in members:
                by_node.setdefault(node, []).append(sid)
        object.__setattr__(self, "_by_node", MappingProxyType({n: tuple(s) for n, s in by_node.items()}))

    def __hash__(self) -> int:
        return hash((self.adequate, tuple(self.shards.items()), self.shortfall))

    def shards_of(self, node_id: int) -> tuple[ShardId, ...]:
        """The shards ``node_id`` belongs to, in policy order; () if none."""
        return self._by_node.get(node_id, ())

    def members_of(self, shard: ShardId) -> tuple[int, ...]:
        """Members of ``shard`` in rank order; () if the shard is not in this layout."""
        return self.shards.get(shard, ())

    def describe_shortfall(self) -> str:
        """A sentence for operators saying how many more nodes each short shard needs.

        Empty when the layout is adequate.
        """
        parts = [f"{sid} needs {count} more node{'' if count == 1 else 's'}" for sid, count in self.shortfall]
        if not parts:
            return ""
        if len(parts) == 1:
            return parts[0]
        return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True, slots=True)
class _Spec:
    """One shard's bounds as the allocator sees them (``max_nodes`` None means unbounded)."""

    sid: ShardId
    min_nodes: int
    max_nodes: int | None
    reserved: tuple[int, ...]

    def room(self, held: int) -> int | None:
        """How many more nodes fit, or None when unbounded."""
        return None if self.max_nodes is None else self.max_nodes - held


def _pools(policy: LayoutPolicy) -> tuple[list[ShardId], list[list[_Spec]]]:
    """All shard ids in policy order, and the pools of mutually disjoint shards."""
    order: list[ShardId] = []
    disjoint: list[_Spec] = []
    pools: list[list[_Spec]] = [disjoint]
    for name, sp in policy.types:
        for subgroup in range(sp.subgroups):
            specs = [
                _Spec(
                    ShardId(name, subgroup, shard),
                    sp.min_nodes,
                    sp.max_nodes,
                    sp.reserved[shard] if sp.reserved is not None else (),
                )
                for shard in range(sp.shards)
            ]
            order.extend(spec.sid for spec in specs)
            if sp.overlapping:
                pools.append(specs)
            else:
                disjoint.extend(specs)
    return order, pools


def _check_members(members: Sequence[int]) -> dict[int, int]:
    """Map each member to its rank, rejecting non-int ids and duplicates."""
    rank: dict[int, int] = {}
    for position, node in enumerate(members):
        if not _is_int(node):
            raise LayoutError(f"view member {node!r} ({type(node).__name__}) is not a node id; node ids are ints")
        if node in rank:
            raise LayoutError(
                f"node {node} appears twice in the view (ranks {rank[node]} and {position}); "
                f"view members must be distinct"
            )
        rank[node] = position
    return rank


def _take_reserved(specs: list[_Spec], rank: Mapping[int, int]) -> dict[ShardId, list[int]]:
    """Step 1: reserved ids present in the view go to their shard."""
    return {spec.sid: [node for node in spec.reserved if node in rank] for spec in specs}


def _fill_minimums(specs: list[_Spec], held: dict[ShardId, list[int]], free: list[int]) -> list[int]:
    """Step 3: top every shard up to min_nodes from ``free`` (rank order); return the rest."""
    cursor = 0
    for spec in specs:
        need = spec.min_nodes - len(held[spec.sid])
        if need > 0:
            held[spec.sid].extend(free[cursor : cursor + need])
            cursor += need
    return free[cursor:]


def _shortfall(specs: list[_Spec], rank: Mapping[int, int]) -> list[tuple[ShardId, int]]:
    """Shards that cannot reach min_nodes, from reserved ids and a greedy fill alone.

    Stickiness is left out on purpose so the report depends only on the policy and the view.
    """
    held = _take_reserved(specs, rank)
    taken = {node for nodes in held.values() for node in nodes}
    _fill_minimums(specs, held, [node for node in rank if node not in taken])
    return [(spec.sid, spec.min_nodes - len(held[spec.sid])) for spec in specs if len(held[spec.sid]) < spec.min_nodes]


def _keep_sticky(
    specs: list[_Spec],
    held: dict[ShardId, list[int]],
    free: list[int],
    previous: Layout,
    rank: Mapping[int, int],
    slack: int,
) -> list[int]:
    """Step 2: previous members stay where that cannot starve another shard; return the rest.

    ``slack`` is the number of free nodes beyond the sum of remaining minimums. Phase A keeps
    sticky members up to each shard's deficit, which leaves the slack unchanged. Phase B keeps
    further sticky members one per shard per round, each costing one unit of slack.
    """
    available = set(free)
    candidates: dict[ShardId, list[int]] = {}
    for spec in specs:
        # A node listed by two shards of this pool in ``previous`` (a different policy, or a
        # hand-made layout) stays with the first in policy order, so the pool stays disjoint.
        mine = sorted((n for n in previous.members_of(spec.sid) if n in available), key=rank.__getitem__)
        available.difference_update(mine)
        room = spec.room(len(held[spec.sid]))
        candidates[spec.sid] = mine if room is None else mine[:room]
    kept: set[int] = set()
    for spec in specs:  # phase A
        need = max(0, spec.min_nodes - len(held[spec.sid]))
        keep, candidates[spec.sid] = candidates[spec.sid][:need], candidates[spec.sid][need:]
        held[spec.sid].extend(keep)
        kept.update(keep)
    while slack > 0:  # phase B
        progressed = False
        for spec in specs:
            if slack == 0:
                break
            if candidates[spec.sid]:
                node = candidates[spec.sid].pop(0)
                held[spec.sid].append(node)
                kept.add(node)
                slack -= 1
                progressed = True
        if not progressed:
            break
    return [node for node in free if node not in kept]


def _deal_round_robin(specs: list[_Spec], held: dict[ShardId, list[int]], free: list[int]) -> None:
    """Step 4: deal the remaining free nodes to shards with room, in policy order, cyclically."""
    open_specs = [spec for spec in specs if spec.room(len(held[spec.sid])) != 0]
    position = 0
    for node in free:
        if not open_specs:
            return
        position %= len(open_specs)
        spec = open_specs[position]
        held[spec.sid].append(node)
        if spec.room(len(held[spec.sid])) == 0:
            open_specs.pop(position)
        else:
            position += 1


def _allocate(specs: list[_Spec], rank: Mapping[int, int], previous: Layout | None) -> dict[ShardId, list[int]] | None:
    """Steps 1-4 for one pool; None when the pool cannot meet every minimum."""
    held = _take_reserved(specs, rank)
    taken = {node for nodes in held.values() for node in nodes}
    free = [node for node in rank if node not in taken]
    demand = sum(max(0, spec.min_nodes - len(held[spec.sid])) for spec in specs)
    slack = len(free) - demand
    if slack < 0:
        return None
    if previous is not None:
        free = _keep_sticky(specs, held, free, previous, rank, slack)
    free = _fill_minimums(specs, held, free)
    _deal_round_robin(specs, held, free)
    return held


def compute_layout(policy: LayoutPolicy, members: Sequence[int], previous: Layout | None = None) -> Layout:
    """Assign the view's ``members`` (node ids in rank order) to every shard of ``policy``.

    ``previous`` is the layout of the prior view; its members keep their shards where that
    does not starve another shard (see the module docstring). The result depends only on the
    arguments, so every member computing it gets the same layout.
    """
    rank = _check_members(members)
    order, pools = _pools(policy)
    assigned: dict[ShardId, list[int]] = {}
    short: dict[ShardId, int] = {}
    for specs in pools:
        held = _allocate(specs, rank, previous)
        if held is None:
            short.update(_shortfall(specs, rank))
        else:
            assigned.update(held)
    if short:
        return Layout(False, {}, tuple((sid, short[sid]) for sid in order if sid in short))
    return Layout(
        True,
        {sid: tuple(sorted(assigned[sid], key=rank.__getitem__)) for sid in order},
        (),
    )
