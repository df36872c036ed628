"""The published few-shot detection benchmarks, read from the user's own copies of VOC and COCO.

    fs_voc      RT's FS-VOC folds 1-4: VOC2007 trainval+test and VOC2012 trainval pooled,
                split by the thesis's rule (PROTOCOLS 2.2, 2.5)
    fs_coco     RT's FS-COCO folds 1-4: COCO 2017 train, split by the same rule (2.3)
    fs_coco2voc RT's FS-COCO2VOC variants 1-3 (strict, strict_except_person,
                background_allowed): the 60 non-VOC COCO classes for training, every VOC
                image for testing (2.4)
    voc_tfa     TFA's VOC splits 1-3: base training on 07+12 trainval, shots from it, the
                VOC2007 test set scored (2.7)
    coco_tfa    TFA's COCO 60/20 split: COCO 2014 trainvalno5k and 5k (2.8)
    lvis_tfa    TFA's LVIS split: frequent + common classes base, rare novel; fold 1 = LVIS
                v0.5 (TFA's), fold 2 = v1; train on its train set, score its val set (2.9)

Where the data lives (`dataset.root`; nothing is downloaded):
    VOC   <root>/VOC2007/{Annotations,JPEGImages,ImageSets/Main}, <root>/VOC2012/... (or <root>/VOCdevkit/...)
    COCO  <root>/annotations/instances_train2017.json, <root>/train2017/ (fs_coco, fs_coco2voc)
          <root>/cocosplit/datasplit/{trainvalno5k,5k}.json, <root>/{train2014,val2014}/ (coco_tfa)
    LVIS  <root>/lvis_v0.5_{train,val}.json or lvis_v1_{train,val}.json (or under annotations/),
          the COCO 2017 images in <root>/train2017/ and <root>/val2017/
"""

from __future__ import annotations

from pathlib import Path

from fsx.data.classes import (
    COCO2VOC_VARIANTS,
    COCO_TFA_BASE,
    COCO_TFA_NOVEL,
    COCO_VOC_CLASSES,
    FS_COCO_FOLDS,
    FS_VOC_FOLDS,
    VOC_CLASSES,
    VOC_TFA_SPLITS,
)
from fsx.data.coco import CocoSet
from fsx.data.custom import checked_coco
from fsx.data.folds import Fold, Split, split_across, split_by_fold, split_generalized
from fsx.data.merge import merge_sets
from fsx.data.voc import read_voc
from fsx.errors import UsageError

