"""The node's descriptor limit, and how many client connections it leaves room for.

Every client connection holds a descriptor. With the common soft limit of 1,024, 993 idle
sessions of one client took every descriptor: new clients and ``status`` could not connect, and
asyncio logged an error with a traceback for every failed accept (35 MB in 30 s). So the node
raises its soft limit to the hard one at start, and keeps client connections below what is left
after a reserve for members, the persistent logs, metrics and half-open connections.
"""

from __future__ import annotations

import logging
from typing import Final

log = logging.getLogger("derecho.node")

RESERVE: Final = 512  # descriptors kept for everything but client connections


def descriptor_limit() -> int | None:
    """Raise the soft descriptor limit to the hard one (where the platform has one); the soft
    limit now, or None where it cannot be read."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to bound by
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.info("could not raise the descriptor limit from %s to %s: %s", soft, hard, exc)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def client_connection_room(configured: int, limit: int | None) -> int:
    """``limits.client_connections``, lowered to what ``limit`` descriptors leave (never
    below 16), with a WARNING that says what to raise when it is lowered."""
    if limit is None or configured <= limit - RESERVE:
        return configured
    room = max(16, limit - RESERVE)
    log.warning(
        "limits.client_connections = %s, but this process may open only %s descriptors: at most %s "
        "client connections are served. Raise the limit (ulimit -n, LimitNOFILE= in systemd) or lower the setting",
        configured,
        limit,
        room,
    )
    return room
