"""A report over many evaluations: one table row per algorithm, model, dataset, fold, ways
and shots (the metric's mean ± 95% CI at every milestone, and n), an "all folds" row
averaging the fold means, curves against adaptation steps, and paired differences to a
baseline where the runs adapted on identical tasks.

Plain values in, text and PNG files out (no MLflow): each record is an `Evaluation` (the
per-repeat rows and task manifests `fsx compare` uses) with its labels.

How runs are combined:
- runs with the same labels (e.g. training seeds, or a repeated evaluation) form one row:
  their repeats are pooled, n counts them all, `runs` says how many runs;
- an "all" fold row (when a setting has several folds) is the mean of the fold rows' means,
  with its 95% CI over folds (n = folds);
- a paired difference pairs tasks by task seed (the fold's, in the same setting), as
  `fsx compare` does; runs of one row that evaluated the same task seed count as their
  mean on it. Rows that did not adapt on identical support sets and score the same test
  images are not differenced; the Markdown says why.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path

from fsx.evaluation.aggregate import summarize
from fsx.evaluation.compare import Evaluation, compare, mismatched_tasks
from fsx.evaluation.plots import curve_png, difference_png

KEYS = ("algorithm", "detector", "backbone", "weights", "dataset", "fold", "ways", "shots")
SETTING = ("dataset", "ways", "shots")  # what must agree for rows to be compared at all
ALL_FOLDS = "all"


@dataclasses.dataclass
class Record:
    """One eval run: its per-repeat rows and task hashes, and what it evaluated (KEYS)."""

    evaluation: Evaluation
    labels: dict[str, str]
    run_id: str = ""


@dataclasses.dataclass
class Report:
    rows: list[dict]  # KEYS, model, runs, run_ids, n, stats: {milestone: summarize()}
    differences: list[dict]  # setting, fold, model, baseline, n, stats: {milestone: paired_difference()}
    milestones: list[int]
    markdown: str
    csv: str
    pngs: list[Path]
    notes: list[str]


def build_report(records: list[Record], metric: str, out: Path | str, baseline: str | None = None, selection: str = "") -> Report:
    """The table, its Markdown and CSV, and the PNGs (written into `out`). `baseline` is the
    algorithm (or model label) differences are taken to; default: the first one seen."""
    models = _model_labels(records)
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(tuple(record.labels[k] for k in KEYS), []).append(record)
    order = list(dict.fromkeys(models[id(r)] for r in records))
    if baseline is not None:
        named = [m for m in order if m == baseline or m.split(" ")[0] == baseline]
        if not named:
            raise ValueError(f"baseline {baseline!r} is none of the evaluated algorithms: {', '.join(order)}")
        order = named[:1] + [m for m in order if m != named[0]]
    milestones = sorted({m for r in records for m, _ in r.evaluation.values(metric)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    rows = [_row(group, models[id(group[0])], metric, milestones) for group in groups.values()]
    rows.sort(key=lambda r: ([_number_first(v) for v in _setting_key(r)], _number_first(r["fold"]), order.index(r["model"])))
    rows = _with_fold_means(rows, milestones, order)

    pngs: list[Path] = []
    notes: list[str] = []
    differences: list[dict] = []
    settings = list(dict.fromkeys((*_setting_key(r), r["fold"]) for r in rows))
    for *setting, fold in settings:
        at = [r for r in rows if _setting_key(r) == tuple(setting) and r["fold"] == fold]
        where = f"{setting[0]} fold {fold}, {setting[1]}-way {setting[2]}-shot" if fold != ALL_FOLDS else f"{setting[0]} {_fold_count(at)} folds averaged, {setting[1]}-way {setting[2]}-shot"
        name = _file_name(metric, setting, fold)
        curves = {r["model"]: {m: s for m, s in r["stats"].items() if s["n"]} for r in at}
        curves = {model: points for model, points in curves.items() if points}
        if curves:
            pngs.append(curve_png(out / f"{name}.png", curves, metric, f"{metric}: {where}"))
        if fold == ALL_FOLDS or len(at) < 2:
            continue
        found, why = _paired_differences(at, groups, metric, where)
        differences += found
        notes += why
        curves = {f"{d['model']} − {d['baseline']}": {m: s for m, s in d["stats"].items() if s["n"] and s["mean"] == s["mean"]} for d in found}
        curves = {label: points for label, points in curves.items() if points}
        if curves:
            pngs.append(difference_png(out / f"{name}-difference.png", curves, metric, f"{metric} paired difference to {found[0]['baseline']}: {where}"))
    markdown = _markdown(rows, differences, milestones, metric, notes, pngs, selection, len(records))
    return Report(rows, differences, milestones, markdown, _csv(rows, milestones, metric), pngs, notes)


# --------------------------------------------------------------------------- rows


def _model_labels(records: list[Record]) -> dict[int, str]:
    """The algorithm's name (its lineage, e.g. "standard → reptile"), with the starting
    weights and detector/backbone when the records hold several."""
    several = len({(r.labels["detector"], r.labels["backbone"]) for r in records}) > 1
    starts = len({r.labels["weights"] for r in records}) > 1
    return {
        id(r): r.labels["algorithm"] + (f" [{r.labels['weights']}]" if starts else "") + (f" {r.labels['detector']}/{r.labels['backbone']}" if several else "")
        for r in records
    }


def _row(group: list[Record], model: str, metric: str, milestones: list[int]) -> dict:
    values = [r.evaluation.values(metric) for r in group]
    stats = {m: summarize(v for run in values for (mm, _), v in run.items() if mm == m) for m in milestones}
    return {
        **{k: group[0].labels[k] for k in KEYS},
        "model": model,
        "passes": ",".join(dict.fromkeys(r.labels.get("passes", "–") for r in group)),
        "runs": len(group),
        "run_ids": [r.run_id for r in group],
        "n": max((s["n"] for s in stats.values()), default=0),
        "stats": stats,
    }


def _with_fold_means(rows: list[dict], milestones: list[int], order: list[str]) -> list[dict]:
    """After each setting's fold rows, one "all" row per model with two or more folds."""
    out: list[dict] = []
    for setting in dict.fromkeys(_setting_key(r) for r in rows):
        at = [r for r in rows if _setting_key(r) == setting]
        out += at
        for model in order:
            folds = [r for r in at if r["model"] == model]
            if len(folds) < 2:
                continue
            stats = {m: summarize(r["stats"][m]["mean"] for r in folds if r["stats"][m]["n"]) for m in milestones}
            out.append({**folds[0], "fold": ALL_FOLDS, "runs": sum(r["runs"] for r in folds), "run_ids": [i for r in folds for i in r["run_ids"]], "n": len(folds), "stats": stats})
    return out


