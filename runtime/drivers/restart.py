"""The driver's side of a total restart: gathering reports and agreeing on the restart view.

A node that starts with a saved view in its data directory does not found or join at once: it
sends a ``RestartHello`` (what :class:`SavedState` holds: its last view, the last version of
each of its logs, the highest view id it accepted, the frontiers it recorded and its
unfinished state transfers) to every address of that view and to its contacts, again every
``RESEND`` seconds, and at once to a reporter it hears from for the first time. Then:

- a running member answers ``GroupRunning``: the group never stopped, so this node simply
  joins it (its replicas then fetch only the log tail they lack by state transfer);
- otherwise the reporters gather each other's reports into a
  :class:`runtime.core.restart.RestartPlanner` (the simulator drives the same object). The
  lowest node id among them leads: when the planner decides, it records the restart view as
  accepted (``on_accept``), sends it to every reporter, which records it too and installs it.
  A leader that has not heard from members of the latest view with lower ids gives them
  ``LEADER_GRACE`` more (their report or decision may be on a slow connection): the decision
  is one phase, so two nodes that each think they are the lowest would each send a restart
  view of the same id.
- if the planner refuses (the logs back lack versions reported persisted, and the node was not
  started with ``accept_loss``), the node logs the report at ERROR and ends the restart phase
  with ``Outcome.refused``: the node process exits with ``EXIT_RESTART_REFUSED``. Every
  reporter runs the planner, so each refuses on its own (a non-leader after a grace period
  in which no decision came), and no refusal needs a message of its own.

Whose word counts: the node driver takes a ``RestartDecision`` or ``GroupRunning`` only from a
member of the last view this node knows (its saved view, or a later one such a member
reports) or from the node at an address it asked (``runtime.drivers.leader_word``); any other
holder of a node certificate is refused before this coordinator sees the frame.

The decision logic is the core's; this module only keeps the timers and the sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from runtime.core.layout import LayoutPolicy, ShardId
from runtime.core.restart import (
    RestartPlan,
    RestartPlanner,
    RestartRefused,
    RestartReport,
    RestartWaiting,
    latest_view,
)
from runtime.core.versions import format_version
from runtime.core.view import View, ViewFormatError
from runtime.wire.control import GroupRunning, RestartDecision, RestartHello

log = logging.getLogger("derecho.restart")

RESEND = 0.2  # seconds between repeats of this node's report
MIN_DOUBT_WAIT = 5.0  # seconds: the least a doubt may hold a restart for missing members (see RestartPlanner)
LEADER_GRACE = 2 * RESEND
"""Seconds past the quorum wait that a node gives the members of the latest view with lower
ids, before it leads without them (see :meth:`RestartCoordinator.on_tick`)."""


def default_doubt_wait(quorum_wait: float) -> float:
    """How long, from the quorum, a doubt (an accepted view nobody back installed, or a log
    short of a recorded frontier) holds the decision while members of the latest view are
    still missing: ten quorum waits, and at least ``MIN_DOUBT_WAIT``."""
    return max(MIN_DOUBT_WAIT, 10 * quorum_wait)


@dataclass(frozen=True, slots=True)
class SavedState:
    """What a node finds in its data directory.

    ``accepted_vid``: the highest view id of a proposal or restart decision the node accepted,
    written durably before its acceptance left the node (``Ready.accepted``). ``frontiers``:
    per shard, the highest persistence frontier the node recorded (from ``Ready.persisted``;
    may lag). ``incomplete``: shards whose state transfer had started and not landed.
    """

    view: View
    logs: dict[ShardId, int] = field(default_factory=dict)
    accepted_vid: int = -1
    frontiers: dict[ShardId, int] = field(default_factory=dict)
    incomplete: frozenset[ShardId] = frozenset()


@dataclass(slots=True)
class Outcome:
    """How the restart phase ended: install ``view`` (forgetting the versions in ``lost``: reads
    of them answer VersionLost), join through ``contacts``, or stop: ``refused`` is the report
    of the persisted versions the restart would have lost."""

    view: View | None = None
    contacts: list[str] | None = None
    refused: str | None = None
    lost: dict[ShardId, tuple[int, int]] = field(default_factory=dict)


def report_of(node_id: int, address: str, saved: SavedState) -> RestartReport:
    return RestartReport(
        node_id,
        address,
        saved.view,
        dict(saved.logs),
        saved.accepted_vid,
        dict(saved.frontiers),
        frozenset(saved.incomplete),
    )


def make_hello(node_id: int, address: str, saved: SavedState) -> RestartHello:
    """This node's report on the wire."""
    return RestartHello(
        node_id,
        address,
        saved.view.to_wire(),
        tuple(sorted(saved.logs.items())),
        saved.accepted_vid,
        tuple(sorted(saved.frontiers.items())),
        tuple(sorted(saved.incomplete)),
    )


def report_from_hello(msg: RestartHello, view: View) -> RestartReport:
    """A peer's report from its hello."""
    return RestartReport(
        msg.node, msg.address, view, dict(msg.logs), msg.accepted_vid, dict(msg.frontiers), frozenset(msg.incomplete)
    )


def _lost_from_decision(msg: RestartDecision) -> dict[ShardId, tuple[int, int]]:
    """The lost ranges a decision carries: (shard, first, last) triples."""
    return {sid: (lo, hi) for sid, lo, hi in msg.lost}


def make_decision(leader: int, plan: RestartPlan) -> RestartDecision:
    lost = tuple((sid, lo, hi) for sid, (lo, hi) in sorted(plan.lost.items()))
    return RestartDecision(leader, plan.view.to_wire(), lost)


class RestartCoordinator:
    def __init__(
        self,
        node_id: int,
        address: str,
        saved: SavedState,
        contacts: list[str],
        policy: LayoutPolicy,
        quorum_wait: float,
        send_to: Callable[[str, object], None],
        now: float,
        accept_loss: bool = False,
        doubt_wait: float | None = None,
        on_accept: Callable[[int], None] | None = None,
    ) -> None:
        """``accept_loss``: the operator's ``--accept-loss``: go ahead when logs lack persisted
        versions (logged at ERROR). ``on_accept(vid)``: make the restart view's id durable as
        this node's accepted view id; called before this node sends or installs the view."""
        self.node_id = node_id
        self.address = address
        self.saved = saved
        self.policy = policy
        self.quorum_wait = quorum_wait
        self.send_to = send_to
        self.on_accept = on_accept
        self.targets = [a for a in dict.fromkeys([*saved.view.addresses, *contacts]) if a != address]
        self.planner = RestartPlanner(
            policy,
            quorum_wait,
            doubt_wait if doubt_wait is not None else default_doubt_wait(quorum_wait),
            accept_loss,
        )
        self.planner.on_report(report_of(node_id, address, saved))
        self.addresses: dict[int, str] = {node_id: address}
        self.outcome: Outcome | None = None
        self.next_send = now
        self.last_problem: str | None = None
        self.refused_since: float | None = None  # a non-leader's planner refused since then
        self.led: RestartPlan | None = None  # the plan this node sent as the restart leader

    @property
    def reports(self) -> dict[int, RestartReport]:
        return self.planner.reports

    @property
    def quorum_since(self) -> float | None:
        return self.planner.quorum_since

    def hello(self) -> RestartHello:
        return make_hello(self.node_id, self.address, self.saved)

    # ------------------------------------------------------------------ inputs
    def on_hello(self, msg: RestartHello) -> None:
        try:
            view = View.from_wire(msg.view)
        except ViewFormatError as exc:
            log.warning("restart report of node %s has a bad view: %s", msg.node, exc)
            return
        new = msg.node not in self.planner.reports
        self.planner.on_report(report_from_hello(msg, view))
        self.addresses[msg.node] = msg.address
        if msg.address not in self.targets and msg.address != self.address:
            self.targets.append(msg.address)
        if new and self.outcome is None and msg.address != self.address:
            # Answer a first report at once rather than at the next resend: a node that
            # started after our last send (its port was closed then) learns of us within a
            # round trip, well inside its quorum wait, instead of deciding without us.
            self.send_to(msg.address, self.hello())

    def on_decision(self, msg: RestartDecision) -> None:
        if self.outcome is not None:
            return
        try:
            view = View.from_wire(msg.view)
        except ViewFormatError as exc:
            log.warning("restart decision of node %s is malformed: %s", msg.leader, exc)
            return
        if view.rank_of(self.node_id) is None:
            log.info("restart view %d of node %s leaves this node out; joining it instead", view.vid, msg.leader)
            self.outcome = Outcome(contacts=list(view.addresses))
            return
        if self.on_accept is not None:
            self.on_accept(view.vid)
        self.outcome = Outcome(view=view, lost=_lost_from_decision(msg))

    def on_running(self, msg: GroupRunning) -> None:
        if self.outcome is None:
            log.info("the group is running (view %d at %s): joining it instead of restarting", msg.vid, msg.address)
            self.outcome = Outcome(contacts=[msg.address, *self.targets])

    # ------------------------------------------------------------------- timer
    def on_tick(self, now: float) -> float:
        """Resend, decide if this node leads and may; returns when to tick next."""
        if self.outcome is not None:
            return now
        if now >= self.next_send:
            hello = self.hello()
            for address in self.targets:
                self.send_to(address, hello)
            self.next_send = now + RESEND
        decision = self.planner.on_tick(now)
        leader = min(self.planner.reports) == self.node_id
        if isinstance(decision, RestartWaiting):
            self.refused_since = None
            if decision.reason != self.last_problem:
                log.info("restart: waiting (%s)", decision.reason)
                self.last_problem = decision.reason
            return min(self.next_send, decision.until) if decision.until is not None else self.next_send
        if isinstance(decision, RestartRefused):
            # The leader refuses at once; the others give it time to decide first, as their
            # reports may lag behind its own.
            if self.refused_since is None:
                self.refused_since = now
            grace = max(self.quorum_wait, 2 * RESEND)
            if leader or now >= self.refused_since + grace:
                text = decision.describe()
                log.error("%s", text)
                self.outcome = Outcome(refused=text)
                return now
            return min(self.next_send, self.refused_since + grace)
        self.refused_since = None
        if leader:
            hold = self._lower_ids_grace(now)
            if hold is not None:
                return min(self.next_send, hold)
            self._lead(decision)
        return self.next_send

    def _lower_ids_grace(self, now: float) -> float | None:
        """Until when this node, about to lead, still waits for members of the latest view
        with lower ids that it has not heard from (None: it leads now).

        The lowest id among the reports leads; a node that has not heard from a lower id
        would lead too, while that node, holding this node's report, leads with it: two
        restart views of one id (seen when a node's answer to a first report crossed a
        connection starved of CPU for longer than the quorum wait). Lower ids that are back
        answer a report at once and resend theirs every ``RESEND``; ``LEADER_GRACE`` (two
        resends) past the quorum wait lets their report or their decision arrive first. A
        lower id that is down for good costs the restart that much time, no more."""
        reports = self.planner.reports
        since = self.planner.quorum_since
        latest = latest_view(reports.values())
        if since is None or not any(m < self.node_id and m not in reports for m in latest.members):
            return None
        until = since + self.quorum_wait + LEADER_GRACE
        if now >= until:
            return None
        reason = f"members {sorted(m for m in latest.members if m < self.node_id and m not in reports)} not heard"
        if reason != self.last_problem:
            log.info("restart: would lead, but waits %.1f s more for lower node ids (%s)", until - now, reason)
            self.last_problem = reason
        return until

    def _lead(self, plan: RestartPlan) -> None:
        log.info(
            "restart: leading with %d nodes; view %d from latest view %d%s; longest logs %s",
            len(self.planner.reports),
            plan.view.vid,
            plan.latest_vid,
            f" (above accepted view {plan.accepted_vid})" if plan.accepted_vid > plan.latest_vid else "",
            {str(s): format_version(v) for s, v in plan.longest.items()},
        )
        if plan.unresolved is not None:
            log.warning("restart: going ahead although %s", plan.unresolved)
        for loss in plan.losses:
            log.error("restart with --accept-loss: %s; reads of them will answer VersionLost", loss.describe())
        if self.on_accept is not None:
            self.on_accept(plan.view.vid)
        decision = make_decision(self.node_id, plan)
        for node, address in self.addresses.items():
            if node != self.node_id:
                self.send_to(address, decision)
        self.led = plan
        self.outcome = Outcome(view=plan.view, lost=dict(plan.lost))
