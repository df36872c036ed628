"""The cfg -> objects glue every verb shares: the benchmark split, the model spec, the
adaptation settings, and the MLflow run with the contract's tags and files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from fsx import tracking
from fsx.data import benchmarks
from fsx.data.benchmarks import BENCHMARKS
from fsx.data.coco import CocoSet
from fsx.data.custom import custom_fold, load_custom
from fsx.data.folds import Split, letters_fold, split_by_fold, split_own
from fsx.data.letters import LettersSpec, letters_cache
from fsx.engine.finetune import OPTIMIZERS, AdaptSettings
from fsx.errors import UsageError
from fsx.models.heads import TRAINABLE
from fsx.run.checks import check_adapt
from fsx.run.sweep import config_hash, hydra_job, job_tags, note_job_run, parent_run_id

HEAD_POLICIES = ("auto", "reset")  # auto: keep an adapted or meta-learned head that fits the task


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def benchmark_split(dataset: dict) -> Split:
    """The fold's train / test-adapt / test-test split of the configured dataset."""
    if dataset["name"] in BENCHMARKS:
        return benchmarks.benchmark_split(dataset)
    source = dataset_source(dataset)
    if dataset["name"] == "letters":
        return split_by_fold(source, letters_fold(int(dataset["fold"])), int(dataset["split_seed"]))
    fold = custom_fold(source, dataset.get("novel"))
    if not fold.base:  # every class novel: the dataset's own train / test splits
        return split_own(source, fold)
    return split_by_fold(source, fold, int(dataset["split_seed"]))


def dataset_source(dataset: dict) -> CocoSet:
    """The whole of a letters or custom dataset, before any split."""
    name = dataset["name"]
    if name == "letters":
        root = letters_cache(LettersSpec(**dataset["generator"]), Path(dataset["cache_dir"]))
        return CocoSet.load(root / "annotations.json", root)
    if name == "custom":
        return load_custom(dataset["format"], dataset.get("path"), dataset.get("annotations"), dataset.get("images"), dataset.get("image_set"), dataset.get("prefix"))
    if name in BENCHMARKS:
        raise UsageError(f"dataset={name} is read as its protocol's parts, not as one source")
    raise UsageError(f"dataset={name}: choose letters, custom or one of {', '.join(BENCHMARKS)}")


RECIPE_KEYS = ("params", "optimizer", "momentum", "lr", "weight_decay", "beta1")


def adapt_recipe(cfg, checkpoint: dict | None) -> dict | None:
    """The adaptation recipe a checkpoint carries (TFA's stage 2; a meta-learner's inner
    optimiser), unless adapt.recipe=none."""
    if cfg.adapt.recipe not in ("auto", "none"):
        raise UsageError(f"adapt.recipe={cfg.adapt.recipe}: choose auto (adapt as the checkpoint was trained to, if it says how) or none (the adapt.* keys alone)")
    return (checkpoint or {}).get("adapt_recipe") if cfg.adapt.recipe == "auto" else None


CLASSIFIER_CHOICES = ("auto", "fc", "cos")


def adapt_classifier(cfg, checkpoint: dict | None) -> dict | None:
    """The kind of fresh Faster R-CNN class head adaptation builds: adapt.classifier=auto
    follows the checkpoint's recipe (TFA: cosine) or keeps the checkpoint's own kind; fc or
    cos choose (the cosine scale comes from the recipe, else 20)."""
    choice = str(cfg.adapt.classifier)
    if choice not in CLASSIFIER_CHOICES:
        raise UsageError(f"adapt.classifier={choice}: choose one of {', '.join(CLASSIFIER_CHOICES)}")
    recipe = (adapt_recipe(cfg, checkpoint) or {}).get("classifier")
    if choice == "auto":
        return recipe
    if choice == "fc":
        return {"classifier": "fc"}
    return {"classifier": "cos", "cosine_scale": float((recipe or {}).get("cosine_scale", 20.0)), "learn_scale": bool((recipe or {}).get("learn_scale", False))}


