"""The published benchmarks (PROTOCOLS.md sections 2 and 3) on tiny hand-written trees.

Class lists are compared with PROTOCOLS' tables, hard-coded here (../shared may be absent
in CI). A 60-image VOCdevkit and a small COCO tree (2017 train for FS-COCO and FS-COCO2VOC,
TFA's 2014 trainvalno5k / 5k lists for coco_tfa) are written once per module with 32x24
images; every split is checked against expectations computed from the written annotations,
not from the code under test. Then: bad input, the instance sampler's invariants, the
published K-shot lists, merged custom folders, split_own and the leakage guard.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from fsx.data import classes as fsx_classes
from fsx.data.benchmarks import benchmark_fold, coco2voc_train_images, read_coco
from fsx.data.coco import CocoSet
from fsx.data.custom import load_custom
from fsx.data.merge import merge_sets
from fsx.data.shots import nested_instances, sample_instances
from fsx.errors import UsageError
from fsx.run.fewshot import pretrained_classes, refuse_seen_classes, sample_task
from fsx.run.wiring import benchmark_split

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
SIZE = (32, 24)

# --------------------------------------------------------------------------- PROTOCOLS' tables

VOC20 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
FS_VOC = {  # 2.2
    1: ("aeroplane", "bus", "car", "cat", "train"),
    2: ("bicycle", "bottle", "horse", "motorbike", "person"),
    3: ("bird", "boat", "cow", "dog", "sheep"),
    4: ("chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
}
FS_COCO = {  # 2.3 ("bootle" / "$\log$" in the extracted thesis are bottle / dog)
    1: ("person", "bicycle", "motorcycle", "boat", "bench", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket"),
    2: ("car", "airplane", "bus", "train", "truck", "traffic light", "fire hydrant", "stop sign", "parking meter", "bird",
        "horse", "sheep", "cow", "elephant", "zebra", "giraffe", "banana", "apple", "orange", "donut"),
    3: ("cat", "dog", "bear", "chair", "couch", "potted plant", "bed", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"),
    4: ("bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "sandwich", "broccoli", "carrot", "hot dog", "pizza",
        "cake", "dining table", "toilet", "microwave", "oven", "toaster", "sink", "refrigerator"),
}
TFA_VOC = {  # 2.7: base (head order), novel (head order), novel 1-based VOC ids
    1: (("aeroplane", "bicycle", "boat", "bottle", "car", "cat", "chair", "diningtable", "dog", "horse", "person", "pottedplant",
         "sheep", "train", "tvmonitor"), ("bird", "bus", "cow", "motorbike", "sofa"), (3, 6, 10, 14, 18)),
    2: (("bicycle", "bird", "boat", "bus", "car", "cat", "chair", "diningtable", "dog", "motorbike", "person", "pottedplant",
         "sheep", "train", "tvmonitor"), ("aeroplane", "bottle", "cow", "horse", "sofa"), (1, 5, 10, 13, 18)),
    3: (("aeroplane", "bicycle", "bird", "bottle", "bus", "car", "chair", "cow", "diningtable", "dog", "horse", "person",
         "pottedplant", "train", "tvmonitor"), ("boat", "cat", "motorbike", "sheep", "sofa"), (4, 8, 14, 17, 18)),
}
COCO80 = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck", 9: "boat",
    10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat",
    18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball",
    38: "kite", 39: "baseball bat", 40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket",
    44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake",
    62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop",
    74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
COCO_NOVEL_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]  # 2.8
COCO_BASE_IDS = [8, 10, 11, 13, 14, 15, 22, 23, 24, 25, 27, 28, *range(31, 44), *range(46, 62), 65, 70, *range(73, 83), *range(84, 91)]
COCO_TO_VOC = {  # 2.4
    "airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "tv": "tvmonitor",
    "dining table": "diningtable", "potted plant": "pottedplant",
}
COCO_BASE = tuple(COCO80[i] for i in COCO_BASE_IDS)
COCO_NOVEL = tuple(COCO80[i] for i in COCO_NOVEL_IDS)
VOC_IN_COCO = frozenset(COCO_NOVEL)


# --------------------------------------------------------------------------- 1. class lists


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_fs_voc_folds_are_the_thesis_table(index):
    fold = benchmark_fold("fs_voc", index)
    assert fold.novel == FS_VOC[index]
    assert fold.base == tuple(c for c in VOC20 if c not in FS_VOC[index])
    assert (fold.dataset, fold.index) == ("fs_voc", index)


def test_fs_voc_folds_partition_the_20_voc_classes():
    assert fsx_classes.VOC_CLASSES == VOC20
    novel = [c for i in (1, 2, 3, 4) for c in benchmark_fold("fs_voc", i).novel]
    assert len(novel) == 20 and sorted(novel) == sorted(VOC20)


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_fs_coco_folds_are_the_thesis_table(index):
    fold = benchmark_fold("fs_coco", index)
    assert fold.novel == FS_COCO[index]
    assert len(fold.base) == 60 and set(fold.base) == set(COCO80.values()) - set(FS_COCO[index])


def test_fs_coco_folds_partition_the_80_coco_classes():
    novel = [c for i in (1, 2, 3, 4) for c in benchmark_fold("fs_coco", i).novel]
    assert len(novel) == 80 and set(novel) == set(COCO80.values())
    assert "bottle" in FS_COCO[4] and "dog" in FS_COCO[3]  # the thesis's "bootle" and "$\log$"
    assert not {"bootle", "$\\log$", "log"} & set(novel)


@pytest.mark.parametrize("index", [1, 2, 3])
def test_tfa_voc_splits_keep_the_head_order(index):
    base, novel, ids = TFA_VOC[index]
    fold = benchmark_fold("voc_tfa", index)
    assert fold.base == base and fold.novel == novel  # order matters: surgery relies on it
    assert tuple(VOC20.index(c) + 1 for c in fold.novel) == ids
    assert set(fold.base) | set(fold.novel) == set(VOC20) and not set(fold.base) & set(fold.novel)


def test_coco_60_20_split_by_id():
    assert fsx_classes.COCO_CLASSES == COCO80
    assert sorted(set(COCO80) - set(COCO_NOVEL_IDS)) == COCO_BASE_IDS  # PROTOCOLS' own base list is the rest
    fold = benchmark_fold("coco_tfa", 1)
    assert fold.novel == COCO_NOVEL  # COCO id order
    assert fold.base == COCO_BASE
    assert {COCO_TO_VOC.get(c, c) for c in COCO_NOVEL} == set(VOC20)  # novel = exactly the VOC classes


@pytest.mark.parametrize("index,variant", [(1, "strict"), (2, "strict_except_person"), (3, "background_allowed")])
def test_fs_coco2voc_variants(index, variant):
    assert fsx_classes.COCO2VOC_VARIANTS[index] == variant
    fold = benchmark_fold("fs_coco2voc", index)
    assert fold.base == COCO_BASE  # the 60 non-VOC COCO classes
    assert fold.novel == VOC20
    assert len(fsx_classes.COCO2VOC_VARIANTS) == 3


def test_coco_voc_name_map():
    assert fsx_classes.COCO_TO_VOC == COCO_TO_VOC
    assert fsx_classes.VOC_TO_COCO == {v: k for k, v in COCO_TO_VOC.items()}
    identical = [c for c in VOC20 if c not in COCO_TO_VOC.values()]
    assert len(identical) == 14 and all(c in COCO80.values() for c in identical)
    assert fsx_classes.COCO_VOC_CLASSES == tuple({v: k for k, v in COCO_TO_VOC.items()}.get(c, c) for c in VOC20)
    assert fsx_classes.same_class_names("sofa") == {"sofa", "couch"}
    assert fsx_classes.same_class_names("couch") == {"sofa", "couch"}
    assert fsx_classes.same_class_names("dog") == {"dog"}


@pytest.mark.parametrize("name,bad,listed", [
    ("fs_voc", 5, "1, 2, 3, 4"),
    ("fs_coco", 0, "1, 2, 3, 4"),
    ("voc_tfa", 4, "1, 2, 3"),
    ("coco_tfa", 2, "choose one of 1"),
    ("fs_coco2voc", 4, "1 (strict), 2 (strict_except_person), 3 (background_allowed)"),
])
def test_unknown_fold_lists_the_choices(name, bad, listed):
    with pytest.raises(UsageError, match=f"dataset.fold={bad} is not a {name}") as info:
        benchmark_fold(name, bad)
    assert listed in str(info.value)


# --------------------------------------------------------------------------- 2. tiny trees

VOC_PARTS = (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval"))
DIFFICULT_IMAGE, ZERO_SIZE_IMAGE, TWO_BOX_IMAGES = 5, 8, (13, 23, 33, 43, 53)


def voc_plan() -> list[tuple[str, str, str, list]]:
    """(year, image set, stem, [[class, (xmin, ymin, xmax, ymax), difficult]]): every class in
    three images, one per source part; some images hold 2-3 classes, one a difficult object,
    one a zero-size box, some two boxes of their class."""
    plan, count = [], {"VOC2007": 0, "VOC2012": 0}
    for n in range(60):
        year, image_set = VOC_PARTS[n % 3]
        count[year] += 1
        stem = f"{count[year]:06d}" if year == "VOC2007" else f"2008_{count[year]:06d}"
        names = [VOC20[n % 20]]
        if n % 4 == 1:
            names.append(VOC20[(n * 7 + 3) % 20])
        if n % 6 == 2:
            names += [VOC20[(n * 11 + 5) % 20], VOC20[(n * 3 + 9) % 20]]
        names = list(dict.fromkeys(names))
        objects = [[c, (2 + 3 * j, 2 + 2 * j, 14 + 3 * j, 12 + 2 * j), int(n == DIFFICULT_IMAGE and j == 0)] for j, c in enumerate(names)]
        if n == ZERO_SIZE_IMAGE:
            objects.append([names[0], (20, 5, 20, 15), 0])  # xmin == xmax: dropped on reading
        if n in TWO_BOX_IMAGES:
            objects.append([names[0], (16, 9, 30, 22), 0])
        plan.append((year, image_set, stem, objects))
    return plan


def write_voc(root: Path, plan) -> Path:
    for k, (year, image_set, stem, objects) in enumerate(plan):
        folder = root / year
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZE, (k * 4 % 256, 90, 160)).save(folder / "JPEGImages" / f"{stem}.jpg")
        body = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for c, b, d in objects
        )
        (folder / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><folder>{year}</folder><filename>{stem}.jpg</filename><size><width>{SIZE[0]}</width>"
            f"<height>{SIZE[1]}</height><depth>3</depth></size>{body}</annotation>"
        )
        with open(folder / "ImageSets" / "Main" / f"{image_set}.txt", "a") as f:
            f.write(f"{stem}\n")
    return root


def voc_truth(plan) -> dict[str, dict]:
    """stem -> its part and its boxes as COCO reads them: (class, (x, y, w, h), crowd, difficult)."""
    truth = {}
    for year, image_set, stem, objects in plan:
        boxes = [(c, (x0 - 1.0, y0 - 1.0, x1 - x0 + 1.0, y1 - y0 + 1.0), 0, d) for c, (x0, y0, x1, y1), d in objects if x1 > x0 and y1 > y0]
        truth[stem] = {"part": (year, image_set), "boxes": boxes}
    return truth


COCO_IDS = sorted(COCO80)


def coco_plan(count: int, first_id: int, extra: list[list[tuple[int, int]]] = ()) -> list[tuple[int, list]]:
    """[(image id, [(category id, [x, y, w, h], iscrowd)])]: every class in count/80 images,
    some images with 2-3 classes, some with a crowd box; `extra` adds images with exactly
    these (category id, iscrowd) objects."""
    images = []
    for n in range(count):
        ids = [COCO_IDS[n % 80]]
        if n % 3 == 1:
            ids.append(COCO_IDS[(n * 13 + 5) % 80])
        if n % 5 == 2:
            ids += [COCO_IDS[(n * 7 + 11) % 80], COCO_IDS[(n * 29 + 3) % 80]]
        ids = list(dict.fromkeys(ids))
        objects = [(cid, [1.0 + 2 * j, 1.0 + 2 * j, 10.0, 8.0], 0) for j, cid in enumerate(ids)]
        if n % 7 == 3:
            objects.append((ids[0], [0.0, 0.0, 30.0, 22.0], 1))
        images.append((first_id + 7 * n, objects))
    for k, objs in enumerate(extra):
        images.append((first_id + 7 * (count + k), [(cid, [2.0 + 3 * j, 2.0, 9.0, 9.0], crowd) for j, (cid, crowd) in enumerate(objs)]))
    return images


# FS-COCO2VOC's variants told apart: base + person, base + crowd person, base + dog, person only,
# dog only, base only
COCO2VOC_EXTRA = [[(8, 0), (1, 0)], [(22, 0), (1, 1)], [(10, 0), (18, 0)], [(1, 0)], [(18, 0)], [(90, 0)]]


def write_coco(root: Path, annotations: str, plan, file_name, categories=COCO80) -> dict:
    """The JSON and its images; returns stem -> {"id", "boxes": [(class, bbox, crowd, 0)]}."""
    images, anns, truth = [], [], {}
    for image_id, objects in plan:
        name = file_name(image_id)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZE, (image_id % 256, 120, 40)).save(path)
        images.append({"id": image_id, "file_name": Path(name).name, "width": SIZE[0], "height": SIZE[1]})
        for cid, bbox, crowd in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd})
        truth[Path(name).stem] = {"id": image_id, "boxes": [(COCO80[cid], tuple(bbox), crowd, 0) for cid, bbox, crowd in objects]}
    cats = [{"id": i, "name": n, "supercategory": "thing"} for i, n in categories.items()]
    out = root / annotations
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": {}, "images": images, "annotations": anns, "categories": cats}))
    return truth


class Trees:
    def __init__(self, base: Path):
        self.voc = write_voc(base / "VOCdevkit", voc_plan())
        self.voc_truth = voc_truth(voc_plan())
        self.coco = base / "coco"
        self.coco_truth = write_coco(self.coco, "annotations/instances_train2017.json", coco_plan(240, 1000, COCO2VOC_EXTRA), lambda i: f"train2017/{i:012d}.jpg")

        def tfa_name(i: int) -> str:
            year = "val2014" if i >= 500000 or (i - 100000) // 7 % 4 == 1 else "train2014"
            return f"{year}/COCO_{year}_{i:012d}.jpg"

        self.trainvalno5k = write_coco(self.coco, "cocosplit/datasplit/trainvalno5k.json", coco_plan(120, 100000), tfa_name)
        self.five_k = write_coco(self.coco, "cocosplit/datasplit/5k.json", coco_plan(40, 500000), tfa_name)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Trees:
    return Trees(tmp_path_factory.mktemp("benchmarks"))


def dataset(name: str, **keys) -> dict:
    """The dataset dict as conf/dataset/<name>.yaml gives it, with these keys set."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), {k: (str(v) if isinstance(v, Path) else v) for k, v in keys.items()})
    return OmegaConf.to_container(cfg, resolve=True)


