"""Figures a person reads at a glance: durations, sizes, and a loss curve in one line of Unicode blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
NONFINITE_MARK = "×"


def duration(seconds: float) -> str:
    """`42 s`, `7 min`, `1 h 05 min`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def size(num_bytes: float) -> str:
    """`512 B`, `3.2 MiB`, `1.50 GiB`."""
    if num_bytes < 1024:
        return f"{num_bytes:.0f} B"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)):
        if num_bytes < scale * 1024 or unit == "TiB":
            value = num_bytes / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}" if value < 100 else \
                f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """The curve of `values` in at most `width` blocks (each the mean of its share of the values); a share
    holding a NaN or inf is drawn as ×."""
    if not values:
        return ""
    buckets = [values[i * len(values) // width:(i + 1) * len(values) // width] for i in range(width)] \
        if len(values) > width else [[v] for v in values]
    means = [sum(b) / len(b) if b and all(math.isfinite(v) for v in b) else math.nan for b in buckets if b]
    finite = [m for m in means if math.isfinite(m)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = high - low
    return "".join(NONFINITE_MARK if not math.isfinite(m) else
                   BLOCKS[0 if span == 0 else min(len(BLOCKS) - 1, int((m - low) / span * len(BLOCKS)))]
                   for m in means)
