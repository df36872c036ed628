"""Meta-training tasks: M-way K-shot episodes drawn from a fold's base classes.

Every episode is a pure function of (seed, meta-iteration, task index), so a resumed run
draws the same tasks as an uninterrupted one. Two head policies (PROTOCOLS 10.2):

- shuffled: the task's classes take the model's M label slots in a random order, so a
  meta-learned head is tied to no class and adaptation keeps it;
- fixed: the head has one row per base class and each task trains and scores only its
  classes' rows ("global head + masking"); adaptation then starts a fresh M-row head, as
  after standard pretraining.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
from torch import nn

from fsx.algorithms.base import PretrainData
from fsx.data.coco import DetectionDataset
from fsx.data.shots import choose_classes, sample_shots
from fsx.data.transforms import Compose, Rotate90
from fsx.errors import UsageError
from fsx.models.heads import only_class_rows

HEAD_POLICIES = ("shuffled", "fixed")


@dataclasses.dataclass
class Episode:
    seed: int
    classes: list[str]  # in label-slot order
    rotation: int  # quarter turns applied to every image of the task
    support: DetectionDataset
    query: DetectionDataset | None  # disjoint images of the same classes (MAML family)
    rows: list[int] | None = None  # head=fixed: the head row of each task class; None: slots 0..M-1


def check_head(name: str, head: str) -> None:
    if head not in HEAD_POLICIES:
        raise UsageError(f"algorithm={name}: head={head}: choose shuffled (M task slots, classes in a random order per task) or fixed (one row per base class)")


def head_policy(head: str) -> str:
    """The head policy as a line of the MLflow record (param algorithm.head_policy)."""
    if head == "fixed":
        return "fixed: one output row per base class; each task trains and scores its classes' rows; adaptation starts a fresh head"
    return "shuffled: one output per task class, classes in a random order per task; adaptation keeps the head"


def task_head(model: nn.Module, episode: Episode):
    """The context in which `model` predicts the episode's classes as labels 0..M-1."""
    return only_class_rows(model, episode.rows) if episode.rows is not None else contextlib.nullcontext()


def episode_seed(seed: int, iteration: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, index]).generate_state(1)[0])


class EpisodeSampler:
    """Draws tasks from the training split: `ways` base classes, `shots` images per class
    (the image-level sampler of the evaluation protocol), and `query_shots` more per class
    for a query set. `rotate` turns all images of a task by the same 0/90/180/270 degrees
    (RT's task augmentation; 0 is drawn as often as the others). `fixed_head`: each episode
    names the head rows of its classes (`Episode.rows`)."""

    def __init__(self, data: PretrainData, ways: int, shots: int, query_shots: int = 0, rotate: bool = False, transform=None, fixed_head: bool = False):
        if ways > len(data.class_names):
            raise UsageError(f"algorithm.ways={ways} but the fold has only {len(data.class_names)} base classes")
        if shots < 1 or query_shots < 0:
            raise UsageError(f"algorithm.shots={shots} must be at least 1 and algorithm.query_shots={query_shots} at least 0")
        self.data, self.ways, self.shots, self.query_shots = data, ways, shots, query_shots
        self.rotate, self.transform, self.fixed_head = rotate, transform, fixed_head
        self._pixels = getattr(data.dataset, "_pixels", None)  # decode each training image once

    def sample(self, seed: int, iteration: int, index: int) -> Episode:
        s = episode_seed(seed, iteration, index)
        rng = np.random.default_rng(s)
        classes = choose_classes(self.data.class_names, self.ways, s)
        classes = [classes[i] for i in rng.permutation(len(classes))]
        rotation = int(rng.integers(4)) if self.rotate else 0
        support = sample_shots(self.data.source, classes, self.shots, s, pool_name="training split")
        query = None
        if self.query_shots:
            query = sample_shots(self.data.source, classes, self.query_shots, s + 1, exclude=support.support.image_ids, pool_name="training split")
        rows = [self.data.class_names.index(c) for c in classes] if self.fixed_head else None
        return Episode(s, classes, rotation, self._dataset(support, rotation), self._dataset(query, rotation) if query else None, rows)

    def _dataset(self, task, rotation: int) -> DetectionDataset:
        parts = [t for t in (self.transform, Rotate90(rotation) if rotation else None) if t is not None]
        return DetectionDataset(task.support, task.class_ids, transform=Compose(parts) if parts else None, pixel_cache=self._pixels)
