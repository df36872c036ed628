"""Mean, spread and 95% confidence interval of a metric over repeated few-shot tasks."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summarize(values) -> dict[str, float]:
    """mean, std (sample, ddof=1), ci95 (Student-t half-width: mean +- ci95 covers the true
    mean with 95% confidence) and n. NaN entries are ignored; std and ci95 are NaN for n < 2."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": float("nan"), "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": float("nan"), "ci95": float("nan"), "n": n}
    std = float(x.std(ddof=1))
    ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci95": ci95, "n": n}
