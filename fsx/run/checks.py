"""The checks a command's config can pass or fail before anything heavy is imported: value
ranges and checkpoint references. The CLI runs them first, so a typo answers in about a
second; the verbs run them again, so the Python API gets the same messages."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from fsx.data.choices import IMAGE_SUFFIXES, RECORD_MODES, SAMPLERS
from fsx.errors import UsageError


def check_pretrain(cfg) -> None:
    for key in ("steps", "log_every"):
        if cfg.train[key] < 1:
            raise UsageError(f"train.{key}={cfg.train[key]} must be at least 1")
    if cfg.train.passes is not None and cfg.train.passes < 1:
        raise UsageError(f"train.passes={cfg.train.passes} must be at least 1 (or null: use train.steps)")
    for key in ("checkpoint_every", "val_images"):
        if cfg.train[key] < 0:
            raise UsageError(f"train.{key}={cfg.train[key]} must be >= 0 (0 = never)")
    check_workers(cfg)


def check_workers(cfg) -> None:
    workers = cfg.get("workers", "auto")
    if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        raise UsageError(f"workers={workers}: write auto or a whole number of DataLoader worker processes (0: load batches in the main process)")


def check_adapt(cfg) -> None:
    """ways, shots and the adapt.* ranges (the choices among names are checked where they live)."""
    check_workers(cfg)
    if cfg.ways < 1:
        raise UsageError(f"ways={cfg.ways}: a task needs at least one class")
    if cfg.shots < 1:
        raise UsageError(f"shots={cfg.shots}: a task needs at least one image per class")
    if cfg.sampler not in SAMPLERS:
        raise UsageError(f"sampler={cfg.sampler}: choose one of {', '.join(SAMPLERS)}")
    if cfg.sample_records not in RECORD_MODES:
        raise UsageError(f"sample_records={cfg.sample_records}: choose one of {', '.join(RECORD_MODES)}")
    if cfg.sample_lists and not Path(str(cfg.sample_lists)).expanduser().is_dir():
        raise UsageError(f"sample_lists={cfg.sample_lists}: no such folder (give the vocsplit/ or cocosplit/ folder of published K-shot lists)")
    a = cfg.adapt
    if a.init not in ("random", "novel"):
        raise UsageError(f"adapt.init={a.init}: choose random (fresh novel rows) or novel (train a novel-only head first, TFA's COCO recipe)")
    if a.init == "novel" and not cfg.generalized:
        raise UsageError("adapt.init=novel is surgery for the generalized setting (base rows kept, novel rows trained first): add generalized=true")
    if a.init_steps < 1:
        raise UsageError(f"adapt.init_steps={a.init_steps} must be at least 1")
    if a.steps < 0:
        raise UsageError(f"adapt.steps={a.steps} must be >= 0")
    for key in ("batch_size", "window"):
        if a[key] < 1:
            raise UsageError(f"adapt.{key}={a[key]} must be at least 1")
    for key in ("lr", "factor"):
        if not a[key] > 0:
            raise UsageError(f"adapt.{key}={a[key]} must be positive")
    if not 0 <= cfg.eval.score_threshold <= 1:
        raise UsageError(f"eval.score_threshold={cfg.eval.score_threshold} must be between 0 and 1")


def milestones(cfg) -> list[int]:
    """eval.milestones as sorted distinct non-negative step counts."""
    try:
        steps = sorted({int(m) for m in cfg.eval.milestones})
    except (TypeError, ValueError):
        raise UsageError(f"eval.milestones={cfg.eval.milestones}: give a list of step counts, e.g. eval.milestones=[0,10,100]") from None
    if not steps or steps[0] < 0:
        raise UsageError(f"eval.milestones={list(cfg.eval.milestones)}: give non-negative step counts, e.g. [0,10,100]")
    return steps


TASK_POOLS = ("test", "validation")


def objective_milestone(cfg) -> tuple[str, int | None]:
    """eval.objective as (metric, milestone): `AP50@last` is AP50 at the last milestone;
    `AP50@best` (milestone None) the best of the milestones, so one adaptation run tunes the
    step count too."""
    from fsx.evaluation.coco_metrics import OPTIONAL_STATS, SUMMARY_STATS

    text = str(cfg.eval.objective)
    metric, at, step = text.partition("@")
    steps = milestones(cfg)
    if not at or metric not in SUMMARY_STATS + OPTIONAL_STATS:
        raise UsageError(f"eval.objective={text}: write <metric>@<milestone>, e.g. AP50@last, AP50@best or AP@100; metrics: {', '.join(SUMMARY_STATS + OPTIONAL_STATS)}")
    if step == "last":
        return metric, steps[-1]
    if step == "best":
        return metric, None
    if not step.isdigit() or int(step) not in steps:
        raise UsageError(f"eval.objective={text}: the milestone must be one of eval.milestones {steps}, `last` or `best`")
    return metric, int(step)


def check_eval(cfg) -> None:
    check_adapt(cfg)
    for key in ("repeats", "batch_size"):
        if cfg.eval[key] < 1:
            raise UsageError(f"eval.{key}={cfg.eval[key]} must be at least 1")
    milestones(cfg)
    if cfg.eval.tasks not in TASK_POOLS:
        raise UsageError(f"eval.tasks={cfg.eval.tasks}: choose test (the novel classes' test tasks) or validation (base-class tasks on the pretraining's held-out images, for tuning)")
    objective_milestone(cfg)


def check_checkpoint(cfg) -> None:
    """The reference can be served: a file that exists, or a store that exists."""
    reference = str(cfg.checkpoint) if cfg.checkpoint is not None else ""
    if reference in ("", "None"):
        raise UsageError("this command needs a checkpoint: add checkpoint=runs:/<run_id>, checkpoint=latest or checkpoint=<file.pt>")
    uri = str(cfg.mlflow.tracking_uri)
    if reference == "latest" or reference.startswith(("latest:", "runs:/")):
        database = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else None
        if database and not Path(database).is_file():
            raise UsageError(f"checkpoint={reference}: there is no MLflow store at {uri} yet: run `fsx pretrain` here first, or point mlflow.tracking_uri at the store that has the run")
        return
    if not Path(reference).expanduser().is_file():
        raise UsageError(f"checkpoint={reference}: no such file (use runs:/<run_id> for an MLflow run)")


def check_external(cfg) -> None:
    """Scoring a results file: both files exist (their contents are checked when read)."""
    if not cfg.eval.ground_truth:
        raise UsageError("eval.detections needs eval.ground_truth=<the COCO annotations JSON the detections are on>")
    for key in ("detections", "ground_truth"):
        if not Path(str(cfg.eval[key])).expanduser().is_file():
            raise UsageError(f"eval.{key}={cfg.eval[key]}: no such file")


DETECT_SORTS = ("image_id", "confidence", "uncertainty")


def check_detect(cfg) -> None:
    """fsx detect: the images exist and a folder holds at least one image file (the walk
    stops at the first); the ranges; the checkpoint. A COCO JSON's contents are checked when
    it is read."""
    import os

    d = cfg.detect
    if d.images in (None, ""):
        raise UsageError("fsx detect needs images: add detect.images=<a folder of images, one image file or a COCO JSON> (or images=... for short)")
    path = Path(str(d.images)).expanduser()
    if not path.exists():
        raise UsageError(f"detect.images={d.images}: no such folder or file")
    if path.is_dir():
        found = False
        for _, dirs, files in os.walk(path):
            dirs[:] = [x for x in dirs if not x.startswith(".")]  # as fsx detect lists them: hidden ones skipped
            found = any(name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".") for name in files)
            if found:
                break
        if not found:
            raise UsageError(f"detect.images={d.images}: no image files ({' '.join(IMAGE_SUFFIXES)}, any case) in this folder or below")
    elif path.suffix.lower() not in IMAGE_SUFFIXES + (".json",):
        raise UsageError(f"detect.images={d.images}: give a folder of images, one image file ({' '.join(IMAGE_SUFFIXES)}) or a COCO JSON")
    if d.image_root not in (None, "") and not Path(str(d.image_root)).expanduser().is_dir():
        raise UsageError(f"detect.image_root={d.image_root}: no such folder")
    if not 0 <= d.score_threshold <= 1:
        raise UsageError(f"detect.score_threshold={d.score_threshold} must be between 0 and 1")
    if d.batch_size < 1:
        raise UsageError(f"detect.batch_size={d.batch_size} must be at least 1")
    if d.max_render < 0:
        raise UsageError(f"detect.max_render={d.max_render} must be >= 0 (0: render nothing, an empty page)")
    if d.sort not in DETECT_SORTS:
        raise UsageError(f"detect.sort={d.sort}: choose one of {', '.join(DETECT_SORTS)}")
    check_checkpoint(cfg)


ACQUIRE_RULES = ("random", "least_confidence", "margin", "entropy")  # fsx.evaluation.acquisition.RULES
ACQUIRE_AGGREGATES = ("max", "mean", "sum")


def check_acquire(cfg) -> None:
    """fsx acquire (and the acquisition of fsx loop): the task keys, the acquire.* choices and
    ranges, the checkpoint."""
    check_adapt(cfg)
    a = cfg.acquire
    if a.rule not in ACQUIRE_RULES:
        raise UsageError(f"acquire.rule={a.rule}: choose one of {', '.join(ACQUIRE_RULES)}")
    if a.aggregate not in ACQUIRE_AGGREGATES:
        raise UsageError(f"acquire.aggregate={a.aggregate}: choose one of {', '.join(ACQUIRE_AGGREGATES)}")
    for key in ("k", "batch_size"):
        if a[key] < (0 if key == "k" and cfg.command == "loop" else 1):
            raise UsageError(f"acquire.{key}={a[key]} must be at least 1" + (" (fsx loop: 0 re-adapts on the same images each round)" if key == "k" and cfg.command == "loop" else ""))
    if not 0 <= a.min_score <= 1:
        raise UsageError(f"acquire.min_score={a.min_score} must be between 0 and 1")
    if a.pseudo_threshold is not None and not 0 < a.pseudo_threshold <= 1:
        raise UsageError(f"acquire.pseudo_threshold={a.pseudo_threshold} must be in (0, 1], or null (no pseudo-labels)")
    check_checkpoint(cfg)


LOOP_METRICS = ("AP50", "AP", "AP75", "vocAP50")
LOOP_STARTS = ("support", "all")


def check_loop(cfg) -> None:
    """fsx loop: the loop.* ranges, and what fsx acquire checks."""
    lp = cfg.loop
    if lp.rounds < 1:
        raise UsageError(f"loop.rounds={lp.rounds} must be at least 1")
    if lp.annotation_seconds < 0:
        raise UsageError(f"loop.annotation_seconds={lp.annotation_seconds} must be >= 0 (seconds to annotate one image)")
    steps = lp.steps
    by_algorithm = OmegaConf.is_dict(steps)
    values = list(steps.values()) if by_algorithm else [steps]
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in values) or (by_algorithm and "default" not in steps):
        raise UsageError(
            f"loop.steps={OmegaConf.to_container(steps) if by_algorithm else steps}: adaptation steps per round, a whole number >= 0, null "
            "(adapt.steps), or per pretraining algorithm with a default, e.g. {reptile: 10, default: 1000}"
        )
    if lp.start not in LOOP_STARTS:
        raise UsageError(f"loop.start={lp.start}: choose support (the sampled task's images) or all (every test-adapt image but the later rounds' pool)")
    if lp.patience is not None and lp.patience < 1:
        raise UsageError(f"loop.patience={lp.patience} must be at least 1 (or null: run every round)")
    if lp.min_delta < 0:
        raise UsageError(f"loop.min_delta={lp.min_delta} must be >= 0")
    if lp.metric not in LOOP_METRICS:
        raise UsageError(f"loop.metric={lp.metric}: choose one of {', '.join(LOOP_METRICS)}")
    check_acquire(cfg)


def precheck(verb: str, cfg) -> None:
    if verb == "pretrain":
        check_pretrain(cfg)
    elif verb == "adapt":
        check_adapt(cfg)
        check_checkpoint(cfg)
    elif verb == "eval":
        check_eval(cfg)
        if cfg.eval.detections:
            check_external(cfg)
        else:
            check_checkpoint(cfg)
    elif verb == "detect":
        check_detect(cfg)
    elif verb == "acquire":
        check_acquire(cfg)
    elif verb == "loop":
        check_loop(cfg)
    elif verb == "export":
        check_checkpoint(cfg)
