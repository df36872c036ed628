"""What the studies' table.py scripts share: each evaluated setting's per-task scores read
from the MLflow store, the means with their 95% CIs, the paired differences on the same
tasks, and the curves as a picture. Every number comes from the store; none is typed in.

    import tables                       # from experiments/<study>/table.py (see sys.path there)
    rows = tables.settings(uri, experiment, label)
    tables.print_means(rows, "AP50")
    tables.print_differences(rows, base="...")
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from typing import Callable

from fsx import tracking
from fsx.evaluation.aggregate import paired_difference, summarize
from fsx.evaluation.plots import curve_png


def arguments(doc: str, experiment: str | None = None) -> argparse.Namespace:
    """A study table's command line: --uri, --experiment (required without a default),
    --metric and --plot."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default=experiment, required=experiment is None)
    parser.add_argument("--metric", default="AP50")
    parser.add_argument("--plot", help="also draw the curves with their 95%% CI bands into this PNG")
    return parser.parse_args()


@dataclasses.dataclass
class Setting:
    eval_run: dict  # the eval run (id, tags, ...)
    values: dict[tuple[int, int], float]  # (milestone, task seed) -> metric
    pretraining: dict  # the source pretraining run's record (params, metrics, tags)
    pretraining_id: str


def settings(uri: str, experiment: str, label: Callable[[dict, dict], str | None], metric: str = "AP50", where: str = "") -> dict[str, Setting]:
    """The newest finished eval run of every setting, named by `label(eval tags, pretraining
    record)` (None leaves the run out), in order of the labels' first appearance."""
    query = "tags.`fsx.command` = 'eval' and attributes.status = 'FINISHED'" + (f" and {where}" if where else "")
    out: dict[str, Setting] = {}
    for run in tracking.search_runs(uri, experiment, query):  # oldest first: a rerun replaces its setting
        if run["tags"].get("fsx.multirun") == "parent":  # a sweep's parent run scored nothing itself
            continue
        source = run["tags"].get("fsx.source_run", "")
        record = tracking.run_record(uri, source) if source else {"params": {}, "metrics": {}, "tags": {}}
        name = label(run["tags"], record)
        if name is None:
            continue
        table = csv.DictReader(io.StringIO(tracking.artifact_text(uri, run["id"], "eval/repeats.csv")))
        out[name] = Setting(run, {(int(r["milestone"]), int(r["task_seed"])): float(r[metric]) for r in table}, record, source)
    return out


def grid(rows: dict[str, Setting]) -> tuple[list[int], list[int]]:
    """The milestones and task seeds the settings were scored at."""
    milestones = sorted({m for s in rows.values() for m, _ in s.values})
    seeds = sorted({t for s in rows.values() for _, t in s.values})
    return milestones, seeds


def pretraining_cell(setting: Setting) -> str:
    """`N passes (S steps), M min` of the checkpoint's last pretraining."""
    params, metrics = setting.pretraining["params"], setting.pretraining["metrics"]
    seconds = metrics.get("train/seconds", float("nan"))
    passes = params.get("train.passes_run", "?")
    return f"{passes} passes ({params.get('train.steps_run', '?')} steps), {seconds / 60:.0f} min, run {setting.pretraining_id[:8]}"


def print_means(rows: dict[str, Setting], metric: str, extra: dict[str, Callable[[Setting], str]] | None = None) -> None:
    """One line per setting: the `extra` columns, then mean ± 95% CI at every milestone."""
    milestones, seeds = grid(rows)
    extra = extra or {}
    print("| setting | " + "".join(f"{k} | " for k in extra) + " | ".join(f"{metric} @ {m}" for m in milestones) + " |")
    print("|---|" + "---|" * (len(extra) + len(milestones)))
    for name, s in rows.items():
        stats = [summarize(s.values.get((m, t), float("nan")) for t in seeds) for m in milestones]
        cells = [f"{st['mean']:.3f} ± {st['ci95']:.3f}" for st in stats]
        print(f"| {name} | " + "".join(f"{f(s)} | " for f in extra.values()) + " | ".join(cells) + " |")


def print_differences(rows: dict[str, Setting], base: str, names: list[str] | None = None) -> None:
    """Paired differences (setting − base) on the same tasks: mean ± 95% CI (paired t-test p)."""
    milestones, seeds = grid(rows)
    print(f"\npaired differences to `{base}` over the same {len(seeds)} tasks: mean ± 95% CI (paired t-test p)\n")
    print("| difference | " + " | ".join(f"@ {m}" for m in milestones) + " |")
    print("|---|" + "---|" * len(milestones))
    for name in names if names is not None else [n for n in rows if n != base]:
        cells = []
        for m in milestones:
            d = paired_difference([rows[base].values.get((m, t), float("nan")) for t in seeds], [rows[name].values.get((m, t), float("nan")) for t in seeds])
            cells.append(f"{d['mean']:+.3f} ± {d['ci95']:.3f} (p {d['p']:.2g})")
        print(f"| {name} − base | " + " | ".join(cells) + " |")


def plot(rows: dict[str, Setting], path: str, metric: str, title: str) -> None:
    milestones, seeds = grid(rows)
    curves = {n: {m: summarize(s.values.get((m, t), float("nan")) for t in seeds) for m in milestones} for n, s in rows.items()}
    print(f"\nplot: {curve_png(path, curves, metric, f'{title}, {len(seeds)} tasks')}")