def benchmark(trees: Trees, name: str, fold: int, **keys) -> dict:
    roots = {"fs_voc": dict(root=trees.voc), "voc_tfa": dict(root=trees.voc), "fs_coco": dict(root=trees.coco),
             "coco_tfa": dict(root=trees.coco), "fs_coco2voc": dict(root=trees.coco, voc_root=trees.voc)}[name]
    return dataset(name, fold=fold, **{**roots, **keys})


def stems(cs: CocoSet) -> list[str]:
    return [Path(cs.image(i)["file_name"]).stem for i in cs.image_ids]


def boxes_of(cs: CocoSet) -> list[tuple]:
    return sorted(
        (Path(cs.image(a["image_id"])["file_name"]).stem, cs.category_name(a["category_id"]), tuple(round(float(v), 3) for v in a["bbox"]),
         int(a.get("iscrowd", 0)), int(a.get("difficult", 0)))
        for a in cs.coco["annotations"]
    )


def expected_boxes(truth: dict, keep_stems, keep_classes) -> list[tuple]:
    keep_classes = set(keep_classes)
    return sorted(
        (s, c, tuple(round(float(v), 3) for v in bbox), crowd, difficult)
        for s in keep_stems for c, bbox, crowd, difficult in truth[s]["boxes"] if c in keep_classes
    )


