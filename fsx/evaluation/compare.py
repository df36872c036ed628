"""Comparing evaluations: the same metric of several eval runs, milestone by milestone, with
the paired difference to the first (the baseline) over the tasks they share.

Plain values in, plain values out: each evaluation is its per-repeat rows (milestone,
task_seed, metrics) and its task manifests. Two evaluations are paired only when they
adapted on identical support sets and scored the same test images; otherwise the
difference is Welch's unpaired one, and only when asked for.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from fsx.evaluation.aggregate import paired_difference, summarize


@dataclasses.dataclass
class Evaluation:
    name: str  # how the user will recognise it (run id, algorithm)
    rows: list[dict]  # one per (repeat, milestone): milestone, task_seed, <metric>...
    tasks: list[dict]  # task manifests: task_seed and the support set's hash
    test_hash: str | None = None  # the scored images

    def values(self, metric: str) -> dict[tuple[int, int], float]:
        return {(int(r["milestone"]), int(r["task_seed"])): float(r[metric]) for r in self.rows if r.get(metric) not in (None, "")}

    def task_hashes(self) -> dict[int, str]:
        return {int(t["task_seed"]): str(t.get("hash")) for t in self.tasks}


def mismatched_tasks(a: Evaluation, b: Evaluation) -> list[str]:
    """Why a and b cannot be paired (empty when they adapted and scored on identical data)."""
    reasons = []
    if a.test_hash != b.test_hash:
        reasons.append("they scored different test images")
    ha, hb = a.task_hashes(), b.task_hashes()
    shared = sorted(set(ha) & set(hb))
    if not shared:
        reasons.append("they share no task seed")
    differing = [s for s in shared if ha[s] != hb[s]]
    if differing:
        reasons.append(f"the support sets of task seed(s) {', '.join(map(str, differing[:5]))} differ")
    return reasons


def welch_difference(a, b) -> dict[str, float]:
    """B minus A for unpaired samples: difference of means, Welch's 95% CI half-width and p."""
    x = np.asarray([v for v in a if v == v], dtype=float)
    y = np.asarray([v for v in b if v == v], dtype=float)
    if x.size < 2 or y.size < 2:
        return {"mean": float(y.mean() - x.mean()) if x.size and y.size else math.nan, "ci95": math.nan, "p": math.nan, "n": int(min(x.size, y.size))}
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if se > 0 else x.size + y.size - 2
    p = float(stats.ttest_ind(y, x, equal_var=False).pvalue) if se > 0 else (1.0 if y.mean() == x.mean() else 0.0)
    return {"mean": float(y.mean() - x.mean()), "ci95": float(stats.t.ppf(0.975, df) * se), "p": p, "n": int(min(x.size, y.size))}


def compare(evaluations: list[Evaluation], metric: str, paired: bool = True) -> list[dict]:
    """One row per milestone: for each evaluation its mean ± ci95 over its tasks, and for each
    after the first the difference to the first (paired over shared task seeds when `paired`)."""
    base, values = evaluations[0], [e.values(metric) for e in evaluations]
    milestones = sorted({m for v in values for m, _ in v})
    rows = []
    for m in milestones:
        row: dict = {"milestone": m}
        seeds_base = sorted(s for (mm, s) in values[0] if mm == m)
        for i, (evaluation, v) in enumerate(zip(evaluations, values)):
            seeds = sorted(s for (mm, s) in v if mm == m)
            row[evaluation.name] = summarize(v[(m, s)] for s in seeds)
            if i == 0:
                continue
            if paired:
                shared = sorted(set(seeds) & set(seeds_base))
                diff = paired_difference([values[0][(m, s)] for s in shared], [v[(m, s)] for s in shared])
            else:
                diff = welch_difference([values[0][(m, s)] for s in seeds_base], [v[(m, s)] for s in seeds])
            row[f"{evaluation.name} - {base.name}"] = diff
        rows.append(row)
    return rows


def format_comparison(evaluations: list[Evaluation], rows: list[dict], metric: str, paired: bool) -> str:
    base = evaluations[0].name
    kind = "paired over the same tasks" if paired else "UNPAIRED (Welch): the tasks differ"
    lines = [f"{metric}: mean ± 95% CI over tasks; Δ = run minus {base}, {kind}, with its 95% CI and p", ""]
    header = ["steps"] + [e.name for e in evaluations] + [f"Δ {e.name}" for e in evaluations[1:]]
    table = []
    for row in rows:
        cells = [str(row["milestone"])]
        for e in evaluations:
            s = row[e.name]
            cells.append("n/a" if s["n"] == 0 else f"{s['mean']:.3f} ± {s['ci95']:.3f} (n={s['n']})")
        for e in evaluations[1:]:
            d = row[f"{e.name} - {base}"]
            cells.append("n/a" if d["n"] == 0 or d["mean"] != d["mean"] else f"{d['mean']:+.3f} ± {d['ci95']:.3f} (p {d['p']:.2g})")
        table.append(cells)
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
    for r in [header] + table:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)
