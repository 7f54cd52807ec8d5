"""The safety and liveness checker: reads a run's trace, names the first broken invariant.

The trace records what the application saw (payloads accepted by ``send``, deliveries, views
installed, exclusions) and when each node's core state moved (receive counts, delivery
frontiers, the proposal each node accepted), sampled after every core step. The checker trusts
none of the core's own bookkeeping: it recomputes every property from these records, so a
buggy core cannot vouch for itself. ``tests/sim/test_invariants.py`` plants violations to prove
that it catches them.

Nodes are tracked per *incarnation* ``(node_id, life)``: a node that crashed or was excluded
and joined again is a new incarnation under the same id.

In persistent mode the trace also holds every node's disk (its durable logs at the end of
the run, per node id: a disk outlives incarnations), when each disk's last durable version
moved, every persistence frontier a core computed, and the total restarts. The persistence
checks are: no version inside a persistence frontier is lost or changed (every live member of
the shard ends with it, same payload), logs of a shard are prefix-consistent everywhere, no
frontier ever exceeded what a member of its view had on disk at that moment, every restart
view's id is above the view it restarts from, a node whose disk failed stopped (left or
crashed) instead of going on, and every total restart went ahead (a refused or impossible
restart is reported: in these runs nothing is lost by fault, so a refusal is a bug).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from runtime.core.versions import format_version, make_version
from runtime.sim.scheduler import gc_paused

Inc = tuple[int, int]  # (node id, life)
ShardRef = tuple[Any, ...]
# (vid, shard, global index, sender node, sender index, payload, final)
Record = tuple[int, ShardRef, int, int, int, bytes, bool]


@dataclass(frozen=True, slots=True)
class ViewRecord:
    vid: int
    members: tuple[int, ...]
    shards: tuple[tuple[ShardRef, tuple[int, ...]], ...]  # layout, in policy order

    def shard_members(self, shard: ShardRef) -> tuple[int, ...]:
        for sid, members in self.shards:
            if sid == shard:
                return members
        return ()


@dataclass(frozen=True, slots=True)
class RestartRecord:
    """A total restart: the view the restarting nodes were started in, who they were, the
    latest view among their reports, per shard the last version kept (the longest log), and
    the loss the plan declared (shard, first, last version; only with accept_loss)."""

    vid: int
    members: tuple[int, ...]
    latest_vid: int
    kept: tuple[tuple[ShardRef, int], ...]
    step: int
    lost: tuple[tuple[ShardRef, int, int], ...] = ()

    def kept_of(self, shard: ShardRef) -> int:
        for sid, v in self.kept:
            if sid == shard:
                return v
        return -1


@dataclass(slots=True)
class Trace:
    sent: dict[int, list[bytes]] = field(default_factory=dict)  # per sender node id, accept order
    shard_of: dict[bytes, ShardRef] = field(default_factory=dict)
    origin: dict[bytes, Inc] = field(default_factory=dict)  # the incarnation that sent a payload
    delivered: dict[Inc, list[Record]] = field(default_factory=dict)
    views: dict[Inc, list[ViewRecord]] = field(default_factory=dict)
    accepted: dict[Inc, list[tuple[int, tuple[int, tuple[int, ...]]]]] = field(default_factory=dict)
    # received[(inc, vid, shard, sender)] = [(count, step), ...]
    received: dict[tuple[Inc, int, ShardRef, int], list[tuple[int, int]]] = field(default_factory=dict)
    # frontier[(inc, vid, shard)] = [(delivered count, step), ...] (normal deliveries only)
    frontier: dict[tuple[Inc, int, ShardRef], list[tuple[int, int]]] = field(default_factory=dict)
    ended: dict[Inc, str] = field(default_factory=dict)  # crashed or excluded, with the reason
    pending_at_end: set[bytes] = field(default_factory=set)  # held by the app, never delivered yet
    expect_complete: bool = True
    # Persistent mode.
    persistent: bool = False
    disks: dict[int, dict[Any, list[tuple[int, bytes]]]] = field(default_factory=dict)  # node -> shard -> log
    # durable[(node, shard)] = [(last durable version, step), ...]
    durable: dict[tuple[int, ShardRef], list[tuple[int, int]]] = field(default_factory=dict)
    # persisted[(inc, vid, shard)] = [(frontier version, step), ...]: every version up to it on disk everywhere
    persisted: dict[tuple[Inc, int, ShardRef], list[tuple[int, int]]] = field(default_factory=dict)
    restarts: list[RestartRecord] = field(default_factory=list)
    disk_failed: dict[Inc, int] = field(default_factory=dict)  # incarnation -> step its disk began to fail
    restart_failures: list[str] = field(default_factory=list)  # total restarts refused or stuck, why
    persisted_checked: int = 0  # set by the check: (shard, version) pairs inside some frontier

    def incarnations(self) -> list[Inc]:
        return sorted(set(self.views) | set(self.delivered))


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    member: Any
    detail: str

    def __str__(self) -> str:
        who = f" at node {self.member}" if self.member is not None else ""
        return f"{self.invariant}{who}: {self.detail}"


class _Counter:
    """A monotone counter's checkpoints, searchable by value."""

    __slots__ = ("counts", "steps")

    def __init__(self, checkpoints: list[tuple[int, int]]) -> None:
        self.counts = [c for c, _ in checkpoints]
        self.steps = [s for _, s in checkpoints]

    def step_reaching(self, count: int) -> int | None:
        """First step at which the counter was at least ``count``, or None if never."""
        if count <= 0:
            return 0
        i = bisect_right(self.counts, count - 1)
        return None if i == len(self.counts) else self.steps[i]


