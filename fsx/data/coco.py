"""The one in-memory form of a detection dataset: a COCO-format annotation dict + an image root.

Every source (letters, VOC XML, COCO JSON) is turned into a `CocoSet`; splits, samplers and
metrics all work on it. `DetectionDataset` turns a `CocoSet` and an ordered class list into
the (image, target) pairs torchvision detectors take, with labels 0..M-1 in list order.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from fsx.data.pixels import PixelCache
from fsx.errors import UsageError

_LISTS = ("images", "annotations", "categories")  # the parts of a COCO dict that CocoSet indexes


class CocoSet:
    """Indexed once at construction (annotations by image, categories by name and id), so the
    views below cost what they return, not the size of the set; COCO itself is 118k images
    and 860k boxes. Derived sets share the image, annotation and category dicts of their
    source: nothing in fsx changes them in place, and `to_pycocotools` hands out copies."""

    def __init__(self, coco: dict, image_root: Path | str):
        self.coco = coco
        self.image_root = Path(image_root)
        self._anns_by_image: dict[int, list[dict]] = defaultdict(list)
        for ann in coco["annotations"]:
            self._anns_by_image[ann["image_id"]].append(ann)
        self._images = {img["id"]: img for img in coco["images"]}
        self._category_ids: dict[str, int] = {}
        self._category_names: dict[int, str] = {}
        for cat in coco["categories"]:  # the first of duplicated names or ids wins, as a scan would find
            self._category_ids.setdefault(cat["name"], cat["id"])
            self._category_names.setdefault(cat["id"], cat["name"])
        self._by_category: dict[int, list[int]] | None = None

    @classmethod
    def load(cls, annotation_file: Path | str, image_root: Path | str | None = None) -> "CocoSet":
        path = Path(annotation_file)
        coco = read_json(path, "annotation file")
        if not isinstance(coco, dict):
            raise UsageError(f"annotation file {path} is not COCO format: it holds a {type(coco).__name__}, not an object")
        for key in ("images", "annotations", "categories"):
            if key not in coco:
                raise UsageError(f"annotation file {path} is not COCO format: it has no '{key}' list")
        return cls(coco, image_root if image_root is not None else path.parent)

    # --- views -----------------------------------------------------------------
    @property
    def image_ids(self) -> list[int]:
        return [img["id"] for img in self.coco["images"]]

    @property
    def categories(self) -> list[dict]:
        return self.coco["categories"]

    def category_id(self, name: str) -> int:
        if name not in self._category_ids:
            raise UsageError(f"class '{name}' is not in this dataset (it has: {', '.join(c['name'] for c in self.categories)})")
        return self._category_ids[name]

    def category_name(self, category_id: int) -> str:
        return self._category_names[category_id]

    def image(self, image_id: int) -> dict:
        return self._images[image_id]

    def annotations(self, image_id: int) -> list[dict]:
        return self._anns_by_image.get(image_id, [])

    def image_categories(self, image_id: int) -> set[int]:
        return {a["category_id"] for a in self.annotations(image_id)}

    def images_with(self, category_id: int) -> list[int]:
        """The images holding at least one box of the category, in set order, as a new list the
        caller may change (indexed on the first call: episodic pretraining asks this for every
        sampled task, while most derived sets never need it)."""
        if self._by_category is None:
            index: dict[int, list[int]] = defaultdict(list)
            for img in self.coco["images"]:
                for cid in self.image_categories(img["id"]):
                    index[cid].append(img["id"])
            self._by_category = dict(index)
        return list(self._by_category.get(category_id, ()))

    def __len__(self) -> int:
        return len(self.coco["images"])

    # --- derived sets ----------------------------------------------------------
    def restrict(self, image_ids: Iterable[int] | None = None, category_ids: Iterable[int] | None = None) -> "CocoSet":
        """The same set with only these images (in this order) and only annotations of these
        categories, found through the per-image index: the cost is that of what is kept, so a
        25-image support set of COCO is cheap. The dicts are shared with this set, not copied.
        Annotations come grouped by image in the order of `image_ids`, each image's in the
        order this set holds them (all that COCOeval and `content_hash` read).

        Categories not kept are dropped from `categories` too, so COCOeval scores only them.
        """
        order = self.image_ids if image_ids is None else list(image_ids)
        keep_cats = set(self._category_names) if category_ids is None else set(category_ids)
        annotations = []
        for i in dict.fromkeys(order):  # an id given twice lists its image twice but its boxes once
            annotations.extend(a for a in self._anns_by_image.get(i, ()) if a["category_id"] in keep_cats)
        coco = {
            **{k: v for k, v in self.coco.items() if k not in _LISTS},
            "images": [self._images[i] for i in order],
            "annotations": annotations,
            "categories": [c for c in self.categories if c["id"] in keep_cats],
        }
        return CocoSet(coco, self.image_root)

    def to_pycocotools(self) -> COCO:
        """A pycocotools COCO over copies of the dicts, since COCOeval adds keys to them ('ignore',
        'area', ...) and they are shared with every set derived from the same source. A copy of
        each dict and its box is enough (pycocotools replaces values, it never edits one in
        place) and costs a small part of a deep copy of COCO's 860k annotations."""
        gt = COCO()
        gt.dataset = {
            **copy.deepcopy({k: v for k, v in self.coco.items() if k not in _LISTS}),
            "images": [dict(img) for img in self.coco["images"]],
            "annotations": [{**ann, "bbox": list(ann["bbox"])} for ann in self.coco["annotations"]],
            "categories": [dict(cat) for cat in self.categories],
        }
        gt.dataset.setdefault("info", {})
        for ann in gt.dataset["annotations"]:
            ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
            ann.setdefault("iscrowd", 0)
            if ann.get("difficult"):  # VOC's difficult boxes: ignored by COCOeval as by VOC AP
                ann["iscrowd"] = 1
        _quiet_index(gt)
        return gt

    def content_hash(self) -> str:
        """A short hash of what the set holds (image files and boxes), for manifests."""
        digest = hashlib.sha256()
        for img in self.coco["images"]:
            digest.update(f"{img['id']}:{img['file_name']};".encode())
            for a in self.annotations(img["id"]):
                digest.update(f"{a['category_id']}:{','.join(f'{v:.2f}' for v in a['bbox'])};".encode())
        return digest.hexdigest()[:16]


