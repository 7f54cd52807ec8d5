"""Whether a contact takes a client's call, and the label its statistics count it under.

A call this node cannot take is refused at once, with the reason, before it costs an ordered
slot: too large to multicast, a shard that cannot run, a method its type does not define (or
not with the kind the call says), a replica the client named that holds no replica of the
shard, a limit of the client's reached. Statistics count the methods the types define and
every other name under one label (``call_stats.UNKNOWN``), so what clients send cannot grow
them. Also which calls take the short way (``runs_here``: an ordered method of a shard this
node holds). Runs on the node's loop; sends nothing (the client proxy does).
"""

from __future__ import annotations

from typing import Final, Mapping, Sequence

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.kinds import ORDERED
from derecho_actors.node.call_stats import UNKNOWN
from derecho_actors.node.client_table import ClientState, ClientTable, Limit
from derecho_actors.node.outbox import Outbox
from derecho_actors.node.unavailable import unavailable
from derecho_actors.wire.messages import Call, CallKind
from runtime.core.layout import ShardId
from runtime.core.view import View
from runtime.errors import ClientLimit, DerechoError, ReplicaLost, ShardUnavailable, UnknownMethod

# Enum members as globals: read off their class each costs ~10x a global's in Python 3.11.
_METHOD: Final = CallKind.METHOD
_WATCH_POLL: Final = CallKind.WATCH_POLL


class ClientChecks:
    """The checks of one node's client proxy: its types, its multicast limits, its clients."""

    def __init__(self, node_id: int, specs: Mapping[str, TypeSpec], outbox: Outbox, table: ClientTable) -> None:
        """``specs``: the group's types by name; ``outbox``: the multicast's size limits;
        ``table``: the clients' limits (and where a client reaching one is warned about)."""
        self.node_id = node_id
        self.specs = specs
        self.outbox = outbox
        self.table = table

    def check(self, client: ClientState, msg: Call, view: View) -> tuple[str, Sequence[int], DerechoError | None]:
        """A client's call's statistics label, its shard's members, and why it may not be taken
        (None: it may): too large, shard down, unknown method, replica not of the shard, limits."""
        label = self.label(msg)
        members = view.layout.members_of(msg.shard)
        refusal: DerechoError | None = None
        if (size := self.outbox.too_large(msg.method, msg.args)) is not None:
            refusal = self.outbox.refusal(f"call {msg.call_id} (not run)", size, len(msg.args))
        elif not members:
            refusal = ShardUnavailable(f"call {msg.call_id} was not run: {unavailable(view, msg.shard)}")
        elif label == UNKNOWN:
            refusal = self._unknown_method(client, msg)
        elif not msg.ordered and msg.target and msg.target not in members:
            refusal = ReplicaLost(
                f"node {msg.target} holds no replica of {msg.shard} in view {view.vid} (its replicas: {list(members)}); "
                "the call was not run",
                applied=False,
            )
        else:
            limit = self.table.admit(client, msg.kind is _WATCH_POLL)
            if limit is not None:
                self.table.warn(client, limit[0], limit[1])
                refusal = ClientLimit(f"refused by node {self.node_id}: {limit[1]}")
        return label, members, refusal

    def runs_here(self, view: View, shard: ShardId, method: str) -> tuple[str, int] | None:
        """For an ordered call of ``method`` to ``shard``: its statistics label and the most
        bytes of arguments it may have, if such a call is submitted here at once when within
        the client's limits (its type defines the method as ordered and this node holds a
        replica of the shard); None if it goes the long way (``check``: refused or relayed)."""
        spec = self.specs.get(shard.type_name)
        if spec is None or spec.methods.get(method) != ORDERED:
            return None
        if self.node_id not in view.layout.members_of(shard):
            return None
        return method, self.outbox.max_args(method)

    def overflow(self, client: ClientState, count: int) -> ClientLimit:
        """The refusal of ``count`` calls of one frame beyond what a client may have unanswered
        (the client warned about once)."""
        most = self.table.max_in_flight
        detail = (
            f"it sent {most + count} calls in one frame, more than it may have "
            f"unanswered ({Limit.IN_FLIGHT.value} = {most}); the calls beyond were not run"
        )
        self.table.warn(client, Limit.IN_FLIGHT, detail)
        return ClientLimit(
            f"refused by node {self.node_id}: more calls in one frame than a client may have unanswered "
            f"({Limit.IN_FLIGHT.value} = {most}); not run: wait for answers, then retry"
        )

    def label(self, msg: Call) -> str:
        """The call as statistics count it: its method's name if its type defines it with this
        kind, the request's label for the group's own, else :data:`UNKNOWN`, so what clients
        send cannot grow the statistics."""
        spec = self.specs.get(msg.shard.type_name)
        if spec is None:
            return UNKNOWN
        if msg.kind is not _METHOD:
            return msg.kind.label
        kind = spec.methods.get(msg.method)
        if kind is None:
            return UNKNOWN
        return msg.method if (kind == ORDERED) == msg.ordered else UNKNOWN

    def _unknown_method(self, client: ClientState, msg: Call) -> DerechoError:
        """A call to a method its type does not define (a client built against another
        version of the type, or one probing): refused here, before it costs an ordered slot."""
        spec = self.specs.get(msg.shard.type_name)
        shown = msg.method if len(msg.method) <= 64 else msg.method[:64] + "..."
        kind = spec.methods.get(msg.method) if spec is not None else None
        if spec is None:
            why = f"this node hosts no type {msg.shard.type_name!r}"
        elif kind is None:
            why = f"{spec.name} has no @ordered or @p2p method {shown!r}"
        else:
            why = f"{spec.name}.{shown} is {kind}, but it was sent as {'ordered' if msg.ordered else 'p2p'}"
        self.table.warn(client, Limit.UNKNOWN_METHOD, f"it called methods its types do not define (first: {why})")
        return UnknownMethod(f"not run: {why}")
