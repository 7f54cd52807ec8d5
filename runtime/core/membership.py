"""Virtually synchronous membership for one view: failure detection, wedge, agreement.

Everything is a predicate over the view's group SST (one row per view member) plus a
trigger, as in Derecho. The agreement on the next view is Derecho's propose / ack / commit,
shaped so that its safety argument is Paxos's:

* A member's *leader* is the lowest rank it does not suspect. Suspicion is permanent within a
  view, so leaders only move up in rank, and the ballot of a proposal is its proposer's
  rank + 1: later leaders have higher ballots.
* A member that suspects every rank below L has *promised* L: it will never again accept a
  proposal from a lower rank. A new leader acts only once every member it does not suspect
  shows that promise (Derecho's take-over barrier).
* Before proposing, the leader adopts the highest-ballot proposal held by any member it does
  not suspect; only if none holds one does it compute its own. A leader proposes once.
* It commits when every member it does not suspect holds its ballot, and they are a
  majority of the view. Any two majorities intersect, so a later leader always sees (and
  adopts) a committed value. Every proposal with a ballot at or above a committed one carries
  the committed value, so any row with ``commit > 0`` and ``ballot >= commit`` holds the
  decision; members echo it in their own rows before they install it.
* The value decided is the whole transition: the next members *and* the ragged trim of every
  shard, computed from the survivors' frozen receive counts. Wedging first (freezing counts)
  and deciding trims inside the same agreement is what keeps every survivor's final
  deliveries identical even when the leader dies mid-change.
* Majority rule: a member that suspects half of its view or more stops itself (it can never
  again gather a majority), and a member suspected by a live peer stops itself: a minority
  side never installs a view.
* Silence is counted only while this member runs: time it was stopped (a SIGSTOP, a VM pause,
  a blocked loop) is credited to every peer's clock (:meth:`Membership.credit_stall`), so a
  stall of the whole group is not taken for a partition of everyone from everyone.

Protocol decisions that differ from Derecho C++ are listed in the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from runtime.core.layout import ShardId
from runtime.core.sst import SST, Column, PredicateKind, RowDelta, Schema, SSTError
from runtime.core.view import Proposal, ReturningLog, View, ViewFormatError, is_majority, leader_rank

FrozenCounts = list[list[Any]]  # [[type_name, subgroup, shard, [counts...]], ...]


@dataclass(frozen=True, slots=True)
class JoinClaim:
    """What a joiner says it brings: per shard the last version of its log (from its data
    folder), and the operator's ``--accept-loss``."""

    logs: tuple[tuple[ShardId, int], ...] = ()
    accept_loss: bool = False


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing of failure detection and joins, in the driver's clock (seconds)."""

    heartbeat_interval: float = 0.05
    suspicion_timeout: float = 0.5
    join_retry: float = 0.5
    max_pending_joins: int = 64

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive")
        if not (self.suspicion_timeout > self.heartbeat_interval or math.isinf(self.suspicion_timeout)):
            raise ValueError("suspicion_timeout must exceed heartbeat_interval")
        if not self.join_retry > 0:
            raise ValueError("join_retry must be positive")


def group_schema(n: int) -> Schema:
    return Schema(
        (
            Column("heartbeat"),
            Column("suspected", width=n),
            Column("leaving"),
            Column("wedged"),
            Column("frozen", monotonic=False, default=None),
            Column("ballot"),
            Column("proposal", monotonic=False, default=None),
            Column("commit"),
        )
    )


