"""fsx compare: the same metric of several eval runs side by side, with the paired
difference to the first run over identical tasks, as a table and a picture."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from fsx import tracking
from fsx.errors import UsageError
from fsx.evaluation.compare import Evaluation, compare, format_comparison, mismatched_tasks
from fsx.evaluation.plots import curve_png


def _run_id(reference: str, tracking_uri: str, experiment: str) -> str:
    if reference.startswith("latest"):
        _, command, algorithm = (reference.split(":", 2) + ["", ""])[:3]
        return tracking.latest_run_id(tracking_uri, experiment, command or "eval", algorithm or None)
    return reference[len("runs:/") :].strip("/").split("/")[0] if reference.startswith("runs:/") else reference


def load_evaluation(reference: str, tracking_uri: str, experiment: str) -> Evaluation:
    run_id = _run_id(reference, tracking_uri, experiment)
    status, tags = tracking.run_state(tracking_uri, run_id)
    if tags.get("fsx.command") != "eval":
        raise UsageError(f"{reference}: run {run_id} is a '{tags.get('fsx.command', 'non-fsx')}' run; compare eval runs (fsx eval ... prints their ids)")
    if status != "FINISHED":
        raise UsageError(f"{reference}: eval run {run_id} is {status}, not FINISHED")
    rows = list(csv.DictReader(io.StringIO(tracking.artifact_text(tracking_uri, run_id, "eval/repeats.csv"))))
    manifest = json.loads(tracking.artifact_text(tracking_uri, run_id, "manifest.json"))
    name = f"{tags.get('fsx.algorithm', '?')}:{run_id[:8]}"
    return Evaluation(name, rows, manifest.get("tasks", []), manifest.get("split", {}).get("test_test", {}).get("hash"))


def check_metric(evaluations: list[Evaluation], metric: str) -> None:
    """A usage error naming what the runs logged, unless every run logged `metric`."""
    for evaluation in evaluations:
        if not evaluation.rows or metric not in evaluation.rows[0]:
            known = [k for k in (evaluation.rows or [{}])[0] if k not in ("repeat", "task_seed", "milestone", "adapt_seconds", "early_stopped_at")]
            raise UsageError(f"--metric {metric}: the eval runs logged {', '.join(known) or 'no metrics'}")


def run_compare(references: list[str], tracking_uri: str, experiment: str, metric: str = "AP50", unpaired: bool = False, plot: str | None = None) -> str:
    if len(references) < 2:
        raise UsageError("fsx compare needs at least two eval runs: the first is the baseline")
    tracking.check_store(tracking_uri)
    evaluations = [load_evaluation(r, tracking_uri, experiment) for r in references]
    check_metric(evaluations, metric)
    problems = {e.name: mismatched_tasks(evaluations[0], e) for e in evaluations[1:]}
    problems = {k: v for k, v in problems.items() if v}
    if problems and not unpaired:
        why = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in problems.items())
        raise UsageError(
            f"these runs did not evaluate identical tasks ({why}), so a paired comparison would be wrong: evaluate them with the same "
            "task_seed, eval.repeats, ways, shots and dataset, or pass --unpaired for Welch's test on unpaired samples"
        )
    paired = not problems
    rows = compare(evaluations, metric, paired=paired)
    text = format_comparison(evaluations, rows, metric, paired)
    if plot:
        curves = {e.name: {row["milestone"]: row[e.name] for row in rows if row[e.name]["n"]} for e in evaluations}
        text += f"\n\nplot: {curve_png(Path(plot), curves, metric, f'{metric} against adaptation steps')}"
    return text
