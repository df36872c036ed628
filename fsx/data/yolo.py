"""YOLO exports (a `data.yaml` and `{train,valid,test}/{images,labels}`, as Roboflow and
Ultralytics write them) -> the one in-memory form, `CocoSet`.

Each label file holds `class cx cy w h` lines, normalised to the image size; an empty or
missing label file is an image without objects. The splits of the export are read into one
set (the few-shot split rule re-splits it); `image_set` keeps only one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from PIL import Image

from fsx.data.choices import IMAGE_SUFFIXES
from fsx.data.coco import CocoSet
from fsx.errors import UsageError

SPLITS = ("train", "val", "test")
TOLERANCE = 1e-3  # normalised coordinates a box may reach past the border (rounding in exports)


def _class_names(config: dict, where: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise UsageError(f"{where}: no 'names' list of classes")
    return [str(n) for n in names]


def _image_folders(config: dict, root: Path, image_set: str | None) -> list[tuple[str, Path]]:
    folders = []
    for split in SPLITS:
        entry = config.get(split)
        if not entry or (image_set and split != image_set and not (image_set == "valid" and split == "val")):
            continue
        for item in entry if isinstance(entry, list) else [entry]:
            # Roboflow writes paths relative to the yaml ("../train/images"); accept both readings
            for candidate in (root / item, root / str(item).removeprefix("../"), Path(item)):
                if candidate.is_dir():
                    folders.append((split, candidate.resolve()))
                    break
            else:
                raise UsageError(f"{root / 'data.yaml'}: the {split} folder {item} does not exist")
    if not folders:
        raise UsageError(f"{root / 'data.yaml'}: no image folder for " + (f"dataset.image_set={image_set}" if image_set else "train, val or test"))
    return folders


def read_yolo(root: Path | str, image_set: str | None = None, name: str | None = None) -> CocoSet:
    root = Path(root).expanduser()
    config_file = root / "data.yaml"
    if not config_file.is_file():
        raise UsageError(f"dataset.path={root}: no data.yaml (a YOLO export has one beside its train/valid/test folders)")
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{config_file} is not valid YAML: {e}") from None
    names = _class_names(config, config_file)
    images, annotations, dropped = [], [], 0
    for split, folder in _image_folders(config, root, image_set):
        labels = folder.parent / "labels"
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(image) as im:
                    width, height = im.size
            except OSError as e:
                raise UsageError(f"{image} cannot be read as an image: {e}") from None
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": image.relative_to(root.resolve()).as_posix() if image.is_relative_to(root.resolve()) else str(image), "width": width, "height": height, "split": split})
            label_file = labels / f"{image.stem}.txt"
            lines = label_file.read_text().splitlines() if label_file.is_file() else []
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    k, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                except (ValueError, IndexError):
                    raise UsageError(f"{label_file}:{number}: expected 'class cx cy w h', got '{line.strip()}'") from None
                if not 0 <= k < len(names):
                    raise UsageError(f"{label_file}:{number}: class {k} is not among the {len(names)} classes of data.yaml")
                x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                if min(x0, y0) < -TOLERANCE or max(x1, y1) > 1 + TOLERANCE:
                    raise UsageError(f"{label_file}:{number}: the box ({cx:g}, {cy:g}, {w:g}, {h:g}) lies outside the image")
                if w <= 0 or h <= 0:
                    dropped += 1
                    continue
                x0, y0, x1, y1 = max(x0, 0.0) * width, max(y0, 0.0) * height, min(x1, 1.0) * width, min(y1, 1.0) * height
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                })
    if dropped:
        print(f"warning: {name or root.name}: dropped {dropped} zero-size boxes", file=sys.stderr, flush=True)
    coco = {
        "info": {"description": f"{name or root.name} (YOLO export)", "dropped_zero_size_boxes": dropped},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": name or root.name} for i, n in enumerate(names)],
    }
    return CocoSet(coco, root.resolve())