def _setting_key(row: dict) -> tuple:
    return tuple(row[k] for k in SETTING)


def _number_first(value: str):
    """Sorts 1, 2, 10 as numbers, then names ("all" after the folds)."""
    return (0, int(value), "") if str(value).isdigit() else (1, 0, str(value))


def _fold_count(rows: list[dict]) -> int:
    return max((r["n"] for r in rows), default=0)


def _file_name(metric: str, setting, fold: str) -> str:
    dataset, ways, shots = setting
    where = "all-folds" if fold == ALL_FOLDS else f"fold{fold}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{metric}-{dataset}-{where}-{ways}way{shots}shot")


# --------------------------------------------------------------------------- differences


def _per_task(group: list[Record], name: str, metric: str) -> Evaluation:
    """One evaluation of a row's runs: per (milestone, task seed) the mean over the runs that
    evaluated it; a task seed whose support sets differ between the runs cannot be paired."""
    values: dict[tuple[int, int], list[float]] = {}
    hashes: dict[int, set[str]] = {}
    for record in group:
        for key, v in record.evaluation.values(metric).items():
            values.setdefault(key, []).append(v)
        for seed, h in record.evaluation.task_hashes().items():
            hashes.setdefault(seed, set()).add(h)
    rows = []
    for (m, s), vs in values.items():
        kept = [v for v in vs if v == v]
        rows.append({"milestone": m, "task_seed": s, metric: sum(kept) / len(kept) if kept else math.nan})
    tasks = [{"task_seed": s, "hash": next(iter(h)) if len(h) == 1 else f"differs between the runs of {name}"} for s, h in hashes.items()]
    tests = {r.evaluation.test_hash for r in group}
    return Evaluation(name, rows, tasks, next(iter(tests)) if len(tests) == 1 else f"several test sets in {name}")


