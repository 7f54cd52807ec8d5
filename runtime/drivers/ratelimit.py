"""Warnings about what peers do, at a rate nobody can turn into a flood of log lines.

Anyone who can reach a port can make a node log (a failed handshake, a forged frame): one line
per event would let them fill a disk or hide the lines that matter. Each kind of event, per
peer host, gets at most ``burst`` lines per ``interval`` seconds; the next line that gets
through says how many were held back meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, lines, held]

    def warning(self, key: tuple[str, str], msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` (event kind, peer host) already had
        its share of this interval; returns whether it was logged."""
        now = self.clock()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.interval:
            held = int(w[2]) if w is not None else 0
            if len(self._windows) >= self.max_keys:
                self._windows.clear()  # bounded whatever peers do
            w = self._windows[key] = [now, 0, 0]
            if held:
                msg += f" ({held} similar lines held back)"
        if w[1] >= self.burst:
            w[2] = int(w[2]) + 1
            return False
        w[1] = int(w[1]) + 1
        self.logger.warning(msg, *args)
        return True
