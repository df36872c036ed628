"""The one metrics function every verb calls (`detection_metrics`): pycocotools' COCOeval
on a `CocoSet`, plus our VOC AP at IoU 0.5."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fsx.data.coco import CocoSet
from fsx.evaluation.lvis_metrics import LVIS_STATS
from fsx.evaluation.voc import THRESHOLD_STATS, VOC_STATS, threshold_metrics, voc_metrics

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_metrics(gt: CocoSet, results: list[dict], category_ids: list[int] | None = None) -> dict[str, float]:
    """The 12 COCOeval stats (AP, AP50, ... ARl) plus per-class AP as `AP/<name>` and
    `AP50/<name>`. -1 (no ground truth in an area range) is reported as NaN."""
    coco_gt = gt.to_pycocotools()
    cat_ids = category_ids if category_ids is not None else [c["id"] for c in gt.categories]
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes rejects an empty list; an empty result set must score like any other
            coco_dt = COCO()
            coco_dt.dataset = {"images": copy.deepcopy(coco_gt.dataset["images"]), "annotations": [], "categories": copy.deepcopy(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = list(cat_ids)
        evaluator.params.imgIds = gt.image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {name: (float(v) if v >= 0 else float("nan")) for name, v in zip(COCO_STATS, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [iou, recall, class, area, maxdets]
    for k, cid in enumerate(evaluator.params.catIds):
        for name, iou_slice in (("AP", slice(None)), ("AP50", slice(0, 1))):
            p = precision[iou_slice, :, k, 0, -1]
            p = p[p > -1]
            out[f"{name}/{gt.category_name(cid)}"] = float(np.mean(p)) if p.size else float("nan")
    return out


SUMMARY_STATS = COCO_STATS + VOC_STATS + THRESHOLD_STATS  # what eval aggregates over repeats
GROUP_STATS = ("bAP", "bAP50", "nAP", "nAP50")  # the generalized setting's, when there are base classes
OPTIONAL_STATS = GROUP_STATS + LVIS_STATS  # aggregated when a run has them


def group_metrics(metrics: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    """AP and AP50 over a group of classes (`b`: base, `n`: novel) as COCOeval averages
    them: the mean of the per-class values, classes without ground truth left out."""
    out = {}
    for prefix, names in groups.items():
        for stat in ("AP", "AP50"):
            values = [metrics[f"{stat}/{n}"] for n in names if not math.isnan(metrics.get(f"{stat}/{n}", float("nan")))]
            out[f"{prefix}{stat}"] = float(np.mean(values)) if values else float("nan")
    return out


def detection_metrics(gt: CocoSet, results: list[dict], category_ids: list[int] | None = None, score_threshold: float = 0.5) -> dict[str, float]:
    """COCO stats, per-class AP, `vocAP50` (all-point), `voc07AP50` (11-point), and precision,
    recall and F1 of the detections scored >= `score_threshold` (at IoU 0.5)."""
    return {**coco_metrics(gt, results, category_ids), **voc_metrics(gt, results, category_ids), **threshold_metrics(gt, results, category_ids, score_threshold)}
