"""Signed logs: peers' signatures of their logs, checked against this replica's own.

A replica of a ``signed=True`` type learns each peer's latest signed version (``PeerMark``);
once its own log is on disk up to that version it checks the peer's signature against its own
record chain. A match is reported (the node counts it); a mismatch means the peer's history
differs from ours and is logged at ERROR. Kept apart from the replica because it touches only
the log, never the object. Runs on the replica's actor thread (or inline in the simulator).
"""

from __future__ import annotations

import logging
from typing import Callable

from derecho_actors.replica.messages import PeerMark
from derecho_actors.replica.store import PersistentStore

log = logging.getLogger("derecho.replica")


class PeerMarks:
    """Each peer's latest signed mark not yet checked (a newer one replaces an older)."""

    def __init__(self, type_name: str, report_verified: Callable[[int, int], None]) -> None:
        self.type_name = type_name
        self.report_verified = report_verified
        self._marks: dict[int, tuple[int, bytes, bytes]] = {}  # node -> (version, signature, public key)

    def note(self, m: PeerMark) -> None:
        self._marks[m.node] = (m.version, m.signature, m.public_key)

    def check(self, store: PersistentStore) -> None:
        """Compare peers' signatures with ours at the same version, once ours is on disk."""
        if not self._marks:
            return
        durable = store.durable_version
        for node, (version, signature, public_key) in list(self._marks.items()):
            if version > durable:
                continue
            del self._marks[node]
            with store.log_held() as log_:
                matches = log_.verify_peer(version, signature, public_key)
            if matches:
                self.report_verified(node, version)
            elif version > store.log.last_version or version < store.log.first_version:
                continue  # not ours to judge (our log was replaced or trimmed meanwhile)
            else:
                log.error(
                    "node %s's signed log of %s differs from ours at version %s (its signature does not match our "
                    "record chain); its replica cannot be trusted: compare with `derecho-actors verify`",
                    node,
                    self.type_name,
                    version,
                )
