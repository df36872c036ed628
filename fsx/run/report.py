"""fsx report: a table and plots over many eval runs (a sweep's children, an experiment, or an
MLflow filter), written to a folder and logged as a run of its own (`fsx.command=report`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from fsx import tracking
from fsx.errors import UsageError
from fsx.evaluation.loop_report import LoopRecord, build_loop_report
from fsx.evaluation.report import KEYS, Record, build_report
from fsx.run.compare import check_metric, load_evaluation

EVAL_RUNS = "tags.`fsx.command` = 'eval' and attributes.status = 'FINISHED'"


def select_runs(tracking_uri: str, experiment: str, parent: str | None, filter_string: str | None) -> tuple[list[dict], str]:
    """The finished eval runs chosen, oldest first, and the choice in words."""
    user = (filter_string or "").strip()
    found = tracking.search_runs(tracking_uri, experiment, " and ".join(f for f in (EVAL_RUNS, user) if f), parent)
    found = [run for run in found if run["tags"].get("fsx.multirun") != "parent"]  # a sweep's parent holds no evaluation
    where = f"the children of run {parent}" if parent else f"experiment '{experiment}'"
    selection = where + (f" matching `{user}`" if user else "")
    if not found:
        hint = " (--parent takes a sweep's parent run: `fsx eval -m ...` prints its id)" if parent else ""
        raise UsageError(f"no FINISHED eval runs in {selection} at {tracking_uri}{hint}; run `fsx eval` first, or widen --filter")
    return found, selection


LOOP_RUNS = "tags.`fsx.command` = 'loop' and attributes.status = 'FINISHED'"


def _loop_labels(run: dict) -> dict[str, str]:
    """What a loop run compared: the pretraining algorithm, the acquisition rule, the start and
    the images added per round, and the model and data."""
    tags, params = run["tags"], run["params"]
    rule = params.get("acquire.rule", "?")
    start = "all of test-adapt" if params.get("loop.start") == "all" else f"{params.get('shots', '?')}-shot support"
    return {
        **{k: tags.get(f"fsx.{k}", "?") for k in ("algorithm", "detector", "backbone", "dataset", "fold")},
        "rule": rule if rule == "random" else f"{rule} ({params.get('acquire.aggregate', '?')})",
        "start": start,
        "added": params.get("acquire.k", "?"),
        "ways": params.get("ways", "?"),
    }


def run_loop_report(tracking_uri: str, experiment: str = "fsx", parent: str | None = None, filter_string: str | None = None, metric: str = "AP50", out: str | Path = "report", log: bool = True) -> str:
    """fsx report --loops: the feedback-loop tables and plots over FINISHED `fsx loop` runs."""
    tracking.check_store(tracking_uri)
    user = (filter_string or "").strip()
    found = [run for run in tracking.search_runs(tracking_uri, experiment, " and ".join(f for f in (LOOP_RUNS, user) if f), parent) if run["tags"].get("fsx.multirun") != "parent"]
    selection = (f"the children of run {parent}" if parent else f"experiment '{experiment}'") + (f" matching `{user}`" if user else "")
    if not found:
        raise UsageError(f"no FINISHED loop runs in {selection} at {tracking_uri}; run `fsx loop` first, or widen --filter")
    records = []
    for run in found:
        rows = list(csv.DictReader(io.StringIO(tracking.artifact_text(tracking_uri, run["id"], "loop/rounds.csv"))))
        records.append(LoopRecord(rows, _loop_labels(run), run["id"], run["params"].get("task_seed", "")))
    out = Path(out)
    try:
        report = build_loop_report(records, metric, out, selection)
    except ValueError as e:
        raise UsageError(f"--metric {metric}: {e}") from None
    (out / "report.md").write_text(report.markdown)
    (out / "report.csv").write_text(report.csv)
    files = [out / "report.md", out / "report.csv", *report.pngs]
    text = report.markdown.split("\n## Plots")[0].rstrip()
    text += f"\n\nwrote {out}/: report.md, report.csv, {len(report.pngs)} PNG(s): {', '.join(p.name for p in report.pngs)}"
    if log:
        tags = {"fsx.command": "report", "fsx.metric": metric, "fsx.report_of": "loop", **({"fsx.report_parent": parent} if parent else {})}
        settings = {"command": "report", "of": "loop", "metric": metric, "parent": parent, "filter": filter_string}
        with tracking.open_run(tracking_uri, found[0]["experiment"], f"report {metric} over {len(found)} loop runs", tags) as run:
            run.log_text(yaml.safe_dump(settings, sort_keys=False), "config.yaml")
            run.log_dict({"kind": "report", "selection": selection, "runs": [r["id"] for r in found]}, "manifest.json")
            for path in files:
                run.log_file(path, "report")
        text += f"\nMLflow run: {run.id}"
    return text


def _labels(run: dict, tasks: list[dict]) -> dict[str, str]:
    """What the run evaluated: its tags (the algorithm as its lineage, "standard → reptile",
    the weights the lineage started from, the pretraining passes in all), and ways/shots of
    its tasks (the params when absent)."""
    tags, params, task = run["tags"], run["params"], tasks[0] if tasks else {}
    return {
        **{k: tags.get(f"fsx.{k}", "?") for k in ("algorithm", "detector", "backbone", "dataset", "fold")},
        "algorithm": tags.get("fsx.lineage") or tags.get("fsx.algorithm", "?"),
        "weights": tags.get("fsx.weights", "scratch"),
        "passes": tags.get("fsx.passes", "–"),
        "ways": str(task.get("ways", params.get("ways", "?"))),
        "shots": str(task.get("shots", params.get("shots", "?"))),
    }


# (tag, value, the runs that have it, the others): never in one report
KEPT_APART = (
    ("fsx.task_pool", "validation", "scored on validation tasks (base classes, for tuning)", "scored on the test tasks"),
    ("fsx.protocol", "seen_classes", "whose weights saw boxes of their novel classes", "clean one(s)"),
)


def check_protocols(found: list[dict], selection: str) -> None:
    """A report never mixes runs scored on validation tasks with runs scored on the test
    tasks, nor runs whose weights saw boxes of the novel classes (allowed with
    allow_seen_classes=true) with clean ones: their numbers answer different questions."""
    for tag, value, these, those in KEPT_APART:
        odd = [r["id"] for r in found if r["tags"].get(tag) == value]
        if odd and len(odd) < len(found):
            raise UsageError(
                f"{selection} mixes {len(odd)} run(s) {these} ({tag}={value}, e.g. {odd[0]}) with {len(found) - len(odd)} {those}; report them apart: "
                f"--filter \"tags.`{tag}` = '{value}'\" or --filter \"tags.`{tag}` != '{value}'\""
            )


def run_report(
    tracking_uri: str,
    experiment: str = "fsx",
    parent: str | None = None,
    filter_string: str | None = None,
    metric: str = "AP50",
    out: str | Path = "report",
    log: bool = True,
    baseline: str | None = None,
) -> str:
    tracking.check_store(tracking_uri)
    found, selection = select_runs(tracking_uri, experiment, parent, filter_string)
    check_protocols(found, selection)
    records = []
    for run in found:
        evaluation = load_evaluation(run["id"], tracking_uri, experiment)
        records.append(Record(evaluation, _labels(run, evaluation.tasks), run["id"]))
    check_metric([r.evaluation for r in records], metric)
    out = Path(out)
    try:
        report = build_report(records, metric, out, baseline, selection)
    except ValueError as e:  # an unknown baseline
        raise UsageError(f"--baseline: {e}") from None
    (out / "report.md").write_text(report.markdown)
    (out / "report.csv").write_text(report.csv)
    files = [out / "report.md", out / "report.csv", *report.pngs]

    text = report.markdown.split("\n## Plots")[0].rstrip()
    text += f"\n\nwrote {out}/: report.md, report.csv" + (f", {len(report.pngs)} PNG(s): {', '.join(p.name for p in report.pngs)}" if report.pngs else "")
    if log:
        text += f"\nMLflow run: {_log(tracking_uri, found, records, files, metric, selection, parent, filter_string, baseline)}"
    return text


def _log(tracking_uri: str, found: list[dict], records: list[Record], files: list[Path], metric: str, selection: str, parent, filter_string, baseline) -> str:
    """A run beside the eval runs holding the report, tagged like them with what it covers."""
    values = {k: ",".join(dict.fromkeys(r.labels[k] for r in records)) for k in KEYS}
    tags = {
        "fsx.command": "report",
        **{f"fsx.{k}": values[k] for k in ("dataset", "fold", "algorithm", "detector", "backbone", "weights")},
        "fsx.metric": metric,
        **({"fsx.report_parent": parent} if parent else {}),
    }
    settings = {"command": "report", "metric": metric, "parent": parent, "filter": filter_string, "baseline": baseline}
    name = f"report {metric} over {len(found)} eval runs"
    with tracking.open_run(tracking_uri, found[0]["experiment"], name, tags) as run:
        run.log_text(yaml.safe_dump(settings, sort_keys=False), "config.yaml")
        run.log_dict({"kind": "report", "selection": selection, "runs": [r["id"] for r in found]}, "manifest.json")
        for path in files:
            run.log_file(path, "report")
    return run.id
