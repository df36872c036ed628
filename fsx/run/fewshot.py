"""What adapt and eval share: the checkpoint and its split, a model ready for a task, scoring."""

from __future__ import annotations

import dataclasses

import torch

from fsx import tracking
from fsx.data.coco import DetectionDataset
from fsx.data.folds import Split
from fsx.data.shots import Task, choose_classes, sample_shots
from fsx.engine.checkpoint import load_model, read_checkpoint
from fsx.evaluation.coco_metrics import detection_metrics
from fsx.evaluation.predict import predict
from fsx.models.heads import num_classes, reset_class_head
from fsx.run.wiring import benchmark_split, dataset_for_checkpoint


@dataclasses.dataclass
class Source:
    payload: dict  # the checkpoint
    reference: str  # what the user wrote
    run_id: str | None  # the MLflow run it came from
    dataset: dict  # the dataset config in force
    split: Split


def load_source(cfg) -> Source:
    path, run_id = tracking.resolve_checkpoint(cfg.checkpoint, cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    payload = read_checkpoint(path)
    dataset = dataset_for_checkpoint(cfg, payload.get("config"))
    return Source(payload, str(cfg.checkpoint), run_id, dataset, benchmark_split(dataset))


def sample_task(split: Split, ways: int, shots: int, task_seed: int) -> Task:
    classes = choose_classes(list(split.fold.novel), ways, task_seed)
    return sample_shots(split.test_adapt, classes, shots, task_seed)


def model_for_task(payload: dict, task: Task, device: torch.device, seed: int, reset: bool | None = None) -> torch.nn.Module:
    """The checkpoint's model with a fresh class head sized for the task. `reset=None` keeps
    the head when the checkpoint was already adapted to exactly these classes."""
    model = load_model(payload)
    if reset is None:
        reset = not is_adapted_to(payload, task.class_names)
    if reset:
        reset_class_head(model, len(task.class_ids), generator=torch.Generator().manual_seed(seed))
    return model.to(device)


def is_adapted_to(payload: dict, class_names: list[str]) -> bool:
    return payload.get("kind") == "adapt" and list(payload.get("classes", [])) == list(class_names)


def score(model, split: Split, task: Task, device: torch.device, batch_size: int, amp: bool, desc: str = "evaluate") -> dict[str, float]:
    """COCO and VOC metrics on all of test-test, for the task's classes."""
    gt = split.test_test.restrict(category_ids=task.class_ids)
    assert num_classes(model) == len(task.class_ids)
    results = predict(model, DetectionDataset(gt, task.class_ids), device, batch_size=batch_size, amp=amp, desc=desc)
    return detection_metrics(gt, results, task.class_ids)
