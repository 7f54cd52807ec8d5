"""The driver's side of a total restart: gathering reports and agreeing on the restart view.

A node that starts with a saved view in its data directory does not found or join at once: it
sends a ``RestartHello`` (its last view and the last version of each of its logs) to every
address of that view and to its contacts, again every ``RESEND`` seconds. Then:

- a running member answers ``GroupRunning``: the group never stopped, so this node simply
  joins it (its replicas then fetch only the log tail they lack by state transfer);
- otherwise the reporters gather each other's reports. The lowest node id among them leads:
  once the reports make a quorum (:func:`runtime.core.restart.quorum_problem`) it waits
  ``quorum_wait`` seconds for stragglers (at once if every member of the last view is back),
  decides with :func:`runtime.core.restart.plan_restart` and sends the restart view to every
  reporter, which installs it.

The decision logic is the core's; this module only keeps the timers and the sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from runtime.core.layout import LayoutPolicy, ShardId
from runtime.core.restart import RestartReport, plan_restart, quorum_problem
from runtime.core.view import View, ViewFormatError
from runtime.wire.control import GroupRunning, RestartDecision, RestartHello

log = logging.getLogger("derecho.restart")

RESEND = 0.2  # seconds between repeats of this node's report


@dataclass(frozen=True, slots=True)
class SavedState:
    """What a node finds in its data directory: its last view and its logs' last versions."""

    view: View
    logs: dict[ShardId, int] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """How the restart phase ended: install ``view``, or join through ``contacts``."""

    view: View | None = None
    contacts: list[str] | None = None


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
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.saved = saved
        self.policy = policy
        self.quorum_wait = quorum_wait
        self.send_to = send_to
        self.targets = [a for a in dict.fromkeys([*saved.view.addresses, *contacts]) if a != address]
        self.reports: dict[int, RestartReport] = {node_id: RestartReport(node_id, address, saved.view, dict(saved.logs))}
        self.addresses: dict[int, str] = {node_id: address}
        self.quorum_since: float | None = None
        self.outcome: Outcome | None = None
        self.next_send = now
        self.last_problem: str | None = None

    def hello(self) -> RestartHello:
        return RestartHello(self.node_id, self.address, self.saved.view.to_wire(), tuple(self.saved.logs.items()))

    # ------------------------------------------------------------------ inputs
    def on_hello(self, msg: RestartHello) -> None:
        try:
            view = View.from_wire(msg.view)
        except ViewFormatError as exc:
            log.warning("restart report of node %s has a bad view: %s", msg.node, exc)
            return
        self.reports[msg.node] = RestartReport(msg.node, msg.address, view, dict(msg.logs))
        self.addresses[msg.node] = msg.address
        if msg.address not in self.targets and msg.address != self.address:
            self.targets.append(msg.address)

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
        self.outcome = Outcome(view=view)

    def on_running(self, msg: GroupRunning) -> None:
        if self.outcome is None:
            log.info("the group is running (view %d at %s): joining it instead of restarting", msg.vid, msg.address)
            self.outcome = Outcome(contacts=[msg.address, *self.targets])

    # ------------------------------------------------------------------- timer
    def on_tick(self, now: float) -> float:
        """Resend, and decide if this node leads and may; returns when to tick next."""
        if self.outcome is not None:
            return now
        if now >= self.next_send:
            hello = self.hello()
            for address in self.targets:
                self.send_to(address, hello)
            self.next_send = now + RESEND
        if min(self.reports) == self.node_id:
            self._lead(now)
        return min(self.next_send, self.quorum_since + self.quorum_wait if self.quorum_since is not None else self.next_send)

    def _lead(self, now: float) -> None:
        problem = quorum_problem(list(self.reports.values()))
        if problem is not None:
            if problem != self.last_problem:
                log.info("restart: waiting for more nodes (%s)", problem)
                self.last_problem = problem
            self.quorum_since = None
            return
        if self.quorum_since is None:
            self.quorum_since = now
        latest = max((r.view for r in self.reports.values()), key=lambda v: v.vid)
        everyone = all(m in self.reports for m in latest.members)
        if not everyone and now < self.quorum_since + self.quorum_wait:
            return
        plan = plan_restart(list(self.reports.values()), self.policy)
        if plan is None:
            return
        log.info(
            "restart: leading with %d nodes; view %d from latest view %d; longest logs %s",
            len(self.reports), plan.view.vid, plan.latest_vid,
            {str(s): v for s, v in plan.longest.items()},
        )
        decision = RestartDecision(self.node_id, plan.view.to_wire())
        for node, address in self.addresses.items():
            if node != self.node_id:
                self.send_to(address, decision)
        self.outcome = Outcome(view=plan.view)