def read_json(path: Path, what: str):
    """A JSON file's content; a missing or malformed file is a usage error naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None


def _quiet_index(gt: COCO) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        gt.createIndex()


class DetectionDataset(torch.utils.data.Dataset):
    """(image float CHW in [0, 1], {"boxes": xyxy float, "labels": 0..M-1, "image_id"}) pairs.

    `class_ids` fixes the label order: label i is category `class_ids[i]`; annotations of
    other categories are not targets (they are background for this detector).
    """

    def __init__(self, source: CocoSet, class_ids: Sequence[int], transform: Callable | None = None, image_ids: Sequence[int] | None = None, pixel_cache: PixelCache | dict | None = None):
        self.source = source
        self.class_ids = list(class_ids)
        self.label_of = {c: i for i, c in enumerate(self.class_ids)}
        self.transform = transform
        self.ids = list(source.image_ids if image_ids is None else image_ids)
        # image id -> decoded pixels, within a memory budget (fsx.data.pixels); datasets over
        # the same image root may share one (every sampled task of episodic pretraining reads
        # the same training images). A plain dict keeps every image.
        self._pixels: PixelCache | dict = PixelCache() if pixel_cache is None else pixel_cache

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, image_id: int) -> torch.Tensor:
        """uint8 CHW RGB, decoded once and kept while the pixel cache's budget allows."""
        pixels = self._pixels.get(image_id)
        if pixels is None:
            info = self.source.image(image_id)
            path = self.source.image_root / info["file_name"]
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except FileNotFoundError:
                raise UsageError(f"image {path} (image id {image_id}) listed in the annotations does not exist") from None
            except OSError as e:
                raise UsageError(f"image {path} (image id {image_id}) cannot be read: {e}") from None
            pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
            self._pixels[image_id] = pixels
        return pixels

    def target(self, image_id: int) -> dict:
        boxes, labels = [], []
        for a in self.source.annotations(image_id):
            if a["category_id"] not in self.label_of or a.get("iscrowd", 0):
                continue  # other classes are background; a crowd region is no single object
            x, y, w, h = a["bbox"]
            if w <= 0 or h <= 0:  # degenerate boxes (real datasets have them) cannot be regressed
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[a["category_id"]])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
        }

    takes_draw_keys = True  # fsx.engine.loop.infinite_batches may index it by (index, draw)

    def __getitem__(self, index: int | tuple[int, int]):
        """Item `index`; with an (index, draw) key, augmented from that draw number (the same
        in any process: DataLoader workers augment as the training process would)."""
        draw = None
        if isinstance(index, tuple):
            index, draw = index
        image_id = self.ids[index]
        image = self.pixels(image_id).float().div_(255)
        target = self.target(image_id)
        if self.transform is not None:
            if draw is not None and hasattr(self.transform, "reseed"):
                self.transform.reseed(draw)
            image, target = self.transform(image, target)
        return image, target


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)