def check_trace(trace: Trace) -> list[Violation]:
    """All invariant violations in ``trace`` (an empty list means the run was correct)."""
    with gc_paused():  # as during the run (see gc_paused)
        return _check_all(trace)


def _check_all(trace: Trace) -> list[Violation]:
    out: list[Violation] = []
    out += _check_views(trace)
    out += _check_majority(trace)
    out += _check_member_logs(trace)
    out += _check_view_synchrony(trace)
    out += _check_stability(trace)
    out += _check_no_loss(trace)
    if trace.persistent:
        delivered = _versions_delivered(trace)
        out += _check_restarts(trace)
        out += _check_fail_stop(trace)
        out += _check_frontier_durable(trace)
        out += _check_log_consistency(trace, delivered)
        out += _check_persisted_kept(trace, delivered)
    return out


# ------------------------------------------------------------------------- views
def _view_index(trace: Trace) -> dict[int, ViewRecord]:
    by_vid: dict[int, ViewRecord] = {}
    for views in trace.views.values():
        for v in views:
            by_vid.setdefault(v.vid, v)
    return by_vid


def _check_views(trace: Trace) -> list[Violation]:
    out = []
    first: dict[int, tuple[Inc, ViewRecord]] = {}
    for inc, views in sorted(trace.views.items()):
        for a, b in zip(views, views[1:]):
            if b.vid != a.vid + 1:
                out.append(Violation("view-sequence", inc, f"installed view {b.vid} right after view {a.vid}"))
                break
        for v in views:
            if inc[0] not in v.members:
                out.append(Violation("view-membership", inc, f"installed view {v.vid} that does not list it"))
            seen = first.setdefault(v.vid, (inc, v))
            if seen[1] != v:
                out.append(
                    Violation(
                        "split-brain",
                        inc,
                        f"view {v.vid} here is {v.members} with layout {v.shards}; "
                        f"node {seen[0]} installed {seen[1].members} with layout {seen[1].shards}",
                    )
                )
    return out


