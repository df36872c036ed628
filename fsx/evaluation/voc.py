"""PASCAL VOC average precision at IoU 0.5, our own code (PROTOCOLS 6.2).

`vocAP50` is the all-point AP of VOC2010+ (area under the monotone precision envelope);
`voc07AP50` the 11-point AP of VOC2007 (mean of the best precision at recall >= 0, 0.1, ..., 1);
`voc07AP` TFA's VOC "AP" (PROTOCOLS 6.3): the 11-point AP averaged over IoU 0.50, 0.55, ...,
0.95 (neither COCO's AP nor VOC2012's; what TFA's VOC tables call AP).
Difficult boxes (`difficult: 1` or `iscrowd: 1`) are not counted as positives, and a
detection matched to one is neither a true nor a false positive. Boxes are continuous
coordinates (no "+1 pixel" of the original devkit).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from fsx.data.coco import CocoSet

VOC_STATS = ("vocAP50", "voc07AP50", "voc07AP")
TFA_IOUS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of `boxes`."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def precision_recall(gt: CocoSet, results: list[dict], category_id: int, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Precision and recall after each detection of one class (by descending score), and the
    number of positives."""
    return _curve(*_matches(_ground_truth(gt, category_id), results, category_id, iou_threshold))


def _curve(tp: list[int], fp: list[int], positives: int) -> tuple[np.ndarray, np.ndarray, int]:
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    recall = ctp / positives if positives else np.zeros_like(ctp)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    return precision, recall, positives


def _ground_truth(gt: CocoSet, category_id: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """One class's boxes (xyxy) and difficult flags per image."""
    boxes: dict[int, np.ndarray] = {}
    difficult: dict[int, np.ndarray] = {}
    for image_id in gt.image_ids:
        anns = [a for a in gt.annotations(image_id) if a["category_id"] == category_id]
        boxes[image_id] = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=float).reshape(-1, 4)
        difficult[image_id] = np.array([bool(a.get("difficult", 0) or a.get("iscrowd", 0)) for a in anns], dtype=bool)
    return boxes, difficult


def _matches(truth, results: list[dict], category_id: int, iou_threshold: float) -> tuple[list[int], list[int], int]:
    """VOC matching of one class's detections by descending score: true and false positive
    flags per counted detection, and the number of positives."""
    boxes, difficult = truth
    positives = int(sum((~d).sum() for d in difficult.values()))
    dets = sorted((r for r in results if r["category_id"] == category_id and r["image_id"] in boxes), key=lambda r: -r["score"])
    matched = defaultdict(set)
    tp, fp = [], []
    for det in dets:
        x, y, w, h = det["bbox"]
        candidates = boxes[det["image_id"]]
        if len(candidates) == 0:
            tp.append(0), fp.append(1)
            continue
        ious = _iou(np.array([x, y, x + w, y + h], dtype=float), candidates)
        best = int(np.argmax(ious))
        if ious[best] < iou_threshold:
            tp.append(0), fp.append(1)
        elif difficult[det["image_id"]][best]:
            continue  # matched to a difficult box: ignored
        elif best in matched[det["image_id"]]:
            tp.append(0), fp.append(1)  # duplicate detection
        else:
            matched[det["image_id"]].add(best)
            tp.append(1), fp.append(0)
    return tp, fp, positives


THRESHOLD_STATS = ("precision_at_score", "recall_at_score", "F1_at_score")


def threshold_metrics(gt: CocoSet, results: list[dict], category_ids: list[int] | None = None, score_threshold: float = 0.5) -> dict[str, float]:
    """What a user sees who keeps the detections scored >= `score_threshold`: precision,
    recall and F1 at IoU 0.5 over all classes' boxes together (not AP: one operating point)."""
    cat_ids = category_ids if category_ids is not None else [c["id"] for c in gt.categories]
    kept = [r for r in results if r["score"] >= score_threshold]
    tp = fp = positives = 0
    for cid in cat_ids:
        t, f, p = _matches(_ground_truth(gt, cid), kept, cid, 0.5)
        tp, fp, positives = tp + sum(t), fp + sum(f), positives + p
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / positives if positives else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision == precision and recall == recall and precision + recall > 0 else (0.0 if tp == 0 and positives else float("nan"))
    return {"precision_at_score": precision, "recall_at_score": recall, "F1_at_score": f1}


def all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def eleven_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def voc_metrics(gt: CocoSet, results: list[dict], category_ids: list[int] | None = None) -> dict[str, float]:
    """vocAP50, voc07AP50 and voc07AP: means over the classes that have positives (NaN if none)."""
    cat_ids = category_ids if category_ids is not None else [c["id"] for c in gt.categories]
    all_point, eleven, multi = [], [], []
    for cid in cat_ids:
        truth = _ground_truth(gt, cid)
        mine = [r for r in results if r["category_id"] == cid]
        precision, recall, positives = _curve(*_matches(truth, mine, cid, 0.5))
        if positives == 0:
            continue
        all_point.append(all_point_ap(precision, recall))
        eleven.append(eleven_point_ap(precision, recall))
        multi.append(np.mean([eleven[-1]] + [eleven_point_ap(*_curve(*_matches(truth, mine, cid, iou))[:2]) for iou in TFA_IOUS[1:]]))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"vocAP50": mean(all_point), "voc07AP50": mean(eleven), "voc07AP": mean(multi)}


def pr_curves(gt: CocoSet, results: list[dict], category_ids: list[int], iou_threshold: float = 0.5) -> dict[str, dict]:
    """Per class: precision and recall after each detection (VOC matching at the IoU), the
    number of positives and the all-point AP."""
    curves = {}
    for cid in category_ids:
        precision, recall, positives = precision_recall(gt, results, cid, iou_threshold)
        curves[gt.category_name(cid)] = {"precision": precision, "recall": recall, "positives": positives, "ap": all_point_ap(precision, recall) if positives else float("nan")}
    return curves
