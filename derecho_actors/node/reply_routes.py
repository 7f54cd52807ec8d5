"""Where answers go: from the replicas here to their callers, and from the wire to this node's
calls and its clients.

A replica answers the calls of one delivered batch in one hand-off to the node's loop, and
hand-offs that come while the loop has not run yet join the one already pending (P2P calls
are answered one by one: a wake-up of the loop per answer would cost more than the answer).
They leave as one ``ReplyBatch`` per caller and view (in Python the cost is per object and
per frame, not per byte), at once when small and the caller's link is not backed up, else
through an ``AnswerQueue``: in pieces, a bounded amount per loop turn, and only while the link
holds less than ``answer_queue.LINK_READY_BYTES``, so a burst of large answers (a client's 2,000 P2P calls
for 200 KB relayed here) neither holds the loop nor queues ahead of the heartbeats and SST rows
on that link (it did: 400 MB in one frame, and the peers removed this node). Answers for this node come back through :meth:`ReplyRoutes.take_batch`:
those for its own calls (no session, or this node's) feed their results, the others are the
answers to the clients it serves, forwarded to them. Runs on the node's loop, except
:meth:`ReplyRoutes.send` (a replica's thread).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from derecho_actors.node.answer_queue import AnswerQueue, member_queue
from derecho_actors.node.client_proxy import ClientProxy
from derecho_actors.node.member_caller import MemberCaller
from derecho_actors.node.result_limits import ResultCheck, ResultLimits
from derecho_actors.wire.messages import Reply, ReplyBatch, ReplyEntry
from runtime.node_api import NodeHandle


class ReplyRoutes:
    def __init__(
        self,
        node: NodeHandle,
        member: MemberCaller,
        clients: ClientProxy,
        to_members: AnswerQueue[int] | None = None,
        result_limits: ResultLimits | None = None,
    ) -> None:
        """``to_members``: messages to members, paced by their links (``member_queue``);
        ``result_limits``: how large a result's answer may be (``ResultLimits.of(config)``)."""
        self.node = node
        self.node_id = node.node_id
        self.member = member
        self.clients = clients
        self._lock = threading.Lock()  # replicas' threads hand answers over under it
        self._pending: list[tuple[int, Reply | ReplyBatch]] = []
        self._scheduled = False
        self.to_members = to_members if to_members is not None else member_queue(node)
        self.check = ResultCheck(result_limits)

    def send(self, replies: Sequence[tuple[int, Reply | ReplyBatch]]) -> None:
        """From a replica's thread: at most one hand-off pending to the node's loop; answers
        sent meanwhile join it, in the order they came. A result too large to be carried
        becomes its ``ResultTooLarge`` here, at every replica alike, before anything is sent."""
        replies = self.check.replies(replies)
        with self._lock:
            self._pending += replies
            if self._scheduled:
                return
            self._scheduled = True
        if not self.node.call_soon(self._take_pending):
            with self._lock:  # the node stopped: nothing will route them
                self._pending, self._scheduled = [], False

    def hold(self) -> None:
        """On the loop, before it waits for a replica (``ReplicaHost.deliver``): answers
        handed over meanwhile are kept for :meth:`take_held`, no loop wake-up scheduled."""
        with self._lock:
            self._scheduled = True

    def take_held(self) -> None:
        """On the loop, after the wait: route what was handed over; later answers are
        scheduled as usual (a hand-off scheduled before the hold finds nothing left)."""
        self._take_pending()

    def _take_pending(self) -> None:
        with self._lock:
            replies, self._pending = self._pending, []
            self._scheduled = False
        self.route(replies)

    def route(self, replies: Sequence[tuple[int, Reply | ReplyBatch]]) -> None:
        """Answers made here (one delivered batch's, or this node's own): one ReplyBatch per
        caller and view, its answers in the order they came; this node's go straight to
        :meth:`take_batch`. A replica's ordered answers come as a batch per caller already: one
        that is the whole of its group goes as it is (no answer handled one by one here)."""
        groups: dict[tuple[int, int, int, tuple[int, ...]], ReplyBatch | list[ReplyEntry]] = {}
        for caller, r in replies:
            key = (caller, r.node, r.vid, r.replicas)
            group = groups.get(key)
            if type(r) is ReplyBatch:
                if group is None:
                    groups[key] = r
                elif type(group) is list:
                    group += r.entries
                else:
                    groups[key] = [*group.entries, *r.entries]  # type: ignore[union-attr]
            else:
                entry = (r.call_id, r.ok, r.value, r.origin, r.version)  # type: ignore[union-attr]
                if group is None:
                    groups[key] = [entry]
                elif type(group) is list:
                    group.append(entry)
                else:
                    groups[key] = [*group.entries, entry]  # type: ignore[union-attr]
        for (caller, node, vid, replicas), group in groups.items():
            batch = ReplyBatch(node, vid, replicas, tuple(group)) if type(group) is list else group
            if caller == self.node_id:
                self.take_batch(batch)  # type: ignore[arg-type]
            else:
                self.to_members.offer(caller, batch)  # type: ignore[arg-type]

    def take_reply(self, reply: Reply) -> None:
        """One answer alone (a member's refusal of a call it could not take)."""
        entry = (reply.call_id, reply.ok, reply.value, reply.origin, reply.version)
        self.take_batch(ReplyBatch(reply.node, reply.vid, reply.replicas, (entry,)))

    def take_batch(self, batch: ReplyBatch) -> None:
        """Answers for this node: those for its own calls to their results, the others on to
        the clients they belong to. Split by two comprehensions, the second only when some
        are this node's own: a contact's batches are mostly its clients' alone."""
        mine = self.member.origin
        entries = batch.entries
        theirs = [e for e in entries if e[3] and e[3] != mine]
        if theirs:
            self.clients.forward(batch, self.check.for_clients(theirs))
        if len(theirs) < len(entries):
            own = [e for e in entries if not e[3] or e[3] == mine]
            self.member.take(batch.node, batch.replicas, own, batch.vid)
