"""The typed errors a user of derecho-actors can hit, re-exported from the engine.

They are defined in ``runtime.errors`` because the engine raises them too and must not import
the user-facing package; users import them from here or from ``derecho_actors``. Errors only
the actor layer raises are defined here.
"""

from runtime.errors import *  # noqa: F401,F403
from runtime.errors import PersistenceError, Unavailable, UsageError
from runtime.errors import __all__ as _engine_errors


class ShardStateLost(PersistenceError):
    """Every replica of a shard was gone, so the shard started anew (an atomic type from
    ``__init__``) and what it held is lost; the ERROR in the nodes' logs and their status
    (``shards_restarted_empty``) name the shard and the versions lost. Callers get it instead
    of a silently empty answer: reads until the shard's first write since, and that first batch
    of writes. The call was not run: call again to use the new state, and write back what you
    need from your own records. A layout with ``min_nodes`` of 2 or more makes it less likely.

    A ``PersistenceError``, not ``Unavailable``: a loop that retries whatever is unavailable
    would run the call again on the new, empty state and drop the only notice of the loss."""


class ShardAwaitingLog(Unavailable):
    """Every replica of a shard of a persistent type was gone: the shard waits, its replicas
    not running, until a node that held it last comes back with its data folder (its log holds
    every version reported persisted); the message names those nodes. Retrying helps once one
    of them is back. To give up the lost versions instead, start any node with
    ``--accept-loss``: the shard then starts anew from its own logs, if any
    (``ShardStateLost`` for its first calls). The call was not run (``applied`` is False)."""

    applied = False


class ResultTooLarge(UsageError):
    """A call's result was too large for its answer to be carried: over the frame limit
    between members (``multicast.max_frame_bytes``), or over what a contact lets one client
    have unread (``limits.client_max_backlog_bytes``); the message names the limit and the
    size. The call was applied once (``applied`` is True: its effects stay), only its value is
    lost, so retrying runs it again. Return a smaller value (or a reference to it), use a large
    object or a stream, or raise the limit. Every replica answers it alike."""

    applied = True


__all__ = [*_engine_errors, "ResultTooLarge", "ShardAwaitingLog", "ShardStateLost"]
