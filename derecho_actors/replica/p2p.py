"""P2P calls and reads at one replica: a call run here alone, a read of the past, and stable
reads, which wait until every member has delivered what this replica applied.

Apart from the ordered path because none of this is replicated: it answers one caller from
this replica's state and changes nothing (``check_p2p`` makes sure of it). Runs on the
replica's actor thread (or inline in the simulator), between ordered batches.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from derecho_actors.model.decorators import TypeSpec
from derecho_actors.model.kinds import P2P
from derecho_actors.model.reads import LINEARIZABLE, STABLE, ReadOptions
from derecho_actors.replica.calls import CallRunner
from derecho_actors.replica.env import SendReplies
from derecho_actors.replica.messages import P2PRequest, StableMark
from derecho_actors.replica.reads import StableGate
from derecho_actors.replica.sessions import SessionTable
from derecho_actors.replica.store import PersistentStore
from derecho_actors.wire.digest import state_digest
from derecho_actors.wire.messages import Reply, ReplyTo
from runtime.errors import CallTimeout, NotPersistent, P2PMutationError

log = logging.getLogger("derecho.replica")


class Served(Protocol):
    """What P2P calls read of the replica; its object, store and table change when a state
    transfer arrives, so they are looked up for every call."""

    @property
    def obj(self) -> Any: ...

    @property
    def store(self) -> PersistentStore | None: ...

    @property
    def sessions(self) -> SessionTable: ...


class P2PServer:
    """P2P calls and reads of one replica. Stable reads wait in ``gate``; the replica holds
    its ordered messages behind them (``gate.held``) and runs those once none waits."""

    def __init__(
        self,
        replica: Served,
        spec: TypeSpec,
        node_id: int,
        send_replies: SendReplies,
        runner: CallRunner,
        gate: StableGate,
    ) -> None:
        self.replica = replica
        self.spec = spec
        self.node_id = node_id
        self.send_replies = send_replies
        self.runner = runner
        self.gate = gate

    def run(
        self,
        caller: int,
        call_id: int,
        method: str,
        args: bytes,
        vid: int,
        origin: int,
        past: ReadOptions | None = None,
    ) -> tuple[int, Reply]:
        """Run a P2P call here. With ``check_p2p`` the state is digested before and after: a
        method that changed it is reported to its caller and logged, since this replica now
        differs from the others."""
        spec, me, replica = self.spec, self.node_id, self.replica
        if not spec.check_p2p:
            ok, value = self.runner.run(replica.obj, method, args, P2P, past)
            return caller, Reply(call_id, me, vid, (me,), ok, value, origin)
        before = state_digest(replica, spec)
        ok, value = self.runner.run(replica.obj, method, args, P2P, past)
        if state_digest(replica, spec) == before:
            return caller, Reply(call_id, me, vid, (me,), ok, value, origin)
        why = (
            f"{spec.name}.{method} changed the replica's state at node {me}: a @p2p method runs at one "
            f"replica, so node {me}'s replica now differs from the others (restart it: it gets the "
            f"state again by transfer); make {method} @ordered if it must change state"
        )
        log.error("%s", why)
        return caller, ReplyTo(caller, call_id, vid, origin).refused(me, P2PMutationError(why))

    def serve(self, p: P2PRequest) -> None:
        """A P2P call sent to this replica. With read options: a read of the past runs against
        the persistent fields as of that version; a stable read waits until every member has
        delivered what this replica applied (holding further ordered calls meanwhile)."""
        read = p.read
        if read is None:
            self.send_replies([self.run(p.caller, p.call_id, p.method, p.args, p.vid, p.origin)])
            return
        if read.level == STABLE:
            gate = self.gate
            gate.note(p.mark)
            if gate.applied[0] >= 0 and gate.applied[1] < 0:
                if p.stable is not None:
                    p.stable.finished(1)
                self._refuse(
                    p,
                    RuntimeError(
                        f"node {self.node_id} cannot serve stable reads: its replica host does not say how far each "
                        "delivered batch goes (OrderedBatch.frontier); read with consistency='local' or 'linearizable'"
                    ),
                )
                return
            gate.waiting.append(p)
            self._stable_due(0)
            return
        if read.level == LINEARIZABLE:  # the node sends these through the order, never here
            self._refuse(p, RuntimeError(f"node {self.node_id} got a linearizable read outside the order"))
            return
        if read.past and self.replica.store is None:
            self._refuse(
                p,
                NotPersistent(
                    f"{self.spec.name} is not persistent here: at_version=/at_time= read "
                    "the past of persistent types only"
                ),
            )
            return
        self.send_replies(
            [self.run(p.caller, p.call_id, p.method, p.args, p.vid, p.origin, read if read.past else None)]
        )

    def stable_mark(self, m: StableMark) -> None:
        """How far every member has delivered: answer the stable reads it now covers."""
        self.gate.note((m.vid, m.index))
        self._stable_due(m.expire_upto)

    def _refuse(self, p: P2PRequest, exc: Exception) -> None:
        self.send_replies([(p.caller, ReplyTo(p.caller, p.call_id, p.vid, p.origin).failed(self.node_id, exc))])

    def _stable_due(self, expire_upto: int) -> None:
        """Answer the stable reads the mark now covers, and fail those that waited too long
        (the replica then runs the ordered messages held behind them)."""
        due, late = self.gate.take_due(expire_upto)
        if not (due or late):
            return
        out = [self.run(p.caller, p.call_id, p.method, p.args, p.vid, p.origin) for p in due]
        for p in late:
            why = CallTimeout(
                f"a stable read of {self.spec.name}.{p.method} at node {self.node_id} waited "
                f"{p.stable.GIVE_UP_TICKS * p.stable.SYNC_AFTER:.0f} s for every replica of the shard to deliver what "
                "this one applied, in vain (a member is stuck?); nothing was changed: retry, or read with "
                "consistency='local' or 'linearizable'"
            )
            out.append((p.caller, ReplyTo(p.caller, p.call_id, p.vid, p.origin).refused(self.node_id, why)))
        for p in (*due, *late):
            if p.stable is not None:
                p.stable.finished(1)
        self.send_replies(out)