def _check_majority(trace: Trace) -> list[Violation]:
    """Every view v+1 was accepted by a majority of view v's members before anyone installed it
    (a total restart's view instead needs reports from a majority of view v: see
    ``_check_restarts``)."""
    out = []
    by_vid = _view_index(trace)
    restarted = {r.vid for r in trace.restarts}
    for vid, view in sorted(by_vid.items()):
        prev = by_vid.get(vid - 1)
        if prev is None or vid in restarted:
            continue  # the first view of the run, or no record of its predecessor
        key = (view.vid, view.members)
        voters = {
            inc[0]
            for inc, acc in trace.accepted.items()
            if any(old == vid - 1 and prop == key for old, prop in acc) and inc[0] in prev.members
        }
        if 2 * len(voters) <= len(prev.members):
            out.append(
                Violation(
                    "majority",
                    None,
                    f"view {vid} {view.members} installed with acceptance from {sorted(voters)} only, "
                    f"of view {vid - 1} {prev.members}",
                )
            )
    return out


# ------------------------------------------------------------ per-node delivery logs
def _where(i: int, vid: int, shard: ShardRef, g: int) -> str:
    """A delivery, as a violation names it (formatted only then: for every delivery of a run
    it cost more than the checks themselves)."""
    return f"delivery #{i} (view {vid}, shard {shard}, index {g})"


def _check_member_logs(trace: Trace) -> list[Violation]:
    out = []
    sent_index = {s: {p: k for k, p in enumerate(msgs)} for s, msgs in trace.sent.items()}
    no_index: dict[bytes, int] = {}
    shard_of = trace.shard_of
    for inc, log in sorted(trace.delivered.items()):
        seen: set[bytes] = set()
        last: dict[tuple[int, ShardRef], int] = {}
        next_app: dict[tuple[int, ShardRef], int] = {}
        views = {v.vid: v for v in trace.views.get(inc, [])}
        # (vid, shard) -> the shard's members in that view, and each one's position among them
        ranks: dict[tuple[int, ShardRef], tuple[tuple[int, ...], dict[int, int]]] = {}

        for i, (vid, shard, g, sender, k, payload, _final) in enumerate(log):
            if payload in seen:
                out.append(Violation("duplicate", inc, f"{_where(i, vid, shard, g)} repeats payload {payload!r:.40}"))
                break
            seen.add(payload)
            vs = (vid, shard)
            known = ranks.get(vs)
            if known is None:
                view = views.get(vid)
                if view is None:
                    out.append(
                        Violation(
                            "delivery-outside-view", inc, f"{_where(i, vid, shard, g)} in a view it never installed"
                        )
                    )
                    break
                senders = view.shard_members(shard)
                # senders.index(): the first position of a member, as the check has always used
                known = ranks[vs] = (senders, {m: senders.index(m) for m in senders})
            senders, pos_of = known
            pos = pos_of.get(sender)
            if pos is None:
                out.append(
                    Violation("phantom", inc, f"{_where(i, vid, shard, g)} claims sender {sender}, not in the shard")
                )
                break
            if g <= last.get(vs, -1):
                out.append(Violation("order", inc, f"{_where(i, vid, shard, g)} comes after index {last[vs]}"))
                break
            last[vs] = g
            if g != k * len(senders) + pos:
                out.append(Violation("round-robin", inc, f"{_where(i, vid, shard, g)}: not {k}*{len(senders)}+{pos}"))
                break
            app_k = sent_index.get(sender, no_index).get(payload)
            if app_k is None or shard_of.get(payload) != shard:
                out.append(
                    Violation(
                        "phantom",
                        inc,
                        f"{_where(i, vid, shard, g)}: payload {payload!r:.40} never sent by {sender} to {shard}",
                    )
                )
                break
            key = (sender, shard)
            expected = next_app.get(key)
            if expected is not None and app_k <= expected:
                out.append(
                    Violation(
                        "sender-order",
                        inc,
                        f"{_where(i, vid, shard, g)} is message {app_k} of node {sender} after its {expected}",
                    )
                )
                break
            next_app[key] = app_k
    return out


