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


def paired_difference(a, b) -> dict[str, float]:
    """B minus A over tasks both were evaluated on (pairs with a NaN are dropped): mean
    difference, its 95% Student-t CI half-width, the paired t-test's two-sided p-value and n."""
    pairs = np.asarray([(x, y) for x, y in zip(a, b) if x == x and y == y], dtype=float).reshape(-1, 2)
    diff = pairs[:, 1] - pairs[:, 0]
    summary = summarize(diff)
    p = float("nan")
    if summary["n"] >= 2 and np.any(diff != diff[0]):
        p = float(stats.ttest_rel(pairs[:, 1], pairs[:, 0]).pvalue)
    elif summary["n"] >= 2:
        p = 1.0 if diff[0] == 0 else 0.0
    return {"mean": summary["mean"], "ci95": summary["ci95"], "p": p, "n": summary["n"]}