BENCHMARKS = ("fs_voc", "fs_coco", "fs_coco2voc", "voc_tfa", "coco_tfa", "lvis_tfa")
LVIS_VERSIONS = {1: "v0.5", 2: "v1"}
VOC_POOL = (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval"))  # FS-VOC, all VOC images
VOC_TFA_TRAIN = (("VOC2007", "trainval"), ("VOC2012", "trainval"))
VOC_TFA_TEST = (("VOC2007", "test"),)
COCO_NAMES = tuple(sorted(set(COCO_TFA_BASE) | set(COCO_TFA_NOVEL)))


def benchmark_fold(name: str, index: int) -> Fold:
    """The base/novel partition of a benchmark's fold (split, variant)."""
    if name == "fs_voc":
        novel = _pick(FS_VOC_FOLDS, index, name)
        return Fold(name, index, tuple(c for c in VOC_CLASSES if c not in novel), novel)
    if name == "fs_coco":
        novel = _pick(FS_COCO_FOLDS, index, name)
        return Fold(name, index, tuple(c for c in COCO_TFA_BASE + COCO_TFA_NOVEL if c not in novel), novel)
    if name == "fs_coco2voc":
        _pick(COCO2VOC_VARIANTS, index, name)
        return Fold(name, index, COCO_TFA_BASE, VOC_CLASSES)
    if name == "voc_tfa":
        base, novel = _pick(VOC_TFA_SPLITS, index, name)
        return Fold(name, index, base, novel)
    if name == "coco_tfa":
        _pick({1: None}, index, name)
        return Fold(name, index, COCO_TFA_BASE, COCO_TFA_NOVEL)
    if name == "lvis_tfa":
        raise UsageError("lvis_tfa's classes come from its annotation file: read them with benchmark_split")
    raise UsageError(f"dataset={name} is not a benchmark: choose one of {', '.join(BENCHMARKS)}")


def _pick(table: dict, index: int, name: str):
    if index not in table:
        what = {"fs_coco2voc": "variant"}.get(name, "fold")
        described = ", ".join(f"{k} ({v})" if isinstance(v, str) else str(k) for k, v in table.items())
        raise UsageError(f"dataset.fold={index} is not a {name} {what}: choose one of {described}")
    return table[index]


def benchmark_split(dataset: dict) -> Split:
    """Read the benchmark's sources under dataset.root and split them as its protocol says."""
    name, index = dataset["name"], int(dataset["fold"])
    if name == "lvis_tfa":
        root = _root(dataset, "root")
        version = _pick(LVIS_VERSIONS, index, name)
        train, test = read_lvis(root, version, "train"), read_lvis(root, version, "val")
        return split_generalized(train, test, lvis_fold(train, index))
    fold = benchmark_fold(name, index)
    seed = int(dataset.get("split_seed", 0))
    if name == "fs_voc":
        return split_by_fold(read_voc_parts(_root(dataset, "root"), VOC_POOL), fold, seed)
    if name == "fs_coco":
        return split_by_fold(read_coco(_root(dataset, "root"), "annotations/instances_train2017.json", "train2017"), fold, seed)
    if name == "fs_coco2voc":
        coco = read_coco(_root(dataset, "root"), "annotations/instances_train2017.json", "train2017")
        voc = read_voc_parts(_root(dataset, "voc_root"), VOC_POOL)
        variant = COCO2VOC_VARIANTS[index]
        return split_across(coco, coco2voc_train_images(coco, variant), voc, fold, seed, f"FS-COCO2VOC {variant}: COCO's 60 non-VOC classes train, every VOC image 50/50 test")
    if name == "voc_tfa":
        root = _root(dataset, "root")
        return split_generalized(read_voc_parts(root, VOC_TFA_TRAIN), read_voc_parts(root, VOC_TFA_TEST), fold)
    if name == "coco_tfa":
        root = _root(dataset, "root")
        train = read_coco(root, "cocosplit/datasplit/trainvalno5k.json", ".")
        test = read_coco(root, "cocosplit/datasplit/5k.json", ".")
        return split_generalized(train, test, fold)
    raise UsageError(f"dataset={name} is not a benchmark: choose one of {', '.join(BENCHMARKS)}")


def _root(dataset: dict, key: str) -> Path:
    value = dataset.get(key)
    if not value:
        raise UsageError(f"dataset={dataset['name']} needs dataset.{key}=<the folder holding the data> (fsx never downloads datasets)")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise UsageError(f"dataset.{key}={value}: no such folder")
    return path


def read_voc_parts(root: Path, parts) -> CocoSet:
    """VOC image sets pooled into one set, e.g. 07 trainval + 07 test + 12 trainval."""
    devkit = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() and not (root / "VOC2007").is_dir() else root
    sets = []
    for year, image_set in parts:
        folder = devkit / year
        if not (folder / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            raise UsageError(f"{folder}/ImageSets/Main/{image_set}.txt does not exist: this benchmark needs {year} {image_set} under {devkit}")
        sets.append((f"{year}_{image_set}", read_voc(folder, image_set=image_set, classes=list(VOC_CLASSES), name=f"{year} {image_set}")))
    return sets[0][1] if len(sets) == 1 else merge_sets(sets, classes=list(VOC_CLASSES))


def read_coco(root: Path, annotations: str, images: str) -> CocoSet:
    """A COCO instances file, its images under `root/images`; TFA's 2014 lists name files
    COCO_train2014_* and COCO_val2014_*, found in train2014/ and val2014/."""
    path = root / annotations
    if not path.is_file():
        raise UsageError(f"{path} does not exist: this benchmark reads {annotations} under dataset.root")
    source = CocoSet.load(path, root / images)
    for image in source.coco["images"]:
        name = image["file_name"]
        for year in ("train2014", "val2014"):
            if name.startswith(f"COCO_{year}_") and (root / year).is_dir():
                image["file_name"] = f"{year}/{name}"
    missing = sorted(set(COCO_NAMES) - {c["name"] for c in source.categories})
    if missing:
        raise UsageError(f"{path}: not the 80 COCO classes ({', '.join(missing[:5])} missing)")
    return checked_coco(source, str(path))


def read_lvis(root: Path, version: str, part: str) -> CocoSet:
    """An LVIS annotation file; each image's file is found from its coco_url (LVIS uses the
    COCO 2017 images: train2017/ or val2017/)."""
    name = f"lvis_{version}_{part}.json"
    path = next((p for p in (root / name, root / "annotations" / name) if p.is_file()), None)
    if path is None:
        raise UsageError(f"{root / name} does not exist (nor under annotations/): lvis_tfa reads LVIS {version}'s {part} annotations there")
    source = CocoSet.load(path, root)
    for image in source.coco["images"]:
        if "coco_url" in image:
            folder, file = image["coco_url"].rstrip("/").split("/")[-2:]
            image["file_name"] = f"{folder}/{file}"
        elif "file_name" not in image:
            raise UsageError(f"{path}: image {image.get('id')} has neither coco_url nor file_name")
    if any("frequency" not in c for c in source.categories):
        raise UsageError(f"{path}: not LVIS annotations (its categories have no 'frequency')")
    return checked_coco(source, str(path))


def lvis_fold(source: CocoSet, index: int) -> Fold:
    """LVIS's split by training-set frequency: frequent (f) + common (c) base, rare (r) novel."""
    ordered = sorted(source.categories, key=lambda c: c["id"])
    base = tuple(c["name"] for c in ordered if c["frequency"] in ("f", "c"))
    novel = tuple(c["name"] for c in ordered if c["frequency"] == "r")
    return Fold("lvis_tfa", index, base, novel)


def coco2voc_train_images(coco: CocoSet, variant: str) -> list[int]:
    """The COCO images FS-COCO2VOC trains on (PROTOCOLS 2.4): all hold a train-class box;
    strict drops any image showing a VOC class, strict_except_person lets person through."""
    train = {coco.category_id(c) for c in COCO_TFA_BASE}
    banned = {coco.category_id(c) for c in COCO_VOC_CLASSES}
    if variant == "strict_except_person":
        banned.discard(coco.category_id("person"))
    elif variant == "background_allowed":
        banned = set()
    return [i for i in coco.image_ids if (cats := coco.image_categories(i)) & train and not cats & banned]
