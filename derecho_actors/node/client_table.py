"""What a contact node keeps for the clients it serves, bounded per connection and per identity.

A client's call comes to its contact, which runs or relays it and forwards the replicas'
answers (``client_proxy``). Until the last answer has gone out the contact keeps a *proxy* entry
for the call, and until the first answer a *relay* entry for a call it sent to another member
(to send it again if that member fails). Everything here is keyed by what the contact itself
decided (the connection, the identity its certificate proved), never by what a client says,
and everything is bounded:

- calls in flight per connection: ``limits.client_max_in_flight``; a call beyond is refused at
  once with ``ClientLimit`` (not dropped: the client is told);
- watch polls in flight per identity (all its connections together):
  ``limits.max_watch_polls_per_client``; a poll beyond is refused with ``ClientLimit``;
- proxy entries in all: ``MAX_PROXIED`` (the oldest, whose answers never all came, go first);
- nothing for a closed connection: :meth:`ClientTable.forget` drops its entries, so the
  connection (and its TLS buffers) can be freed.

An identity that reaches a limit is named in one WARNING (then at most one a minute per
identity, whichever limits it reaches), so an operator learns who it is without the log
growing with the attack.

Runs on the node's loop only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Final

from derecho_actors.replica.sessions import owner_of
from derecho_actors.wire.messages import Call, CallKind
from runtime.core.layout import ShardId
from runtime.node_api import ClientConn

log = logging.getLogger("derecho.clients")

MAX_PROXIED = 200_000  # client calls a node forwards replies for (or relays), at most
WARN_EVERY_NS = 60 * 10**9  # one WARNING per identity and limit per minute, at most
MAX_WARNED = 10_000  # (identity, limit) pairs remembered for that; forgotten all at once beyond

_WATCH_POLL: Final = CallKind.WATCH_POLL
"""As a module constant: an enum member read off its class costs ~10x a global's in Python
3.11 (a descriptor call), and it is tested once per client call taken and dropped."""

CallKey = tuple[int, int]
"""``(client origin, call id)``: a client's call, as its replies name it."""


class Limit(str, Enum):
    """The per-client limits, as WARNINGs and refusals name them."""

    IN_FLIGHT = "limits.client_max_in_flight"
    WATCH_POLLS = "limits.max_watch_polls_per_client"
    SESSIONS = "max_sessions_per_caller"
    UNKNOWN_METHOD = "unknown methods"
    WAITING = "calls waiting (2 x limits.client_max_in_flight)"


@dataclass(slots=True, eq=False)
class ClientState:
    """One client connection: who it is and what is kept for it."""

    conn: ClientConn
    who: str  # for people: "client 'alice' (127.0.0.1:5000)" or the address alone
    identity: str  # whose budget it uses: the certificate's name ("" without TLS: the connection)
    owner: int  # stamped on its ordered calls for the replicas' per-identity session bound
    calls: set[CallKey] = field(default_factory=set)  # proxied calls, answers still to come
    inbox: deque[Call] = field(default_factory=deque)  # calls received, waiting for a loop turn
    waiting: bool = False  # in the round of clients with calls waiting
    turn_key: str = ""  # whose turns its waiting calls take (``ClientTurns``): set when first waiting
    closed: bool = False  # forgotten: its waiting calls are dropped
    offered: bool = False  # this node offered it merged answers (``Features``)
    merged: bool = False  # it reads merged answers: the replicas' identical answers go as one
    held: int = 0  # bytes of answers held until every replica gave them (``ClientTable.hold``)
    relayed: dict[ShardId, CallKey] = field(default_factory=dict)  # per shard, its latest ordered call relayed


