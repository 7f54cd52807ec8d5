"""Ports for nodes on loopback, chosen so that nothing else takes them first.

A port taken from the ephemeral range (``bind(0)``) can be given to another process's outgoing
connection between the moment it was found free and the moment the node meant to listen on it
starts; the node then fails with "address already in use". Ports below that range are only
ever taken by someone who asks for them.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel picks for outgoing connections (Linux; the usual default elsewhere)."""
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, consecutive: bool = False) -> list[int]:
    """``n`` ports free on loopback now, below the ephemeral range: a port taken from that
    range (``bind(0)``) can be given to another process's outgoing connection before the node
    meant to listen on it starts, and the node then fails with "address already in use"."""
    low = 20_000
    high = max(low + 1000, ephemeral_range()[0]) - n - 1
    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(low, high)
        candidates = list(range(start, start + n)) if consecutive else rng.sample(range(low, high), n)
        socks: list[socket.socket] = []
        try:
            for port in candidates:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return candidates
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} free ports on 127.0.0.1 between {low} and {high}")
