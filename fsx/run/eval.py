"""fsx eval: the Reptile thesis's few-shot protocol (PROTOCOLS 6.6).

For r = 1..eval.repeats: sample a support set from test-adapt with task seed
task_seed + r - 1, adapt from the checkpoint, and at every milestone score all of
test-test with COCOeval. Per-repeat metrics are logged as `repeat_<rr>/<metric>` (rr = 01, 02, ...), the
aggregate as `<metric>` (= mean), `<metric>_mean`, `<metric>_std`, `<metric>_ci95`, all at
MLflow step = the milestone. An adapted checkpoint whose classes are the evaluation
classes is scored directly, without adapting again.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from pathlib import Path

from fsx.data.coco import DetectionDataset
from fsx.engine.device import loader_workers, resolve_device, seed_everything
from fsx.engine.finetune import adapt as fine_tune
from fsx.errors import UsageError
from fsx.evaluation.aggregate import adaptation_speed, cumulative, summarize
from fsx.evaluation.coco_metrics import OPTIONAL_STATS, SUMMARY_STATS
from fsx.evaluation.plots import curve_png, pr_csv, pr_png, repeats_png
from fsx.progress import progress
from fsx.run.checks import check_eval, objective_milestone
from fsx.run.checks import milestones as checked_milestones
from fsx.run.fewshot import (
    adapt_tags,
    head_reset,
    init_tags,
    is_adapted_to,
    load_source,
    model_for_task,
    novel_initialised,
    sample_task,
    score,
    task_options,
)
from fsx.run.wiring import adapt_classifier, adapt_settings, explicit_keys, recorded_run

TABLE_METRICS = ("AP50", "AP", "AP75", "vocAP50")


def evaluate(cfg) -> dict:
    check_eval(cfg)
    if cfg.eval.detections:  # another tool's results, scored by fsx's metric code
        from fsx.run.external import score_file

        return score_file(cfg)
    if "adapt.steps" in explicit_keys():  # it would be ignored: say so instead
        raise UsageError(
            f"adapt.steps is fsx adapt's budget; fsx eval adapts up to the last of eval.milestones (now {list(cfg.eval.milestones)}): "
            "set eval.milestones=[...,N] instead (and eval.objective=AP50@best to tune the step count in a sweep)"
        )
    device = resolve_device(cfg.device)
    workers = loader_workers(cfg.get("workers", "auto"), device)
    source = task_pool(cfg, load_source(cfg))
    milestones = checked_milestones(cfg)
    settings = adapt_settings(cfg, source.payload)
    classifier = adapt_classifier(cfg, source.payload)
    settings.steps = milestones[-1]  # adapt as far as the last milestone
    first = sample_task(source.split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed), **task_options(cfg))
    direct = is_adapted_to(source.payload, first.class_names)
    repeats = 1 if direct else int(cfg.eval.repeats)
    # every task is drawn before any work, so a seed the pool cannot serve fails at once
    tasks = [first] + [sample_task(source.split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed) + r - 1, **task_options(cfg)) for r in range(2, repeats + 1)]
    if direct:
        milestones = [0]
    tags = {**source.tags(), **adapt_tags(settings), **init_tags(cfg), "fsx.checkpoint": source.reference, "fsx.eval_mode": "direct" if direct else "adapt", "fsx.task_pool": str(cfg.eval.tasks), **({"fsx.source_run": source.run_id} if source.run_id else {})}
    name = f"eval {len(first.class_ids)}-way {cfg.shots}-shot x{repeats} {source.dataset['name']}/{source.dataset['fold']}"
    rows: list[dict] = []
    manifests: list[dict] = []
    curves: dict[str, dict] = {}
    with recorded_run(cfg, "eval", source.dataset, run_name=name, extra_tags=tags, checkpoint_config=source.payload.get("config")) as run:
        started = time.monotonic()
        for r in progress(range(1, repeats + 1), desc="eval repeats"):
            task = tasks[r - 1]
            manifests.append(task.manifest())
            seed_everything(int(cfg.seed) + r)
            model = model_for_task(source.payload, task, device, int(cfg.seed) + r, reset=head_reset(cfg, direct), classifier=classifier)
            if cfg.adapt.init == "novel" and not direct:
                novel_initialised(model, task, settings, int(cfg.adapt.init_steps), device, int(cfg.seed) + r, bool(cfg.amp), classifier)

            clock = {"start": time.monotonic(), "scoring": 0.0}  # adaptation seconds exclude scoring

            def on_milestone(step: int, model, r=r, task=task, clock=clock) -> None:
                adapt_seconds = 0.0 if step == 0 else time.monotonic() - clock["start"] - clock["scoring"]
                scoring = time.monotonic()
                keep = curves if r == 1 and step == milestones[-1] else None  # the first task's final curves
                metrics = score(model, source.split, task, device, int(cfg.eval.batch_size), bool(cfg.amp), desc=f"eval r{r} step {step}", score_threshold=float(cfg.eval.score_threshold), curves=keep, workers=workers)
                clock["scoring"] += time.monotonic() - scoring
                if step == 0:  # adaptation time counts from the first step
                    clock["start"], clock["scoring"] = time.monotonic(), 0.0
                rows.append({"repeat": r, "task_seed": task.seed, "milestone": step, "adapt_seconds": round(adapt_seconds, 3), **metrics})
                run.log_metrics({f"repeat_{r:02d}/{k}": v for k, v in metrics.items() if k in SUMMARY_STATS + OPTIONAL_STATS}, step=step)

            if direct:
                on_milestone(0, model)
                continue
            result = fine_tune(model, DetectionDataset(task.support, task.class_ids), settings, device, seed=int(cfg.seed) + r, amp=bool(cfg.amp), milestones=milestones, on_milestone=on_milestone, desc=f"adapt r{r}")
            for row in rows:
                if row["repeat"] == r:
                    row["early_stopped_at"] = result.stopped_at if result.stopped_at is not None else ""
        table = aggregate(rows, milestones)
        for step, stats in table.items():
            run.log_metrics(stats, step=step)
        objective, at = objective_value(cfg, table)
        run.set_tags({"fsx.objective": str(cfg.eval.objective), "fsx.objective_milestone": str(at)})
        run.log_metrics({"objective": objective})
        last = [row["AP50"] for row in sorted(rows, key=lambda row: row["repeat"]) if row["milestone"] == milestones[-1]]
        running = cumulative(last)
        for k, stats in enumerate(running, start=1):
            run.log_metrics({"cumulative/AP50_mean": stats["mean"], "cumulative/AP50_ci95": stats["ci95"]}, step=k)
        speed = {}
        if len(milestones) > 1:
            seconds = {m: summarize(row["adapt_seconds"] for row in rows if row["milestone"] == m)["mean"] for m in milestones}
            speed = adaptation_speed({m: table[m]["AP50"] for m in milestones}, seconds)
            run.log_metrics({f"speed/AP50_{k}": v for k, v in speed.items()})
        run.log_dict({"kind": "eval", "split": source.split.manifest(), "tasks": manifests}, "manifest.json")
        run.log_text(_csv(rows), "eval/repeats.csv")
        run.log_text(_csv([{"milestone": s, **v} for s, v in table.items()]), "eval/summary.csv")
        run.log_metrics({"eval/seconds": time.monotonic() - started, "eval/repeats": repeats})
        label = f"{(source.payload.get('config') or {}).get('algorithm', {}).get('name', 'checkpoint')}, {repeats} tasks"
        with tempfile.TemporaryDirectory() as tmp:  # the curve at a glance in the MLflow UI
            curve = {step: {"mean": stats["AP50_mean"], "ci95": stats["AP50_ci95"]} for step, stats in table.items()}
            run.log_file(curve_png(Path(tmp) / "AP50.png", {label: curve}, "AP50", name), "eval")
            if len(running) > 1:
                run.log_file(repeats_png(Path(tmp) / "AP50_vs_repeats.png", running, f"AP50 at step {milestones[-1]}", name), "eval")
            if curves:
                run.log_file(pr_png(Path(tmp) / "pr_curves.png", curves, f"{name}: task 1 at step {milestones[-1]}, IoU 0.5"), "eval")
                run.log_text(pr_csv(curves), "eval/pr_curves.csv")

    print(format_table(table, repeats, first, cfg, direct))
    if speed:
        reach = ", ".join(f"{k[len('steps_to_'):-3]}% by step {v:.0f}" for k, v in speed.items() if k.startswith("steps_to_") and v == v)
        print(f"AP50 speed: mean level over steps 0-{milestones[-1]} {speed['auc']:.3f}" + (f"; reaches of its step-{milestones[-1]} value {reach}" if reach else ""))
    print(f"MLflow run: {run.id}")
    return {"run_id": run.id, "table": table, "rows": rows, "objective": objective}


def objective_value(cfg, table: dict[int, dict[str, float]]) -> tuple[float, int]:
    """What eval returns to a sweeper, and the milestone it was read at (eval.objective)."""
    metric, at = objective_milestone(cfg)
    if at is None:  # best: the milestone where the mean is highest (the earliest of ties)
        at = max(table, key=lambda m: (table[m].get(metric, float("-inf")), -m))
    elif at not in table:  # an adapted checkpoint scored directly has milestone 0 only
        at = max(table)
    return table[at].get(metric, float("nan")), at


def task_pool(cfg, source):
    """The source whose split the tasks come from: the benchmark's (eval.tasks=test) or, for
    tuning, base-class tasks on the images its pretraining held out (eval.tasks=validation)."""
    if cfg.eval.tasks != "validation":
        return source
    import dataclasses

    from fsx.data.folds import validation_split

    config = source.payload.get("config") or {}
    val_images = int((config.get("train") or {}).get("val_images", cfg.train.val_images))
    return dataclasses.replace(source, split=validation_split(source.split, val_images, int(source.dataset["split_seed"])))


def aggregate(rows: list[dict], milestones: list[int]) -> dict[int, dict[str, float]]:
    """Per milestone: <metric> (= mean), <metric>_mean, _std, _ci95 (Student-t), _ci95_tfa
