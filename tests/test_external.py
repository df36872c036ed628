"""Scoring another tool's results: `fsx eval eval.detections=... eval.ground_truth=...` logs
what pycocotools and an independent VOC AP (the devkit's algorithm, written here) compute."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def write_case(root: Path) -> tuple[Path, Path]:
    """20 images, 2 classes; detections jittered around most boxes, plus false positives."""
    rng = np.random.default_rng(3)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, 21)]
    annotations, detections = [], []
    for i in range(1, 21):
        for c in (1, 2):
            if rng.random() < 0.7:
                x, y = rng.uniform(0, 60, 2)
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c, "bbox": [x, y, 30.0, 30.0], "area": 900.0, "iscrowd": 0})
                if rng.random() < 0.8:
                    dx, dy = rng.uniform(-6, 6, 2)
                    detections.append({"image_id": i, "category_id": c, "bbox": [x + dx, y + dy, 30.0, 30.0], "score": float(rng.random())})
        detections.append({"image_id": i, "category_id": 1, "bbox": [70.0, 70.0, 20.0, 20.0], "score": float(rng.random() * 0.5)})
    truth, results = root / "gt.json", root / "dets.json"
    truth.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    results.write_text(json.dumps(detections))
    return truth, results


def devkit_ap(truth: dict, detections: list[dict], category: int, use_07: bool) -> float:
    """The VOC devkit's voc_eval/voc_ap (as in py-faster-rcnn), without the +1 pixel."""
    gts = {}
    for a in truth["annotations"]:
        if a["category_id"] == category:
            x, y, w, h = a["bbox"]
            gts.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    gts = {k: {"boxes": np.array(v), "seen": [False] * len(v)} for k, v in gts.items()}
    npos = sum(len(v["seen"]) for v in gts.values())
    dets = sorted((d for d in detections if d["category_id"] == category), key=lambda d: -d["score"])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for k, d in enumerate(dets):
        x, y, w, h = d["bbox"]
        bb = np.array([x, y, x + w, y + h])
        entry = gts.get(d["image_id"])
        best, jmax = -np.inf, -1
        if entry is not None:
            g = entry["boxes"]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]), 0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]), 0)
            inter = iw * ih
            overlaps = inter / ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter)
            best, jmax = overlaps.max(), int(overlaps.argmax())
        if best > 0.5 and not entry["seen"][jmax]:
            tp[k], entry["seen"][jmax] = 1, True
        else:
            fp[k] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return float(sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0) / 11.0 for t in np.arange(0.0, 1.1, 0.1)))
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def fsx(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "MLFLOW_"))}, "FSX_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_an_external_results_file_is_scored_like_pycocotools_and_the_voc_devkit(tmp_path):
    truth, results = write_case(tmp_path)
    done = fsx(["eval", f"eval.detections={results}", f"eval.ground_truth={truth}"], tmp_path)
    assert done.returncode == 0, done.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    logged = run.data.metrics
    assert run.data.tags["fsx.eval_mode"] == "external" and run.data.tags["fsx.algorithm"] == "external"

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(truth))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"), evaluator.stats):
        if value >= 0:
            assert logged[name] == pytest.approx(value, abs=1e-9), name
    data, dets = json.loads(truth.read_text()), json.loads(results.read_text())
    for key, use_07 in (("vocAP50", False), ("voc07AP50", True)):
        expected = np.mean([devkit_ap(data, dets, c, use_07) for c in (1, 2)])
        assert logged[key] == pytest.approx(expected, abs=1e-9), key
    assert "AP50/cat" in logged and "AP50/dog" in logged
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/pr_curves.png", "eval/pr_curves.csv", "eval/metrics.json"} <= artifacts
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json", str(tmp_path))).read_text())
    assert manifest["detections"]["count"] == len(dets) and manifest["ground_truth"]["images"] == 20


@pytest.mark.parametrize("detections,message", [
    ([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.3}], "detection 0 is on image 999"),
    ([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.3}], "detection 0 has category 7"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.3}], "not [x, y, width, height]"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "is not {image_id, category_id, bbox, score}"),
    ({"annotations": []}, "expected a list of detections"),
])
def test_bad_results_files_are_named(tmp_path, detections, message):
    from fsx.data.coco import CocoSet
    from fsx.errors import UsageError
    from fsx.run.external import read_detections

    truth, _ = write_case(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(detections))
    with pytest.raises(UsageError, match=re.escape(message)):
        read_detections(bad, CocoSet.load(truth))


def test_the_cli_needs_both_files(tmp_path):
    truth, results = write_case(tmp_path)
    done = fsx(["eval", f"eval.detections={results}"], tmp_path)
    assert done.returncode == 2 and "needs eval.ground_truth" in done.stderr, done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was opened
