"""TFA's generalized setting: checkpoint surgery that keeps the base rows, base + novel tasks
with K shots of every class, bAP/nAP; end to end on a small synthetic VOCdevkit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fsx.data.classes import VOC_CLASSES, VOC_TFA_SPLITS
from fsx.evaluation.coco_metrics import group_metrics
from fsx.models.detectors import build_detector, model_spec
from fsx.models.heads import class_rows, copy_class_rows, num_classes, reset_class_head

FC = {"classifier": "fc"}
COS = {"classifier": "cos", "cosine_scale": 20.0, "learn_scale": False}


def spec(detector: str, classes: int, **extra) -> dict:
    import yaml

    root = Path(__file__).resolve().parents[1] / "conf"
    det = {**yaml.safe_load((root / "detector" / f"{detector}.yaml").read_text()), **extra}
    return model_spec(det, yaml.safe_load((root / "backbone" / "tiny.yaml").read_text()), classes, 96, [0.5] * 3, [0.25] * 3)


def class_logits(model, features: torch.Tensor) -> torch.Tensor:
    """Faster R-CNN: the box predictor's class scores for RoI features."""
    scores, _ = model.roi_heads.box_predictor(features)
    return scores


@pytest.mark.parametrize("classifier", [FC, COS])
def test_faster_rcnn_surgery_keeps_base_rows_and_background(classifier):
    torch.manual_seed(0)
    model = build_detector(spec("fasterrcnn", 3))
    old = model.roi_heads.box_predictor
    w, b = old.cls_score.weight.detach().clone(), old.cls_score.bias.detach().clone()
    boxes = old.bbox_pred.weight.detach().clone()
    keep = [2, 0, None, 1, None]  # new classes 0..4 from old 2, 0, fresh, 1, fresh
    reset_class_head(model, 5, torch.Generator().manual_seed(1), classifier, keep=keep)
    new = model.roi_heads.box_predictor
    assert num_classes(model) == 5
    # row 0 is background in torchvision's Faster R-CNN; class k is row k + 1
    assert torch.equal(new.cls_score.weight[0], w[0])
    for j, k in enumerate(keep):
        if k is None:
            assert new.cls_score.weight[j + 1].abs().max() < 0.1  # N(0, 0.01)
            continue
        assert torch.equal(new.cls_score.weight[j + 1], w[k + 1])
        assert torch.equal(new.bbox_pred.weight[4 * (j + 1) : 4 * (j + 2)], boxes[4 * (k + 1) : 4 * (k + 2)])
        if classifier is FC:
            assert new.cls_score.bias[j + 1] == b[k + 1]
    if classifier is FC:  # same rows, same bias: the base logits are unchanged
        features = torch.randn(4, old.cls_score.in_features)
        before = torch.nn.functional.linear(features, w, b)
        after = class_logits(model, features)
        assert torch.allclose(after[:, [0, 1, 2, 4]], before[:, [0, 3, 1, 2]])
    else:
        assert new.cls_score.bias is None  # cosine prototypes have no bias


def test_combine_copies_novel_rows_and_leaves_base_rows_and_background():
    """TFA's combine: the novel-only head's rows land in the novel slots, nothing else moves."""
    torch.manual_seed(0)
    model = build_detector(spec("fasterrcnn", 4))
    novel = build_detector(spec("fasterrcnn", 2))
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    copy_class_rows(class_rows(novel), model, {2: 0, 3: 1}, background=False)
    after = model.roi_heads.box_predictor.cls_score.weight
    source = novel.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(after[:3], before[:3])  # background and base classes 0, 1
    assert torch.equal(after[3], source[1]) and torch.equal(after[4], source[2])
    boxes = model.roi_heads.box_predictor.bbox_pred.weight
    assert torch.equal(boxes[12:20], novel.roi_heads.box_predictor.bbox_pred.weight[4:12])


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_dense_heads_keep_base_logits(detector):
    torch.manual_seed(0)
    model = build_detector(spec(detector, 3)).eval()
    head = model.head.classification_head
    x = [torch.randn(1, head.cls_logits.in_channels, 8, 8)]
    before = head.cls_logits(head.conv(x[0]))
    reset_class_head(model, 4, torch.Generator().manual_seed(1), keep=[1, None, 0, 2])
    after = head.cls_logits(head.conv(x[0]))
    a = head.num_anchors
    before, after = before.view(1, a, 3, 8, 8), after.view(1, a, 4, 8, 8)
    for j, k in enumerate([1, None, 0, 2]):
        if k is not None:
            assert torch.allclose(after[:, :, j], before[:, :, k], atol=1e-5)  # same weights; kernels may sum in another order