def adapt_settings(cfg, checkpoint: dict | None = None) -> AdaptSettings:
    """Adaptation settings from cfg.adapt; a Meta-SGD checkpoint's learned step sizes replace
    the optimiser unless adapt.learned_lr=false; a checkpoint's recipe (TFA's stage 2, a
    meta-learner's inner optimiser) sets the keys it names, except those set on the command
    line (adapt.params=all: TFA's ft-full)."""
    check_adapt(cfg)
    a = OmegaConf.create(plain(cfg.adapt))
    recipe = adapt_recipe(cfg, checkpoint)
    origin = "common"
    if recipe:
        explicit = explicit_keys()
        for key in RECIPE_KEYS:
            if key in recipe and f"adapt.{key}" not in explicit:
                a[key] = recipe[key]
        mine = sorted(f"adapt.{key}" for key in RECIPE_KEYS if key in recipe and f"adapt.{key}" in explicit)
        origin = str(recipe.get("from", "checkpoint")) + (f" (command line: {', '.join(mine)})" if mine else "")
    if a.params not in TRAINABLE:
        raise UsageError(f"adapt.params={a.params}: choose one of {', '.join(TRAINABLE)}")
    if a.optimizer not in OPTIMIZERS:
        raise UsageError(f"adapt.optimizer={a.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if a.head not in HEAD_POLICIES:
        raise UsageError(f"adapt.head={a.head}: choose one of {', '.join(HEAD_POLICIES)}")
    rates = (checkpoint or {}).get("inner_lr") if a.learned_lr else None
    return AdaptSettings(
        steps=int(a.steps), lr=float(a.lr), batch_size=int(a.batch_size), weight_decay=float(a.weight_decay),
        beta1=float(a.beta1), params=str(a.params), clip_norm=a.clip_norm, early_stopping=bool(a.early_stopping),
        window=int(a.window), factor=float(a.factor), optimizer=str(a.optimizer), momentum=float(a.momentum), learned_rates=rates or None,
        recipe=origin,
    )


def dataset_for_checkpoint(cfg, checkpoint_config: dict | None) -> dict:
    """The dataset adapt and eval use: the one the checkpoint was pretrained on, with the
    command line's `dataset.<key>=...` overrides applied on top (a `dataset=<name>` group
    switch replaces it). The cache directory is always this machine's. Adapting to another
    fold of the same dataset is refused: its novel classes were base classes in pretraining."""
    overrides = command_line_overrides()
    stored = (checkpoint_config or {}).get("dataset")
    switched = any(o.lstrip("+~").split("=", 1)[0] == "dataset" for o in overrides)
    if not stored or switched:
        return plain(cfg.dataset)
    dotlist = [o.lstrip("+")[len("dataset.") :] for o in overrides if o.lstrip("+").startswith("dataset.")]
    merged = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist(dotlist))
    chosen = OmegaConf.to_container(merged, resolve=True)
    chosen["cache_dir"] = cfg.dataset.cache_dir
    if chosen.get("fold") != stored.get("fold"):
        raise UsageError(
            f"dataset.fold={chosen.get('fold')}: the checkpoint was pretrained on {stored['name']} fold {stored.get('fold')}, "
            f"where fold {chosen.get('fold')}'s novel classes are base classes; pretrain on fold {chosen.get('fold')} instead"
        )
    return chosen


def command_line_overrides() -> list[str]:
    hc = hydra_job()
    return list(hc.overrides.task) if hc is not None else []  # called from Python: no command line


def explicit_keys() -> set[str]:
    """The keys (and group names) the command line sets, e.g. {"adapt.lr", "backbone"}."""
    return {o.lstrip("+~").split("=", 1)[0] for o in command_line_overrides()}


def output_dir() -> Path:
    hc = hydra_job()
    return Path(hc.runtime.output_dir) if hc is not None else Path("outputs")


