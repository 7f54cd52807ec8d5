"""Typed errors a user of derecho-actors can hit.

Every error says what went wrong and what to do about it. They live in the engine, which
raises most of them and imports nothing from the user-facing package, which
re-exports every one.

Most sit under one of four groups, so a caller can catch by what to do next:

- :class:`Unavailable`: the group, or the part of it a call needs, cannot serve now; retry
  may help (``applied`` says whether calling again is safe).
- :class:`UsageError`: the caller's code or configuration is wrong; retrying cannot help.
- :class:`PersistenceError`: state kept by the group, or a version of it, is not there as
  asked (a log cannot be used, a version is not on disk yet or is gone, a shard lost its state).
- :class:`ProtocolError`: the two ends of a connection do not agree (refused, or bytes that
  do not decode).

Four stand alone: :class:`RemoteError` (the replicated method itself raised),
:class:`SessionExpired`, :class:`ReplyForgotten` and :class:`WatchHistoryLost` (read the
state, then go on from it).
"""

from __future__ import annotations

import builtins  # the built-in TimeoutError, which CallTimeout extends


class DerechoError(Exception):
    """Base class of every error derecho-actors raises on purpose."""


# The groups: catch one of these to handle every error that calls for the same action.


class Unavailable(DerechoError):
    """The group, or the part of it this call needs, cannot serve it now: a replica left, the
    shard is short of nodes, replies did not come in time, a limit is reached, the group or
    client is closed. Nothing is wrong with the call itself; retrying later may help.

    ``applied`` says what is known of the call's effect before calling again: False (it was
    not run: call again), None (unknown, or not about one call: an ordered call may have been
    applied, so read the state first unless the method is idempotent)."""

    applied: bool | None = None


class UsageError(DerechoError):
    """The caller's code or configuration is wrong: a bad config value or layout, a type not
    registered, a method not marked, data the serializer cannot encode, a call too large, a
    nested call, a replicated method that changes state in ``@p2p`` or is not deterministic.
    Retrying the same cannot help; the message says what to change."""


class PersistenceError(DerechoError):
    """State the group keeps, or a version of it, is not there as asked: a log or a file of
    the node's data folder cannot be used, a version is not on disk at every replica yet
    (``NotPersistedYet``, also ``Unavailable``: wait), or it is gone (``VersionLost``, and
    ``ShardStateLost`` when every replica of a shard was lost). Do not just retry: the message
    names what is missing and what to do (wait, read another version, restore or move a file)."""


class ProtocolError(DerechoError):
    """The two ends of a connection do not agree: one refused the other (certificate, CA,
    cluster name, wire protocol version) or sent bytes that do not decode. Retrying the same
    way cannot help; check both ends' certificates, cluster names and versions."""


# Usage errors.


