"""A user's own labelled data as a few-shot benchmark: a VOC-layout folder, a YOLO export
or a COCO JSON plus an image folder, with the novel classes named in the config (PROTOCOLS 2.5's rule then
splits it as it splits every benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

from fsx.data.coco import CocoSet
from fsx.data.folds import Fold
from fsx.data.merge import merge_sets
from fsx.data.voc import read_voc
from fsx.data.yolo import read_yolo
from fsx.errors import UsageError

FORMATS = ("voc", "coco", "yolo")
TOLERANCE = 1.0  # pixels a box may reach past the image border


def load_custom(format: str, path=None, annotations=None, images=None, image_set: str | None = None, prefix: bool | None = None) -> CocoSet:
    """The user's dataset; lists of folders (or of annotation files and image folders) are
    merged into one, with each folder's name before its class names unless prefix=false."""
    paths, annotation_files, image_folders = _listed(path), _listed(annotations), _listed(images)
    count = max(len(paths), len(annotation_files), 1)
    if count == 1:
        return _load_one(format, paths[0] if paths else None, annotation_files[0] if annotation_files else None, image_folders[0] if image_folders else None, image_set)
    if format == "coco" and len(annotation_files) != len(image_folders):
        raise UsageError(f"dataset.annotations lists {len(annotation_files)} files but dataset.images {len(image_folders)} folders: give one image folder per annotation file")
    parts = []
    for k in range(count):
        part = _load_one(format, paths[k] if paths else None, annotation_files[k] if annotation_files else None, image_folders[k] if image_folders else None, image_set)
        where = paths[k] if paths else annotation_files[k]
        name = Path(where).expanduser().resolve().name if paths else Path(where).stem
        parts.append((name, part))
    return merge_sets(parts, prefix=True if prefix is None else bool(prefix))


def _listed(value) -> list[str]:
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _load_one(format: str, path: str | None, annotations: str | None, images: str | None, image_set: str | None) -> CocoSet:
    if format == "voc":
        if not path:
            raise UsageError("dataset=custom dataset.format=voc needs dataset.path=<the folder with the VOC XML files>")
        return read_voc(path, image_set=image_set)
    if format == "yolo":
        if not path:
            raise UsageError("dataset=custom dataset.format=yolo needs dataset.path=<the folder with data.yaml>")
        return read_yolo(path, image_set=image_set)
    if format == "coco":
        if not annotations or not images:
            raise UsageError("dataset=custom dataset.format=coco needs dataset.annotations=<file.json> and dataset.images=<image folder>")
        if not Path(images).expanduser().is_dir():
            raise UsageError(f"dataset.images={images}: no such folder")
        return checked_coco(CocoSet.load(Path(annotations).expanduser(), Path(images).expanduser()), annotations)
    raise UsageError(f"dataset.format={format}: choose one of {', '.join(FORMATS)}")


def checked_coco(source: CocoSet, where: str) -> CocoSet:
    """Refuse annotations of unknown images or categories and boxes outside their image;
    drop zero-size boxes with a counted warning."""
    categories = {c["id"] for c in source.categories}
    kept, dropped = [], 0
    for ann in source.coco["annotations"]:
        if ann["image_id"] not in source._images:
            raise UsageError(f"{where}: annotation {ann.get('id')} refers to image {ann['image_id']}, which is not in 'images'")
        if ann["category_id"] not in categories:
            raise UsageError(f"{where}: annotation {ann.get('id')} has category {ann['category_id']}, which is not in 'categories'")
        x, y, w, h = ann["bbox"]
        image = source.image(ann["image_id"])
        if w <= 0 or h <= 0:
            dropped += 1
            continue
        if "width" in image and (x < -TOLERANCE or y < -TOLERANCE or x + w > image["width"] + TOLERANCE or y + h > image["height"] + TOLERANCE):
            raise UsageError(f"{where}: the box {ann['bbox']} of annotation {ann.get('id')} lies outside its {image['width']}x{image['height']} image {image['file_name']}")
        kept.append(ann)
    if dropped:
        print(f"warning: {where}: dropped {dropped} zero-size boxes", file=sys.stderr, flush=True)
        source = CocoSet({**source.coco, "annotations": kept}, source.image_root)
    return source


def custom_fold(source: CocoSet, novel) -> Fold:
    """The one partition of a custom dataset: `novel` (a list of class names, or "all")
    against the rest."""
    names = [c["name"] for c in source.categories]
    if novel == "all":
        chosen = list(names)
    else:
        chosen = [str(n) for n in (novel or [])]
        if not chosen:
            raise UsageError(f"dataset.novel: name the novel classes, e.g. dataset.novel=[{names[-1]}] (this dataset has: {', '.join(names)}), or all")
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise UsageError(f"dataset.novel: {', '.join(unknown)} not in this dataset (it has: {', '.join(names)})")
    return Fold("custom", 0, tuple(n for n in names if n not in chosen), tuple(n for n in names if n in chosen))
