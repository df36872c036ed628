"""The literature's published K-shot lists, read as fsx tasks (PROTOCOLS 3.2-3.6).

    VOC   FSRW/TFA `vocsplit/`: box_{K}shot_{class}_train.txt, one image path per line
          (seed 0 in the folder itself, seed N in seed{N}/)
    COCO  TFA `cocosplit/`: full_box_{K}shot_{class}_trainval.json, COCO-format images and
          the chosen annotations (seed 0 in the folder, seed N in seed{N}/)

A VOC list names whole images, so it may hold more than K boxes of the class; TFA's loader
keeps K of them at random with no seed. Here the K are chosen with a seed drawn from (sample
seed, class, K), so the same list always gives the same boxes; the task manifest records them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fsx.data.coco import CocoSet, read_json
from fsx.data.shots import Task, instance_task
from fsx.errors import UsageError


def published_task(pool: CocoSet, folder: Path | str, class_names: list[str], shots: int, seed: int, records: str = "merged") -> Task:
    folder = Path(folder).expanduser()
    seed_folder = folder if seed == 0 else folder / f"seed{seed}"
    if not seed_folder.is_dir():
        raise UsageError(f"sample_lists={folder}: no folder for sample seed {seed} ({seed_folder}); seed 0 is the folder itself, seed N its seed<N>/")
    by_stem: dict[str, list[int]] = {}
    for i in pool.image_ids:
        by_stem.setdefault(Path(pool.image(i)["file_name"]).stem, []).append(i)
    class_ids = [pool.category_id(n) for n in class_names]
    picked = {}
    for cid, name in zip(class_ids, class_names):
        voc = seed_folder / f"box_{shots}shot_{name}_train.txt"
        coco = seed_folder / f"full_box_{shots}shot_{name}_trainval.json"
        if voc.is_file():
            picked[cid] = _voc_list(pool, voc, cid, shots, seed, by_stem)
        elif coco.is_file():
            picked[cid] = _coco_list(pool, coco, cid)
        else:
            raise UsageError(f"sample_lists: neither {voc.name} nor {coco.name} is in {seed_folder}")
    return instance_task(pool, class_ids, list(class_names), shots, seed, picked, records, f"published:{folder.name}")


def _voc_list(pool: CocoSet, path: Path, category_id: int, shots: int, seed: int, by_stem: dict[str, list[int]]) -> list[tuple[int, list[int]]]:
    boxes = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        listed = Path(line.strip())
        found = by_stem.get(listed.stem, [])
        if len(found) > 1:  # the same name in two folders: match the folder the list names
            found = [i for i in found if Path(pool.image(i)["file_name"]).parent.name == listed.parent.name] or found
        if len(found) != 1:
            raise UsageError(f"{path}: image {listed} is {'not in' if not found else 'ambiguous in'} the pool the shots are sampled from")
        image_id = found[0]
        boxes += [(image_id, a["id"]) for a in pool.annotations(image_id) if a["category_id"] == category_id]
    if len(boxes) < shots:
        print(f"warning: {path} lists {len(boxes)} boxes of its class, fewer than its {shots} shots", file=sys.stderr, flush=True)
    if len(boxes) > shots:
        keep = np.random.default_rng([seed, category_id, shots]).choice(len(boxes), size=shots, replace=False)
        boxes = [boxes[k] for k in sorted(keep)]
    grouped: dict[int, list[int]] = {}
    for image_id, ann_id in boxes:
        grouped.setdefault(image_id, []).append(ann_id)
    return list(grouped.items())


def _coco_list(pool: CocoSet, path: Path, category_id: int) -> list[tuple[int, list[int]]]:
    listed = read_json(path, "sample list")
    grouped: dict[int, list[int]] = {}
    known = set(pool.image_ids)
    for ann in listed.get("annotations", []):
        image_id = ann["image_id"]
        if image_id not in known:
            raise UsageError(f"{path}: image {image_id} is not in the pool the shots are sampled from")
        match = [a["id"] for a in pool.annotations(image_id) if a["category_id"] == category_id and _same_box(a["bbox"], ann["bbox"])]
        if not match:
            raise UsageError(f"{path}: the box {ann['bbox']} in image {image_id} is not a box of this class in the pool")
        grouped.setdefault(image_id, []).append(match[0])
    return list(grouped.items())


def _same_box(a, b) -> bool:
    return all(abs(float(x) - float(y)) < 0.5 for x, y in zip(a, b))
