"""A folder of photos (searched recursively), one image file, or a COCO JSON's images, as
what `fsx detect` runs on: readable images with their sizes, the unreadable ones named, and
a Dataset that decodes them one batch at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fsx.data.choices import IMAGE_SUFFIXES
from fsx.data.coco import CocoSet
from fsx.errors import UsageError


@dataclass
class Images:
    """What detect runs on: readable images {id, file_name, width, height, path}, in order."""

    images: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    ignored: int = 0  # files of a folder that are not images by their suffix
    ground_truth: CocoSet | None = None
    source: str = ""


def _why(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(error).split("\n")[0]
    return text[:80] if text else type(error).__name__


def _header(path: Path) -> tuple[int, int]:
    """The image's size from its header (cheap: nothing is decoded); raises if it is none."""
    with Image.open(path) as im:
        return im.size


def _folder_files(folder: Path, exclude: Path | None) -> tuple[list[Path], int]:
    """Image files under `folder` by suffix (any case) in sorted order, hidden files and folders
    and `exclude` (the output folder) left out; and how many other files there were."""
    found, ignored = [], 0
    exclude = exclude.resolve() if exclude else None
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or (Path(here) / d).resolve() != exclude))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(here) / name)
            else:
                ignored += 1
    return found, ignored


def list_images(images: str, image_root: str | None = None, exclude: Path | None = None) -> Images:
    """The images of a folder, an image file or a COCO JSON, each header read once; files
    that are not images, or are missing, go to `skipped`."""
    path = Path(str(images)).expanduser()
    if not path.exists():
        raise UsageError(f"detect.images={images}: no such folder or file")
    listed: list[dict] = []
    ground_truth = None
    ignored = 0
    if path.is_dir():
        files, ignored = _folder_files(path, exclude)
        listed = [{"file_name": f.relative_to(path).as_posix(), "path": f} for f in files]
    elif path.suffix.lower() == ".json":
        try:
            ground_truth = CocoSet.load(path, Path(str(image_root)).expanduser() if image_root else None)
            root = ground_truth.image_root
            listed = [{"id": img["id"], "file_name": img["file_name"], "path": root / img["file_name"]} for img in ground_truth.coco["images"]]
        except (KeyError, TypeError) as e:  # a JSON that is a list or a number, images without ids or file names
            what = f" (no {e})" if isinstance(e, KeyError) else ""
            raise UsageError(f"detect.images={images} is not a COCO annotation file: images with id and file_name, annotations, categories{what}") from None
        if not listed:
            raise UsageError(f"detect.images={images}: the COCO file lists no images")
    else:
        listed = [{"file_name": path.name, "path": path}]
    readable, skipped = [], []
    for k, item in enumerate(listed, start=1):
        try:
            width, height = _header(item["path"])
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
            skipped.append((item["file_name"], _why(e)))
            continue
        readable.append({"id": item.get("id", k), "file_name": item["file_name"], "width": width, "height": height, "path": item["path"]})
    if ground_truth is not None and not ground_truth.coco["annotations"]:
        ground_truth = None  # an image list without boxes: nothing to show beside or score
    return Images(readable, skipped, ignored, ground_truth, str(path))


class ImageFiles(torch.utils.data.Dataset):
    """(image float CHW in [0, 1] at its own size, {"image_id"}) for `predict`, decoded when
    asked for, so a big folder never sits in memory. A file that fails to decode (truncated,
    damaged) yields a small blank image and is recorded in `failed`; its detections are
    dropped afterwards."""

    def __init__(self, images: list[dict], class_ids: list[int]):
        self.images = images
        self.class_ids = class_ids
        self.failed: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        info = self.images[index]
        try:
            with Image.open(info["path"]) as im:
                pixels = np.array(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            self.failed[info["id"]] = _why(e)
            return torch.zeros(3, 32, 32), {"image_id": info["id"]}
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div_(255), {"image_id": info["id"]}
