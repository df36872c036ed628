"""Mean, spread and 95% confidence interval of a metric over repeated few-shot tasks."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summarize(values) -> dict[str, float]:
    """mean, std (sample, ddof=1), ci95 (Student-t half-width: mean +- ci95 covers the true
    mean with 95% confidence), n, and for reading spreads: q1, median, q3, and ci95_tfa
    (TFA's 1.96 * population std / sqrt(n): narrower for few repeats, reported only under
    that name). NaN entries are ignored; std and the CIs are NaN for n < 2."""
    x = np.asarray([v for v in values if v == v], dtype=float)
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "ci95": nan, "n": 0, "q1": nan, "median": nan, "q3": nan, "ci95_tfa": nan}
    mean = float(x.mean())
    q1, median, q3 = (float(q) for q in np.percentile(x, [25, 50, 75]))
    if n < 2:
        return {"mean": mean, "std": nan, "ci95": nan, "n": n, "q1": q1, "median": median, "q3": q3, "ci95_tfa": nan}
    std = float(x.std(ddof=1))
    ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    ci95_tfa = float(1.96 * x.std(ddof=0) / math.sqrt(n))
    return {"mean": mean, "std": std, "ci95": ci95, "n": n, "q1": q1, "median": median, "q3": q3, "ci95_tfa": ci95_tfa}


def cumulative(values) -> list[dict[str, float]]:
    """summarize() of the first k values for k = 1..n: when do more repeats stop mattering?"""
    values = list(values)
    return [summarize(values[:k]) for k in range(1, len(values) + 1)]


def adaptation_speed(curve: dict[int, float], seconds: dict[int, float] | None = None, fractions=(0.5, 0.9)) -> dict[str, float]:
    """How fast a metric rises with adaptation: the normalised area under its curve against
    steps (trapezoids over the milestones, divided by the step span: the mean level), and,
    for each fraction f, the first milestone (and its adaptation seconds) at which the metric
    reaches f times its final value. NaN where it never does or the curve has no span."""
    steps = sorted(s for s in curve if curve[s] == curve[s])
    out: dict[str, float] = {}
    if len(steps) >= 2 and steps[-1] > steps[0]:
        ys = [curve[s] for s in steps]
        area = sum((b - a) * (ya + yb) / 2 for a, b, ya, yb in zip(steps, steps[1:], ys, ys[1:]))
        out["auc"] = area / (steps[-1] - steps[0])
    else:
        out["auc"] = float("nan")
    final = curve[steps[-1]] if steps else float("nan")
    for f in fractions:
        reached = next((s for s in steps if final > 0 and curve[s] >= f * final), None)
        key = f"{round(f * 100)}pct"
        out[f"steps_to_{key}"] = float(reached) if reached is not None else float("nan")
        if seconds is not None:
            out[f"seconds_to_{key}"] = float(seconds.get(reached, float("nan"))) if reached is not None else float("nan")
    return out


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