def classes_in(truth: dict, stem: str) -> set[str]:
    return {b[0] for b in truth[stem]["boxes"]}


def check_halves(split, expected_test: set[str], novel) -> None:
    adapt, test = stems(split.test_adapt), stems(split.test_test)
    assert len(set(adapt)) == len(adapt) and len(set(test)) == len(test)
    assert not set(adapt) & set(test)
    assert set(adapt) | set(test) == expected_test
    assert abs(len(adapt) - len(test)) <= 1
    for part in (split.test_adapt, split.test_test):
        assert {c["name"] for c in part.categories} == set(novel)
        assert all(part.annotations(i) for i in part.image_ids)  # every test image holds a novel box


# --------------------------------------------------------------------------- 3. the splits


def test_the_fixtures_cover_what_the_rules_need(trees):
    voc = trees.voc_truth
    assert {c for s in voc for c in classes_in(voc, s)} == set(VOC20)
    assert sum(1 for s in voc if len(classes_in(voc, s)) >= 3) >= 3
    assert any(b[3] for s in voc for b in voc[s]["boxes"])  # a difficult object
    for part in VOC_PARTS:
        assert {c for s in voc if voc[s]["part"] == part for c in classes_in(voc, s)} == set(VOC20)
    for truth in (trees.coco_truth, trees.trainvalno5k):
        assert {c for s in truth for c in classes_in(truth, s)} == set(COCO80.values())
        assert any(b[2] for s in truth for b in truth[s]["boxes"])  # crowd boxes
    assert {Path(p).parent.name for p in map(str, trees.coco.glob("*2014/*.jpg"))} == {"train2014", "val2014"}


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_fs_voc_split_follows_the_thesis_rule(trees, index, capsys):
    split = benchmark_split(benchmark(trees, "fs_voc", index))
    assert "dropped 1 zero-size boxes" in capsys.readouterr().err
    truth, novel = trees.voc_truth, FS_VOC[index]
    base = [c for c in VOC20 if c not in novel]
    test = {s for s in truth if classes_in(truth, s) & set(novel)}
    assert test and len(test) < len(truth)
    train = stems(split.train)
    assert set(train) == set(truth) - test and len(train) == len(set(train))  # pooled: all three VOC parts
    assert boxes_of(split.train) == expected_boxes(truth, train, base)  # base boxes only
    check_halves(split, test, novel)
    assert boxes_of(split.test_adapt) == expected_boxes(truth, stems(split.test_adapt), novel)
    assert boxes_of(split.test_test) == expected_boxes(truth, stems(split.test_test), novel)
    for i in split.train.image_ids:  # images resolve under the pooled image root
        assert (split.train.image_root / split.train.image(i)["file_name"]).is_file()


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_fs_coco_split_follows_the_thesis_rule(trees, index):
    split = benchmark_split(benchmark(trees, "fs_coco", index))
    truth, novel = trees.coco_truth, FS_COCO[index]
    base = [c for c in COCO80.values() if c not in novel]
    test = {s for s in truth if classes_in(truth, s) & set(novel)}  # a crowd of a novel class is a novel object
    assert set(stems(split.train)) == set(truth) - test
    assert boxes_of(split.train) == expected_boxes(truth, stems(split.train), base)
    check_halves(split, test, novel)
    assert boxes_of(split.test_adapt) == expected_boxes(truth, stems(split.test_adapt), novel)
    assert boxes_of(split.test_test) == expected_boxes(truth, stems(split.test_test), novel)
    for i in split.test_test.image_ids:
        assert (split.test_test.image_root / split.test_test.image(i)["file_name"]).is_file()