class Membership:
    """This member's part in one view's membership protocol."""

    def __init__(
        self,
        view: View,
        my_id: int,
        config: MembershipConfig,
        now: float,
        freeze: Callable[[], FrozenCounts],
        carried_suspects: tuple[int, ...] = (),
    ) -> None:
        rank = view.rank_of(my_id)
        if rank is None:
            raise ValueError(f"node {my_id} is not in view {view.vid}")
        self.view = view
        self.my_id = my_id
        self.me = rank
        self.n = view.n
        self.config = config
        self._freeze = freeze
        self.sst = SST(group_schema(self.n), self.n, rank)
        self.last_heard = [now] * self.n
        self.next_heartbeat = now
        self.pending_joins: dict[int, str] = {}
        # What each pending joiner brings for shards waiting on lost holders (its logs and the
        # operator's --accept-loss), put into the proposal that admits it.
        self.join_claims: dict[int, JoinClaim] = {}
        self.decided: Proposal | None = None
        self.excluded: str | None = None
        self.proposed = False
        self.wedge_started_at: float | None = None
        # After a long stall, peers' rows read from the sockets may carry suspicions made while
        # this member was stopped; they are adopted only from this time on (see credit_stall).
        self.adopt_after = -math.inf
        self._now = now  # time of the evaluation in progress, for the triggers
        for node in carried_suspects:
            r = view.rank_of(node)
            if r is not None and r != rank:
                self.sst.set_item("suspected", r, 1)
        sst = self.sst
        sst.register("spread-suspicion", self._new_suspicion_in_peer_rows, self._spread_suspicion)
        sst.register("majority-lost", self._lost_majority, self._fail_stop)
        sst.register("wedge", self._should_wedge, self._wedge, PredicateKind.ONE_TIME)
        sst.register("leader-propose", self._can_propose, self._propose)
        sst.register("follower-accept", self._leader_has_newer_ballot, self._accept)
        sst.register("leader-commit", self._all_accepted, self._commit)
        sst.register("decide", self._decision_visible, self._decide)

    # ----------------------------------------------------------------- reading
    @property
    def mine(self) -> dict[str, Any]:
        return self.sst.rows[self.me]

    def suspects(self, rank: int) -> bool:
        return bool(self.sst.rows[self.me]["suspected"][rank])  # type: ignore[index]

    def live_ranks(self) -> list[int]:
        sus = self.sst.rows[self.me]["suspected"]
        return [r for r in range(self.n) if not sus[r]]  # type: ignore[index]

    def leader(self) -> int | None:
        return leader_rank(self.sst.rows[self.me]["suspected"])  # type: ignore[arg-type]

    @property
    def wedged(self) -> bool:
        return bool(self.mine["wedged"])

    @property
    def active(self) -> bool:
        return self.excluded is None and self.decided is None

    @property
    def accepted_vid(self) -> int | None:
        """The view id of the proposal this member's own row holds (None: none yet).

        A member acknowledges a proposal by writing it, with its ballot, into its own row:
        the leader in :meth:`_propose` (its own acceptance), a follower in :meth:`_accept`,
        anyone echoing a committed decision in :meth:`_decide`. The row leaves the node only
        through ``NodeCore._drain_group``, which hands this id to the driver in
        ``Ready.accepted`` first: durable before the acknowledgement is sent.
        """
        row = self.mine
        wire = row["proposal"]
        if not row["ballot"] or wire is None:
            return None
        vid = wire[0] if isinstance(wire, (list, tuple)) and wire else None
        return vid if type(vid) is int else self.view.vid + 1

    # ------------------------------------------------------------------ inputs
    def on_push(self, delta: RowDelta, now: float) -> str | None:
        """Merge a peer's group row. Rows of suspected members are frozen: ignored."""
        r = delta.rank
        if not isinstance(r, int) or not 0 <= r < self.n or r == self.me:
            return f"group push names bad rank {r!r}"
        if self.suspects(r):
            return None
        problem = self._check_values(r, delta)
        if problem:
            return f"bad group row from rank {r}: {problem}"
        try:
            self.sst.apply_remote_row(delta)
        except SSTError as exc:
            return f"bad group row: {exc}"
        self.last_heard[r] = now
        return None

    def _check_values(self, rank: int, delta: RowDelta) -> str | None:
        """Shape checks of the opaque columns, which the SST cannot check by type alone.

        A malformed frozen count or proposal would otherwise surface later, deep inside a
        trigger, at every member that reads the row.
        """
        values = delta.values if isinstance(delta.values, dict) else {}
        if "frozen" in values and values["frozen"] is not None:
            frozen = values["frozen"]
            if not isinstance(frozen, (list, tuple)):
                return "frozen counts must be a list"
            node = self.view.members[rank]
            for entry in frozen:
                if not isinstance(entry, (list, tuple)) or len(entry) != 4:
                    return f"frozen entry {entry!r:.60} is not [type, subgroup, shard, counts]"
                t, g, sh, counts = entry
                if not isinstance(t, str) or type(g) is not int or type(sh) is not int:
                    return f"frozen entry {entry!r:.60} names no shard"
                members = self.view.layout.members_of(ShardId(t, g, sh))
                if node not in members:
                    return f"frozen counts for shard {t}/{g}/{sh}, which node {node} does not hold"
                if (
                    not isinstance(counts, (list, tuple))
                    or len(counts) != len(members)
                    or not all(type(c) is int and c >= 0 for c in counts)
                ):
                    return f"frozen counts {counts!r:.60} for {t}/{g}/{sh} need {len(members)} ints"
        if "proposal" in values and values["proposal"] is not None:
            try:
                p = Proposal.from_wire(values["proposal"])
            except ViewFormatError as exc:
                return str(exc)
            if p.vid != self.view.vid + 1:
                return f"proposal for view {p.vid} in view {self.view.vid}"
            for sid, counts in p.trims:
                members = self.view.layout.members_of(sid)
                if len(counts) != len(members) or any(c < 0 for c in counts):
                    return f"trim {counts} for shard {sid} does not fit its {len(members)} senders"
        return None

    def on_tick(self, now: float) -> None:
        if not self.active:
            return
        if now >= self.next_heartbeat:
            self.sst.set("heartbeat", int(self.mine["heartbeat"]) + 1)
            self.next_heartbeat = now + self.config.heartbeat_interval
        limit = self.config.suspicion_timeout
        for r in range(self.n):
            if r != self.me and not self.suspects(r) and now - self.last_heard[r] > limit:
                self.sst.set_item("suspected", r, 1)

    def credit_stall(self, credit: float, now: float, long: bool = False) -> None:
        """This node did not run for ``credit`` seconds (its process or loop was stopped): that
        time does not count as any peer's silence.

        Whatever peers sent meanwhile is still queued in this node's sockets, unread; judging
        their silence by the wall clock would suspect members that were fine (and when every
        member stalls together, each would find itself alone and stop: a VM pause taken for a
        partition). Suspicions already set stay (they are permanent within a view).

        ``long``: the stall was long enough for peers to have suspected others meanwhile. Then
        suspicions in peers' rows are adopted only after two suspicion timeouts: when most of
        the group stalls and one member runs on alone, that member rightly suspects the stalled
        ones before it stops itself, and its last rows wait in their sockets. Adopted at once,
        they would make the resumed majority suspect each other and stop too (the whole group
        gone, though a majority is alive). Deferred, the resumed members first suspect the lone
        member themselves (its connection closed, or its silence), and a suspected member's row
        is never read again. A deferral is a message delayed, which the protocol tolerates; a
        peer's suspicion still counts within two timeouts, and this member's own detection
        runs meanwhile.
        """
        if credit <= 0 or not self.active:
            return
        for r in range(self.n):
            if r != self.me and not self.suspects(r):
                self.last_heard[r] = min(now, self.last_heard[r] + credit)
        if long:
            self.adopt_after = max(self.adopt_after, now + 2 * self.config.suspicion_timeout)

    def suspect_node(self, node_id: int) -> None:
        """Suspect a member on the transport's word (its connection broke)."""
        r = self.view.rank_of(node_id)
        if self.active and r is not None and r != self.me and not self.suspects(r):
            self.sst.set_item("suspected", r, 1)

    def request_leave(self) -> None:
        if self.active:
            self.sst.set("leaving", 1)

    def add_join(self, node_id: int, address: str, claim: JoinClaim | None = None) -> None:
        """The leader queues a joiner for the next view (until it proposes)."""
        if len(self.pending_joins) < self.config.max_pending_joins:
            self.pending_joins.setdefault(node_id, address)
            if claim is not None and (claim.logs or claim.accept_loss):
                self.join_claims[node_id] = claim

    def evaluate(self, now: float) -> None:
        self._now = now
        self.sst.evaluate()

    def wakeup_at(self) -> float | None:
        # Read on every flush of the node (``NodeCore.ready``): one pass, no list, no call
        # per peer; the same sums as ``on_tick`` compares against, so the tick asked acts.
        if self.excluded is not None or self.decided is not None:
            return None
        t = self.next_heartbeat
        suspected = self.sst.rows[self.me]["suspected"]
        heard = self.last_heard
        limit = self.config.suspicion_timeout
        me = self.me
        for r in range(self.n):
            if r != me and not suspected[r]:  # type: ignore[index]
                at = heard[r] + limit + 1e-9
                if at < t:
                    t = at
        return None if math.isinf(t) else t

    # --------------------------------------------------------- suspicion spread
    def _new_suspicion_in_peer_rows(self, sst: SST) -> bool:
        if not self.active or self._now < self.adopt_after:
            return False
        mine = sst.rows[self.me]["suspected"]
        for r in range(self.n):
            if r == self.me or mine[r]:  # type: ignore[index]
                continue
            theirs = sst.rows[r]["suspected"]
            if any(t and not m for t, m in zip(theirs, mine)):  # type: ignore[arg-type]
                return True
        return False

    def _spread_suspicion(self, sst: SST) -> None:
        mine = sst.rows[self.me]["suspected"]
        for r in range(self.n):
            if r == self.me or mine[r]:  # type: ignore[index]
                continue
            theirs = sst.rows[r]["suspected"]
            if theirs[self.me]:  # type: ignore[index]
                self.excluded = f"suspected by node {self.view.members[r]} in view {self.view.vid}"
                return
            for j, t in enumerate(theirs):  # type: ignore[arg-type]
                if t and not mine[j]:  # type: ignore[index]
                    sst.set_item("suspected", j, 1)

    def _lost_majority(self, sst: SST) -> bool:
        return self.active and not is_majority(len(self.live_ranks()), self.n)

    def _fail_stop(self, sst: SST) -> None:
        live = len(self.live_ranks())
        self.excluded = (
            f"partitioned: reaches only {live} of {self.n} members of view {self.view.vid}, "
            "not a majority; stopping (rejoin as a new member)"
        )

    # ------------------------------------------------------------------- wedge
    def _should_wedge(self, sst: SST) -> bool:
        if not self.active or sst.rows[self.me]["wedged"]:
            return False
        if self.pending_joins:
            return True
        rows = sst.rows
        for r in self.live_ranks():
            row = rows[r]
            if row["wedged"] or row["leaving"] or row["ballot"]:
                return True
        return len(self.live_ranks()) < self.n

    def _wedge(self, sst: SST) -> None:
        self.wedge_started_at = self._now
        frozen = self._freeze()
        sst.set("frozen", frozen)
        sst.set("wedged", 1)

    # ------------------------------------------------------------ leader: propose
    def _is_active_leader(self) -> bool:
        """I lead, and every member I do not suspect has promised me (suspects all below)."""
        if self.leader() != self.me:
            return False
        rows = self.sst.rows
        for r in self.live_ranks():
            sus = rows[r]["suspected"]
            if not all(sus[j] for j in range(self.me)):  # type: ignore[index]
                return False
        return True

    def _can_propose(self, sst: SST) -> bool:
        if not self.active or self.proposed or not sst.rows[self.me]["wedged"]:
            return False
        if not self._is_active_leader():
            return False
        return all(sst.rows[r]["wedged"] and sst.rows[r]["frozen"] is not None for r in self.live_ranks())

    def _propose(self, sst: SST) -> None:
        rows = sst.rows
        live = self.live_ranks()
        best_ballot, best = 0, None
        for r in live:
            ballot, proposed = rows[r]["ballot"], rows[r]["proposal"]
            if isinstance(ballot, int) and ballot > best_ballot and proposed is not None:
                best_ballot, best = ballot, proposed
        proposal = best if best is not None else self._fresh_proposal(live).to_wire()
        self.proposed = True
        # The leader's own acceptance (see accepted_vid): durable before this row is pushed.
        sst.set("proposal", proposal)
        sst.set("ballot", self.me + 1)

    def _fresh_proposal(self, live: list[int]) -> Proposal:
        view, rows = self.view, self.sst.rows
        stay = [r for r in live if not rows[r]["leaving"]]
        members = [view.members[r] for r in stay]
        addresses = [view.addresses[r] for r in stay]
        joined = []
        for node, addr in self.pending_joins.items():
            if node not in view.members:
                members.append(node)
                addresses.append(addr)
                joined.append(node)
        departed = tuple(m for m in view.members if m not in members)
        returning, accept_loss = self._claims(joined)
        return Proposal(
            view.vid + 1,
            tuple(members),
            tuple(addresses),
            tuple(joined),
            departed,
            self._trims(live),
            returning,
            accept_loss,
        )

    def _claims(self, joined: list[int]) -> tuple[tuple[ReturningLog, ...], bool]:
        """From the joiners' claims: the logs of shards they held in this view (or held last,
        for a shard waiting on its lost holders), and whether one brings --accept-loss. Only
        those: a proposal rides in every member's row."""
        held = self.view.state_holders()
        returning: list[ReturningLog] = []
        accept_loss = False
        for node in joined:
            claim = self.join_claims.get(node)
            if claim is None:
                continue
            accept_loss = accept_loss or claim.accept_loss
            for sid, last in claim.logs:
                if node in held.get(sid, ()):
                    returning.append(ReturningLog(node, sid, last))
        return tuple(returning), accept_loss

    def _trims(self, live: list[int]) -> tuple[tuple[ShardId, tuple[int, ...]], ...]:
        """Per shard, per sender: the minimum frozen receive count over surviving members."""
        mins: dict[ShardId, list[int]] = {}
        for r in live:
            for t, g, s, counts in self.sst.rows[r]["frozen"] or ():  # type: ignore[union-attr, misc]
                sid = ShardId(t, g, s)
                cur = mins.get(sid)
                mins[sid] = list(counts) if cur is None else [min(a, b) for a, b in zip(cur, counts)]
        return tuple((sid, tuple(mins[sid])) for sid in self.view.layout.shards if sid in mins)

    # ------------------------------------------------------------- follower: accept
    def _leader_has_newer_ballot(self, sst: SST) -> bool:
        if not self.active or not sst.rows[self.me]["wedged"]:
            return False
        lead = self.leader()
        if lead is None or lead == self.me:
            return False
        row = sst.rows[lead]
        # Only the leader's own ballot: a ballot of a lower rank copied into its row is one
        # this member has promised never to accept again.
        return row["ballot"] == lead + 1 and row["ballot"] > sst.rows[self.me]["ballot"] and row["proposal"] is not None  # type: ignore[operator]

    def _accept(self, sst: SST) -> None:
        row = sst.rows[self.leader()]  # type: ignore[index]
        # The ack the leader counts: durable before this row is pushed (see accepted_vid).
        sst.set("proposal", row["proposal"])
        sst.set("ballot", row["ballot"])

    # ------------------------------------------------------------- leader: commit
    def _all_accepted(self, sst: SST) -> bool:
        if not self.active or not self.proposed or sst.rows[self.me]["commit"]:
            return False
        ballot = self.me + 1
        live = self.live_ranks()
        if not is_majority(len(live), self.n):
            return False
        return all(sst.rows[r]["ballot"] == ballot for r in live)

    def _commit(self, sst: SST) -> None:
        sst.set("commit", self.me + 1)

    # ------------------------------------------------------------------ decide
    def _decision_visible(self, sst: SST) -> bool:
        if not self.active:
            return False
        for row in sst.rows:
            c = row["commit"]
            if c and row["ballot"] >= c and row["proposal"] is not None:  # type: ignore[operator]
                return True
        return False

    def _decide(self, sst: SST) -> None:
        for row in sst.rows:
            c = row["commit"]
            if c and row["ballot"] >= c and row["proposal"] is not None:  # type: ignore[operator]
                wire = row["proposal"]
                break
        try:
            proposal = Proposal.from_wire(wire)
        except ViewFormatError as exc:  # a committed value is malformed: nothing safe to do
            self.excluded = f"committed proposal unreadable: {exc}"
            return
        # Echo the decision in my own row so members that missed the committer learn it (an
        # acceptance like any other: see accepted_vid).
        if sst.rows[self.me]["ballot"] < row["ballot"]:  # type: ignore[operator]
            sst.set("proposal", wire)
            sst.set("ballot", row["ballot"])
        if sst.rows[self.me]["commit"] < c:  # type: ignore[operator]
            sst.set("commit", c)
        self.decided = proposal
