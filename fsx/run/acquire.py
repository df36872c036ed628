"""fsx acquire: which unlabelled images to annotate next (active learning, PROTOCOLS 8).

The task that ways, shots, task_seed and the sampler keys pick (exactly as `fsx adapt` picks
it) is what is already annotated: its support set. The pool is the rest of test-adapt. The
checkpoint detects on every pool image (when it is not already adapted to the task's classes,
it is first adapted on the support for adapt.steps, as `fsx adapt` would), each image gets an
uncertainty score (`fsx.evaluation.acquisition`: the rules, what they mean for detectors with
one score per box, the aggregates), and the top acquire.k are written to `acquire.out`
(default: the Hydra run dir) and logged to MLflow under acquire/:

- manifest.json: the rule, the task, and the k images chosen (rank, image id, file name, score);
- ranking.csv: every pool image, most uncertain first, with `selected` = 1 for the top k;
- pseudo_labels.json (acquire.pseudo_threshold set): CEAL's pseudo-labels, a COCO dict of the
  support's real labels plus detections >= the threshold on the pool images not chosen, each
  marked "pseudo": true with its score; an image with a real label never gets one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

from fsx.data.coco import CocoSet, DetectionDataset
from fsx.data.folds import Split
from fsx.data.shots import Task
from fsx.engine.device import resolve_device, seed_everything
from fsx.engine.finetune import adapt as fine_tune
from fsx.evaluation.acquisition import merge_pseudo_labels, pseudo_labels, select
from fsx.evaluation.predict import predict
from fsx.run.checks import check_acquire
from fsx.run.fewshot import adapt_tags, head_reset, is_adapted_to, load_source, model_for_task, sample_task, task_options
from fsx.run.wiring import adapt_classifier, adapt_settings, output_dir, recorded_run


def annotated_ids(task: Task) -> set[int]:
    """The test-adapt image ids the support holds (TFA's per-class records carry theirs in
    source_image_id)."""
    return {img.get("source_image_id", img["id"]) for img in task.support.coco["images"]}


def pool_of(split: Split, task: Task, annotated: set[int]) -> CocoSet:
    """test-adapt minus the annotated images, with the task classes' boxes (the oracle's)."""
    return split.test_adapt.restrict([i for i in split.test_adapt.image_ids if i not in annotated], task.class_ids)


def pool_detections(model, pool: CocoSet, task: Task, device, batch_size: int, amp: bool, desc: str = "acquire") -> list[dict]:
    if not len(pool):
        return []
    return predict(model, DetectionDataset(pool, task.class_ids), device, batch_size=batch_size, amp=amp, desc=desc)


def choose(cfg, pool: CocoSet, detections: list[dict], k: int, seed: int) -> tuple[list[int], list[dict]]:
    """The k pool images acquire.* picks, and the whole ranking."""
    a = cfg.acquire
    empty = None if a.empty_score is None else float(a.empty_score)
    return select(pool.image_ids, detections, str(a.rule), str(a.aggregate), k, seed=seed, min_score=float(a.min_score), empty_score=empty)


def acquire(cfg) -> dict:
    check_acquire(cfg)
    a = cfg.acquire
    device = resolve_device(cfg.device)
    source = load_source(cfg)
    task = sample_task(source.split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed), **task_options(cfg))
    annotated = annotated_ids(task)
    pool = pool_of(source.split, task, annotated)
    if not len(pool):
        from fsx.errors import UsageError

        raise UsageError(f"the pool is empty: all {len(source.split.test_adapt)} test-adapt images are in the task's support (shots={cfg.shots})")
    out = Path(str(a.out)).expanduser() if a.out else output_dir()
    settings = adapt_settings(cfg, source.payload)
    adapted = is_adapted_to(source.payload, task.class_names)
    needs_model = a.rule != "random" or a.pseudo_threshold is not None
    tags = {
        **source.tags(),
        "fsx.checkpoint": source.reference,
        "fsx.acquire_rule": f"{a.rule} ({a.aggregate})" if a.rule != "random" else f"random (seed {a.seed})",
        **({"fsx.source_run": source.run_id} if source.run_id else {}),
        **(adapt_tags(settings) if needs_model and not adapted else {}),
    }
    name = f"acquire {a.rule} k={a.k} from {len(pool)} images {source.dataset['name']}/{source.dataset['fold']}"
    with recorded_run(cfg, "acquire", source.dataset, run_name=name, extra_tags=tags, checkpoint_config=source.payload.get("config")) as run:
        started = time.monotonic()
        detections: list[dict] = []
        note = ""
        if needs_model:
            seed_everything(int(cfg.seed))
            model = model_for_task(source.payload, task, device, int(cfg.seed), reset=head_reset(cfg), classifier=adapt_classifier(cfg, source.payload))
            if not adapted and settings.steps:
                result = fine_tune(model, DetectionDataset(task.support, task.class_ids), settings, device, seed=int(cfg.seed), amp=bool(cfg.amp))
                note = f"adapted the checkpoint on the support first ({result.steps_run} steps); "
            detections = pool_detections(model, pool, task, device, int(a.batch_size), bool(cfg.amp))
        chosen, ranking = choose(cfg, pool, detections, int(a.k), int(a.seed))
        seconds = time.monotonic() - started
        picked = set(chosen)
        for row in ranking:
            row["file_name"] = pool.image(row["image_id"])["file_name"]
            row["selected"] = int(row["image_id"] in picked)
        top = ranking[: int(a.k)]
        manifest = {
            "kind": "acquire",
            "rule": str(a.rule),
            "aggregate": str(a.aggregate) if a.rule != "random" else None,
            "seed": int(a.seed) if a.rule == "random" else None,
            "k": int(a.k),
            "pool": "test-adapt minus the task's support",
            "pool_images": len(pool),
            "annotated_images": sorted(annotated),
            "task": task.manifest(),
            "split": source.split.manifest(),
            "images": [{"rank": r["rank"], "image_id": r["image_id"], "file_name": r["file_name"], "score": _finite(r["score"]), "detections": r["detections"], "top_score": round(r["top_score"], 6)} for r in top],
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        (out / "ranking.csv").write_text(_csv(ranking))
        files = ["manifest.json", "ranking.csv"]
        pseudo = []
        if a.pseudo_threshold is not None:
            pseudo = pseudo_labels(detections, float(a.pseudo_threshold), exclude=annotated | picked)
            images = [pool.image(i) for i in dict.fromkeys(p["image_id"] for p in pseudo)]
            (out / "pseudo_labels.json").write_text(json.dumps(merge_pseudo_labels(task.support.coco, pseudo, images)))
            files.append("pseudo_labels.json")
        run.log_dict(manifest, "manifest.json")
        for file in files:
            run.log_file(out / file, "acquire")
        scores = [r["score"] for r in top if math.isfinite(r["score"])]
        run.log_metrics(
            {"acquire/pool_images": len(pool), "acquire/selected": len(top), "acquire/seconds": seconds, "acquire/detections": len(detections), "acquire/pseudo_labels": len(pseudo)}
            | ({"acquire/mean_selected_score": sum(scores) / len(scores)} if scores else {})
        )

    lines = [f"{note}ranked {len(pool)} pool images (test-adapt minus the {len(annotated)} annotated) by {manifest['rule']}" + (f" ({a.aggregate} over boxes >= {float(a.min_score):g})" if a.rule != "random" else f" (seed {a.seed})") + f" in {seconds:.1f} s; annotate next:"]
    if a.rule == "random":  # no model ran: the score is the seeded draw
        lines += [f"{r['rank']:>4}  {r['file_name']}  draw {r['score']:.3f}" for r in top]
    else:
        lines += [f"{r['rank']:>4}  {r['file_name']}  score {_shown(r['score'])}  ({r['detections']} boxes, top {r['top_score']:.2f})" for r in top]
    if a.pseudo_threshold is not None:
        lines.append(f"{len(pseudo)} pseudo-labels (score >= {float(a.pseudo_threshold):g}) on {len({p['image_id'] for p in pseudo})} other pool images")
    lines.append(f"wrote {out}: {', '.join(files)}")
    lines.append(f"MLflow run: {run.id}")
    print("\n".join(lines))
    return {"run_id": run.id, "out": out, "selected": chosen, "ranking": ranking, "pseudo": pseudo}


def _finite(value: float):
    return value if math.isfinite(value) else "inf"


def _shown(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "inf (no boxes)"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    fields = ["rank", "image_id", "file_name", "score", "detections", "top_score", "selected"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, "score": _finite(r["score"]), "top_score": round(r["top_score"], 6)} for r in rows)
    return buffer.getvalue()
