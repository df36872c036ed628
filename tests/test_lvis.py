"""lvis_tfa: LVIS annotations read into the one CocoSet (images found from coco_url), the
frequency split (frequent + common base, rare novel), and LVIS's own metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fsx.errors import UsageError
from fsx.run.wiring import benchmark_split

CATEGORIES = [("apple", "f"), ("banana", "f"), ("cherry", "c"), ("durian", "c"), ("elderberry", "r"), ("fig", "r")]


def write_lvis(root: Path, version: str = "v0.5") -> Path:
    """train: 24 images, val: 12; image k holds class k % 6 (and class (k + 1) % 6 when k is even)."""
    categories = [{"id": i + 1, "name": n, "frequency": f, "synset": n} for i, (n, f) in enumerate(CATEGORIES)]
    ann_id = 0
    for part, count, first in (("train", 24, 1), ("val", 12, 1000)):
        folder = root / f"{part}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            image_id = first + k
            file = f"{image_id:012d}.jpg"
            Image.new("RGB", (64, 48), (200, 200, 200)).save(folder / file)
            images.append({"id": image_id, "width": 64, "height": 48, "coco_url": f"http://images.example/{part}2017/{file}",
                           "neg_category_ids": [((k + 3) % 6) + 1], "not_exhaustive_category_ids": []})
            for j, c in enumerate([k % 6] + ([(k + 1) % 6] if k % 2 == 0 else [])):
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": c + 1, "bbox": [4.0 + 28 * j, 6.0, 20.0, 18.0], "area": 360.0})
        (root / f"lvis_{version}_{part}.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def dataset(root: Path, fold: int = 1) -> dict:
    return {"name": "lvis_tfa", "fold": fold, "root": str(root), "split_seed": 0}


def test_the_frequency_split_and_the_images_from_coco_url(tmp_path):
    split = benchmark_split(dataset(write_lvis(tmp_path)))
    assert split.fold.base == ("apple", "banana", "cherry", "durian") and split.fold.novel == ("elderberry", "fig")
    rare = {split.test_adapt.category_id(n) for n in split.fold.novel}
    assert {c["name"] for c in split.train.categories} == set(split.fold.base)
    assert not any(a["category_id"] in rare for i in split.train.image_ids for a in split.train.annotations(i))
    assert len(split.train) == 16  # the 24 training images less the 8 that hold only rare boxes
    assert len(split.test_adapt) == 24 and len(split.test_test) == 12  # shots from train, all classes; val scored
    for part in (split.train, split.test_test):
        image = part.image(part.image_ids[0])
        assert (part.image_root / image["file_name"]).is_file()
        assert image["file_name"].split("/")[0] in ("train2017", "val2017")


def test_version_and_bad_files_are_named(tmp_path):
    write_lvis(tmp_path / "v1", "v1")
    assert benchmark_split(dataset(tmp_path / "v1", 2)).fold.novel == ("elderberry", "fig")
    with pytest.raises(UsageError, match="lvis_v0.5_train.json does not exist"):
        benchmark_split(dataset(tmp_path / "v1", 1))
    with pytest.raises(UsageError, match="not a lvis_tfa fold"):
        benchmark_split(dataset(tmp_path / "v1", 3))
    plain = tmp_path / "coco"
    write_lvis(plain)
    for part in ("train", "val"):
        path = plain / f"lvis_v0.5_{part}.json"
        data = json.loads(path.read_text())
        for c in data["categories"]:
            del c["frequency"]
        path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="not LVIS annotations"):
        benchmark_split(dataset(plain))


def test_lvis_metrics_score_perfect_and_empty_detections(tmp_path):
    pytest.importorskip("lvis", reason="the lvis package (pip install 'fsx[lvis]') scores LVIS")
    from fsx.evaluation.lvis_metrics import lvis_metrics

    split = benchmark_split(dataset(write_lvis(tmp_path)))
    gt = split.test_test
    ids = [c["id"] for c in gt.categories]
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for i in gt.image_ids for a in gt.annotations(i)]
    scores = lvis_metrics(gt, perfect, ids)
    assert scores["lvisAP"] == pytest.approx(1.0) and scores["APr"] == pytest.approx(1.0) and scores["APf"] == pytest.approx(1.0)
    # a detection of a class verified absent from its image (neg_category_ids) is a false positive
    wrong = perfect + [{"image_id": i, "category_id": gt.image(i)["neg_category_ids"][0], "bbox": [30.0, 20.0, 20.0, 20.0], "score": 0.95} for i in gt.image_ids]
    assert lvis_metrics(gt, wrong, ids)["lvisAP"] < 0.9
    empty = lvis_metrics(gt, [], ids)
    assert empty["lvisAP"] == 0.0 and empty["APr"] == 0.0
    assert math.isnan(lvis_metrics(gt, [], [1, 2])["APr"])  # no rare class among these


def test_rare_classes_give_up_to_k_shots(tmp_path):
    from fsx.run.fewshot import sample_task

    split = benchmark_split(dataset(write_lvis(tmp_path)))
    task = sample_task(split, 2, 10, 1, sampler="instance", generalized=True)  # 10 shots: every class has fewer boxes
    counts = task.manifest()["boxes_per_class"]
    boxes = {c["name"]: sum(1 for i in split.test_adapt.image_ids for a in split.test_adapt.annotations(i) if a["category_id"] == c["id"]) for c in split.test_adapt.categories}
    assert counts == {name: min(10, boxes[name]) for name in counts} and counts["fig"] == 8


def test_the_cli_needs_a_root(tmp_path):
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "fsx", "pretrain", "dataset=lvis_tfa"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "dataset.root" in result.stderr