(1.96 population std / sqrt n, TFA's), _q1, _median, _q3 over repeats."""
    table: dict[int, dict[str, float]] = {}
    for step in milestones:
        at = [row for row in rows if row["milestone"] == step]
        out: dict[str, float] = {}
        for metric in SUMMARY_STATS + tuple(m for m in OPTIONAL_STATS if at and m in at[0]):
            s = summarize(row[metric] for row in at)
            out[metric] = s["mean"]
            for key in ("mean", "std", "ci95", "ci95_tfa", "q1", "median", "q3"):
                out[f"{metric}_{key}"] = s[key]
        table[step] = out
    return table


def _fmt(mean: float, ci: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


def format_table(table: dict[int, dict[str, float]], repeats: int, task, cfg, direct: bool) -> str:
    head = (
        f"\n{len(task.class_ids)}-way {cfg.shots}-shot on {'validation tasks: base classes on held-out images' if cfg.eval.tasks == 'validation' else 'test-test'} ({', '.join(task.class_names)}), "
        + ("adapted checkpoint scored directly" if direct else f"mean ± 95% CI over {repeats} tasks")
    )
    shown = TABLE_METRICS + tuple(m for m in ("bAP50", "nAP50", "APr", "APc", "APf") if m in next(iter(table.values()), {}))
    lines = [head, f"{'steps':>6}  " + "  ".join(f"{m:>15}" for m in shown)]
    for step, stats in table.items():
        lines.append(f"{step:>6}  " + "  ".join(f"{_fmt(stats[m], stats[m + '_ci95']):>15}" for m in shown))
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
