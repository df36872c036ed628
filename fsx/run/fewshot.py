"""What adapt and eval share: the checkpoint and its split, a model ready for a task, scoring."""

from __future__ import annotations

import copy
import dataclasses

import torch

from fsx import tracking
from fsx.data.choices import SAMPLERS
from fsx.data.classes import same_class_names
from fsx.data.coco import DetectionDataset
from fsx.data.folds import Split
from fsx.data.published import published_task
from fsx.data.shots import Task, choose_classes, sample_instances, sample_shots
from fsx.engine.checkpoint import load_model, read_checkpoint
from fsx.engine.finetune import adapt as fine_tune
from fsx.errors import UsageError
from fsx.evaluation.coco_metrics import detection_metrics, group_metrics
from fsx.evaluation.lvis_metrics import lvis_metrics
from fsx.evaluation.predict import predict
from fsx.evaluation.voc import pr_curves
from fsx.models.heads import class_rows, copy_class_rows, num_classes, reset_class_head
from fsx.run.wiring import benchmark_split, dataset_for_checkpoint


@dataclasses.dataclass
class Source:
    payload: dict  # the checkpoint
    reference: str  # what the user wrote
    run_id: str | None  # the MLflow run it came from
    dataset: dict  # the dataset config in force
    split: Split
    seen_novel: list[str] = dataclasses.field(default_factory=list)  # novel classes the weights saw boxes of (allow_seen_classes=true)

    def tags(self) -> dict[str, str]:
        """What a run that starts from this checkpoint says about it: the weights its lineage
        began from, the lineage, the pretraining passes in all, and the protocol (clean, or
        seen_classes when the weights saw boxes of novel classes and that was allowed)."""
        lineage = self.payload.get("lineage") or []
        config = self.payload.get("config") or {}
        tags = {
            "fsx.weights": str((self.payload.get("start") or {}).get("weights", "scratch")),
            "fsx.lineage": " → ".join(p["algorithm"] for p in lineage) if lineage else str((config.get("algorithm") or {}).get("name", "?")),
            "fsx.protocol": "seen_classes" if self.seen_novel else "clean",
        }
        if lineage:
            tags["fsx.passes"] = str(sum(int(p.get("passes", 0)) for p in lineage))
        return tags


