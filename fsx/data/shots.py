"""K-shot samplers. One interface: a sampler takes a pool, the task's classes, K and a seed,
and returns a `Task` whose manifest says exactly which images (and boxes) it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from fsx.data.choices import RECORD_MODES
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
    base: list[str] = dataclasses.field(default_factory=list)  # the task's base classes (generalized setting)

    def manifest(self) -> dict:
        per_class = {
            name: sum(1 for i in self.support.image_ids if cid in self.support.image_categories(i))
            for cid, name in zip(self.class_ids, self.class_names)
        }
        return {
            "kind": "task",
            "setting": "generalized" if self.base else "novel only",
            "sampler": self.sampler,
            "ways": len(self.class_ids),
            "shots": self.shots,
            "task_seed": self.seed,
            "classes": self.class_names,
            "image_ids": self.support.image_ids,
            "file_names": [self.support.image(i)["file_name"] for i in self.support.image_ids],
            "images_per_class": per_class,
            "boxes": len(self.support.coco["annotations"]),
            "boxes_per_class": {name: sum(1 for a in self.support.coco["annotations"] if a["category_id"] == cid) for cid, name in zip(self.class_ids, self.class_names)},
            "hash": self.support.content_hash(),
            **({"instances": self.instances()} if self.sampler != "image_level" else {}),
        }

    def instances(self) -> list[dict]:
        """Every chosen box: its image, class and [x, y, w, h] (the exact K-shot set)."""
        names = dict(zip(self.class_ids, self.class_names))
        return [
            {"image": self.support.image(a["image_id"])["file_name"], "class": names[a["category_id"]], "bbox": [round(v, 2) for v in a["bbox"]]}
            for a in self.support.coco["annotations"]
        ]


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



def sample_instances(pool: CocoSet, class_names: list[str], shots: int, seed: int, records: str = "merged", pool_name: str = "adaptation pool", at_most: bool = False) -> Task:
    """TFA's instance-level sampler (PROTOCOLS 3.2-3.4): exactly K boxes of each class.

    Each class walks its own seeded order of the pool's images (seeded by the sample seed and
    the class, so a class's shots do not depend on the other classes of the task) and grows
    its set along TFA's shot counts 1, 2, 3, 5, 10, 30 (`nested_instances`), so the 2-shot set
    holds the 1-shot set, and so on. An image joins with all its boxes of the class when they
    fit; when none fits, only the missing boxes of the next image are kept, chosen with a seed
    (TFA's VOC loader truncates unseeded: the hole closed here). Boxes of the class that were
    not chosen stay unannotated in that image, as in TFA. Crowd boxes never count.

    at_most: a class with fewer than K boxes gives all it has (LVIS's "up to 10 instances
    for each class": its rare classes have fewer), instead of an error.

    records: `merged`, one entry per image with the chosen boxes of every task class; or
    `per_class`, TFA's own form, one entry per (class, image) holding only that class's boxes.
    """
    if shots < 1:
        raise UsageError(f"shots={shots}: a task needs at least one instance per class")
    if records not in RECORD_MODES:
        raise UsageError(f"sample_records={records}: choose one of {', '.join(RECORD_MODES)}")
    class_ids = [pool.category_id(n) for n in class_names]
    picked = {cid: nested_instances(pool, cid, shots, seed, pool_name, at_most) for cid in class_ids}
    return instance_task(pool, class_ids, list(class_names), shots, seed, picked, records, "instance_level")


SHOT_LADDER = (1, 2, 3, 5, 10, 30)  # TFA's shot counts: the sets are nested along them


def nested_instances(pool: CocoSet, category_id: int, shots: int, seed: int, pool_name: str = "adaptation pool", at_most: bool = False) -> list[tuple[int, list[int]]]:
    """[(image id, [annotation ids of the class chosen in it])], exactly `shots` boxes.

    The set grows along TFA's ladder 1, 2, 3, 5, 10, 30 up to `shots` (K = 4 continues
    from the 3-shot set): each step walks the class's seeded image order and takes every
    image whose boxes of the class all fit in what is missing; if that leaves some missing,
    the next image gives only as many boxes as are missing, chosen with a seed, and its
    other boxes wait as leftovers for later steps.
    """
    boxes = {i: [a["id"] for a in pool.annotations(i) if a["category_id"] == category_id and not a.get("iscrowd", 0)] for i in pool.images_with(category_id)}
    images = [i for i in boxes if boxes[i]]
    available = sum(len(b) for b in boxes.values())
    if at_most:
        shots = min(shots, available)
    if available < shots or shots < 1:
        raise UsageError(f"shots={shots} is more than the {pool_name} holds: class '{pool.category_name(category_id)}' has {available} boxes there")
    remaining = [images[k] for k in np.random.default_rng([seed, category_id]).permutation(len(images))]
    chosen: dict[int, list[int]] = {}
    leftover: dict[int, list[int]] = {}
    total = 0
    for target in [k for k in SHOT_LADDER if k < shots] + [shots]:
        need = target - total
        position = 0
        while need and position < len(remaining):
            image_id = remaining[position]
            if len(boxes[image_id]) <= need:
                chosen[image_id] = list(boxes[image_id])
                need -= len(boxes[image_id])
                del remaining[position]
            else:
                position += 1
        rng = np.random.default_rng([seed, category_id, target])
        while need:  # no whole image fits: part of the next one (or of a leftover)
            if remaining:
                image_id = remaining.pop(0)
                candidates = boxes[image_id]
            else:
                image_id = next(iter(leftover))
                candidates = leftover.pop(image_id)
            count = min(need, len(candidates))
            picked = set(rng.choice(len(candidates), size=count, replace=False).tolist())
            chosen.setdefault(image_id, []).extend(candidates[j] for j in sorted(picked))
            rest = [candidates[j] for j in range(len(candidates)) if j not in picked]
            if rest:
                leftover[image_id] = rest
            need -= count
        total = target
    return list(chosen.items())


def instance_task(pool: CocoSet, class_ids: list[int], class_names: list[str], shots: int, seed: int, picked: dict[int, list[tuple[int, list[int]]]], records: str, sampler: str) -> Task:
    """A `Task` whose support holds exactly the picked boxes of each class."""
    by_id = {}
    for cid, items in picked.items():
        for image_id, ann_ids in items:
            wanted = set(ann_ids)
            by_id.update({a["id"]: a for a in pool.annotations(image_id) if a["id"] in wanted})
    images, annotations = [], []
    if records == "merged":
        order: dict[int, list[int]] = {}
        for cid in class_ids:
            for image_id, ann_ids in picked[cid]:
                order.setdefault(image_id, []).extend(ann_ids)
        for image_id in sorted(order):
            images.append(pool.image(image_id))
            annotations += [by_id[a] for a in order[image_id]]
    else:
        for cid in class_ids:
            for image_id, ann_ids in picked[cid]:
                record = {**pool.image(image_id), "id": len(images) + 1, "source_image_id": image_id}
                images.append(record)
                annotations += [{**by_id[a], "image_id": record["id"]} for a in ann_ids]
    coco = {"images": images, "annotations": annotations, "categories": [c for c in pool.categories if c["id"] in set(class_ids)]}
    return Task(class_ids, class_names, shots, seed, CocoSet(coco, pool.image_root), sampler=sampler)