def coco2voc_expected(truth: dict, variant: str) -> set[str]:
    keep = set()
    for s in truth:
        present = classes_in(truth, s)
        if not present & set(COCO_BASE):
            continue
        banned = {"strict": VOC_IN_COCO, "strict_except_person": VOC_IN_COCO - {"person"}, "background_allowed": set()}[variant]
        if not present & banned:
            keep.add(s)
    return keep


@pytest.mark.parametrize("index,variant", [(1, "strict"), (2, "strict_except_person"), (3, "background_allowed")])
def test_fs_coco2voc_split_per_variant(trees, index, variant):
    split = benchmark_split(benchmark(trees, "fs_coco2voc", index))
    truth = trees.coco_truth
    expected = coco2voc_expected(truth, variant)
    train = stems(split.train)
    assert set(train) == expected and len(train) == len(expected)
    assert boxes_of(split.train) == expected_boxes(truth, train, COCO_BASE)  # person and dog stay unannotated
    # the test side is VOC only: every VOC image (each holds a VOC object), all 20 classes
    voc = trees.voc_truth
    check_halves(split, set(voc), VOC20)
    assert sorted(boxes_of(split.test_adapt) + boxes_of(split.test_test)) == (expected_boxes(voc, voc, VOC20))
    assert not set(stems(split.test_adapt)) & set(truth)
    assert split.rule.startswith(f"FS-COCO2VOC {variant}")


def test_fs_coco2voc_variants_differ_as_the_thesis_says(trees):
    truth = trees.coco_truth
    strict, person, allowed = (coco2voc_expected(truth, v) for v in ("strict", "strict_except_person", "background_allowed"))
    assert strict < person < allowed  # the fixture tells the three apart
    source = CocoSet.load(trees.coco / "annotations/instances_train2017.json", trees.coco / "train2017")
    by_id = {v["id"]: s for s, v in truth.items()}
    for variant, want in (("strict", strict), ("strict_except_person", person), ("background_allowed", allowed)):
        assert {by_id[i] for i in coco2voc_train_images(source, variant)} == want


@pytest.mark.parametrize("index", [1, 2, 3])
def test_voc_tfa_split_is_trainval_and_the_07_test_set(trees, index):
    base, novel, _ = TFA_VOC[index]
    split = benchmark_split(benchmark(trees, "voc_tfa", index))
    truth = trees.voc_truth
    trainval = {s for s in truth if truth[s]["part"] in (("VOC2007", "trainval"), ("VOC2012", "trainval"))}
    test07 = [s for s in truth if truth[s]["part"] == ("VOC2007", "test")]
    with_base = {s for s in trainval if classes_in(truth, s) & set(base)}
    assert with_base < trainval  # some trainval images hold novel objects only: dropped from base training
    assert set(stems(split.train)) == with_base
    assert boxes_of(split.train) == expected_boxes(truth, with_base, base)
    assert sorted(stems(split.test_adapt)) == sorted(trainval)  # shots: all of trainval, all 20 classes
    assert boxes_of(split.test_adapt) == expected_boxes(truth, trainval, VOC20)
    assert sorted(stems(split.test_test)) == sorted(test07)  # exactly the 07 test images
    assert boxes_of(split.test_test) == expected_boxes(truth, test07, VOC20)
    assert {c["name"] for c in split.test_test.categories} == set(VOC20)


def test_coco_tfa_split_is_trainvalno5k_and_5k(trees):
    split = benchmark_split(benchmark(trees, "coco_tfa", 1))
    train, test = trees.trainvalno5k, trees.five_k
    with_base = {s for s in train if classes_in(train, s) & set(COCO_BASE)}
    assert with_base < set(train)
    assert set(stems(split.train)) == with_base
    assert boxes_of(split.train) == expected_boxes(train, with_base, COCO_BASE)
    assert sorted(stems(split.test_adapt)) == sorted(train)
    assert boxes_of(split.test_adapt) == expected_boxes(train, train, COCO80.values())
    assert sorted(stems(split.test_test)) == sorted(test)  # exactly the 5k images
    assert boxes_of(split.test_test) == expected_boxes(test, test, COCO80.values())
    for part in (split.train, split.test_test):  # COCO_{train,val}2014_* found in train2014/ and val2014/
        for i in part.image_ids:
            name = part.image(i)["file_name"]
            assert name.split("/")[0] in ("train2014", "val2014") and (part.image_root / name).is_file()


ALL_FOLDS = [("fs_voc", i) for i in (1, 2, 3, 4)] + [("fs_coco", i) for i in (1, 2, 3, 4)] + [("fs_coco2voc", i) for i in (1, 2, 3)] + [
    ("voc_tfa", i) for i in (1, 2, 3)] + [("coco_tfa", 1)]


@pytest.mark.parametrize("name,index", ALL_FOLDS)
def test_manifests_are_reproducible(trees, name, index):
    first = benchmark_split(benchmark(trees, name, index)).manifest()
    again = benchmark_split(benchmark(trees, name, index)).manifest()
    assert first == again
    assert json.loads(json.dumps(first)) == first
    assert (first["dataset"], first["fold"], first["kind"]) == (name, index, "split")
    assert first["novel_classes"] == list(benchmark_fold(name, index).novel)
    other = benchmark_split(benchmark(trees, name, index, split_seed=1)).manifest()
    assert other["train"] == first["train"]
    if name.startswith("fs_"):  # the thesis's 50/50 halves move with the split seed
        assert other["split_seed"] == 1
        assert other["test_adapt"]["image_ids"] != first["test_adapt"]["image_ids"]
        assert sorted(other["test_adapt"]["image_ids"] + other["test_test"]["image_ids"]) == sorted(
            first["test_adapt"]["image_ids"] + first["test_test"]["image_ids"])
    else:  # TFA's sets are fixed: no halves to draw
        assert other["test_adapt"] == first["test_adapt"] and other["test_test"] == first["test_test"]