@dataclass(frozen=True, slots=True)
class ClientTableStatus:
    """What a contact keeps for its clients now (``status`` ``client_table``): it should fall
    back when they go, so a rising figure with no clients left is a leak."""

    connections: int  # client connections open
    calls: int  # calls whose answers it forwards
    relays: int  # calls it sent to another member, kept until their first answer
    watch_polls: int  # watch polls in flight, all identities

    def to_wire(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "calls": self.calls,
            "relays": self.relays,
            "watch_polls": self.watch_polls,
        }


class Proxied:
    """A client's call whose answers this node forwards.

    A plain class with slots and a positional ``__init__``, not a dataclass: one is made per
    client call on the contact's loop, and a dataclass of these fields built with a keyword
    costs about twice as much (measured, Python 3.11). Compared by identity."""

    __slots__ = (
        "client",
        "label",
        "started_ns",
        "kind",
        "left",
        "replicas",
        "answered",
        "local",
        "ok",
        "value",
        "version",
        "vid",
        "split",
    )

    def __init__(self, client: ClientState, label: str, started_ns: int, kind: CallKind = CallKind.METHOD) -> None:
        self.client = client
        self.label = label  # the method as statistics count it
        self.started_ns = started_ns
        self.kind = kind  # a watch poll counts against the identity's polls
        self.left = -1  # answers still to forward (-1: none came yet)
        self.replicas: tuple[int, ...] = ()  # who answers (from the first answer)
        self.answered = 0  # bit i: replicas[i] has answered
        self.local: ShardId | None = None  # a watch poll parked at this node's replica of this shard
        # For a client that reads merged answers: the answer held until every replica gave it.
        self.ok = True
        self.value: bytes | None = None  # None: none held (no answer yet, or the answers differ)
        self.version = -1
        self.vid = 0  # the view that delivered the call (of its first answer)
        self.split = False  # the replicas' answers differ: each goes on as it came

    def agreed_by(self) -> tuple[int, ...]:
        """The replicas that answered so far, in ``replicas`` order."""
        bits, replicas = self.answered, self.replicas
        if bits == (1 << len(replicas)) - 1:  # the common case: all of them
            return replicas
        return tuple(r for i, r in enumerate(replicas) if (bits >> i) & 1)

    @property
    def poll(self) -> bool:
        return self.kind is _WATCH_POLL


@dataclass(slots=True, eq=False)
class Relay:
    """A client's call relayed to member ``target``, until its first answer."""

    target: int
    call: Call
    client: ClientState


def describe(conn: ClientConn) -> tuple[str, str]:
    """``(who, identity)`` of a connection: for logs, and the key of its per-identity budget
    (the certificate's name; without TLS there is none, so each connection is its own)."""
    address = str(getattr(conn, "address", "?"))
    ident = getattr(conn, "identity", None)
    if ident is None:
        return f"client at {address}", ""
    return f"{ident.describe()} ({address})", str(ident.name)