class ConfigError(UsageError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class LayoutError(ConfigError):
    """A layout policy cannot be satisfied by any view (for example min_nodes > max_nodes)."""


class NotRegistered(UsageError):
    """A handle was asked for a class that is not a registered ``@replicated`` type of this
    group; pass it in ``types=[...]`` and give it a layout policy."""


class UnknownMethod(UsageError, AttributeError):
    """The method does not exist on the replicated type, or is not marked ``@ordered`` or
    ``@p2p``; only marked methods can be called through a handle."""


class SerializationError(UsageError, TypeError):
    """Arguments or a result cannot be encoded with the type's serializer; plain data goes
    through msgpack, anything else needs ``@replicated(serializer="cloudpickle")``."""


class PayloadTooLarge(UsageError, ValueError):
    """An encoded call exceeds ``multicast.max_message_size``; send less per call or raise
    the limit in the node config."""


class NestedCallError(UsageError, RuntimeError):
    """A replicated method called a handle. The replica runs one call at a time, so waiting
    for another call from inside a handler could deadlock it; return data instead, or make
    the call from outside the handler."""


class NotPersistent(UsageError):
    """``persisted()`` or a read of the past was used on a type in atomic delivery mode; give
    the class ``Persistent`` fields or ``@replicated(delivery="persistent")``."""


class DivergenceError(UsageError):
    """The replicas of a shard answered one ordered call differently (different values, or
    a value at some and an error at others). Ordered methods must be deterministic, so either
    the method is not (it read a clock, random numbers, the process id, threads or I/O) or the
    replicas' states already differ. ``groups`` lists ``(nodes, value or exception)`` per group
    of agreeing replicas. The call was applied at every replica that answered."""

    def __init__(self, message: str, groups: tuple[tuple[tuple[int, ...], object], ...] = ()) -> None:
        super().__init__(message)
        self.groups = groups


class P2PMutationError(UsageError):
    """A ``@p2p`` method changed its replica's state (found by ``@replicated(check_p2p=True)``
    or ``DERECHO_CHECK_P2P=1``). The change stays at that one replica, which now differs from
    the others: restart it (it gets the state again by transfer) and make the method ``@ordered``."""


class ReadOptionError(UsageError, ValueError):
    """A call's read options cannot be used as given: an unknown ``consistency`` level, read
    options on an ``@ordered`` method, ``at_version`` with ``at_time``, or either of them with a
    ``consistency`` other than "local". The message says which."""


class EmitError(UsageError, RuntimeError):
    """``da.emit`` was called outside an ``@ordered`` method while it runs. Events record
    changes of replicated state, which only ordered methods make (at every replica alike)."""


# Unavailable: retry may help.


class CallTimeout(Unavailable, builtins.TimeoutError):
    """Replies did not all arrive in time; ``pending`` lists the nodes still owing one. An
    ordered call may still be applied (``applied`` is None): read before calling again unless
    the method is idempotent. Also caught by ``except TimeoutError`` (the built-in); the old
    name ``da.TimeoutError`` is an alias of this class."""

    def __init__(self, message: str, pending: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pending = pending


TimeoutError = CallTimeout  # noqa: A001 - the name this class had; kept so old imports work


class ReplicaLost(Unavailable):
    """A replica left the view before it answered a call. ``QueryResults.get`` raises it only
    when no replica answered at all; ``applied`` then says what is known of the call's effect:
    False (it changed nothing: safe to call again), None (unknown: it may have been applied;
    read the state before calling again). Per replica, ``QueryResults.lost`` holds one each."""

    def __init__(self, message: str, applied: bool | None = None) -> None:
        super().__init__(message)
        self.applied = applied


class ShardUnavailable(Unavailable):
    """The shard cannot run calls now, and this call was not sent (so not applied): the view
    is too small for the layout, or the group has no view. The message says what the layout
    needs and what is alive; retry once nodes have joined."""

    applied = False


class GroupClosed(Unavailable, RuntimeError):
    """The group was closed, or this node left it or was removed from it, or a ``Client``
    reaches no member. ``exit_code`` (see ``runtime.exitcodes``) says what kind of end, when
    the node stopped on its own. A closed ``Group`` or ``Client`` stays closed: retry through
    a new one (or once a member is reachable). Calls pending when it closed may have been
    applied (``applied`` is None)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SessionLimit(Unavailable):
    """The replicas hold as many caller sessions as the type allows (``max_sessions``); this
    call was not applied. Retry later, or raise ``max_sessions`` on the type."""

    applied = False


class ClientLimit(Unavailable):
    """This client reached a per-client limit of the node it calls through (calls unanswered
    on its connection, ``limits.client_max_in_flight``; parked watch polls of its identity,
    ``limits.max_watch_polls_per_client``): the call was not run. Wait for answers, then
    retry; the message names the limit."""

    applied = False


class StateTransferError(Unavailable):
    """A joining replica could not receive its shard's state (the sending member failed, or
    the data was damaged); the node stops and can join again."""


# Persistence errors.


class LogError(PersistenceError):
    """A persistent log cannot be used as asked: it is open in another process, closed (also
    after a failed fsync: reopen it to recover), or of a format this version does not read.
    The message names the file and what to do."""


class LogCorrupted(LogError):
    """A persistent log's bytes are damaged beyond what opening it repairs (a bad file
    header, or a record that changed on disk while open). Run ``derecho-actors verify`` on
    the data_dir, move the file aside and let the node recover the object from the group."""


class LogSignatureError(LogError):
    """A signed log was opened without its signing key or with another key, or a key file
    cannot be read. Pass the key the log was created with (``derecho-actors keygen PATH``
    makes a new one, for new logs only)."""


class NotPersistedYet(Unavailable, PersistenceError):
    """A read of the past asked for a version not yet on disk at every replica of the shard;
    wait for the writing call's ``QueryResults.persisted()`` or read an older version. Both
    ``Unavailable`` (waiting helps; the read changed nothing) and ``PersistenceError``."""

    applied = False


class VersionLost(PersistenceError):
    """A read of the past asked for a version that was persisted once but is gone: a total
    restart found no surviving log holding it and an operator accepted the loss
    (``--accept-loss``). Read a version outside the lost range (the message gives it)."""


class RestartError(PersistenceError):
    """A total restart cannot proceed as asked (for example, the saved view is unreadable).
    The message names the file of the data folder and what to do with it."""


# Protocol errors.


class WireError(ProtocolError):
    """Bytes from a peer could not be decoded into a valid frame."""


class Refused(ProtocolError):
    """A member refused this connection, or the TLS handshake with it failed: no or a wrong
    certificate, one of another cluster's CA, another cluster's name. Retrying cannot help;
    the message says what the other end objected to."""


# In no group: each calls for its own handling.


class RemoteError(DerechoError):
    """A replicated method raised. ``remote_type``, ``remote_message`` and
    ``remote_traceback`` describe the exception as the replica saw it; the replica itself
    carries on (ordered methods are deterministic, so every replica raised the same)."""

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str, node: int | None = None) -> None:
        where = f" on node {node}" if node is not None else ""
        super().__init__(f"{remote_type}: {remote_message} (raised by the replicated method{where})")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.node = node


class SessionExpired(DerechoError):
    """A retried ordered call was refused because its caller's exactly-once session expired
    (no call for the type's ``session_ttl``): the first attempt may or may not have been
    applied, so the call was not run again. Read the state to find out, then call anew."""


class ReplyForgotten(DerechoError):
    """A retried ordered call was refused because the replicas applied it already and no
    longer keep its reply (the caller had acknowledged it, or more than the session's reply
    window followed it): it was not run again. Not the method's error, and not ``Unavailable``:
    calling again cannot help. ``applied`` is True as the replicas' session tables have it (they
    record the call as run); read the state to learn its outcome.

    A caller waiting for a call it sent once cannot normally get it, since its unanswered
    calls' replies are kept; getting one means a later call of its session was ordered first."""

    applied: bool | None = True


class WatchHistoryLost(DerechoError):
    """A watch asked for events from a position its replica no longer keeps (more than the
    type's ``watch_history`` events came since, or the shard restarted from its logs). Some
    events in between cannot be delivered: read the state again and watch from its version."""


__all__ = [
    "DerechoError",
    "Unavailable",
    "UsageError",
    "PersistenceError",
    "ProtocolError",
    "EmitError",
    "WatchHistoryLost",
    "ConfigError",
    "LayoutError",
    "WireError",
    "RemoteError",
    "CallTimeout",
    "ReplicaLost",
    "ShardUnavailable",
    "NotRegistered",
    "UnknownMethod",
    "SerializationError",
    "PayloadTooLarge",
    "NestedCallError",
    "GroupClosed",
    "Refused",
    "LogError",
    "LogCorrupted",
    "LogSignatureError",
    "NotPersistedYet",
    "VersionLost",
    "NotPersistent",
    "SessionExpired",
    "SessionLimit",
    "ReplyForgotten",
    "ClientLimit",
    "StateTransferError",
    "RestartError",
    "DivergenceError",
    "P2PMutationError",
    "ReadOptionError",
]
