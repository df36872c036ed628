"""Pascal VOC XML -> the one in-memory form, `CocoSet`.

Two layouts are read:
- VOCdevkit: `<root>/Annotations/*.xml` and `<root>/JPEGImages/*`, optionally restricted to
  the image ids listed in `<root>/ImageSets/Main/<set>.txt` (e.g. trainval);
- labelImg exports: each XML beside its image, anywhere below `<root>`.

Boxes become COCO `[x, y, w, h]` in continuous pixel coordinates: VOC's 1-based `xmin`/`ymin`
are shifted by -1 (as Detectron2 reads VOC), `xmax`/`ymax` kept. `difficult` and `truncated`
are kept on each annotation (difficult boxes are ignored by VOC AP). Zero-size boxes are
dropped and counted in a warning; a box outside its image, an unknown class, a malformed
file or a missing image is a `UsageError` naming the file.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from fsx.data.choices import IMAGE_SUFFIXES
from fsx.data.coco import CocoSet
from fsx.errors import UsageError

TOLERANCE = 1.0  # a pixel of slack at the image border: VOC's 1-based maxima may equal the size


def _text(node: ET.Element, path: str, where: Path) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise UsageError(f"{where}: no <{path}> in a VOC annotation")
    return found.text.strip()


def _flag(node: ET.Element, tag: str) -> int:
    found = node.find(tag)
    try:
        return int(float(found.text)) if found is not None and found.text else 0
    except ValueError:
        return 0


def _annotation_files(root: Path, image_set: str | None) -> list[Path]:
    annotations = root / "Annotations"
    if annotations.is_dir():
        if image_set:
            listing = root / "ImageSets" / "Main" / f"{image_set}.txt"
            if not listing.is_file():
                raise UsageError(f"dataset.image_set={image_set}: {listing} does not exist")
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            return [annotations / f"{i}.xml" for i in ids]
        return sorted(annotations.glob("*.xml"))
    if image_set:
        raise UsageError(f"dataset.image_set={image_set}: {root} has no Annotations/ folder (a VOCdevkit layout) to list sets in")
    return sorted(p for p in root.rglob("*.xml"))


def _image_for(xml: Path, root: Path, filename: str | None) -> Path:
    """The image an XML describes: VOCdevkit's JPEGImages/<filename>, or the file beside the
    XML with its <filename> (or the XML's own stem) and any image suffix, in any case."""
    folders = [root / "JPEGImages"] if (root / "JPEGImages").is_dir() else [xml.parent]
    stems = [Path(filename).stem] if filename else []
    stems.append(xml.stem)
    for folder in folders:
        if filename and (folder / filename).is_file():
            return folder / filename
        for stem in stems:
            for candidate in folder.glob(f"{stem}.*"):
                if candidate.suffix.lower() in IMAGE_SUFFIXES:
                    return candidate
    raise UsageError(f"{xml}: its image ({filename or xml.stem}) is not in {folders[0]}")


def read_voc(root: Path | str, image_set: str | None = None, classes: list[str] | None = None, name: str | None = None) -> CocoSet:
    """A VOC-layout folder as a `CocoSet` whose image root is `root`. `classes` fixes the
    category order (ids 1..C); by default the sorted class names found. A class outside
    `classes` is an error."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError(f"dataset.path={root}: no such folder")
    files = _annotation_files(root, image_set)
    if not files:
        raise UsageError(f"dataset.path={root}: no VOC annotation (.xml) files found")
    records = []
    found_classes: set[str] = set()
    for xml in files:
        if not xml.is_file():
            raise UsageError(f"{xml}: listed in the image set but missing")
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise UsageError(f"{xml} is not valid XML: {e}") from None
        filename = tree.findtext("filename")
        image = _image_for(xml, root, filename.strip() if filename else None)
        width, height = _image_size(image, xml)
        objects = []
        for obj in tree.findall("object"):
            label = _text(obj, "name", xml)
            box = obj.find("bndbox")
            if box is None:
                raise UsageError(f"{xml}: object '{label}' has no <bndbox>")
            try:
                x0, y0, x1, y1 = (float(_text(box, k, xml)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise UsageError(f"{xml}: object '{label}' has a non-numeric box") from None
            degenerate = x1 <= x0 or y1 <= y0  # zero size in VOC's own coordinates (xmin == xmax)
            x0, y0 = x0 - 1, y0 - 1
            if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > width + TOLERANCE or y1 > height + TOLERANCE:
                raise UsageError(f"{xml}: the box of '{label}' ({x0 + 1:g}, {y0 + 1:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image")
            objects.append((label, max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height), _flag(obj, "difficult"), _flag(obj, "truncated"), degenerate))
            found_classes.add(label)
        records.append((image, width, height, objects, xml))
    names = list(classes) if classes is not None else sorted(found_classes)
    unknown = sorted(found_classes - set(names))
    if unknown:
        raise UsageError(f"dataset.path={root}: classes {', '.join(unknown)} are not among {', '.join(names)}")
    return _as_coco(records, names, root, name or root.name)


def _image_size(image: Path, xml: Path) -> tuple[int, int]:
    """The size in the image file's header (an XML's <size> is sometimes 0 or stale)."""
    try:
        with Image.open(image) as im:
            width, height = im.size
    except OSError as e:
        raise UsageError(f"{image} (described by {xml}) cannot be read as an image: {e}") from None
    return width, height


SPLIT_NAMES = ("train", "val", "valid", "test")


def _split_of(root: Path):
    """Which of the dataset's own splits an image is in: the VOCdevkit image sets train, val
    and test when they exist, else a train/val/valid/test folder on the image's path (as in
    `images/train/x.jpg`); "" when neither says."""
    member: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            member.update({line.split()[0]: split for line in listing.read_text().splitlines() if line.strip()})

    def split_of(xml: Path, relative: str) -> str:
        if member:
            return member.get(xml.stem, "")
        return next((part for part in reversed(Path(relative).parent.parts) if part.lower() in SPLIT_NAMES), "").lower()

    return split_of


def _as_coco(records, names: list[str], root: Path, name: str) -> CocoSet:
    category = {n: i + 1 for i, n in enumerate(names)}
    images, annotations, dropped = [], [], []
    split_of = _split_of(root)
    for image_id, (image, width, height, objects, xml) in enumerate(records, start=1):
        relative = image.relative_to(root).as_posix()
        images.append({"id": image_id, "file_name": relative, "width": width, "height": height, "split": split_of(xml, relative)})
        for label, x0, y0, x1, y1, difficult, truncated, degenerate in objects:
            if degenerate:
                dropped.append(xml.name)
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category[label],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0, "difficult": difficult, "truncated": truncated,
            })
    if dropped:
        print(f"warning: {name}: dropped {len(dropped)} zero-size boxes (in {', '.join(sorted(set(dropped))[:5])})", file=sys.stderr, flush=True)
    coco = {
        "info": {"description": f"{name} (VOC layout)", "dropped_zero_size_boxes": len(dropped)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": category[n], "name": n, "supercategory": name} for n in names],
    }
    return CocoSet(coco, root)