class ClientTable:
    def __init__(
        self,
        max_in_flight: int,
        max_polls: int,
        wall_ns: Callable[[], int],
        max_proxied: int = MAX_PROXIED,
        max_held_bytes: int = 8 << 20,
    ) -> None:
        """``wall_ns()``: the node's clock (for rate-limiting warnings only);
        ``max_held_bytes``: answers a connection may have held for merging at once (beyond,
        its calls' answers go on as each replica gives them)."""
        self.max_in_flight = max_in_flight
        self.max_polls = max_polls
        self.max_proxied = max_proxied
        self.max_held_bytes = max_held_bytes
        self.wall_ns = wall_ns
        self.clients: dict[ClientConn, ClientState] = {}
        # A plain dict, oldest first (insertion order; ``add`` evicts from the front): an
        # OrderedDict's insert and pop cost ~80 ns more per call, on the contact's loop.
        self.proxies: dict[CallKey, Proxied] = {}
        self.relays: dict[CallKey, Relay] = {}
        self.polls: dict[str, int] = {}  # identity -> watch polls in flight
        self._warned: dict[str, int] = {}  # identity (or address) -> when it was last named

    def state(self, conn: ClientConn) -> ClientState:
        """The connection's entry, made at its first call. Now and then entries of connections
        that closed without the transport saying so are dropped too, so none can pile up."""
        state = self.clients.get(conn)
        if state is None:
            if len(self.clients) % 256 == 255:
                for gone in [c for c in self.clients if getattr(c, "closed", False)]:
                    self.forget(gone)
            who, identity = describe(conn)
            state = self.clients[conn] = ClientState(conn, who, identity, owner_of(identity) if identity else 0)
        return state

    def _poll_key(self, state: ClientState) -> str:
        return state.identity or f"connection {id(state.conn)}"

    def admit(self, state: ClientState, poll: bool) -> tuple[Limit, str] | None:
        """Why a new call of this client may not be taken (None: it may), for its refusal."""
        if len(state.calls) >= self.max_in_flight:
            return Limit.IN_FLIGHT, (
                f"this connection has {self.max_in_flight} calls unanswered, the node's limit "
                f"({Limit.IN_FLIGHT.value}); the call was not run: wait for answers, then retry"
            )
        if poll and self.polls.get(self._poll_key(state), 0) >= self.max_polls:
            return Limit.WATCH_POLLS, (
                f"this client has {self.max_polls} watch polls waiting at this node, the limit "
                f"({Limit.WATCH_POLLS.value}); the poll was not taken: close watches you no longer read"
            )
        return None

    def add(self, state: ClientState, key: CallKey, proxy: Proxied) -> None:
        """Keep ``proxy`` for call ``key`` until its answers have gone out."""
        if key in self.proxies:  # the same session's call again (a retry on a new connection)
            self.drop(key)
        self.proxies[key] = proxy
        state.calls.add(key)
        if proxy.kind is _WATCH_POLL:
            k = self._poll_key(state)
            self.polls[k] = self.polls.get(k, 0) + 1
        while len(self.proxies) > self.max_proxied:  # calls whose replies never all came (replicas lost)
            self.drop(next(iter(self.proxies)))

    def relay(self, key: CallKey, relay: Relay) -> None:
        self.relays[key] = relay
        if relay.call.ordered:
            relay.client.relayed[relay.call.shard] = key
        if len(self.relays) > self.max_proxied:
            self.relays.pop(next(iter(self.relays)))

    def pinned(self, state: ClientState, shard: ShardId, members: Sequence[int]) -> int | None:
        """The member the client's ordered calls to ``shard`` must go to while its latest one
        relayed there is unanswered (if that member still holds the shard): its next calls
        follow, whatever member the view would pick now (a view that added one to the shard,
        this node promoted into it). Replicas take a session's call ordered after a later one
        as applied already: sent two ways, an earlier call could be lost while its client is
        told it was applied. The latest relayed call is enough to look at: the calls before it
        went to the same member, in order, so they are delivered once it is answered."""
        key = state.relayed.get(shard)
        if key is None:
            return None
        relay = self.relays.get(key)
        if relay is None or relay.client is not state:  # answered (or dropped): nothing to follow
            del state.relayed[shard]
            return None
        return relay.target if relay.target in members else None

    def drop(self, key: CallKey) -> Proxied | None:
        """Forget call ``key`` (answered, refused or abandoned)."""
        proxy = self.proxies.pop(key, None)
        relay = self.relays.get(key) if self.relays else None  # mostly none: calls run here
        if relay is not None and (proxy is None or relay.client is proxy.client):
            del self.relays[key]
        if proxy is None:
            return None
        state = proxy.client
        state.calls.discard(key)
        if proxy.value is not None:  # its held answer no longer counts (it goes out now, or never)
            state.held -= len(proxy.value)
        if proxy.kind is _WATCH_POLL:
            k = self._poll_key(state)
            left = self.polls.get(k, 0) - 1
            if left > 0:
                self.polls[k] = left
            else:
                self.polls.pop(k, None)
        return proxy

    def hold(self, proxy: Proxied, ok: bool, value: bytes, version: int, vid: int) -> bool:
        """Hold the first answer to ``proxy``'s call until every replica gave it, if its
        client's held answers stay within ``max_held_bytes`` (False: they would not)."""
        state = proxy.client
        if state.held + len(value) > self.max_held_bytes:
            return False
        state.held += len(value)
        proxy.ok, proxy.value, proxy.version, proxy.vid = ok, value, version, vid
        return True

    def unhold(self, proxy: Proxied) -> None:
        """The held answer goes on as it came (the replicas disagree)."""
        if proxy.value is not None:
            proxy.client.held -= len(proxy.value)
            proxy.value = None

    def answer(self, key: CallKey, proxy: Proxied, node: int, replicas: tuple[int, ...]) -> bool:
        """Member ``node`` answered call ``key``; True once every replica has (it is dropped)."""
        if proxy.left < 0:
            proxy.left, proxy.replicas = len(replicas), replicas
        if node in proxy.replicas:
            proxy.answered |= 1 << proxy.replicas.index(node)
        proxy.left -= 1
        if proxy.left <= 0:
            self.drop(key)
            return True
        return False

    def only_departed_missing(self, key: CallKey, proxy: Proxied, members: tuple[int, ...]) -> bool:
        """True (and the call is dropped) if every replica still to answer call ``key`` is
        no member of the view now: it left, and its answer will not come."""
        bits = proxy.answered
        missing = [r for i, r in enumerate(proxy.replicas) if not (bits >> i) & 1]
        if not missing or any(r in members for r in missing):
            return False
        self.drop(key)
        return True

    def depart(self, gone: set[int]) -> list[tuple[CallKey, Proxied]]:
        """Members left the group: answers they owe will not come, so calls waiting only for
        theirs are done (else they would hold their client's budget for good). Returns those
        calls, whose held answers (merged answers) must now go out."""
        done = []
        for key, proxy in list(self.proxies.items()):
            missing = sum(1 for i, r in enumerate(proxy.replicas) if r in gone and not (proxy.answered >> i) & 1)
            if missing:
                proxy.left -= missing
                if proxy.left <= 0:
                    self.drop(key)
                    done.append((key, proxy))
        return done

    def forget(self, conn: ClientConn) -> list[tuple[ShardId, CallKey]]:
        """The connection closed: drop all kept for it. Returns its watch polls parked at this
        node's replicas, to be answered (and so freed) there now rather than at their hold's end."""
        state = self.clients.pop(conn, None)
        if state is None:
            return []
        state.closed = True
        state.inbox.clear()
        parked: list[tuple[ShardId, CallKey]] = []
        for key in list(state.calls):
            proxy = self.proxies.get(key)
            if proxy is None or proxy.client is not state:
                state.calls.discard(key)
                continue
            self.drop(key)
            if proxy.local is not None:
                parked.append((proxy.local, key))
        return parked

    def status(self) -> ClientTableStatus:
        """What is kept for clients now (for ``status``: it should fall back when they go)."""
        return ClientTableStatus(len(self.clients), len(self.proxies), len(self.relays), sum(self.polls.values()))

    def warn(self, state: ClientState, limit: Limit, detail: str, cut_off: bool = False) -> None:
        """One WARNING naming the client that reached ``limit`` (at most one a minute per
        identity: an attack reaching several limits at once is one line). Cutting a
        connection off is always said: it happens once per connection."""
        key = state.identity or state.who
        now = self.wall_ns()
        last = self._warned.get(key)
        if last is not None and now - last < WARN_EVERY_NS and not cut_off:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned[key] = now
        if cut_off:
            log.warning("%s reached %s: %s", state.who, limit.value, detail)
        else:
            log.warning(
                "%s reached %s: %s (further refusals of it are not logged for a minute)", state.who, limit.value, detail
            )
