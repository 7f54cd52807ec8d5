"""Where a client session's next ordered call to a shard must go while one it sent there
through a member is unanswered: the one rule a contact applies to every relayed call.

A contact outside a shard relays a session's ordered calls to one member of it
(``members[origin % n]``); a view that adds a member to the shard, removes another, or
promotes the contact into it changes that choice. Replicas take a session's call ordered after
a later one as applied already, so a session's calls sent two ways could lose the earlier one
while its client is told it was applied. So while the session's latest relayed call to the
shard is unanswered, its next calls follow that call's member (if it still holds the shard):
small calls (``ClientProxy.take_call``/``take_calls``) and streamed ones
(``client_stream_calls``, whose relay begins at the stream's start and whose member
multicasts the call at its last block) alike, and per session, not per connection: a client
that reconnects sends its calls again on a new connection while the old one's relays may
still run. Runs on the node's loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from runtime.core.layout import ShardId

CallKey = tuple[int, int]
"""``(client origin, call id)``: a client's call, as its replies name it."""


class RelayPins:
    """Per session (origin) and shard, its two latest ordered calls relayed to a member, as
    ``(the one before, the latest)``: one look-up a call, nothing scanned.

    The latest relayed call is enough to look at: the calls before it went to the same member,
    in order (a client writes no call after a stream before that stream's last block), so they
    are delivered once it is answered. The one before it answers for a streamed call asking
    where its own last block goes (``skip``): its own relay is then the latest."""

    def __init__(self, target_of: Callable[[CallKey], int | None], max_sessions: int) -> None:
        """``target_of(key)``: the member relayed call ``key`` went to while it is unanswered
        (None: answered, refused or dropped); ``max_sessions``: sessions kept at most (the
        oldest go first: sessions that went away with a call unanswered)."""
        self.target_of = target_of
        self.max_sessions = max_sessions
        self.sessions: dict[int, dict[ShardId, tuple[CallKey | None, CallKey]]] = {}

    def pin(self, key: CallKey, shard: ShardId) -> None:
        """Ordered call ``key`` of session ``key[0]`` was relayed to a member of ``shard``, a
        small call or a streamed one (its relay begun): the session's next calls to the shard
        follow it while it is unanswered."""
        shards = self.sessions.get(key[0])
        if shards is None:
            shards = self.sessions[key[0]] = {}
            if len(self.sessions) > self.max_sessions:
                self.sessions.pop(next(iter(self.sessions)))
        pin = shards.get(shard)
        if pin is None:
            shards[shard] = (None, key)
        elif pin[1] != key:  # (the same call again: relayed anew from another connection)
            shards[shard] = (pin[1], key)

    def pinned(self, origin: int, shard: ShardId, members: Sequence[int], skip: int = 0) -> int | None:
        """The member session ``origin``'s ordered calls to ``shard`` must go to: that of its
        latest call relayed there (but call ``skip``) while it is unanswered and still one of
        ``members``; None: no such call, any member (or this node) will do."""
        shards = self.sessions.get(origin)
        if shards is None:
            return None
        pin = shards.get(shard)
        if pin is None:
            return None
        before, latest = pin
        key = latest if latest[1] != skip else before
        if key is None:
            return None
        target = self.target_of(key)
        if target is None:  # answered (or dropped): nothing to follow
            if key is latest:
                del shards[shard]
                if not shards:
                    del self.sessions[origin]
            else:
                shards[shard] = (None, latest)
            return None
        return target if target in members else None

    def forget(self, origin: int) -> None:
        """A connection of session ``origin`` closed: drop its pins whose calls are all
        answered (another connection of the session may still follow the others)."""
        shards = self.sessions.get(origin)
        if shards is None:
            return
        target_of = self.target_of
        for shard, (before, latest) in list(shards.items()):
            if target_of(latest) is None and (before is None or target_of(before) is None):
                del shards[shard]
        if not shards:
            del self.sessions[origin]
