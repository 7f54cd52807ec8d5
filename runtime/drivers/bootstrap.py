"""Who founds a group when every node starts from the same command line (a StatefulSet).

Pods of a StatefulSet share one template: each lists every pod as a contact, and none can be
told "you found" by its arguments alone. Founding is the one step that must never happen
twice: a second group would take over nodes whose logs belong to the first, and their state
would be replaced. The dangerous case is the first pod losing its volume while the rest of
the group is down; alone, it cannot tell "new cluster" from "old cluster, all asleep".

So with ``node.bootstrap_expect = N``, a node whose data directory is empty (no saved view)
founds only on positive evidence that the group is new: it repeats a ``BootstrapHello`` to
its contacts, and

- a running member answers ``GroupRunning``: the node joins it (a rolling restart after a
  lost volume, a scale-up);
- a node with data announces itself with its ``RestartHello`` (its targets include every
  contact): a group existed, so the node never founds; it waits and joins once that group is
  running again (after its total restart among the nodes that kept their data);
- once it has heard ``BootstrapHello`` from N - 1 other nodes (N in all, every one with an
  empty data directory) and from no node with data, the lowest id among them founds and the
  others join it.

A ``GroupRunning`` counts only from the node at one of the configured contacts (the node
driver checks it: ``runtime.drivers.leader_word``), not from addresses peers merely name: any
holder of a node certificate could otherwise point this node at a group of its own.

Like etcd's ``initial-cluster-state`` and Consul's ``bootstrap_expect``. A node that has a
saved view never comes here: it restarts (``runtime.drivers.restart``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from runtime.wire.control import BootstrapHello, GroupRunning

log = logging.getLogger("derecho.bootstrap")

RESEND = 0.25  # seconds between repeats of this node's hello
REPORT_EVERY = 10.0  # seconds between log lines saying why this node still waits


@dataclass(frozen=True, slots=True)
class BootstrapOutcome:
    """``found``: this node founds; else join through ``contacts``."""

    found: bool = False
    contacts: tuple[str, ...] = ()


class BootstrapCoordinator:
    def __init__(
        self,
        node_id: int,
        address: str,
        contacts: list[str],
        expect: int,
        send_to: Callable[[str, object], None],
        now: float,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.contacts = [c for c in contacts if c != address]
        self.expect = expect
        self.send_to = send_to
        self.empty_peers: dict[int, str] = {}  # node -> address, each with an empty data dir
        self.with_data: set[int] = set()  # nodes that announced a saved view
        self.outcome: BootstrapOutcome | None = None
        self.next_send = now
        self.next_report = now + REPORT_EVERY
        self._founder_reported: int | None = None

    # ------------------------------------------------------------------ inputs
    def on_hello(self, msg: BootstrapHello) -> None:
        if msg.node == self.node_id:
            return  # our own hello, through an address of ours among the contacts
        if msg.expect != self.expect:
            log.warning(
                "node %s bootstraps expecting %d nodes, this node %d: give every node the same node.bootstrap_expect",
                msg.node,
                msg.expect,
                self.expect,
            )
        self.empty_peers[msg.node] = msg.address
        if msg.address not in self.contacts and msg.address != self.address:
            self.contacts.append(msg.address)

    def on_has_data(self, node: int) -> None:
        if node not in self.with_data:
            log.warning(
                "node %s has the data of an existing group: this node (empty data dir) will not found a new one; "
                "it joins once that group runs again",
                node,
            )
        self.with_data.add(node)
        self.empty_peers.pop(node, None)

    def on_running(self, msg: GroupRunning) -> None:
        if self.outcome is None:
            log.info("the group is running (view %d at %s): joining it", msg.vid, msg.address)
            self.outcome = BootstrapOutcome(contacts=(msg.address, *[c for c in self.contacts if c != msg.address]))

    # ------------------------------------------------------------------ timer
    def on_tick(self, now: float) -> float:
        """Resend, decide; returns when to tick next."""
        if self.outcome is not None:
            return now
        if now >= self.next_send:
            hello = BootstrapHello(self.node_id, self.address, self.expect)
            for address in self.contacts:
                self.send_to(address, hello)
            self.next_send = now + RESEND
        if not self.with_data and len(self.empty_peers) + 1 >= self.expect:
            founder = min([self.node_id, *self.empty_peers])
            if founder == self.node_id:
                log.info(
                    "bootstrap: %d nodes up with empty data dirs (%s), none with data: node %s founds the group",
                    len(self.empty_peers) + 1,
                    ", ".join(str(n) for n in sorted([self.node_id, *self.empty_peers])),
                    self.node_id,
                )
                self.outcome = BootstrapOutcome(found=True)
                return now
            if self._founder_reported != founder:
                self._founder_reported = founder
                log.info("bootstrap: node %s founds the group; waiting for it to run", founder)
        if now >= self.next_report:
            self.next_report = now + REPORT_EVERY
            log.info("bootstrap: waiting (%s)", self.why_waiting())
        return self.next_send

    def why_waiting(self) -> str:
        if self.with_data:
            return (
                f"nodes {sorted(self.with_data)} have data of an existing group: waiting for it to run again "
                "(their total restart), then joining"
            )
        heard = sorted([self.node_id, *self.empty_peers])
        if len(heard) < self.expect:
            return (
                f"{len(heard)} of the {self.expect} expected nodes are up with empty data dirs ({heard}); "
                f"none of the contacts runs a group ({', '.join(self.contacts) or 'no contacts'})"
            )
        return f"node {min(heard)} is to found the group and has not answered yet"