def test_a_devkit_below_the_root_is_found(trees, tmp_path):
    (tmp_path / "VOCdevkit").symlink_to(trees.voc, target_is_directory=True)
    nested = benchmark_split(dataset("fs_voc", root=tmp_path, fold=3)).manifest()
    assert nested == benchmark_split(benchmark(trees, "fs_voc", 3)).manifest()


# --------------------------------------------------------------------------- 4. bad input


@pytest.mark.parametrize("name,key", [("fs_voc", "root"), ("fs_coco", "root"), ("voc_tfa", "root"), ("coco_tfa", "root")])
def test_a_missing_root_names_the_key(name, key):
    with pytest.raises(UsageError, match=f"dataset={name} needs dataset.{key}="):
        benchmark_split(dataset(name))


def test_fs_coco2voc_needs_both_roots(trees, tmp_path):
    with pytest.raises(UsageError, match="dataset.voc_root"):
        benchmark_split(dataset("fs_coco2voc", root=trees.coco))
    with pytest.raises(UsageError, match=r"dataset.voc_root=.*nowhere: no such folder"):
        benchmark_split(dataset("fs_coco2voc", root=trees.coco, voc_root=tmp_path / "nowhere"))


def test_fold_5_of_fs_voc_lists_the_folds(trees):
    with pytest.raises(UsageError, match=r"dataset.fold=5 is not a fs_voc fold: choose one of 1, 2, 3, 4"):
        benchmark_split(benchmark(trees, "fs_voc", 5))


def test_a_devkit_without_voc2012_names_the_missing_image_set(tmp_path):
    plan = [p for p in voc_plan() if p[0] == "VOC2007"]
    root = write_voc(tmp_path / "devkit", plan)
    for name in ("fs_voc", "voc_tfa"):
        with pytest.raises(UsageError, match=r"VOC2012/ImageSets/Main/trainval\.txt does not exist"):
            benchmark_split(dataset(name, root=root, fold=1))


def test_a_coco_json_without_the_80_classes_is_refused(tmp_path):
    fewer = {i: n for i, n in COCO80.items() if i != 90}
    plan = [(i, [o for o in objs if o[0] != 90]) for i, objs in coco_plan(90, 1)]
    write_coco(tmp_path, "annotations/instances_train2017.json", plan, lambda i: f"train2017/{i:012d}.jpg", categories=fewer)
    with pytest.raises(UsageError, match=r"instances_train2017\.json: not the 80 COCO classes \(toothbrush missing\)"):
        benchmark_split(dataset("fs_coco", root=tmp_path, fold=1))
    with pytest.raises(UsageError, match="not the 80 COCO classes"):
        read_coco(tmp_path, "annotations/instances_train2017.json", "train2017")


def test_the_cli_without_a_root_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "fsx", "pretrain", "dataset=fs_voc"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fsx: error:"), result.stderr
    assert "dataset.root" in lines[0] and "Traceback" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- 5. the instance sampler

POOL_CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def synthetic_pool() -> CocoSet:
    """60 images, each with 1-2 classes of 1-4 boxes; every fifth a crowd box; one image
    holds only a crowd of ants. Category ids are not 1..C, image ids not 1..N."""
    rng = random.Random(0)
    cats = [{"id": 11 + 3 * k, "name": n} for k, n in enumerate(POOL_CLASSES)]
    images, anns = [], []

    def box(image_id, cid, crowd=0):
        x, y = rng.randint(0, 20), rng.randint(0, 14)
        anns.append({"id": 5000 + len(anns), "image_id": image_id, "category_id": cid, "bbox": [x, y, rng.randint(2, 11), rng.randint(2, 9)], "iscrowd": crowd})

    for n in range(60):
        image_id = 300 + 2 * n
        images.append({"id": image_id, "file_name": f"img_{n:03d}.png", "width": 32, "height": 24})
        present = rng.sample([c["id"] for c in cats], rng.randint(1, 2))
        for cid in present:
            for _ in range(rng.randint(1, 4)):
                box(image_id, cid)
        if n % 5 == 0:
            box(image_id, present[0], crowd=1)
    images.append({"id": 999, "file_name": "crowd_only.png", "width": 32, "height": 24})
    box(999, cats[0]["id"], crowd=1)
    return CocoSet({"images": images, "annotations": anns, "categories": cats}, ".")


@pytest.fixture(scope="module")
def pool() -> CocoSet:
    return synthetic_pool()


def chosen(task) -> dict[str, set[tuple[int, int]]]:
    """class -> {(pool image id, annotation id)} of the support, for either record mode."""
    out: dict[str, set] = {n: set() for n in task.class_names}
    names = dict(zip(task.class_ids, task.class_names))
    for a in task.support.coco["annotations"]:
        image = task.support.image(a["image_id"])
        out[names[a["category_id"]]].add((image.get("source_image_id", image["id"]), a["id"]))
    return out


def test_the_pool_is_what_the_sampler_tests_need(pool):
    for name in POOL_CLASSES:
        cid = pool.category_id(name)
        counts = [sum(1 for a in pool.annotations(i) if a["category_id"] == cid and not a["iscrowd"]) for i in pool.images_with(cid)]
        assert sum(c >= 1 for c in counts) >= 10 and max(counts) >= 3


