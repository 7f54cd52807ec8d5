"""A contact's answers to its clients: the replicas' answers to the calls it took for them
(``client_proxy``), on to each client in one frame per batch, merged when the replicas agree.

To a client that reads merged answers (it said so: ``Features``) a call's answer goes once
every replica gave it, as one value in an ``AnswerBatch`` when their bytes agree; answers that
differ go on as each replica gave them (``ReplyBatch``), so the client's divergence check sees
them all. Answers held for merging are bounded per connection (``ClientTable.hold``). The
first answer of a call counts its outcome and latency (``call_stats``). Runs on the node's loop.
"""

from __future__ import annotations

from typing import Callable

import msgpack

from derecho_actors.node.call_stats import CallStats
from derecho_actors.node.client_outbox import ClientOutbox
from derecho_actors.node.client_table import ClientState, ClientTable, Limit, Proxied
from derecho_actors.wire.messages import AnswerBatch, CallKind, MergedEntry, ReplyBatch, ReplyEntry
from runtime.core.view import View
from runtime.node_api import ClientConn, NodeHandle


class ClientAnswers:
    def __init__(
        self,
        node: NodeHandle,
        view: Callable[[], View | None],
        table: ClientTable,
        stats: CallStats,
        out: ClientOutbox,
    ) -> None:
        """``table``: the calls kept for clients; ``stats``: where outcomes are counted;
        ``out``: where messages to clients go."""
        self.node = node
        self.view = view
        self.table = table
        self.stats = stats
        self.out = out
        self._replicas: dict[tuple[int, ...], tuple[int, ...]] = {}  # each set of replicas seen, once

    def forward(self, batch: ReplyBatch, entries: list[ReplyEntry]) -> None:
        """Answers in ``batch`` for clients' calls: on to each client in one frame. To a client
        that reads merged answers, a call's answer goes once every replica gave it, as one
        value (an ``AnswerBatch``) when their bytes agree; answers that differ go on as each
        replica gave them, so the client's divergence check sees them all. Answers for calls no
        longer kept (a client gone) go nowhere.

        One pass per batch with the batch's own facts looked up once (its replicas and this
        replica's bit among them, the clock for latencies, whether anything is relayed): a
        delivered batch brings ~100 answers, and this ran at ~13% of a contact's loop."""
        node, replicas, vid = batch.node, batch.replicas, batch.vid
        # One tuple per set of replicas: a call's first answer keeps its batch's, and the
        # others' batches (decoded apart) then name the very same object, so most answers
        # find their replica's place with an identity test, not a tuple comparison.
        same = self._replicas.get(replicas)
        if same is None:
            if len(self._replicas) >= 64:  # views come and go: only the recent sets matter
                self._replicas.clear()
            same = self._replicas[replicas] = replicas
        replicas = same
        full = (1 << len(replicas)) - 1  # every replica's bit
        view = self.view()
        # Answers from a view since changed: replicas that left since will not answer, and the
        # departure that said so may have come before these answers did. Answers from a view
        # this node has not installed yet say nothing of the kind: a replica missing from our
        # view may be one that joins in theirs (it will answer), not one that left.
        members = view.members if view is not None and view.vid > vid else None
        table = self.table
        proxies, relays, max_held = table.proxies, table.relays, table.max_held_bytes
        bit = 1 << replicas.index(node) if node in replicas else 0  # this replica among ``replicas``
        method = CallKind.METHOD
        firsts: dict[tuple[str, bool], list[int]] = {}  # first answers' (label, ok) -> started_ns
        singles: dict[ClientConn, list[ReplyEntry]] = {}
        agreed: dict[ClientConn, list[MergedEntry]] = {}
        last_conn: ClientConn | None = None  # the client of the last merged answer, and its list
        last_merged: list[MergedEntry] = []
        owners: dict[ClientConn, ClientState] = {}  # the clients of ``agreed``
        # The (label, ok) of the last first answer, and its list in ``firsts``.
        first_label: str | None = None
        first_ok, first_started = True, []
        for entry in entries:
            call_id, ok, value, origin, version = entry
            key = (origin, call_id)
            proxy = proxies.get(key)
            if proxy is None:
                continue
            client = proxy.client
            if relays:
                relay = relays.get(key)
                if relay is not None and relay.client is client:
                    del relays[key]  # answered: delivered, no resend needed
            left = proxy.left
            if left < 0:  # the first answer: who answers, outcome and latency
                left = len(replicas)
                proxy.replicas = replicas
                if proxy.kind is method:
                    # A batch's first answers are mostly of one method and outcome: the list
                    # of the last is at hand, without a key made and looked up per answer.
                    if proxy.label is not first_label or ok is not first_ok:
                        first_label, first_ok = proxy.label, ok
                        first_started = firsts.setdefault((first_label, ok), [])
                    first_started.append(proxy.started_ns)
                if not ok:
                    self._check_refusal(client, value)
            # Member ``node``'s place among those that answer (``ClientTable.answer``, inlined).
            theirs = proxy.replicas
            if theirs is replicas:
                place = bit
            else:
                place = bit if theirs == replicas else 1 << theirs.index(node) if node in theirs else 0
            if proxy.answered & place:
                # It answered already: a call sent again (after a failover back here) is answered
                # twice, once per copy delivered. Counted twice, the call would seem answered
                # before every replica was, and the answers still to come would go nowhere.
                continue
            held = proxy.value
            if not client.merged or proxy.split:
                singles.setdefault(client.conn, []).append(entry)
            elif held is None:  # the first answer: held (``ClientTable.hold``, inlined)
                size = len(value)
                if client.held + size > max_held:  # over its budget: as they come
                    proxy.split = True
                    singles.setdefault(client.conn, []).append(entry)
                else:
                    client.held += size
                    proxy.ok, proxy.value, proxy.version, proxy.vid = ok, value, version, vid
            elif held == value and proxy.ok == ok:
                if version > proxy.version:
                    proxy.version = version
            else:  # the replicas disagree: what was held goes as each replica gave it, then this
                self._split(proxy, call_id, origin)
                singles.setdefault(client.conn, []).append(entry)
            proxy.answered |= place  # member ``node`` answered
            proxy.left = left = left - 1
            if left <= 0:
                if relays or proxy.kind is not method:
                    table.drop(key)
                else:  # ``ClientTable.drop`` of an answered method call, inlined: no relay, no poll
                    gone = proxies.pop(key, None)  # None: its client was cut off meanwhile
                    if gone is not None:
                        gone.client.calls.discard(key)
                        if gone.value is not None:
                            gone.client.held -= len(gone.value)
            if proxy.value is None:
                continue
            if left <= 0 or (members is not None and table.only_departed_missing(key, proxy, members)):
                conn = client.conn
                if conn is not last_conn:
                    last_conn, last_merged = conn, agreed.setdefault(conn, [])
                    owners[conn] = client
                if proxy.answered == (full if theirs is replicas else (1 << len(theirs)) - 1):  # all gave it
                    last_merged.append((call_id, proxy.ok, proxy.value, proxy.version, ()))
                else:
                    last_merged.append(merged_entry(proxy, call_id))
        if firsts:
            now, stats = self.node.wall_ns(), self.stats
            for (label, ok), started in firsts.items():
                stats.done_all(label, "ok" if ok else "error", [(now - ns) / 1e6 for ns in started])
        for conn, mine in singles.items():
            self.out.send(conn, ReplyBatch(node, vid, replicas, tuple(mine)))
        out = self.out
        for conn, merged in agreed.items():
            if owners[conn].calls:  # more answers to come: what this turn makes goes as one frame
                out.send(conn, AnswerBatch(vid, replicas, tuple(merged)))
            else:  # its last call here is answered: nothing to batch with, so no turn to wait
                out.offer(conn, AnswerBatch(vid, replicas, tuple(merged)))

    def _split(self, proxy: Proxied, call_id: int, origin: int) -> None:
        """A call's replicas gave different answers: the one held goes on as each replica that
        gave it sent it, and the call's later answers go on as they come."""
        assert proxy.value is not None
        entry = (call_id, proxy.ok, proxy.value, origin, proxy.version)
        for n in proxy.agreed_by():
            self.out.send(proxy.client.conn, ReplyBatch(n, proxy.vid, proxy.replicas, (entry,)))
        self.table.unhold(proxy)
        proxy.split = True

    def _check_refusal(self, client: ClientState, value: bytes) -> None:
        """The replicas refused a client's call for its identity's session bound: name the
        client in a WARNING here, where its identity is known (replicas know only a digest)."""
        try:
            name = msgpack.unpackb(value, raw=False)[0]
        except Exception:
            return
        if name == "SessionLimit":
            self.table.warn(client, Limit.SESSIONS, "the replicas refused a new session of it (SessionLimit)")


def merged_entry(proxy: Proxied, call_id: int) -> MergedEntry:
    """The answer every replica that answered ``proxy``'s call gave alike."""
    assert proxy.value is not None
    by = proxy.agreed_by()
    return (call_id, proxy.ok, proxy.value, proxy.version, () if by is proxy.replicas else by)
