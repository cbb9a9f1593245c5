"""The one wall-clock helper the benchmarks share."""

from __future__ import annotations

import time


def timed(fn, repeat: int = 1):
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out