@pytest.mark.parametrize("shots", range(1, 11))
def test_exactly_k_boxes_per_class(pool, shots):
    task = sample_instances(pool, POOL_CLASSES, shots, seed=4)
    manifest = task.manifest()
    assert manifest["boxes_per_class"] == {n: shots for n in POOL_CLASSES}
    assert manifest["sampler"] == "instance_level" and manifest["shots"] == shots
    assert len(manifest["instances"]) == 5 * shots
    pool_boxes = {a["id"]: a for i in pool.image_ids for a in pool.annotations(i)}
    for name, picked in chosen(task).items():
        assert len(picked) == shots
        for image_id, ann_id in picked:
            assert pool_boxes[ann_id]["image_id"] == image_id
            assert pool.category_name(pool_boxes[ann_id]["category_id"]) == name
            assert not pool_boxes[ann_id]["iscrowd"]
    listed = sorted((i["image"], i["class"], tuple(i["bbox"])) for i in manifest["instances"])
    assert listed == sorted((pool.image(a["image_id"])["file_name"], pool.category_name(a["category_id"]), tuple(float(v) for v in a["bbox"]))
                            for a in task.support.coco["annotations"])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_shots_are_nested_over_k(pool, seed):
    """Nested along TFA's ladder 1, 2, 3, 5, 10; any other K holds the ladder's set below it."""
    sets = {shots: chosen(sample_instances(pool, POOL_CLASSES, shots, seed)) for shots in range(1, 11)}
    ladder = [1, 2, 3, 5, 10]
    for low, high in zip(ladder, ladder[1:]):
        for name in POOL_CLASSES:
            assert sets[low][name] < sets[high][name], (name, low, high)
    for shots in (4, 6, 7, 8, 9):
        below = max(k for k in ladder if k < shots)
        for name in POOL_CLASSES:
            assert sets[below][name] < sets[shots][name], (name, below, shots)
    cid = pool.category_id("cat")
    five, ten = dict(nested_instances(pool, cid, 5, seed)), dict(nested_instances(pool, cid, 10, seed))
    assert all(set(boxes) <= set(ten[image]) for image, boxes in five.items())
    assert sum(len(a) for a in ten.values()) == 10


def test_the_sampler_is_seeded(pool):
    a = sample_instances(pool, POOL_CLASSES, 3, seed=2).manifest()
    assert a == sample_instances(pool, POOL_CLASSES, 3, seed=2).manifest()
    others = {json.dumps(sample_instances(pool, POOL_CLASSES, 3, seed=s).manifest()["instances"]) for s in range(3, 8)}
    assert json.dumps(a["instances"]) not in others and len(others) >= 4


def test_a_class_shots_ignore_the_other_task_classes(pool):
    alone = chosen(sample_instances(pool, ["cat"], 4, seed=9))["cat"]
    for others in (["ant", "cat"], ["cat", "eel", "bee"], POOL_CLASSES):
        assert chosen(sample_instances(pool, others, 4, seed=9))["cat"] == alone


def test_per_class_records_hold_one_class_each(pool):
    merged = sample_instances(pool, POOL_CLASSES, 5, seed=3)
    records = sample_instances(pool, POOL_CLASSES, 5, seed=3, records="per_class")
    assert chosen(records) == chosen(merged)
    assert records.manifest()["boxes_per_class"] == merged.manifest()["boxes_per_class"] == {n: 5 for n in POOL_CLASSES}
    support = records.support
    assert len(set(support.image_ids)) == len(support.image_ids)
    for i in support.image_ids:
        assert len(support.image_categories(i)) == 1  # a record holds one class's boxes
        assert support.image(i)["source_image_id"] in set(pool.image_ids)
    assert len(support) == sum(len({i for i, _ in picked}) for picked in chosen(merged).values())
    with pytest.raises(UsageError, match="sample_records=both"):
        sample_instances(pool, POOL_CLASSES, 1, seed=0, records="both")


def test_crowd_boxes_are_never_chosen_nor_counted(pool):
    crowd = {a["id"] for i in pool.image_ids for a in pool.annotations(i) if a["iscrowd"]}
    assert crowd
    for seed in range(6):
        for shots in (1, 5, 10):
            picked = set().union(*chosen(sample_instances(pool, POOL_CLASSES, shots, seed)).values())
            assert not {a for _, a in picked} & crowd
    ant = pool.category_id("ant")
    boxes = [a for i in pool.images_with(ant) for a in pool.annotations(i) if a["category_id"] == ant]
    plain = sum(1 for a in boxes if not a["iscrowd"])
    assert len(boxes) > plain
    with pytest.raises(UsageError, match=rf"shots={plain + 1} is more than the adaptation pool holds: class 'ant' has {plain} boxes"):
        sample_instances(pool, ["ant"], plain + 1, seed=0)


def test_more_shots_than_boxes_is_a_usage_error(pool):
    with pytest.raises(UsageError, match="shots=500 is more than"):
        sample_instances(pool, POOL_CLASSES, 500, seed=0)
    with pytest.raises(UsageError, match="shots=0"):
        sample_instances(pool, POOL_CLASSES, 0, seed=0)


def test_k_above_the_number_of_images_but_within_the_boxes():
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 24} for i in (1, 2)]
    anns = [{"id": k + 1, "image_id": 1 + k // 3, "category_id": 1, "bbox": [k, 1, 5, 5], "iscrowd": 0} for k in range(6)]
    few = CocoSet({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "ant"}]}, ".")
    for k in range(1, 7):
        assert sample_instances(few, ["ant"], k, seed=0).manifest()["boxes_per_class"] == {"ant": k}


def test_the_instance_sampler_on_a_benchmark_split(trees):
    split = benchmark_split(benchmark(trees, "voc_tfa", 1))
    task = sample_task(split, 5, 2, 0, sampler="instance")
    manifest = task.manifest()
    assert manifest["classes"] == list(TFA_VOC[1][1])
    assert manifest["boxes_per_class"] == {c: 2 for c in TFA_VOC[1][1]}
    trainval = set(stems(split.test_adapt))
    assert {Path(i["image"]).stem for i in manifest["instances"]} <= trainval
    assert sample_task(split, 5, 2, 0, sampler="instance").manifest() == manifest
    with pytest.raises(UsageError, match="sampler=boxes"):
        sample_task(split, 5, 2, 0, sampler="boxes")


# --------------------------------------------------------------------------- 6. published lists


def voc_list_folder(root: Path, truth: dict, novel, count: int) -> dict:
    """seed 0: box_1shot and box_2shot lists naming the first `count` trainval images of
    each class; seed1/: box_1shot naming the last one. Returns (seed, class) -> stems."""
    listed = {}
    (root / "seed1").mkdir(parents=True)
    for c in novel:
        images = [s for s in truth if truth[s]["part"][1] == "trainval" and c in classes_in(truth, s)]
        assert len(images) >= count + 1
        lines = [f"/data/VOCdevkit/{truth[s]['part'][0]}/JPEGImages/{s}.jpg" for s in images]
        for shots in (1, 2):
            (root / f"box_{shots}shot_{c}_train.txt").write_text("\n".join(lines[:count]) + "\n")
        (root / "seed1" / f"box_1shot_{c}_train.txt").write_text(lines[-1] + "\n")
        listed[0, c], listed[1, c] = images[:count], images[-1:]
    return listed