def load_source(cfg) -> Source:
    path, run_id = tracking.resolve_checkpoint(cfg.checkpoint, cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    payload = read_checkpoint(path)
    dataset = dataset_for_checkpoint(cfg, payload.get("config"))
    split = benchmark_split(dataset)
    seen = seen_novel_classes(payload, split)
    if seen and not cfg.allow_seen_classes:
        refuse_seen_classes(payload, split, str(cfg.checkpoint))
    return Source(payload, str(cfg.checkpoint), run_id, dataset, split, seen)


def pretrained_classes(payload: dict) -> list[str]:
    """The classes whose boxes the checkpoint's pretraining saw."""
    if "pretrained_classes" in payload:
        return list(payload["pretrained_classes"])
    return list(payload.get("classes", [])) if payload.get("kind") == "pretrain" else []


def seen_novel_classes(payload: dict, split: Split) -> list[str]:
    """The fold's novel classes whose boxes the checkpoint's weights have seen (its own base
    classes, a COCO detector's categories, an init= parent's)."""
    seen = set(pretrained_classes(payload))
    return [c for c in split.fold.novel if same_class_names(c) & seen]


def refuse_seen_classes(payload: dict, split: Split, reference: str) -> None:
    """Leakage guard: a checkpoint pretrained on boxes of a class this benchmark calls novel
    would make its few-shot numbers meaningless (a VOC 'sofa' is a COCO 'couch')."""
    overlap = seen_novel_classes(payload, split)
    if overlap:
        coco = (payload.get("start") or {}).get("weights") == "coco" or "coco" in str(((payload.get("config") or {}).get("detector") or {}).get("weights", "")).lower()
        why = " (it started from a COCO-trained detector, which has seen all 80 COCO classes)" if coco else ""
        raise UsageError(
            f"checkpoint={reference} was pretrained on boxes of {', '.join(overlap[:8])}{' ...' if len(overlap) > 8 else ''}{why}, "
            f"novel classes of {split.fold.dataset} fold {split.fold.index}: its few-shot results there would not be few-shot. "
            "Pretrain without them, or add allow_seen_classes=true to do it anyway (the run is then tagged fsx.protocol=seen_classes)"
        )


def sample_task(split: Split, ways: int, shots: int, task_seed: int, sampler: str = "image", lists: str | None = None, records: str = "merged", generalized: bool = False) -> Task:
    """A task of `ways` novel classes (all of them, in fold order, when ways equals their
    number) with its K-shot support set drawn from test-adapt: M*K images (image), exactly K
    boxes per class (instance), or the published list of sample seed `task_seed` (lists).
    `generalized` (TFA's G-FSOD) puts every base class first in the task, with K shots too."""
    classes = choose_classes(list(split.fold.novel), ways, task_seed)
    base: list[str] = []
    if generalized:
        base = list(split.fold.base)
        held = {c["name"] for c in split.test_adapt.categories}
        if not base or not set(base) <= held:
            raise UsageError(
                f"generalized=true needs base-class shots, but the shot pool (test-adapt) of {split.fold.dataset} holds no "
                "base-class boxes: use a benchmark that samples shots from the training images (voc_tfa, coco_tfa)"
            )
        classes = base + classes
    if lists:
        task = published_task(split.test_adapt, lists, classes, shots, task_seed, records)
    elif sampler == "instance":
        task = sample_instances(split.test_adapt, classes, shots, task_seed, records, at_most=split.fold.dataset == "lvis_tfa")
    elif sampler == "image":
        task = sample_shots(split.test_adapt, classes, shots, task_seed)
    else:
        raise UsageError(f"sampler={sampler}: choose one of {', '.join(SAMPLERS)}")
    task.base = base
    return task


def task_options(cfg) -> dict:
    """The sampler keys of the config, for `sample_task`."""
    return {"sampler": str(cfg.sampler), "lists": cfg.sample_lists, "records": str(cfg.sample_records), "generalized": bool(cfg.generalized)}


def model_for_task(payload: dict, task: Task, device: torch.device, seed: int, reset: bool | None = None, classifier: dict | None = None) -> torch.nn.Module:
    """The checkpoint's model, its class head ready for the task. `reset=None` decides: keep
    the head of a checkpoint already adapted to exactly these classes, and the meta-learned
    head of a meta-learner's checkpoint when it has one output per task class (its label
    slots were shuffled in every meta-training task); otherwise a fresh head, of the kind
    `classifier` names (a TFA recipe's cosine classifier) or the checkpoint's own."""
    model = load_model(payload)
    if reset is None:
        keeps_head = payload.get("adapt_head") == "keep" and num_classes(model) == len(task.class_ids) and not task.base
        reset = not (is_adapted_to(payload, task.class_names) or keeps_head)
    if reset:
        known = {name: k for k, name in enumerate(payload["classes"])}
        keep = [known.get(name) for name in task.class_names] if task.base else None  # TFA's surgery: base rows carried
        reset_class_head(model, len(task.class_ids), generator=torch.Generator().manual_seed(seed), classifier=classifier, keep=keep)
    return model.to(device)


def novel_initialised(model: torch.nn.Module, task: Task, settings, steps: int, device: torch.device, seed: int, amp: bool, classifier: dict | None = None) -> None:
    """TFA's `remove` -> novel-only predictor -> `combine` (PROTOCOLS 4.6, "novel init", used
    for COCO and LVIS): a copy of the model learns a head for the task's novel classes alone
    on their shots, features frozen, for `steps` steps with the stage-2 optimiser; its rows
    then become the novel rows of `model`'s head (whose base rows came from the checkpoint)."""
    novel = [(cid, name) for cid, name in zip(task.class_ids, task.class_names) if name not in set(task.base)]
    probe = copy.deepcopy(model)
    reset_class_head(probe, len(novel), generator=torch.Generator().manual_seed(seed), classifier=classifier)
    support = task.support.restrict(category_ids=[cid for cid, _ in novel])
    novel_settings = dataclasses.replace(settings, steps=steps, params="class_head", learned_rates=None)
    fine_tune(probe, DetectionDataset(support, [cid for cid, _ in novel]), novel_settings, device, seed=seed, amp=amp, desc="novel init")
    first = len(task.class_ids) - len(novel)  # novel classes follow the base classes in a generalized task
    copy_class_rows(class_rows(probe), model, {first + j: j for j in range(len(novel))}, background=False)


def init_tags(cfg) -> dict[str, str]:
    """How a generalized task's head began, as a tag."""
    if not cfg.generalized:
        return {}
    if cfg.adapt.init == "novel":
        return {"fsx.head_init": f"base rows from the checkpoint, novel rows from a novel-only head trained {int(cfg.adapt.init_steps)} steps"}
    return {"fsx.head_init": "base rows from the checkpoint, novel rows random"}


def adapt_tags(settings) -> dict[str, str]:
    """How adaptation optimised, as tags: `fsx.adapt_optimizer` (a Meta-SGD checkpoint's
    learned rates, or the optimiser, its lr, Adam's beta1 where not 0.9, SGD's momentum, and
    the parameter set) and `fsx.adapt_recipe` (common, or the checkpoint's recipe)."""
    tags = {"fsx.adapt_recipe": settings.recipe}
    if settings.learned_rates:
        return {**tags, "fsx.adapt_optimizer": f"learned step sizes from the checkpoint ({len(settings.learned_rates)} tensors)"}
    extra = ""
    if settings.optimizer == "sgd" and settings.momentum:
        extra = f" momentum {settings.momentum:g}"
    elif settings.optimizer == "adam" and settings.beta1 != 0.9:
        extra = f" beta1 {settings.beta1:g}"
    trains = "" if settings.params == "all" else f", trains {settings.params} only"
    return {**tags, "fsx.adapt_optimizer": f"{settings.optimizer} lr {settings.lr:g}{extra}{trains}"}


def head_reset(cfg, direct: bool = False) -> bool | None:
    """adapt.head=reset forces a fresh head; auto leaves the choice to `model_for_task`."""
    if direct:
        return False
    return True if cfg.adapt.head == "reset" else None


def is_adapted_to(payload: dict, class_names: list[str]) -> bool:
    return payload.get("kind") == "adapt" and list(payload.get("classes", [])) == list(class_names)


def score(model, split: Split, task: Task, device: torch.device, batch_size: int, amp: bool, desc: str = "evaluate", score_threshold: float = 0.5, curves: dict | None = None, workers: int = 0) -> dict[str, float]:
    """COCO and VOC metrics on all of test-test, for the task's classes; in the generalized
    setting also over its base (bAP, bAP50) and novel (nAP, nAP50) classes; on LVIS its own
    federated AP and APr, APc, APf. `curves`, when given, receives each class's
    precision-recall curve. `workers`: DataLoader processes decoding test-test's images."""
    gt = split.test_test.restrict(category_ids=task.class_ids)
    assert num_classes(model) == len(task.class_ids)
    results = predict(model, DetectionDataset(gt, task.class_ids), device, batch_size=batch_size, amp=amp, desc=desc, workers=workers)
    metrics = detection_metrics(gt, results, task.class_ids, score_threshold)
    if task.base:
        novel = [n for n in task.class_names if n not in set(task.base)]
        metrics.update(group_metrics(metrics, {"b": task.base, "n": novel}))
    if split.fold.dataset == "lvis_tfa":
        metrics.update(lvis_metrics(gt, results, task.class_ids))
    if curves is not None:
        curves.update(pr_curves(gt, results, task.class_ids))
    return metrics
