"""fsx loop: the Reptile thesis's feedback loop (PROTOCOLS 7.2, 8), simulated on a benchmark
with the ground truth as the annotator.

Round 1 starts from the support set of the task that ways, shots, task_seed and the sampler
keys pick (S images, as `fsx adapt` samples them), or with loop.start=all from every
test-adapt image but acquire.k x (rounds - 1) held back at random as the pool (RT's "many
examples": annotated before the loop, so round 1 counts no annotation time). Every round:

1. (from round 2) acquire: the previous round's model detects on the pool (test-adapt minus
   the annotated images) and acquire.rule picks acquire.k images; the oracle "annotates" them:
   their ground-truth boxes of the task classes join the support (acquire.k=0: nothing is
   added, the round adapts again on the same images: RT's use case 1);
2. adapt for loop.steps (default adapt.steps; early stopping as in `fsx adapt`), from the
   checkpoint (loop.warm_start=false: every round is the model the thesis's tool would train
   on that many examples, so rounds compare) or from the previous round's weights (true);
3. score all of test-test (`fsx.run.fewshot.score`, the metrics `fsx adapt` logs).

Simulated annotation time: the images newly annotated in the round (S in round 1, k later) x
loop.annotation_seconds (21 s, RT's figure). cumulative_seconds adds the round's measured
acquisition, adaptation and evaluation seconds and its simulated annotation seconds.
With sampler=instance the start holds exactly K boxes per class; from round 2 the oracle's
annotation is complete, the start images' other boxes included.
The loop stops after loop.rounds rounds, when the pool is empty, or (loop.patience) when
loop.metric has not gained loop.min_delta over its best for that many rounds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import time

from omegaconf import OmegaConf

from fsx.data.coco import DetectionDataset
from fsx.engine.device import loader_workers, resolve_device, seed_everything
from fsx.engine.finetune import adapt as fine_tune
from fsx.errors import UsageError
from fsx.run.acquire import annotated_ids, choose, pool_detections, pool_of
from fsx.run.checks import check_loop
from fsx.run.fewshot import adapt_tags, head_reset, load_source, model_for_task, sample_task, score, task_options
from fsx.run.wiring import adapt_classifier, adapt_settings, recorded_run

COLUMNS = ("round", "images", "added", "AP50", "AP", "acquire_seconds", "adapt_seconds", "eval_seconds", "annotation_seconds", "cumulative_seconds")


def loop(cfg) -> dict:
    check_loop(cfg)
    lp, a = cfg.loop, cfg.acquire
    device = resolve_device(cfg.device)
    workers = loader_workers(cfg.get("workers", "auto"), device)
    source = load_source(cfg)
    settings = adapt_settings(cfg, source.payload)
    pretrained_by = str(((source.payload.get("config") or {}).get("algorithm") or {}).get("name", "unknown"))
    steps = round_steps(lp.steps, pretrained_by)
    if steps is not None:
        settings.steps = int(steps)
    classifier = adapt_classifier(cfg, source.payload)
    start = sample_task(source.split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed), **task_options(cfg))
    if lp.start == "all":
        start = everything_but_the_pool(source.split, start, int(a.k) * (int(lp.rounds) - 1), int(a.seed))
    annotated = sorted(annotated_ids(start))
    metric = str(lp.metric)
    tags = {
        **source.tags(),
        **adapt_tags(settings),
        "fsx.checkpoint": source.reference,
        "fsx.acquire_rule": f"{a.rule} ({a.aggregate})" if a.rule != "random" else f"random (seed {a.seed} + round)",
        "fsx.loop_start": "from the checkpoint every round" if not lp.warm_start else "from the previous round's weights",
        "fsx.loop_annotated_at_start": f"{len(annotated)} images ({'the sampled support' if lp.start == 'support' else 'all of test-adapt but the pool of the later rounds'})",
        "fsx.loop_steps": f"{settings.steps} per round (loop.steps for a {pretrained_by} checkpoint)" if steps is not None else f"{settings.steps} per round (adapt.steps)",
        **({"fsx.source_run": source.run_id} if source.run_id else {}),
    }
    name = f"loop {a.rule} {len(annotated)}+{a.k}x{int(lp.rounds) - 1} {source.dataset['name']}/{source.dataset['fold']}"
    rows: list[dict] = []
    rounds: list[dict] = []
    stopped = ""
    with recorded_run(cfg, "loop", source.dataset, run_name=name, extra_tags=tags, checkpoint_config=source.payload.get("config")) as run:
        model, task, cumulative, best, since_best = None, start, 0.0, -math.inf, 0
        for r in range(1, int(lp.rounds) + 1):
            added: list[int] = []
            acquire_seconds = 0.0
            if r > 1 and int(a.k) == 0:  # RT's use case 1: the same images, adapted again
                pass
            elif r > 1:
                pool = pool_of(source.split, start, set(annotated))
                if not len(pool):
                    stopped = f"the pool is empty after round {r - 1}"
                    break
                clock = time.monotonic()
                detections = pool_detections(model, pool, task, device, int(a.batch_size), bool(cfg.amp), desc=f"acquire r{r}") if a.rule != "random" else []
                added, _ = choose(cfg, pool, detections, int(a.k), int(a.seed) + r)
                acquire_seconds = time.monotonic() - clock
                annotated = annotated + added
                # the oracle: every ground-truth box of the task classes in the annotated images
                task = dataclasses.replace(start, support=source.split.test_adapt.restrict(annotated, start.class_ids))
            elif r == 1:
                task = start
            seed_everything(int(cfg.seed))  # the same seed every round: rounds differ in their data only
            if model is None or not lp.warm_start:
                model = model_for_task(source.payload, task, device, int(cfg.seed), reset=head_reset(cfg), classifier=classifier)
            clock = time.monotonic()
            result = fine_tune(model, DetectionDataset(task.support, task.class_ids), settings, device, seed=int(cfg.seed), amp=bool(cfg.amp), desc=f"adapt r{r}")
            adapt_seconds = time.monotonic() - clock
            clock = time.monotonic()
            metrics = score(model, source.split, task, device, int(cfg.eval.batch_size), bool(cfg.amp), desc=f"evaluate r{r}", score_threshold=float(cfg.eval.score_threshold), workers=workers)
            eval_seconds = time.monotonic() - clock
            new = (len(annotated) if lp.start == "support" else 0) if r == 1 else len(added)
            annotation_seconds = new * float(lp.annotation_seconds)
            cumulative += acquire_seconds + adapt_seconds + eval_seconds + annotation_seconds
            row = {
                "round": r, "images": len(annotated), "added": new, "AP50": metrics["AP50"], "AP": metrics["AP"],
                **({metric: metrics[metric]} if metric not in ("AP50", "AP") else {}),
                "acquire_seconds": round(acquire_seconds, 3), "adapt_seconds": round(adapt_seconds, 3), "eval_seconds": round(eval_seconds, 3),
                "annotation_seconds": annotation_seconds, "cumulative_seconds": round(cumulative, 3), "steps_run": result.steps_run,
            }
            rows.append(row)
            rounds.append({"round": r, "added": added if r > 1 else list(annotated), "file_names": [source.split.test_adapt.image(i)["file_name"] for i in (added if r > 1 else annotated)]})
            run.log_metrics({f"loop/{k}": float(v) for k, v in row.items() if k not in ("round",) and isinstance(v, (int, float))} | {"loop/images": len(annotated)}, step=r)
            value = metrics[metric]
            if value == value and value >= best + float(lp.min_delta):
                best, since_best = value, 0
            else:
                since_best += 1
            if lp.patience is not None and since_best >= int(lp.patience) and r < int(lp.rounds):
                stopped = f"{metric} gained less than {float(lp.min_delta):g} for {since_best} round{'s' * (since_best != 1)}: flattened after round {r}"
                break
        run.log_dict({"kind": "loop", "split": source.split.manifest(), "task": start.manifest(), "rounds": rounds}, "manifest.json")
        run.log_text(_csv(rows), "loop/rounds.csv")
        run.log_metrics({"loop/rounds_run": len(rows), "loop/final_" + metric: rows[-1][metric]})
        if stopped:
            run.set_tags({"fsx.loop_stopped": stopped})

    print(format_table(rows, cfg, start, len(source.split.test_adapt)))
    if stopped:
        print(f"stopped: {stopped}")
    print(f"MLflow run: {run.id}")
    return {"run_id": run.id, "rows": rows, "rounds": rounds}


def round_steps(setting, algorithm: str) -> int | None:
    """loop.steps for a checkpoint pretrained by `algorithm`: a number, null (adapt.steps), or
    one per pretraining algorithm with a default (RT Table 6.4: {reptile: 10, default: 1000})."""
    if OmegaConf.is_dict(setting) or isinstance(setting, dict):
        return setting.get(algorithm, setting["default"])
    return setting


def everything_but_the_pool(split, task, held_back: int, seed: int):
    """The task with every test-adapt image as its support except `held_back` drawn at random
    (seeded), which are left as the pool the later rounds annotate from: RT's "many examples"
    (all of test-adapt annotated) before a use case adds its images."""
    ids = split.test_adapt.image_ids
    if held_back >= len(ids):
        raise UsageError(f"loop.start=all holds back acquire.k x (loop.rounds - 1) = {held_back} of the {len(ids)} test-adapt images for later rounds: nothing would be annotated at the start")
    back = set(random.Random(seed).sample(ids, held_back))
    return dataclasses.replace(task, support=split.test_adapt.restrict([i for i in ids if i not in back], task.class_ids))


def format_table(rows: list[dict], cfg, task, pool_size: int) -> str:
    a = cfg.loop
    rule = f"{cfg.acquire.rule} ({cfg.acquire.aggregate})" if cfg.acquire.rule != "random" else "random"
    k = int(cfg.acquire.k)
    later = "one round" if int(a.rounds) == 1 else ("the same images adapted again each round" if k == 0 else f"+{k} a round by {rule}")
    head = (
        f"\nfeedback loop: {len(task.class_ids)}-way, start {rows[0]['images']} images, {later} (test-adapt: {pool_size} images); "
        f"{'warm start' if a.warm_start else 'adapted from the checkpoint'} each round; {float(a.annotation_seconds):g} s per annotated image"
    )
    lines = [head, f"{'round':>5} {'images':>6} {'AP50':>7} {'AP':>7} {'acquire s':>9} {'adapt s':>8} {'eval s':>7} {'annotate s':>10} {'total s':>9}"]
    for row in rows:
        lines.append(
            f"{row['round']:>5} {row['images']:>6} {_m(row['AP50']):>7} {_m(row['AP']):>7} {row['acquire_seconds']:>9.1f} {row['adapt_seconds']:>8.1f} "
            f"{row['eval_seconds']:>7.1f} {row['annotation_seconds']:>10.0f} {row['cumulative_seconds']:>9.1f}"
        )
    return "\n".join(lines)


def _m(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def _csv(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
