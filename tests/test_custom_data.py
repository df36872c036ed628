"""Custom datasets: VOC folders and COCO JSONs read into the one CocoSet, their defects
handled or refused by name, and a user's folder used as a few-shot benchmark end to end.

The three real datasets of ../shared/data are used when present (a fresh clone in CI may
not have them: those tests skip and say why); the bad-input cases are written by the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fsx.data.custom import custom_fold, load_custom
from fsx.data.folds import split_by_fold
from fsx.data.voc import read_voc
from fsx.errors import UsageError

SHARED = Path(os.environ.get("FSX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real-photo datasets are not at {SHARED} (set FSX_SHARED_DATA)")


def stats(name: str) -> dict:
    return json.loads((SHARED / name / "STATS.json").read_text())


@needs_shared
@pytest.mark.parametrize("folder,classes,images,boxes", [
    ("bccd/BCCD", ["Platelets", "RBC", "WBC"], 364, 4888 - 2),  # two zero-size RBC boxes are dropped
    ("microcontrollers", ["Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora", "Raspberry_Pi_3"], 149, 177),
    ("pinochle_cards", ["ace", "jack", "king", "nine", "queen", "ten"], 363, 670),
])
def test_the_shared_real_datasets_load(folder, classes, images, boxes, capsys):
    source = read_voc(SHARED / folder)
    assert [c["name"] for c in source.categories] == classes
    assert len(source) == images and len(source.coco["annotations"]) == boxes
    for info in source.coco["images"][:20]:
        with Image.open(source.image_root / info["file_name"]) as im:  # .JPG and .jpg both resolve
            assert im.size == (info["width"], info["height"])
    warning = capsys.readouterr().err
    assert ("dropped 2 zero-size boxes" in warning) == folder.startswith("bccd")


@needs_shared
def test_a_voc_image_set_restricts_the_images():
    trainval = read_voc(SHARED / "bccd" / "BCCD", image_set="trainval")
    assert len(trainval) == 292
    with pytest.raises(UsageError, match="dataset.image_set=nope: .*nope.txt does not exist"):
        read_voc(SHARED / "bccd" / "BCCD", image_set="nope")


@needs_shared
def test_a_custom_partition_splits_like_every_benchmark():
    source = load_custom("voc", str(SHARED / "microcontrollers"))
    fold = custom_fold(source, ["ESP8266"])
    assert fold.novel == ("ESP8266",) and "ESP8266" not in fold.base
    split = split_by_fold(source, fold, 0)
    esp = source.category_id("ESP8266")
    assert not any(esp in split.train.image_categories(i) for i in split.train.image_ids)
    assert {c["name"] for c in split.test_test.categories} == {"ESP8266"}
    assert len(split.train) + len(split.test_adapt) + len(split.test_test) == 149
    assert custom_fold(source, "all").base == ()


def _voc(tmp_path: Path, body: str, size=(64, 48), name="a") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(tmp_path / f"{name}.jpg")
    (tmp_path / f"{name}.xml").write_text(f"<annotation><filename>{name}.jpg</filename>{body}</annotation>")
    return tmp_path


def _object(name="cat", box=(5, 6, 30, 40), difficult=0) -> str:
    x0, y0, x1, y1 = box
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def test_voc_boxes_become_continuous_coco_boxes_with_their_flags(tmp_path):
    source = read_voc(_voc(tmp_path, _object(box=(5, 6, 30, 40), difficult=1) + _object("dog", box=(1, 1, 64, 48))))
    cat, dog = sorted(source.coco["annotations"], key=lambda a: a["category_id"])
    assert cat["bbox"] == [4.0, 5.0, 26.0, 35.0] and cat["difficult"] == 1
    assert dog["bbox"] == [0.0, 0.0, 64.0, 48.0] and dog["difficult"] == 0


@pytest.mark.parametrize("body,message", [
    ("<object><name>cat</name>", "is not valid XML"),
    (_object(box=(5, 6, 90, 40)), r"the box of 'cat' \(5, 6, 90, 40\) lies outside the 64x48 image"),
    (_object(box=("a", 6, 9, 40)), "non-numeric box"),
    ("<object><name>cat</name></object>", "object 'cat' has no <bndbox>"),
])
def test_bad_voc_annotations_name_the_file_and_the_problem(tmp_path, body, message):
    folder = _voc(tmp_path / "set", body)
    with pytest.raises(UsageError, match=message) as info:
        read_voc(folder)
    assert "a.xml" in str(info.value)


def test_a_missing_or_unreadable_image_is_named(tmp_path):
    folder = _voc(tmp_path / "set", _object())
    (folder / "a.jpg").unlink()
    with pytest.raises(UsageError, match=r"a.xml: its image \(a.jpg\) is not in"):
        read_voc(folder)
    (folder / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="a.jpg .*cannot be read as an image"):
        read_voc(folder)


def test_custom_coco_is_checked(tmp_path, capsys):
    Image.new("RGB", (50, 40)).save(tmp_path / "x.png")
    coco = {
        "images": [{"id": 1, "file_name": "x.png", "width": 50, "height": 40}],
        "categories": [{"id": 3, "name": "cup"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]}, {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4]}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    source = load_custom("coco", annotations=str(tmp_path / "a.json"), images=str(tmp_path))
    assert [a["id"] for a in source.coco["annotations"]] == [1]
    assert "dropped 1 zero-size boxes" in capsys.readouterr().err
    for bad, message in ((dict(category_id=9), "has category 9, which is not in 'categories'"), (dict(bbox=[40, 30, 20, 20]), "lies outside its 50x40 image x.png")):
        (tmp_path / "b.json").write_text(json.dumps({**coco, "annotations": [{**coco["annotations"][0], **bad}]}))
        with pytest.raises(UsageError, match=message):
            load_custom("coco", annotations=str(tmp_path / "b.json"), images=str(tmp_path))
    with pytest.raises(UsageError, match="needs dataset.annotations"):
        load_custom("coco", images=str(tmp_path))
    with pytest.raises(UsageError, match="dataset.format=xml: choose one of voc, coco, yolo"):
        load_custom("xml")


def test_the_novel_classes_must_be_named_and_exist(tmp_path):
    source = read_voc(_voc(tmp_path / "set", _object() + _object("dog")))
    with pytest.raises(UsageError, match=r"dataset.novel: name the novel classes.*this dataset has: cat, dog"):
        custom_fold(source, None)
    with pytest.raises(UsageError, match="dataset.novel: cow not in this dataset"):
        custom_fold(source, ["cow"])


@needs_shared
@pytest.mark.slow
def test_a_users_folder_is_pretrained_on_and_evaluated_from_the_cli(tmp_path):
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}
    data = ["dataset=custom", f"dataset.path={SHARED / 'microcontrollers'}", "dataset.novel=[Raspberry_Pi_3]", "dataset.image_size=96"]

    def fsx(*args):
        return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    pre = fsx("pretrain", *data, "train.steps=2", "algorithm.batch_size=4")
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "custom fold 0 (3 base classes" in pre.stdout
    ev = fsx("eval", "checkpoint=latest", "ways=1", "shots=2", "eval.repeats=2", "eval.milestones=[0,1]")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "1-way 2-shot on test-test (Raspberry_Pi_3)" in ev.stdout
    missing = fsx("pretrain", "dataset=custom", f"dataset.path={tmp_path / 'nowhere'}", "dataset.novel=[a]")
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def _yolo(root: Path, labels: dict[str, str], names="[cat, dog]") -> Path:
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
    for stem, text in labels.items():
        split = "valid" if stem.startswith("v") else "train"
        Image.new("RGB", (100, 50)).save(root / split / "images" / f"{stem}.jpg")
        if text is not None:
            (root / split / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {names}\n")
    return root


def test_a_yolo_export_reads_normalised_boxes_and_empty_label_files(tmp_path):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.2 0.2\n", "b": "", "c": None, "v1": "1 0.5 0.5 1 1"})
    source = load_custom("yolo", str(root))
    assert len(source) == 4 and [c["name"] for c in source.categories] == ["cat", "dog"]
    boxes = {(a["image_id"], a["category_id"]): [round(v, 6) for v in a["bbox"]] for a in source.coco["annotations"]}
    assert boxes == {(1, 1): [40.0, 15.0, 20.0, 20.0], (1, 2): [0.0, 0.0, 20.0, 10.0], (4, 2): [0.0, 0.0, 100.0, 50.0]}
    assert len(load_custom("yolo", str(root), image_set="valid")) == 1


@pytest.mark.parametrize("text,message", [
    ("0 0.5 0.5\n", r"a.txt:1: expected 'class cx cy w h'"),
    ("5 0.5 0.5 0.1 0.1\n", r"a.txt:1: class 5 is not among the 2 classes"),
    ("0 0.5 0.5 0.1 0.1\n0 0.95 0.5 0.2 0.1\n", r"a.txt:2: the box .* lies outside the image"),
])
def test_bad_yolo_labels_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        load_custom("yolo", str(_yolo(tmp_path, {"a": text})))


def test_a_yolo_export_without_data_yaml_or_names_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no data.yaml"):
        load_custom("yolo", str(tmp_path))
    with pytest.raises(UsageError, match="no 'names' list"):
        load_custom("yolo", str(_yolo(tmp_path, {"a": ""}, names="")))