def _paired_differences(rows: list[dict], groups: dict[tuple, list[Record]], metric: str, where: str) -> tuple[list[dict], list[str]]:
    """Each row minus the first (the baseline) where they adapted on identical tasks; the
    reasons where they did not."""
    evaluations = [_per_task(groups[tuple(r[k] for k in KEYS)], r["model"], metric) for r in rows]
    base = evaluations[0]
    found, notes = [], []
    for evaluation in evaluations[1:]:
        reasons = mismatched_tasks(base, evaluation)
        if reasons:
            notes.append(f"{where}: no paired difference {evaluation.name} − {base.name}: {'; '.join(reasons)}")
            continue
        table = compare([base, evaluation], metric, paired=True)
        stats = {r["milestone"]: r[f"{evaluation.name} - {base.name}"] for r in table}
        found.append({**dict(zip(SETTING, _setting_key(rows[0]))), "fold": rows[0]["fold"], "model": evaluation.name, "baseline": base.name, "n": max(s["n"] for s in stats.values()), "stats": stats})
    return found, notes


# --------------------------------------------------------------------------- text


def _cell(stats: dict | None) -> str:
    if not stats or not stats["n"] or stats["mean"] != stats["mean"]:
        return "–"
    return f"{stats['mean']:.3f}" if stats["ci95"] != stats["ci95"] else f"{stats['mean']:.3f} ± {stats['ci95']:.3f}"


def difference_cell(stats: dict | None) -> str:
    if not stats or not stats["n"] or stats["mean"] != stats["mean"]:
        return "–"
    ci = "" if stats["ci95"] != stats["ci95"] else f" ± {stats['ci95']:.3f}"
    p = "" if stats["p"] != stats["p"] else f" (p {stats['p']:.2g})"
    return f"{stats['mean']:+.3f}{ci}{p}"


def markdown_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + ["| " + " | ".join(cells) + " |" for cells in lines]


def _markdown(rows, differences, milestones, metric, notes, pngs, selection, runs) -> str:
    text = [f"# {metric} report", ""]
    if selection:
        text += [f"{runs} eval run(s): {selection}.", ""]
    text += [
        f"{metric} at each milestone (adaptation steps): mean ± 95% CI (Student t) over the tasks; n = tasks. "
        "Runs with the same labels are pooled (`runs`); an `all` fold row is the mean of the fold means, its CI over folds (n = folds).",
        "",
    ]
    header = [*KEYS, "passes", "runs", "n"] + [f"{metric} @{m}" for m in milestones]
    text += markdown_table(header, [[str(r[k]) for k in KEYS] + [str(r.get("passes", "")), str(r["runs"]), str(r["n"])] + [_cell(r["stats"].get(m)) for m in milestones] for r in rows])
    if differences or notes:
        text += ["", "## Paired differences", "", "Row minus the baseline over the same tasks (paired by task seed): mean ± 95% CI, paired t-test p; n = tasks.", ""]
    if differences:
        header = ["dataset", "fold", "ways", "shots", "difference", "n"] + [f"Δ {metric} @{m}" for m in milestones]
        text += markdown_table(header, [[str(d[k]) for k in ("dataset", "fold", "ways", "shots")] + [f"{d['model']} − {d['baseline']}", str(d["n"])] + [difference_cell(d["stats"].get(m)) for m in milestones] for d in differences])
    if notes:
        text += [""] + [f"- skipped: {note}" for note in notes]
    if pngs:
        text += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(text) + "\n"


def _csv(rows: list[dict], milestones: list[int], metric: str) -> str:
    """The table with plain numbers: <metric>_mean@<milestone>, <metric>_ci95@<milestone> (empty where none)."""
    fields = list(KEYS) + ["passes", "runs", "n"] + [f"{metric}_{stat}@{m}" for m in milestones for stat in ("mean", "ci95")] + ["run_ids"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        line = {k: r[k] for k in KEYS} | {"passes": r.get("passes", ""), "runs": r["runs"], "n": r["n"], "run_ids": " ".join(r["run_ids"])}
        for m in milestones:
            s = r["stats"].get(m) or {"mean": math.nan, "ci95": math.nan}
            for stat in ("mean", "ci95"):
                line[f"{metric}_{stat}@{m}"] = "" if s[stat] != s[stat] else repr(s[stat])
        writer.writerow(line)
    return buffer.getvalue()
