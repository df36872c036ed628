"""fsx adapt: fine-tune a pretrained checkpoint on one K-shot task of the fold's novel classes."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fsx.data.coco import DetectionDataset
from fsx.engine.checkpoint import save_checkpoint
from fsx.engine.device import loader_workers, resolve_device, seed_everything
from fsx.engine.finetune import adapt as fine_tune
from fsx.models.heads import predictor_spec
from fsx.run.fewshot import (
    adapt_tags,
    head_reset,
    init_tags,
    load_source,
    model_for_task,
    novel_initialised,
    pretrained_classes,
    sample_task,
    score,
    task_options,
)
from fsx.run.wiring import adapt_classifier, adapt_settings, log_checkpoint, recorded_run, run_config


def adapt(cfg) -> dict:
    device = resolve_device(cfg.device)
    workers = loader_workers(cfg.get("workers", "auto"), device)
    source = load_source(cfg)
    settings = adapt_settings(cfg, source.payload)
    task = sample_task(source.split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed), **task_options(cfg))
    seed_everything(cfg.seed)
    classifier = adapt_classifier(cfg, source.payload)
    model = model_for_task(source.payload, task, device, int(cfg.seed), reset=head_reset(cfg), classifier=classifier)
    if cfg.adapt.init == "novel":
        novel_initialised(model, task, settings, int(cfg.adapt.init_steps), device, int(cfg.seed), bool(cfg.amp), classifier)
    tags = {**source.tags(), **adapt_tags(settings), **init_tags(cfg), "fsx.checkpoint": source.reference, **({"fsx.source_run": source.run_id} if source.run_id else {})}
    name = f"adapt {len(task.class_ids)}-way {task.shots}-shot {source.dataset['name']}/{source.dataset['fold']}"
    with recorded_run(cfg, "adapt", source.dataset, run_name=name, extra_tags=tags, checkpoint_config=source.payload.get("config")) as run:
        run.log_dict({**task.manifest(), "split": source.split.manifest()}, "manifest.json")
        started = time.monotonic()
        result = fine_tune(model, DetectionDataset(task.support, task.class_ids), settings, device, seed=int(cfg.seed), amp=bool(cfg.amp))
        seconds = time.monotonic() - started
        run.log_metrics(
            {"adapt/steps_run": result.steps_run, "adapt/seconds": seconds, "adapt/early_stopped": float(result.stopped_at is not None)}
            | ({"adapt/final_loss": result.final_loss} if result.final_loss is not None else {}),
            step=settings.steps,
        )
        if result.stopped_at is not None:
            run.set_tags({"fsx.early_stopping": f"fired at step {result.stopped_at}, rolled back to step {result.rolled_back_to}"})
        metrics = {}
        if cfg.adapt.evaluate:
            metrics = score(model, source.split, task, device, int(cfg.eval.batch_size), bool(cfg.amp), score_threshold=float(cfg.eval.score_threshold), workers=workers)
            run.log_metrics(metrics, step=settings.steps)
        spec = dict(source.payload["model_spec"])
        spec.update(num_classes=len(task.class_ids), detector={**spec["detector"], **predictor_spec(model)})
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(
                Path(tmp) / "model.pt", model, spec, task.class_names, run_config(cfg, source.dataset, source.payload.get("config")), kind="adapt", step=settings.steps,
                source_run=source.run_id, task=task.manifest(), pretrained_classes=pretrained_classes(source.payload), start=source.payload.get("start"), lineage=source.payload.get("lineage"),
            )
            log_checkpoint(run, path)

    stopped = f"; early stopping fired at step {result.stopped_at} (rolled back to {result.rolled_back_to})" if result.stopped_at else ""
    scored = f"; test-test AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f}" if metrics else ""
    print(
        f"adapted to {', '.join(task.class_names)} ({task.shots}-shot, {len(task.support)} images, task_seed {task.seed}): "
        f"{result.steps_run} steps in {seconds:.0f}s{stopped}{scored}\ncheckpoint: runs:/{run.id}/checkpoints/model.pt"
    )
    return {"run_id": run.id, "metrics": metrics, "steps_run": result.steps_run, "checkpoint": f"runs:/{run.id}/checkpoints/model.pt", "objective": metrics.get("AP50") if metrics else None}
