"""K-shot samplers. One interface: a sampler takes a pool, the task's classes, K and a seed,
and returns a `Task` whose manifest says exactly which images (and boxes) it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from fsx.data.coco import CocoSet
from fsx.errors import UsageError


@dataclasses.dataclass
class Task:
    class_ids: list[int]  # label order: label i is class_ids[i]
    class_names: list[str]
    shots: int
    seed: int
    support: CocoSet  # the sampled images, with only the task classes' boxes
    sampler: str

    def manifest(self) -> dict:
        per_class = {
            name: sum(1 for i in self.support.image_ids if cid in self.support.image_categories(i))
            for cid, name in zip(self.class_ids, self.class_names)
        }
        return {
            "kind": "task",
            "sampler": self.sampler,
            "ways": len(self.class_ids),
            "shots": self.shots,
            "task_seed": self.seed,
            "classes": self.class_names,
            "image_ids": self.support.image_ids,
            "file_names": [self.support.image(i)["file_name"] for i in self.support.image_ids],
            "images_per_class": per_class,
            "boxes": len(self.support.coco["annotations"]),
            "hash": self.support.content_hash(),
        }


def choose_classes(class_names: list[str], ways: int, seed: int) -> list[str]:
    """`ways` of the candidate classes (all of them, in the given order, when ways equals their number)."""
    if ways < 1:
        raise UsageError(f"ways={ways}: a task needs at least one class")
    if ways > len(class_names):
        raise UsageError(f"ways={ways} but only {len(class_names)} novel classes exist ({', '.join(class_names)})")
    if ways == len(class_names):
        return list(class_names)
    picked = np.random.default_rng(seed).choice(len(class_names), size=ways, replace=False)
    return [class_names[i] for i in sorted(picked)]


def sample_shots(pool: CocoSet, class_names: list[str], shots: int, seed: int, exclude: Iterable[int] = (), pool_name: str = "adaptation pool") -> Task:
    """The Reptile thesis's image-level sampler (PROTOCOLS 3.1): M*K distinct images, K
    chosen for each class, so that every class is in at least K of them. Instances and
    co-occurrences are not controlled. Classes with the fewest candidate images pick first.
    Images in `exclude` are never chosen (a MAML query set is disjoint from its support).
    """
    if shots < 1:
        raise UsageError(f"shots={shots}: a task needs at least one image per class")
    rng = np.random.default_rng(seed)
    class_ids = [pool.category_id(n) for n in class_names]
    candidates = {c: pool.images_with(c) for c in class_ids}
    taken: set[int] = set(exclude)
    chosen: list[int] = []
    for cid in sorted(class_ids, key=lambda c: (len(candidates[c]), c)):
        free = [i for i in candidates[cid] if i not in taken]
        if len(free) < shots:
            raise UsageError(
                f"shots={shots} is more than the pool holds: class '{pool.category_name(cid)}' is in "
                f"{len(candidates[cid])} images of the {pool_name} ({len(free)} not already taken by other classes or the support set)"
            )
        for i in rng.choice(len(free), size=shots, replace=False):
            taken.add(free[i])
            chosen.append(free[i])
    support = pool.restrict(sorted(chosen), class_ids)
    return Task(class_ids, list(class_names), shots, seed, support, sampler="image_level")