def test_group_metrics_average_per_class_values_and_skip_classes_without_ground_truth():
    metrics = {"AP/a": 0.2, "AP50/a": 0.4, "AP/b": 0.6, "AP50/b": 0.8, "AP/c": float("nan"), "AP50/c": float("nan"), "AP/d": 0.1, "AP50/d": 0.3}
    out = group_metrics(metrics, {"b": ["a", "b"], "n": ["c", "d"]})
    assert out == pytest.approx({"bAP": 0.4, "bAP50": 0.6, "nAP": 0.1, "nAP50": 0.3})


def make_vocdevkit(root: Path, per_class: int = 2, size: int = 48) -> Path:
    """VOC2007 trainval/test and VOC2012 trainval: a coloured square per object, one colour
    per class; every other image also shows a second class."""
    rng = np.random.default_rng(0)
    colours = [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in VOC_CLASSES]
    n = 0
    for year, image_set in (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval")):
        folder = root / year
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        stems = []
        for c, name in enumerate(VOC_CLASSES):
            for k in range(per_class):
                n += 1
                stem = f"{year[-4:]}_{n:06d}"
                image = Image.new("RGB", (size, size), (255, 255, 255))
                draw = ImageDraw.Draw(image)
                objects = [c] + ([(c + 7) % 20] if k % 2 else [])
                xml = []
                for j, oc in enumerate(objects):
                    x0, y0, w = 2 + 22 * j, int(rng.integers(2, 20)), int(rng.integers(12, 20))
                    draw.rectangle([x0, y0, x0 + w, y0 + w], fill=colours[oc])
                    xml.append(f"<object><name>{VOC_CLASSES[oc]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x0 + w}</xmax><ymax>{y0 + w}</ymax></bndbox></object>")
                image.save(folder / "JPEGImages" / f"{stem}.jpg")
                (folder / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{''.join(xml)}</annotation>")
                stems.append(stem)
        (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(stems) + "\n")
    return root


def test_tfa_generalized_end_to_end_on_voc_tfa(tmp_path):
    devkit = make_vocdevkit(tmp_path / "VOCdevkit")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}

    def fsx(*args):
        return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    data = ["dataset=voc_tfa", f"dataset.root={devkit}", "dataset.fold=1", "dataset.image_size=48"]
    pre = fsx("pretrain", *data, "algorithm=tfa", "detector=fasterrcnn", "train.steps=3", "algorithm.batch_size=4", "train.val_images=0")
    assert pre.returncode == 0, pre.stderr[-3000:]
    ev = fsx("eval", "checkpoint=latest", "generalized=true", "sampler=instance", "shots=1", "eval.repeats=2", "eval.milestones=[0,1]")
    assert ev.returncode == 0, ev.stderr[-3000:]
    base, novel = VOC_TFA_SPLITS[1]
    assert f"20-way 1-shot on test-test ({', '.join(base + novel)})" in ev.stdout
    assert "bAP50" in ev.stdout and "nAP50" in ev.stdout

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], "tags.`fsx.command` = 'eval'")
    run = runs[0]
    for key in ("bAP50_mean", "nAP50_mean", "bAP_ci95", "repeat_01/nAP50"):
        assert key in run.data.metrics, key
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json", str(tmp_path))).read_text())
    task = manifest["tasks"][0]
    assert task["setting"] == "generalized" and task["classes"] == list(base + novel)
    assert task["boxes_per_class"] == {c: 1 for c in base + novel}  # balanced K over base + novel
    # the test set is VOC2007 test, all 20 classes
    assert manifest["split"]["rule"].startswith("train: the train source's base boxes")

    novel_init = fsx("eval", "checkpoint=latest:pretrain", "generalized=true", "sampler=instance", "shots=1", "eval.repeats=1", "eval.milestones=[0]", "adapt.init=novel", "adapt.init_steps=2")
    assert novel_init.returncode == 0, novel_init.stderr[-3000:]
    latest = client.search_runs([run.info.experiment_id], "tags.`fsx.command` = 'eval'", order_by=["attributes.start_time DESC"])[0]
    assert latest.data.tags["fsx.head_init"].endswith("novel-only head trained 2 steps")
    assert run.data.tags["fsx.head_init"] == "base rows from the checkpoint, novel rows random"
    fsod = fsx("eval", "checkpoint=latest:pretrain", "adapt.init=novel")
    assert fsod.returncode == 2 and "add generalized=true" in fsod.stderr

    letters = fsx("eval", "checkpoint=latest", "dataset=letters", "generalized=true", "allow_seen_classes=true")
    assert letters.returncode == 2 and "generalized=true needs base-class shots" in letters.stderr