def test_published_voc_lists_are_read_and_truncated_with_a_seed(trees, tmp_path):
    split = benchmark_split(benchmark(trees, "voc_tfa", 1))
    novel = TFA_VOC[1][1]
    listed = voc_list_folder(tmp_path / "vocsplit", trees.voc_truth, novel, 2)
    task = sample_task(split, 5, 1, 0, lists=str(tmp_path / "vocsplit"))
    manifest = task.manifest()
    assert manifest["boxes_per_class"] == {c: 1 for c in novel}  # two listed images: truncated to K = 1
    assert manifest["sampler"] == "published:vocsplit"
    for c, picked in chosen(task).items():
        assert {Path(split.test_adapt.image(i)["file_name"]).stem for i, _ in picked} <= set(listed[0, c])
    assert sample_task(split, 5, 1, 0, lists=str(tmp_path / "vocsplit")).manifest() == manifest  # the same K every time
    two = sample_task(split, 5, 2, 0, lists=str(tmp_path / "vocsplit"))
    for c, picked in chosen(two).items():  # K = 2: two of the listed images' boxes of the class
        boxes = {(i, a["id"]) for i in split.test_adapt.image_ids if Path(split.test_adapt.image(i)["file_name"]).stem in listed[0, c]
                 for a in split.test_adapt.annotations(i) if split.test_adapt.category_name(a["category_id"]) == c}
        assert len(picked) == 2 and picked <= boxes
    seed1 = sample_task(split, 5, 1, 1, lists=str(tmp_path / "vocsplit"))
    assert seed1.manifest()["boxes_per_class"] == {c: 1 for c in novel}
    for c, picked in chosen(seed1).items():
        assert [Path(split.test_adapt.image(i)["file_name"]).stem for i, _ in picked] == listed[1, c]


def test_a_list_with_more_boxes_than_k_keeps_k_deterministically(trees, tmp_path):
    split = benchmark_split(benchmark(trees, "voc_tfa", 1))
    pool = split.test_adapt
    novel = TFA_VOC[1][1]
    folder = tmp_path / "many"
    folder.mkdir()
    for c in novel:  # every trainval image of the class: at least three boxes
        images = [s for s in trees.voc_truth if trees.voc_truth[s]["part"][1] == "trainval" and c in classes_in(trees.voc_truth, s)]
        (folder / f"box_2shot_{c}_train.txt").write_text("".join(f"JPEGImages/{s}.jpg\n" for s in images))
    runs = [chosen(sample_task(split, 5, 2, 0, lists=str(folder))) for _ in range(2)]
    assert runs[0] == runs[1]
    available = {c: sum(1 for i in pool.image_ids for a in pool.annotations(i) if pool.category_name(a["category_id"]) == c) for c in novel}
    assert any(n > 2 for n in available.values())
    assert all(len(runs[0][c]) == 2 for c in novel)


def test_missing_seed_folders_and_class_files_are_usage_errors(trees, tmp_path):
    split = benchmark_split(benchmark(trees, "voc_tfa", 1))
    folder = tmp_path / "vocsplit"
    voc_list_folder(folder, trees.voc_truth, TFA_VOC[1][1], 2)
    with pytest.raises(UsageError, match=r"no folder for sample seed 2 \(.*seed2\)"):
        sample_task(split, 5, 1, 2, lists=str(folder))
    (folder / "box_1shot_sofa_train.txt").unlink()
    with pytest.raises(UsageError, match=r"neither box_1shot_sofa_train\.txt nor full_box_1shot_sofa_trainval\.json"):
        sample_task(split, 5, 1, 0, lists=str(folder))
    with pytest.raises(UsageError, match="box_3shot_"):
        sample_task(split, 5, 3, 1, lists=str(folder))


def test_published_coco_lists_are_read(trees, tmp_path):
    split = benchmark_split(benchmark(trees, "coco_tfa", 1))
    truth = trees.trainvalno5k
    folder = tmp_path / "cocosplit"
    (folder / "seed1").mkdir(parents=True)
    expected = {}
    for name in COCO_NOVEL:
        cid = next(i for i, n in COCO80.items() if n == name)
        found = [(s, bbox) for s in sorted(truth, key=lambda s: truth[s]["id"]) for c, bbox, crowd, _ in truth[s]["boxes"] if c == name and not crowd]
        for seed, (stem, bbox) in ((0, found[0]), (1, found[-1])):
            listed = {"images": [{"id": truth[stem]["id"], "file_name": f"{stem}.jpg"}],
                      "annotations": [{"id": 1, "image_id": truth[stem]["id"], "category_id": cid, "bbox": list(bbox), "iscrowd": 0}],
                      "categories": [{"id": cid, "name": name}]}
            (folder / ("seed1" if seed else "") / f"full_box_1shot_{name}_trainval.json").write_text(json.dumps(listed))
            expected[seed, name] = (stem, tuple(bbox))
    for seed in (0, 1):
        manifest = sample_task(split, 20, 1, seed, lists=str(folder)).manifest()
        assert manifest["boxes_per_class"] == {n: 1 for n in COCO_NOVEL}
        got = {i["class"]: (Path(i["image"]).stem, tuple(i["bbox"])) for i in manifest["instances"]}
        assert got == {n: expected[seed, n] for n in COCO_NOVEL}
    assert any(expected[0, n] != expected[1, n] for n in COCO_NOVEL)


# --------------------------------------------------------------------------- 7. merged and own splits


