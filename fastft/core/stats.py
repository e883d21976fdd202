"""Summary statistics of measured durations (numpy only), shared by benchmarks and reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quantiles(times_s: Sequence[float]) -> dict:
    """p10/p50/p90/p99 and mean of a list of durations, in milliseconds."""
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "n": int(a.size),
        "p10_ms": float(np.percentile(a, 10)),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }
