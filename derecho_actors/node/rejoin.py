"""A node the group removed joins it again, in the same process (``node.on_partition``).

A member is removed when the others stop hearing from it: its process was stopped (SIGSTOP,
a VM pause) or its network cut while the majority went on, or it found itself in a minority.
Exiting then (code 3) loses the process's place and leaves the comeback to a supervisor; with
``node.on_partition = "rejoin"`` (the default) the node closes its old group and joins again as
a new member through the members of the last view it knew, with backoff, until it is back or
asked to stop. A new member receives the shards' state by state transfer (a persistent type
restarts from its log and fetches the tail), so nothing of the old incarnation is merged
blindly; where its data cannot be merged the join ends with the reason (a refused restart, a
layout that differs), and the node stops with that exit code.

It never founds a group: a rejoin always has contacts (the last view's other members, then the
configured ones), so a node cut off from its majority cannot start a second group (split
brain); it waits for the majority instead, as an etcd member in a minority does.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from runtime.errors import ConfigError, GroupClosed
from runtime.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, START_FAILED

if TYPE_CHECKING:
    from derecho_actors.node.group import Group
    from runtime.core.view import View

log = logging.getLogger("derecho.node")

# Stop reasons (``runtime.core``) that mean "the group went on without this node".
OUT_OF_GROUP = ("partitioned", "suspected by", "removed from the group")
# How the stop reason of a start that found no contact begins (``START_FAILED`` before it);
# one that a contact refused begins "node.contacts: refused" and is never retried.
NO_CONTACT = "node.contacts: no contact reachable"


def out_of_group(reason: str) -> bool:
    """Whether a stop ``reason`` means the group removed this node (or it lost its majority)."""
    return reason.startswith(OUT_OF_GROUP)


def stop_reason(text: str) -> str | None:
    """The stop reason a ``GroupClosed`` from a group's start carries ("node N stopped:
    <reason>"), or None when the start ended otherwise (its wait for a view ran out). Reasons
    are matched by how they begin, never by words anywhere in them: they quote paths and
    type names (a data dir named ``partitioned-kv`` is no partition)."""
    _, sep, reason = text.partition(" stopped: ")
    return reason if sep else None


def retryable(text: str) -> bool:
    """Whether a failed rejoin attempt (its ``GroupClosed`` text) is worth another try: the
    majority was not reachable, or had not removed this node yet, or removed it again while
    it joined. Anything else (a refused join, a storage failure) ends the node."""
    reason = stop_reason(text)
    if reason is None:
        return " joined no view within " in text
    reason = reason.removeprefix(f"{START_FAILED}: ")
    return reason.startswith(NO_CONTACT) or out_of_group(reason)


def rejoin_contacts(view: View | None, node_id: int, configured: Sequence[str]) -> list[str]:
    """Where to rejoin: the other members of the last view this node knew (they, not the
    configured list, are the group now), then the configured contacts not already named."""
    out: list[str] = []
    if view is not None:
        out = [addr for node, addr in zip(view.members, view.addresses) if node != node_id]
    out += [c for c in configured if c not in out]
    return out


class Rejoiner:
    """Runs a node's groups: the first one given, then a new one each time the group removes
    this node, until ``done`` is set or the node ends for another reason."""

    def __init__(
        self,
        node_id: int,
        on_partition: str,
        configured_contacts: Sequence[str],
        start: Callable[[list[str]], Group],
        done: threading.Event,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
    ) -> None:
        """``start(contacts)`` builds and starts a Group that joins through ``contacts``
        (raising ``GroupClosed`` if it cannot; it may read ``out_reason`` to tell clients why
        the node is out, and should give up its wait when ``done`` is set); ``done`` is set on
        SIGTERM or SIGINT."""
        self.node_id = node_id
        self.on_partition = on_partition
        self.configured = list(configured_contacts)
        self.start = start
        self.done = done
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.rejoins = 0
        self.reason: str | None = None  # why the node ended, once it has
        self.out_reason: str | None = None  # why the group removed this node, while it rejoins

    def first(self, build: Callable[[], Group]) -> tuple[Group | None, int]:
        """The node's first group, from ``build()`` (its ``GroupClosed`` raised as is), except
        when the group removed the node before that start ended: it joined a view, then a stall
        or a partition cut it off while it still fetched its state. That is a removal like any
        later one, so the node joins again as a new member, per ``on_partition``, through the
        configured contacts (returns the group it got, or None and the exit code)."""
        try:
            return build(), EXIT_OK
        except GroupClosed as exc:
            text = str(exc)
            reason = stop_reason(text)
            if (
                self.on_partition != "rejoin"
                or self.done.is_set()
                or not self.configured  # a founder has no group to rejoin: never found a second
                or exc.exit_code not in (None, EXIT_STOPPED)
                or reason is None
                or not out_of_group(reason)
            ):
                raise
            self.out_reason = text
            log.warning(
                "node %s was removed from the group while it started (%s); it joins again as a new member via %s "
                '(node.on_partition = "rejoin"; set "exit" to stop instead)',
                self.node_id,
                text,
                ", ".join(self.configured),
            )
            return self._rejoin(list(self.configured))

    def run(self, group: Group, poll: float = 0.1) -> tuple[Group | None, int]:
        """Watch ``group`` until ``done`` (returns the running group, for the caller to leave or
        close) or until the node ends (returns None and the exit code)."""
        while not self.done.wait(poll):
            reason = group.stopped
            if reason is None:
                continue
            if self.on_partition != "rejoin" or not out_of_group(reason):
                self.reason = reason
                log.warning("node stops: %s", reason)  # the log line's prefix names the node
                group.close()
                return None, group.exit_code
            contacts = rejoin_contacts(group.view, self.node_id, self.configured)
            self.out_reason = reason
            group.close()
            log.warning(
                "node %s is out of the group (%s); it joins again as a new member via %s "
                '(node.on_partition = "rejoin"; set "exit" to stop instead)',
                self.node_id,
                reason,
                ", ".join(contacts),
            )
            again, code = self._rejoin(contacts)
            if again is None:
                return None, code
            group = again
        return group, EXIT_OK

    def _rejoin(self, contacts: list[str]) -> tuple[Group | None, int]:
        delay = self.first_delay
        attempt = 0
        while not self.done.is_set():
            attempt += 1
            try:
                group = self.start(contacts)
            except ConfigError as exc:
                self.reason = f"cannot rejoin: {exc}"
                log.error("node %s cannot rejoin: %s", self.node_id, exc)
                return None, EXIT_CONFIG
            except GroupClosed as exc:
                if self.done.is_set():
                    return None, EXIT_OK  # signalled while joining: stop quietly
                text = str(exc)
                if not retryable(text):
                    self.reason = f"cannot rejoin: {text}"
                    log.error("node %s cannot rejoin: %s", self.node_id, text)
                    return None, exc.exit_code if exc.exit_code is not None else EXIT_FAILED
                log.warning(
                    "node %s: rejoin attempt %d failed (%s); the majority may be unreachable: next try in %.1f s",
                    self.node_id,
                    attempt,
                    text,
                    delay,
                )
            except (TimeoutError, OSError) as exc:  # a start that took too long, a socket error
                log.warning(
                    "node %s: rejoin attempt %d failed (%s: %s); next try in %.1f s",
                    self.node_id,
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            except Exception as exc:  # a bug: stop with the reason rather than a traceback exit
                self.reason = f"cannot rejoin: {type(exc).__name__}: {exc}"
                log.exception("node %s cannot rejoin", self.node_id)
                return None, EXIT_FAILED
            else:
                self.rejoins += 1
                view = group.view
                log.warning(
                    "node %s is back in the group as a new member (view %s) after %d attempt(s)",
                    self.node_id,
                    view.vid if view is not None else "?",
                    attempt,
                )
                return group, EXIT_OK
            if self.done.wait(delay):
                break
            delay = min(self.max_delay, delay * 2)
        return None, EXIT_OK