def labelimg_folder(root: Path, objects: dict[str, list[str]]) -> Path:
    """XMLs beside their images: stem -> classes."""
    root.mkdir(parents=True)
    for k, (stem, names) in enumerate(objects.items()):
        Image.new("RGB", SIZE, (k * 30 % 256, 10, 10)).save(root / f"{stem}.png")
        body = "".join(f"<object><name>{c}</name><bndbox><xmin>{2 + j}</xmin><ymin>2</ymin><xmax>{20 + j}</xmax><ymax>15</ymax></bndbox></object>"
                       for j, c in enumerate(names))
        (root / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.png</filename>{body}</annotation>")
    return root


@pytest.fixture()
def two_folders(tmp_path) -> tuple[Path, Path]:
    kitchen = labelimg_folder(tmp_path / "kitchen", {"k1": ["cat"], "k2": ["dog", "cat"], "k3": ["dog"]})
    garden = labelimg_folder(tmp_path / "garden", {"k1": ["cat"], "g2": ["cow"], "g3": ["cow", "cow"]})
    return kitchen, garden


def test_merged_folders_prefix_their_classes(two_folders):
    kitchen, garden = two_folders
    merged = load_custom("voc", [str(kitchen), str(garden)])
    assert [c["name"] for c in merged.categories] == ["kitchen/cat", "kitchen/dog", "garden/cat", "garden/cow"]
    assert merged.image_ids == list(range(1, 7))
    assert [merged.image(i)["source"] for i in merged.image_ids] == ["kitchen:1", "kitchen:2", "kitchen:3", "garden:1", "garden:2", "garden:3"]
    files = [merged.image(i)["file_name"] for i in merged.image_ids]
    assert files == ["kitchen/k1.png", "kitchen/k2.png", "kitchen/k3.png", "garden/g2.png", "garden/g3.png", "garden/k1.png"]
    for name in files:  # same-named images of two folders stay two files
        assert (merged.image_root / name).is_file()
    counts = {c["name"]: sum(1 for a in merged.coco["annotations"] if a["category_id"] == c["id"]) for c in merged.categories}
    assert counts == {"kitchen/cat": 2, "kitchen/dog": 2, "garden/cat": 1, "garden/cow": 3}
    assert len({a["id"] for a in merged.coco["annotations"]}) == 8


def test_prefix_false_joins_same_named_classes(two_folders):
    merged = load_custom("voc", [str(p) for p in two_folders], prefix=False)
    assert [c["name"] for c in merged.categories] == ["cat", "dog", "cow"]
    cat = merged.category_id("cat")
    assert sorted(merged.image(i)["file_name"] for i in merged.images_with(cat)) == ["garden/k1.png", "kitchen/k1.png", "kitchen/k2.png"]


def test_a_merged_custom_dataset_splits_by_its_prefixed_classes(two_folders):
    kitchen, garden = two_folders
    split = benchmark_split(dataset("custom", format="voc", path=[str(kitchen), str(garden)], novel=["garden/cow"]))
    assert split.fold.novel == ("garden/cow",)
    assert sorted(split.fold.base) == ["garden/cat", "kitchen/cat", "kitchen/dog"]
    assert sorted(stems(split.test_adapt) + stems(split.test_test)) == ["g2", "g3"]
    assert len(split.train) == 4


def test_merging_needs_distinct_part_names(two_folders):
    part = load_custom("voc", str(two_folders[0]))
    with pytest.raises(UsageError, match="distinct names"):
        merge_sets([("a", part), ("a", part)])
    with pytest.raises(UsageError, match="classes cat, dog are not among cow"):
        merge_sets([("a", part)], classes=["cow"])


def own_voc(root: Path) -> Path:
    members = {"train": ["t1", "t2", "t3"], "test": ["e1", "e2"]}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, ids in members.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, stem in enumerate(ids):
            Image.new("RGB", SIZE).save(root / "JPEGImages" / f"{stem}.jpg")
            names = ["cat", "dog"][: k % 2 + 1]
            body = "".join(f"<object><name>{c}</name><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>" for c in names)
            (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{body}</annotation>")
    return root


def own_yolo(root: Path) -> Path:
    for split, stems_ in (("train", ["t1", "t2", "t3"]), ("test", ["e1", "e2"])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for k, stem in enumerate(stems_):
            Image.new("RGB", SIZE).save(root / split / "images" / f"{stem}.jpg")
            (root / split / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.4 0.4\n" + ("1 0.3 0.3 0.2 0.2\n" if k % 2 else ""))
    (root / "data.yaml").write_text("train: ../train/images\ntest: ../test/images\nnc: 2\nnames: [cat, dog]\n")
    return root


@pytest.mark.parametrize("format,make", [("voc", own_voc), ("yolo", own_yolo)])
def test_every_class_novel_uses_the_datasets_own_splits(tmp_path, format, make):
    root = make(tmp_path / "own")
    split = benchmark_split(dataset("custom", format=format, path=str(root), novel="all"))
    assert split.fold.base == () and set(split.fold.novel) == {"cat", "dog"}
    assert len(split.train) == 0
    assert stems(split.test_adapt) == ["t1", "t2", "t3"]  # shots from the train split
    assert stems(split.test_test) == ["e1", "e2"]  # scored on the test split
    assert len(split.test_adapt.coco["annotations"]) == 4 and len(split.test_test.coco["annotations"]) == 3
    assert "test split" in split.rule


# --------------------------------------------------------------------------- 8. leakage guard


def test_a_couch_checkpoint_is_refused_where_sofa_is_novel(trees):
    payload = {"kind": "pretrain", "classes": ["couch", "person", "truck"]}
    for name, index in (("fs_voc", 4), ("voc_tfa", 1), ("voc_tfa", 3)):
        split = benchmark_split(benchmark(trees, name, index))
        with pytest.raises(UsageError, match=r"checkpoint=ckpt.pt was pretrained on boxes of sofa.*allow_seen_classes=true") as info:
            refuse_seen_classes(payload, split, "ckpt.pt")
        assert f"{name} fold {index}" in str(info.value)
    refuse_seen_classes(payload, benchmark_split(benchmark(trees, "fs_voc", 3)), "ckpt.pt")  # no sofa, no person there
    with pytest.raises(UsageError, match="person"):
        refuse_seen_classes(payload, benchmark_split(benchmark(trees, "fs_voc", 2)), "ckpt.pt")


def test_a_voc_checkpoint_is_refused_where_couch_and_tv_are_novel(trees):
    split = benchmark_split(benchmark(trees, "fs_coco", 3))
    with pytest.raises(UsageError, match="couch, potted plant, tv"):
        refuse_seen_classes({"kind": "pretrain", "classes": ["sofa", "tvmonitor", "pottedplant"]}, split, "voc.pt")
    refuse_seen_classes({"kind": "pretrain", "classes": ["person", "bottle", "truck"]}, split, "voc.pt")


def test_an_adapted_checkpoint_is_judged_by_its_pretraining(trees):
    adapted = {"kind": "adapt", "classes": ["chair", "sofa"], "pretrained_classes": ["aeroplane", "bus"]}
    assert pretrained_classes(adapted) == ["aeroplane", "bus"]
    assert pretrained_classes({"kind": "adapt", "classes": ["sofa"]}) == []
    assert pretrained_classes({"kind": "pretrain", "classes": ["sofa"]}) == ["sofa"]
    refuse_seen_classes(adapted, benchmark_split(benchmark(trees, "fs_voc", 4)), "adapted.pt")  # adapting to sofa is not pretraining on it
    with pytest.raises(UsageError, match="aeroplane, bus"):
        refuse_seen_classes(adapted, benchmark_split(benchmark(trees, "fs_voc", 1)), "adapted.pt")