def _check_view_synchrony(trace: Trace) -> list[Violation]:
    """Per (view, shard): every member delivered a prefix of one sequence, and the members that
    went on to the next view delivered exactly the same messages in this one."""
    out = []
    installed: dict[int, set[Inc]] = {}
    for inc, views in trace.views.items():
        for v in views:
            installed.setdefault(v.vid, set()).add(inc)
    logs: dict[tuple[int, ShardRef], dict[Inc, list[Record]]] = {}
    for inc, log in trace.delivered.items():
        for rec in log:
            logs.setdefault((rec[0], rec[1]), {}).setdefault(inc, []).append(rec)
    by_vid = _view_index(trace)
    for (vid, shard), per_inc in sorted(logs.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        view = by_vid[vid]
        members = [inc for inc in installed.get(vid, ()) if inc[0] in view.shard_members(shard)]
        survivors = sorted(inc for inc in members if inc in installed.get(vid + 1, ()))
        seqs = {inc: [r[2:6] for r in per_inc.get(inc, [])] for inc in members}
        ref_inc: Inc | None
        if survivors:
            ref_inc = survivors[0]
            ref = seqs[ref_inc]
            for inc in survivors[1:]:
                if seqs[inc] != ref:
                    i = next(
                        (j for j, (a, b) in enumerate(zip(seqs[inc], ref)) if a != b), min(len(ref), len(seqs[inc]))
                    )
                    out.append(
                        Violation(
                            "virtual-synchrony",
                            inc,
                            f"view {vid} shard {shard}: delivered {len(seqs[inc])} messages, node {ref_inc} "
                            f"{len(ref)}; first difference at #{i}",
                        )
                    )
        else:
            ref_inc = max(members, key=lambda x: len(seqs[x]), default=None)
            ref = seqs[ref_inc] if ref_inc is not None else []
        for inc in members:
            s = seqs[inc]
            if s != ref[: len(s)]:
                i = next(j for j, (a, b) in enumerate(zip(s, ref)) if a != b) if len(s) <= len(ref) else len(ref)
                out.append(
                    Violation(
                        "prefix-agreement",
                        inc,
                        f"view {vid} shard {shard}: first divergence at delivery #{i}: "
                        f"{s[i][:3] if i < len(s) else None} here, {ref[i][:3] if i < len(ref) else None} at node {ref_inc}",
                    )
                )
    return out


def _check_stability(trace: Trace) -> list[Violation]:
    """A normal delivery needs every shard member of the view to hold the message; a final
    (trimmed) delivery needs every survivor to hold it.

    Every member delivers the same messages, so when each holder received a message is looked
    up once per message (``arrivals``), not once per delivery of it."""
    out = []
    installed: dict[int, dict[int, Inc]] = {}
    for inc, views in trace.views.items():
        for v in views:
            installed.setdefault(v.vid, {})[inc[0]] = inc
    by_vid = _view_index(trace)
    counters: dict[Any, _Counter] = {}

    def counter(key: Any, table: dict[Any, list[tuple[int, int]]]) -> _Counter:
        c = counters.get((id(table), key))
        if c is None:
            c = counters[(id(table), key)] = _Counter(table.get(key, []))
        return c

    holders_of: dict[tuple[int, ShardRef, bool], list[Inc]] = {}

    def holders(vid: int, shard: ShardRef, final: bool) -> list[Inc]:
        """The incarnations that must hold a (final) delivery of view ``vid``'s ``shard``."""
        hs = holders_of.get((vid, shard, final))
        if hs is None:
            view = by_vid[vid]
            members = view.shard_members(shard)
            hs = [installed[vid][m] for m in members if m in installed.get(vid, {})]
            if final:
                nxt = installed.get(vid + 1, {})
                hs = [h for h in hs if nxt.get(h[0]) == h]
            holders_of[(vid, shard, final)] = hs
        return hs

    # (vid, shard, sender, k, final) -> (the latest step at which a holder received message k
    # of sender, or None if some holder never did; each holder and its step, in holder order)
    arrivals: dict[tuple[int, ShardRef, int, int, bool], tuple[int | None, list[tuple[Inc, int | None]]]] = {}

    def arrival(
        vid: int, shard: ShardRef, sender: int, k: int, final: bool
    ) -> tuple[int | None, list[tuple[Inc, int | None]]]:
        key = (vid, shard, sender, k, final)
        got = arrivals.get(key)
        if got is None:
            steps = [
                (h, counter((h, vid, shard, sender), trace.received).step_reaching(k + 1))
                for h in holders(vid, shard, final)
            ]
            known = [step for _, step in steps if step is not None]
            latest = max(known, default=-1) if len(known) == len(steps) else None
            got = arrivals[key] = (latest, steps)
        return got

    for inc, log in sorted(trace.delivered.items()):
        for i, (vid, shard, g, sender, k, _payload, final) in enumerate(log):
            holders(vid, shard, final)  # the view must be known (KeyError otherwise, as it always was)
            if final:
                reached = None  # held at the freeze: any time before the end of the run
            else:
                reached = counter((inc, vid, shard), trace.frontier).step_reaching(g + 1)
                if reached is None:
                    out.append(Violation("frontier", inc, f"delivery #{i} (view {vid}, index {g}) beyond its frontier"))
                    break
            latest, steps = arrival(vid, shard, sender, k, final)
            if latest is not None and (reached is None or latest <= reached):
                continue  # every holder had it by then
            bad = None
            for h, got in steps:
                if got is None or (reached is not None and got > reached):
                    bad = (h, got)
                    break
            if bad is not None:
                out.append(
                    Violation(
                        "unstable-delivery",
                        inc,
                        f"delivered message {k} of node {sender} (view {vid}, shard {shard}, index {g}"
                        f"{', final' if final else ''}) at step {reached} but node {bad[0]} "
                        f"received it {'never' if bad[1] is None else f'at step {bad[1]}'}",
                    )
                )
                break
    return out


def _check_no_loss(trace: Trace) -> list[Violation]:
    """Every message a live sender's send accepted is delivered, once, by every live node that
    holds its shard at the end (liveness); never twice across views (safety)."""
    out = []
    live = [inc for inc in trace.incarnations() if inc not in trace.ended]
    history: dict[ShardRef, list[bytes]] = {}
    by_vid = _view_index(trace)
    per_view: dict[tuple[int, ShardRef], list[bytes]] = {}
    for log in trace.delivered.values():
        seqs: dict[tuple[int, ShardRef], list[bytes]] = {}
        for r in log:
            seqs.setdefault((r[0], r[1]), []).append(r[5])
        for key, seq in seqs.items():
            if len(seq) > len(per_view.get(key, [])):
                per_view[key] = seq
    for (_vid, shard), seq in sorted(per_view.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        history.setdefault(shard, []).extend(seq)
    for shard, seq in history.items():
        if len(set(seq)) != len(seq):
            dup = next(p for p in seq if seq.count(p) > 1)
            out.append(Violation("duplicate-across-views", None, f"shard {shard} delivered {dup!r:.40} twice"))
    if not trace.expect_complete:
        return out
    delivered_anywhere = {p for seq in history.values() for p in seq}
    live_set = set(live)
    for sender, msgs in sorted(trace.sent.items()):
        lost = [
            p
            for p in msgs
            if trace.origin.get(p) in live_set and p not in delivered_anywhere and p not in trace.pending_at_end
        ]
        if lost:
            out.append(
                Violation(
                    "lost", None, f"{len(lost)} messages of live node {sender} never delivered, first {lost[0]!r:.40}"
                )
            )
    # Every live node ends in the same view and has delivered all of it.
    finals = {trace.views[inc][-1].vid for inc in live if trace.views.get(inc)}
    if len(finals) > 1:
        out.append(Violation("liveness", None, f"live nodes ended in different views {sorted(finals)}"))
    elif finals:
        vid = finals.pop()
        view = by_vid[vid]
        for inc in live:
            for shard, members in view.shards:
                if inc[0] not in members:
                    continue
                mine = [r[5] for r in trace.delivered.get(inc, []) if r[0] == vid and r[1] == shard]
                if mine != per_view.get((vid, shard), []):
                    out.append(
                        Violation(
                            "liveness",
                            inc,
                            f"delivered {len(mine)} of {len(per_view.get((vid, shard), []))} messages of shard {shard} in final view {vid}",
                        )
                    )
    return out


# -------------------------------------------------------------------- persistence
def _versions_delivered(trace: Trace) -> dict[ShardRef, dict[int, bytes]]:
    """Per shard, every version any node delivered, with its payload (the first seen)."""
    out: dict[ShardRef, dict[int, bytes]] = {}
    for log in trace.delivered.values():
        for vid, shard, g, _, _, payload, _ in log:
            out.setdefault(shard, {}).setdefault(make_version(vid, g), payload)
    return out


def _check_restarts(trace: Trace) -> list[Violation]:
    """Every total restart went ahead; a restart view's id is above the latest view any
    reporter installed, and its members include a majority of that view and a member of each
    of its shards. (Reusing the id of a view some node installed shows as split-brain.)"""
    out = [Violation("restart-failed", None, why) for why in trace.restart_failures]
    by_vid = _view_index(trace)
    for r in trace.restarts:
        prev = by_vid.get(r.latest_vid)
        if r.vid <= r.latest_vid or prev is None:
            out.append(Violation("restart-view", None, f"restart view {r.vid} after latest view {r.latest_vid}"))
            continue
        back = set(r.members) & set(prev.members)
        if 2 * len(back) <= len(prev.members):
            out.append(
                Violation(
                    "majority",
                    None,
                    f"restart view {r.vid} from {sorted(back)} only, of view {prev.vid} {prev.members}",
                )
            )
        for shard, members in prev.shards:
            if members and not back & set(members):
                out.append(
                    Violation(
                        "restart-quorum", None, f"restart view {r.vid}: no member of shard {shard} of view {prev.vid}"
                    )
                )
    return out


def _check_fail_stop(trace: Trace) -> list[Violation]:
    """A node whose disk failed must stop (leave, or stop outright) rather than go on: by the
    end of a complete run it has ended."""
    if not trace.expect_complete:
        return []
    return [
        Violation("no-fail-stop", inc, f"its disk failed at step {step} and it was still running at the end")
        for inc, step in sorted(trace.disk_failed.items())
        if inc not in trace.ended
    ]


def _at_step(timeline: list[tuple[int, int]], step: int) -> int:
    """The value of a (value, step) timeline at ``step`` (-1 before its first entry)."""
    i = bisect_right(timeline, step, key=lambda e: e[1])
    return timeline[i - 1][0] if i else -1


def _check_frontier_durable(trace: Trace) -> list[Violation]:
    """(c) A frontier a core computed never exceeds what any member of the shard in that view
    had on disk at that step."""
    out = []
    by_vid = _view_index(trace)
    for (inc, vid, shard), samples in sorted(
        trace.persisted.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))
    ):
        view = by_vid.get(vid)
        members = view.shard_members(shard) if view is not None else ()
        bad = None
        for version, step in samples:
            for m in members:
                have = _at_step(trace.durable.get((m, shard), []), step)
                if have < version:
                    bad = (version, step, m, have)
                    break
            if bad:
                break
        if bad:
            version, step, m, have = bad
            out.append(
                Violation(
                    "persisted-beyond-durable",
                    inc,
                    f"view {vid} shard {shard}: frontier {format_version(version)} at step {step}, but node {m} "
                    f"had only {format_version(have)} on disk",
                )
            )
    return out


