"""Several `CocoSet`s as one: VOC2007 + VOC2012, or a user's folders merged into one dataset.

Images are renumbered 1..N in the order given and remember where they came from
(`source`: "<part>:<original id>"); file names become relative to the folder the parts share.
Classes are joined by name, or kept apart with the part's name as a prefix
("bccd/RBC", "microcontrollers/ESP8266") when `prefix` is true.
"""

from __future__ import annotations

import os
from pathlib import Path

from fsx.data.coco import CocoSet
from fsx.errors import UsageError

PREFIX_SEPARATOR = "/"


def merge_sets(parts: list[tuple[str, CocoSet]], prefix: bool = False, classes: list[str] | None = None) -> CocoSet:
    """One set holding every part. `classes` fixes the category order (ids 1..C); by default
    the parts' categories in order of first appearance."""
    if not parts:
        raise UsageError("nothing to merge: no dataset parts given")
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise UsageError(f"the merged parts need distinct names to tell them apart: {', '.join(names)}")
    root = Path(os.path.commonpath([str(part.image_root.resolve()) for _, part in parts]))

    def label(part_name: str, category: str) -> str:
        return f"{part_name}{PREFIX_SEPARATOR}{category}" if prefix else category

    order = list(classes) if classes is not None else []
    if classes is None:
        for part_name, part in parts:
            for c in part.categories:
                if label(part_name, c["name"]) not in order:
                    order.append(label(part_name, c["name"]))
    category_id = {n: i + 1 for i, n in enumerate(order)}
    images, annotations = [], []
    for part_name, part in parts:
        to_name = {c["id"]: label(part_name, c["name"]) for c in part.categories}
        unknown = sorted(set(to_name.values()) - set(category_id))
        if unknown:
            raise UsageError(f"{part_name}: classes {', '.join(unknown)} are not among {', '.join(order)}")
        prefix_path = os.path.relpath(part.image_root.resolve(), root)
        for old_id in part.image_ids:
            image = part.image(old_id)
            new_id = len(images) + 1
            file_name = image["file_name"] if prefix_path == "." else f"{prefix_path}/{image['file_name']}"
            images.append({**image, "id": new_id, "file_name": file_name, "source": f"{part_name}:{old_id}"})
            for a in part.annotations(old_id):
                annotations.append({**a, "id": len(annotations) + 1, "image_id": new_id, "category_id": category_id[to_name[a["category_id"]]]})
    coco = {
        "info": {"description": "merged: " + " + ".join(names)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": category_id[n], "name": n} for n in order],
    }
    return CocoSet(coco, root)
