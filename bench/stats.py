"""Small statistics shared by the experiments."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def steady_rate(times: Sequence[float], counts: Sequence[int], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Events per second between the moments ``lo`` and ``hi`` of ``total`` events were done.

    ``times`` (seconds, increasing) and ``counts`` (cumulative, increasing) are samples of
    progress, e.g. one per delivered batch. Start-up and the drain at the end are left out.
    """
    a = b = None
    for t, c in zip(times, counts):
        if a is None and c >= lo * total:
            a = (t, c)
        if c >= hi * total:
            b = (t, c)
            break
    if a is None or b is None or b[0] <= a[0]:
        return math.nan
    return (b[1] - a[1]) / (b[0] - a[0])


def steady_window(
    times: Sequence[float], counts: Sequence[int], total: int, lo: float = 0.1, hi: float = 0.9
) -> tuple[float, float]:
    """The times at which ``lo`` and ``hi`` of ``total`` events were done."""
    a = b = math.nan
    for t, c in zip(times, counts):
        if math.isnan(a) and c >= lo * total:
            a = t
        if c >= hi * total:
            b = t
            break
    return a, b