def _check_log_consistency(trace: Trace, delivered: dict[ShardRef, dict[int, bytes]]) -> list[Violation]:
    """(b) Every disk log strictly increases; a version means the same payload in every log and
    in every delivery; the live members of a shard in their final view hold prefixes of one log."""
    out = []
    for node, logs in sorted(trace.disks.items()):
        for shard, log in sorted(logs.items(), key=lambda kv: str(kv[0])):
            shard = tuple(shard)
            known = delivered.get(shard, {})
            prev = -1
            for i, (version, payload) in enumerate(log):
                if version <= prev:
                    out.append(
                        Violation(
                            "log-order",
                            node,
                            f"shard {shard} record #{i}: {format_version(version)} after {format_version(prev)}",
                        )
                    )
                    break
                prev = version
                want = known.get(version)
                if want != payload:
                    what = "was never delivered" if want is None else f"was delivered as {want!r:.40}"
                    out.append(
                        Violation(
                            "log-conflict",
                            node,
                            f"shard {shard} record #{i} {format_version(version)} holds {payload!r:.40}, which {what}",
                        )
                    )
                    break
    live = [inc for inc in trace.incarnations() if inc not in trace.ended and trace.views.get(inc)]
    holders: dict[ShardRef, list[int]] = {}
    for inc in live:
        for shard, members in trace.views[inc][-1].shards:
            if inc[0] in members:
                holders.setdefault(shard, []).append(inc[0])
    for shard, nodes in sorted(holders.items(), key=lambda kv: str(kv[0])):
        logs = {n: trace.disks.get(n, {}).get(shard, []) for n in sorted(nodes)}
        ref_node = max(logs, key=lambda n: len(logs[n]))
        ref = logs[ref_node]
        for n, log in logs.items():
            if log != ref[: len(log)]:
                i = next(j for j, (a, b) in enumerate(zip(log, ref)) if a != b) if len(log) <= len(ref) else len(ref)
                out.append(
                    Violation(
                        "log-divergence",
                        n,
                        f"shard {shard}: log differs from node {ref_node}'s at record #{i} "
                        f"({format_version(log[i][0]) if i < len(log) else None} here, "
                        f"{format_version(ref[i][0]) if i < len(ref) else None} there)",
                    )
                )
    return out