MODEL_GROUPS = ("algorithm", "detector", "backbone")


def run_config(cfg, dataset: dict, checkpoint_config: dict | None = None) -> dict:
    """The config a run records: the command line's, with the dataset in force and, for a run
    that starts from a checkpoint, the checkpoint's model groups (what the model really is)."""
    config = plain(cfg)
    config["dataset"] = dataset
    for group in MODEL_GROUPS:
        if checkpoint_config and isinstance(checkpoint_config.get(group), dict):
            config[group] = checkpoint_config[group]
    return config


def run_tags(command: str, dataset: dict, config: dict) -> dict[str, str]:
    return {
        "fsx.command": command,
        "fsx.dataset": dataset["name"],
        "fsx.fold": str(dataset["fold"]),
        **{f"fsx.{group}": str(config[group]["name"]) for group in MODEL_GROUPS},
    }


def resumed_config(cfg, stored: dict | None) -> DictConfig:
    """The config a resumed run goes on with: the interrupted run's own, with what this
    command line sets explicitly on top (a group switch there replaces the stored group), so
    `fsx pretrain resume=true` needs no other argument."""
    if not stored:
        return cfg
    overrides = [o for o in command_line_overrides() if o.lstrip("+~").split("=", 1)[0] != "resume"]
    switched = {o.lstrip("+~").split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]}
    merged = OmegaConf.create(plain(cfg))
    keep = {k: v for k, v in stored.items() if k not in switched and k not in ("resume", "device", "mlflow") and k in merged}
    merged = OmegaConf.merge(merged, keep)
    dotted = [o.lstrip("+") for o in overrides if "." in o.split("=", 1)[0]]
    return OmegaConf.merge(merged, OmegaConf.from_dotlist(dotted)) if dotted else merged


@contextlib.contextmanager
def recorded_run(
    cfg, command: str, dataset: dict, run_name: str, extra_tags: dict | None = None, checkpoint_config: dict | None = None, resume_run_id: str | None = None,
    hashed_config: dict | None = None,
) -> Iterator[tracking.Run]:
    """An MLflow run with the contract's tags, config.yaml and params; prints its id.
    `resume_run_id` continues an interrupted run instead (its config and params are there).
    `hashed_config`: the config as the command line composed it, when `cfg` has been
    completed since (a COCO detector's architecture): a rerun sweep recognises the run by it.

    A failure inside is recorded as the tag `fsx.error` before the run is marked FAILED.
    """
    config = run_config(cfg, dataset, checkpoint_config)
    tags = {**run_tags(command, dataset, config), **({} if resume_run_id else job_tags()), **(extra_tags or {})}
    if not resume_run_id:
        tags["fsx.config_hash"] = config_hash(hashed_config or plain(cfg))  # a rerun sweep skips what this run did
    with tracking.open_run(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name, tags, parent_run_id(), resume_run_id=resume_run_id) as run:
        note_job_run(run.id)
        again = " (resumed)" if resume_run_id else ""
        print(f"fsx {command}: MLflow run {run.id}{again} (experiment '{cfg.mlflow.experiment}' at {cfg.mlflow.tracking_uri})", flush=True)
        if not resume_run_id:
            run.log_text(OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
            run.log_params({k: v for k, v in config.items() if k not in ("mlflow",)})
        try:
            yield run
        except BaseException as e:
            with contextlib.suppress(Exception):
                run.set_tags({"fsx.error": f"{type(e).__name__}: {e}"[:5000]})
            raise


def log_checkpoint(run: tracking.Run, path: Path) -> None:
    """Store a final checkpoint in the run; if the store fails, keep the file in the run
    directory and say where, so the training is not lost with the connection."""
    import shutil

    try:
        run.log_file(path, "checkpoints")
    except tracking.StoreError as e:
        kept = output_dir() / "checkpoints" / path.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, kept)
        raise tracking.StoreError(f"{e}; the checkpoint is kept at {kept.resolve()}") from None
