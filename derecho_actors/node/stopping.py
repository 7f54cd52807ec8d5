"""How a node's group ends, and with which exit code.

Two ways: the engine stops the node (``AppHooks.on_stop``: a leave, a close, removal from the
view, a minority partition, a refused restart), or the actor layer finds it can no longer do
its part (its disk failed, a replica broke) and *fail-stops*: it leaves the group with the
reason, so the others carry on at once without suspecting it, and stops anyway if the leave
cannot complete. Either way every caller waiting here gets the reason, and the node process
exits with the code that names the kind of end (``runtime.exitcodes``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from runtime.errors import GroupClosed
from runtime.exitcodes import EXIT_OK, exit_code_for_stop
from runtime.node_api import NodeHandle

log = logging.getLogger("derecho.group")


class NodeStop:
    def __init__(
        self, node_id: int, fail_pending: Callable[[BaseException], None], leave_grace: float, started: threading.Event
    ) -> None:
        """``fail_pending(exc)`` answers every waiting caller; ``leave_grace``: seconds a
        fail-stop's leave may take before the node stops regardless; ``started`` is set on a
        stop too, so nobody waits for a first view that will not come."""
        self.node_id = node_id
        self.node: NodeHandle | None = None
        self.fail_pending = fail_pending
        self.leave_grace = leave_grace
        self.started = started
        self.reason: str | None = None
        self.exit_code = EXIT_OK

    def on_stop(self, reason: str) -> None:
        """The engine stopped the node (on its loop). A fail-stop keeps its own reason and code."""
        if self.reason is None:
            self.reason = reason
            self.exit_code = exit_code_for_stop(reason)
        self.started.set()
        self.fail_pending(GroupClosed(f"node {self.node_id} stopped: {reason}"))

    def fail_stop(self, why: str, code: int) -> None:
        """Leave the group because this node can no longer do its part (on its loop)."""
        if self.reason is not None or self.node is None:
            return
        log.error("node %s leaves the group: %s", self.node_id, why)
        self.reason = why
        self.exit_code = code
        self.fail_pending(GroupClosed(f"node {self.node_id} stopped: {why}"))
        self.node.leave()
        # If the leave cannot complete (no majority left to agree to it), stop anyway.
        self.node.call_later(self.leave_grace, self.node.stop, why)
