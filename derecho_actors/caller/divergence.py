"""What a call's answers come to: whether the replicas' answers to one ordered call differ,
and how to say so; which answers ``QueryResults.get`` returns or raises; and the timeout of
a call still waiting for some.

Every replica runs an ordered call, so their answers must agree. ``QueryResults`` compares the
encoded answers as they arrive (one bytes comparison each); only when some bytes differ does it
come here, where the decoded values are compared (``wire.digest.canonical``: a dict's key order
or a set's iteration order is no divergence) and grouped for the message.
"""

from __future__ import annotations

from typing import Any, Callable, Container, Sequence

from derecho_actors.wire.digest import canonical
from runtime.errors import CallTimeout, DivergenceError, RemoteError, ReplicaLost


def divergence(description: str, out: dict[int, Any]) -> tuple[str, tuple[tuple[tuple[int, ...], Any], ...]] | None:
    """None if the answers in ``out`` (node -> value or error) agree; else the message and the
    groups ``((nodes, value), ...)``, largest first, for a ``DivergenceError``. Errors group by
    type; replicas that left before answering are left out."""
    groups: dict[bytes, list[int]] = {}
    shown: dict[bytes, Any] = {}
    for node in sorted(out):
        value = out[node]
        if isinstance(value, ReplicaLost):
            continue
        if isinstance(value, BaseException):
            key = b"E" + _error_name(value).encode()
        else:
            try:
                key = b"V" + canonical(value)
            except Exception:  # an object that cannot be taken apart: by its repr
                key = b"R" + repr(value).encode()
        groups.setdefault(key, []).append(node)
        shown.setdefault(key, value)
    if len(groups) < 2:
        return None
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1]))
    parts = []
    for key, nodes in ranked:
        who = f"node {nodes[0]}" if len(nodes) == 1 else f"nodes {', '.join(map(str, nodes))}"
        value = shown[key]
        did = (
            f"raised {_error_name(value)}: {_short(_error_text(value))}"
            if isinstance(value, BaseException)
            else f"returned {_short(repr(value))}"
        )
        parts.append(f"{who} {did}")
    message = (
        f"{description}: the replicas answered differently: {'; '.join(parts)}. An ordered call runs at "
        "every replica and must give the same result everywhere, so either the method is not deterministic (it "
        "reads a clock, random numbers, the process id, threads or I/O: pass such values in as arguments) or the "
        "replicas' states already differ (restart the replicas in the minority: they get the state again by "
        "transfer). The call was applied at every replica that answered. @replicated(on_divergence='warn') only "
        "logs this."
    )
    return message, tuple((tuple(nodes), shown[key]) for key, nodes in ranked)


_OLD_FORGOTTEN = "was applied already and its reply is no longer kept"
"""How replicas of the release before ``ReplyForgotten`` worded that refusal (as a
``RuntimeError``): in a group upgraded one node at a time, old and new replicas' answers to
one call are the same answer, not a divergence."""


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        if exc.remote_type == "RuntimeError" and _OLD_FORGOTTEN in exc.remote_message:
            return "ReplyForgotten"
        return exc.remote_type
    return type(exc).__name__


def _error_text(exc: BaseException) -> str:
    return exc.remote_message if isinstance(exc, RemoteError) else str(exc)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answers_or_raise(
    description: str, ordered: bool, order: Sequence[int], out: dict[int, Any], gone: Container[int]
) -> dict[int, Any]:
    """``get``'s answer from ``out`` (node -> value or error, ``order`` the order they came):
    the first remote error raised; replicas that left before answering (``gone``) left out,
    unless none answered at all: then ``ReplicaLost`` saying whether the call may have been
    applied (an ordered call: unknown; a P2P call: no)."""
    lost: list[ReplicaLost] = []
    for node in order:
        value = out.get(node)
        if isinstance(value, ReplicaLost):
            if node not in gone:  # a replica's own answer (it holds no replica, ...)
                raise value
            lost.append(value)
        elif isinstance(value, BaseException):
            raise value
    if lost and len(lost) == len(out):
        nodes = sorted(n for n, v in out.items() if isinstance(v, ReplicaLost))
        if ordered:
            raise ReplicaLost(
                f"{description}: every replica that was to answer ({nodes}) left first; the call may or "
                "may not have been applied: read the state to find out before calling again",
                applied=None,
            ) from lost[0]
        raise ReplicaLost(
            f"{description}: replica {nodes[0]} left before answering; a P2P call changes nothing, so it is "
            "safe to call again",
            applied=False,
        ) from lost[0]
    return {n: v for n, v in out.items() if not isinstance(v, ReplicaLost)}


def check_divergence(description: str, out: dict[int, Any], compare: str | None) -> str | None:
    """Raise ``DivergenceError`` if the answers in ``out`` differ and ``compare`` is "raise";
    the message to log if they differ and it is "warn"; None if they agree."""
    message = divergence(description, out)
    if message is None:
        return None
    if compare == "raise":
        raise DivergenceError(*message)
    return message[0]


def call_timeout(
    description: str,
    timeout: float | None,
    pending: tuple[int, ...] | None,
    why_waiting: Callable[[], str | None] | None,
) -> CallTimeout:
    """The error of a call still waiting after ``timeout`` seconds for the replicas
    ``pending`` (None: not delivered yet, the replicas are not known), with what is known to
    hold it up (``why_waiting()``, a hint: it never hides the timeout itself)."""
    why = None
    if why_waiting is not None:
        try:
            why = why_waiting()
        except Exception:
            why = None
    waiting = list(pending) if pending is not None else "any replica (not delivered yet)"
    return CallTimeout(
        f"{description}: no reply within {timeout} s from {waiting}" + (f"; {why}" if why else ""), pending or ()
    )


def outcome_unknown(exc: BaseException) -> BaseException:
    """``exc``, a refusal that says the call was not run, of a call sent again after a copy
    of it was in flight on a connection that ended: that copy may have run (Jepsen's rule:
    an unknown outcome is never reported as a failure), so ``applied`` becomes None."""
    exc.applied = None  # type: ignore[attr-defined]
    exc.args = (
        f"{exc} (this call was sent again after its connection ended, so an earlier copy may have "
        "been applied: read the state before calling again, unless the method is idempotent)",
    )
    return exc
