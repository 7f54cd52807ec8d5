"""Whether the replicas' answers to one ordered call differ, and how to say so.

Every replica runs an ordered call, so their answers must agree. ``QueryResults`` compares the
encoded answers as they arrive (one bytes comparison each); only when some bytes differ does it
come here, where the decoded values are compared (``wire.digest.canonical``: a dict's key order
or a set's iteration order is no divergence) and grouped for the message.
"""

from __future__ import annotations

from typing import Any

from derecho_actors.wire.digest import canonical
from runtime.errors import RemoteError, ReplicaLost


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


def _error_name(exc: BaseException) -> str:
    return exc.remote_type if isinstance(exc, RemoteError) else type(exc).__name__


def _error_text(exc: BaseException) -> str:
    return exc.remote_message if isinstance(exc, RemoteError) else str(exc)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
