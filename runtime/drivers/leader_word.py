"""Whose word a node takes while it is not a member: the leader's frames only from the leader.

A node that joins, restarts or bootstraps acts on four frames that only the group's leader (or
the member it asked) has any business sending: ``ViewAnnouncement`` (the view that admits it),
``JoinReply`` (a redirect, or a final refusal that stops it), ``RestartDecision`` (the view to
restart in, and the versions to give up) and ``GroupRunning`` (join there instead). Every
holder of a node certificate of the cluster can open a connection and send them, including a
retired node or one outside the view: taken from anyone, one such certificate could stop a
joiner, point a restarting member at a group of its own, or make it drop versions.

So these frames are taken only from

- a node the receiver asked: the node whose certificate our own connection to an address we
  asked proved. The addresses asked are the configured contacts, the addresses of the last
  view the node knows, and addresses named by frames already taken under this rule (a
  redirect to the leader, a running group's address). Addresses that anyone merely claims (a
  peer's hello) are not among them, even when the node sends its hellos there too;
- a member of the last view the node knows (its saved view, on a restart; and, transitively,
  the later view a member of it reports: a restart leader may have joined after this node's
  last view).

Anything else is refused with a rate-limited WARNING naming the sender. Without TLS nobody's
id is proven (``security.insecure``), so the rule is not applied: there, anyone may speak for
anyone anyway.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from runtime.core.view import View

log = logging.getLogger("derecho.node")

MAX_ASKED = 1024  # addresses remembered as asked: config, views and trusted redirects stay far below


class LeaderWord:
    """The nodes whose leader frames this (not yet member) node takes. ``node_at(address)``
    is the node id our connection to ``address`` proved, if any (the transport's
    ``contact_node``)."""

    def __init__(self, node_at: Callable[[str], int | None], enforce: bool = True) -> None:
        self.node_at = node_at
        self.enforce = enforce
        self._asked: dict[str, int | None] = {}  # address -> node id proven there (None: not yet)
        self._members: set[int] = set()  # of the last view known
        self.last_vid = -1  # of the last view known

    def ask(self, addresses: Iterable[str]) -> None:
        """Addresses this node asks (configured contacts, or named by a trusted frame)."""
        for address in addresses:
            if address not in self._asked and len(self._asked) < MAX_ASKED:
                self._asked[address] = None

    def know_view(self, view: View) -> None:
        """A view this node holds as the last it knows (its saved view, or a later one a
        trusted member reported): its members speak for the group, its addresses are asked."""
        if view.vid < self.last_vid:
            return
        self.last_vid = view.vid
        self._members |= set(view.members)
        self.ask(view.addresses)

    def asked_nodes(self) -> set[int]:
        """Ids proven at the addresses asked (each remembered once seen: a contact's
        connection may close before its answer arrives on another)."""
        out = set()
        for address, known in self._asked.items():
            node = known if known is not None else self.node_at(address)
            if node is not None:
                self._asked[address] = node
                out.add(node)
        return out

    def allows(self, sender: int) -> bool:
        """Whether a leader frame from ``sender`` is to be taken."""
        if not self.enforce or sender in self._members:
            return True
        return sender in self.asked_nodes()

    def describe(self) -> str:
        """Whose word is taken, for the refusal's log line."""
        asked = sorted(self.asked_nodes())
        members = sorted(self._members)
        return (
            f"taken only from the nodes it asked ({', '.join(map(str, asked)) or 'none reached'}) or members of the "
            f"last view it knows ({', '.join(map(str, members)) or 'none'})"
        )