def persisted_versions(
    trace: Trace, delivered: dict[ShardRef, dict[int, bytes]] | None = None
) -> dict[ShardRef, dict[int, bytes]]:
    """Per shard, every delivered version that some persistence frontier covered, with its
    payload. A frontier reported in view v covers the delivered versions up to it, except those
    a total restart at or before v discarded (delivered before it but on no reporting disk:
    they were never persisted, or the checks of the earlier frontier report their loss)."""
    if delivered is None:
        delivered = _versions_delivered(trace)
    top: dict[tuple[ShardRef, int], int] = {}  # (shard, vid) -> highest frontier in that view
    for (_, vid, shard), samples in trace.persisted.items():
        v = max(version for version, _ in samples)
        if v > top.get((shard, vid), -1):
            top[(shard, vid)] = v
    out: dict[ShardRef, dict[int, bytes]] = {}
    for (shard, vid), frontier in top.items():
        gaps = [(r.kept_of(shard), make_version(r.vid, 0)) for r in trace.restarts if r.vid <= vid]
        into = out.setdefault(shard, {})
        for version, payload in delivered.get(shard, {}).items():
            if version <= frontier and not any(lo < version < hi for lo, hi in gaps):
                into[version] = payload
    return out


def _check_persisted_kept(trace: Trace, delivered: dict[ShardRef, dict[int, bytes]]) -> list[Violation]:
    """(a) Every version ever inside a persistence frontier is, at the end, on the disk of every
    live member of its shard, with the payload that was delivered."""
    required = persisted_versions(trace, delivered)
    trace.persisted_checked = sum(len(v) for v in required.values())
    if not trace.expect_complete:
        return []  # a run cut short may end with state transfers in flight
    out = []
    live = [inc for inc in trace.incarnations() if inc not in trace.ended and trace.views.get(inc)]
    for inc in live:
        for shard, members in trace.views[inc][-1].shards:
            if inc[0] not in members:
                continue
            need = required.get(shard)
            if not need:
                continue
            have = dict(trace.disks.get(inc[0], {}).get(shard, []))
            missing = [v for v in sorted(need) if have.get(v) != need[v]]
            if missing:
                v = missing[0]
                what = "missing" if v not in have else f"holds {have[v]!r:.40} instead of {need[v]!r:.40}"
                out.append(
                    Violation(
                        "persisted-lost",
                        inc,
                        f"shard {shard}: {len(missing)} persisted versions not on disk as delivered; "
                        f"first {format_version(v)} {what}",
                    )
                )
    return out
