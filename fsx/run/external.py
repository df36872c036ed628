"""fsx eval eval.detections=<results.json> eval.ground_truth=<annotations.json>: any
detector's COCO-format results scored by fsx's own metric code (every COCO stat, VOC AP in
its three forms, per-class AP, precision/recall/F1 at a score, LVIS's metrics on LVIS
annotations), recorded in MLflow like any evaluation, so other tools compare with fsx on
identical metric code."""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path

from fsx.data.coco import CocoSet, read_json
from fsx.data.custom import checked_coco
from fsx.errors import UsageError
from fsx.evaluation.coco_metrics import detection_metrics
from fsx.evaluation.lvis_metrics import lvis_metrics
from fsx.evaluation.plots import pr_csv, pr_png
from fsx.evaluation.voc import pr_curves
from fsx.run.wiring import recorded_run

SHOWN = ("AP", "AP50", "AP75", "vocAP50", "voc07AP50", "voc07AP")
NOT_A_MODEL = {group: {"name": "external"} for group in ("algorithm", "detector", "backbone")}


def read_detections(path: Path, gt: CocoSet) -> list[dict]:
    """The results file, checked: a list of {image_id, category_id, bbox [x, y, w, h], score}
    whose images and categories are in the ground truth."""
    results = read_json(path, "eval.detections:")
    if not isinstance(results, list):
        raise UsageError(f"eval.detections={path}: expected a list of detections (COCO results format), got a {type(results).__name__}")
    images = set(gt.image_ids)
    categories = {c["id"] for c in gt.categories}
    checked = []
    for k, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
            raise UsageError(f"eval.detections={path}: detection {k} is not {{image_id, category_id, bbox, score}}: {str(r)[:120]}")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UsageError(f"eval.detections={path}: detection {k} has bbox {box}, not [x, y, width, height]")
        if r["image_id"] not in images:
            raise UsageError(f"eval.detections={path}: detection {k} is on image {r['image_id']}, which the ground truth does not have")
        if r["category_id"] not in categories:
            raise UsageError(f"eval.detections={path}: detection {k} has category {r['category_id']}, which the ground truth does not have")
        if not isinstance(r["score"], (int, float)) or math.isnan(r["score"]):
            raise UsageError(f"eval.detections={path}: detection {k} has score {r['score']!r}")
        checked.append({"image_id": r["image_id"], "category_id": r["category_id"], "bbox": [float(v) for v in box], "score": float(r["score"])})
    return checked


def score_file(cfg) -> dict:
    if not cfg.eval.ground_truth:
        raise UsageError("eval.detections needs eval.ground_truth=<the COCO annotations JSON the detections are on>")
    truth_path, detections_path = Path(str(cfg.eval.ground_truth)).expanduser(), Path(str(cfg.eval.detections)).expanduser()
    gt = checked_coco(CocoSet.load(truth_path), str(truth_path))
    results = read_detections(detections_path, gt)
    category_ids = [c["id"] for c in gt.categories]
    metrics = detection_metrics(gt, results, category_ids, float(cfg.eval.score_threshold))
    if gt.categories and all("frequency" in c for c in gt.categories):  # LVIS annotations
        metrics.update(lvis_metrics(gt, results, category_ids))
    curves = pr_curves(gt, results, category_ids)
    dataset = {"name": "external", "fold": 0, "ground_truth": str(truth_path), "detections": str(detections_path)}
    tags = {"fsx.eval_mode": "external", "fsx.detections": str(detections_path.resolve()), "fsx.ground_truth": str(truth_path.resolve())}
    manifest = {
        "kind": "external",
        "ground_truth": {"path": str(truth_path.resolve()), "images": len(gt), "boxes": len(gt.coco["annotations"]), "hash": gt.content_hash()},
        "detections": {"path": str(detections_path.resolve()), "count": len(results), "sha256": hashlib.sha256(detections_path.read_bytes()).hexdigest()},
    }
    name = f"score {detections_path.name}"
    with recorded_run(cfg, "eval", dataset, run_name=name, extra_tags=tags, checkpoint_config=NOT_A_MODEL) as run:
        run.log_metrics(metrics)
        run.log_dict(manifest, "manifest.json")
        run.log_dict(metrics, "eval/metrics.json")
        run.log_text(pr_csv(curves), "eval/pr_curves.csv")
        with tempfile.TemporaryDirectory() as tmp:
            run.log_file(pr_png(Path(tmp) / "pr_curves.png", curves, f"{name}, IoU 0.5"), "eval")
    print(format_scores(metrics, gt, len(results), detections_path))
    print(f"MLflow run: {run.id}")
    return {"run_id": run.id, "metrics": metrics}


def format_scores(metrics: dict[str, float], gt: CocoSet, count: int, path: Path) -> str:
    lines = [f"\n{count} detections of {path.name} on {len(gt)} images, {len(gt.categories)} classes"]
    lines.append("  ".join(f"{m:>9}" for m in SHOWN))
    lines.append("  ".join(f"{metrics[m]:>9.3f}" for m in SHOWN))
    lines.append(f"\n{'class':<24} {'AP':>7} {'AP50':>7}")
    for c in gt.categories:
        name = c["name"]
        lines.append(f"{name[:24]:<24} {metrics['AP/' + name]:>7.3f} {metrics['AP50/' + name]:>7.3f}")
    threshold = [f"{k} {metrics[k]:.3f}" for k in ("precision_at_score", "recall_at_score", "F1_at_score")]
    lines.append("\nat the score threshold: " + ", ".join(threshold))
    if "APr" in metrics:
        lines.append(f"LVIS: AP {metrics['lvisAP']:.3f}, APr {metrics['APr']:.3f}, APc {metrics['APc']:.3f}, APf {metrics['APf']:.3f}")
    return "\n".join(lines)
