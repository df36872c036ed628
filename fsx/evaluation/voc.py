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


def _iou_matrix(dets: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of every xyxy row of `dets` with every row of `boxes`."""
    x0 = np.maximum(dets[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(dets[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(dets[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(dets[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = ((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))[:, None] + ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _nearest(truth, results: list[dict], category_id: int) -> tuple[list[tuple[int, int, float]], int]:
    """One class's detections by descending score, each as (image id, index of the
    ground-truth box it overlaps most, that IoU; -1 and 0 where its image has none), and the
    number of positives. One array operation per image: the matching at any IoU threshold
    reads these."""
    boxes, difficult = truth
    positives = int(sum((~d).sum() for d in difficult.values()))
    dets = sorted((r for r in results if r["category_id"] == category_id and r["image_id"] in boxes), key=lambda r: -r["score"])
    by_image = defaultdict(list)
    for i, det in enumerate(dets):
        by_image[det["image_id"]].append(i)
    nearest: list[tuple[int, int, float]] = [(det["image_id"], -1, 0.0) for det in dets]
    for image_id, rows in by_image.items():
        candidates = boxes[image_id]
        if len(candidates) == 0:
            continue
        xywh = np.array([dets[i]["bbox"] for i in rows], dtype=float)
        ious = _iou_matrix(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), candidates)
        best = ious.argmax(axis=1)
        for i, b, iou in zip(rows, best.tolist(), ious[np.arange(len(rows)), best].tolist()):
            nearest[i] = (image_id, b, iou)
    return nearest, positives


def _match_nearest(nearest: list[tuple[int, int, float]], difficult: dict, iou_threshold: float) -> tuple[list[int], list[int]]:
    """VOC's greedy matching at one IoU threshold: true and false positive flags per counted
    detection (one matched to a difficult box counts as neither; a second one on a box is false)."""
    matched = defaultdict(set)
    tp, fp = [], []
    for image_id, best, iou in nearest:
        if best < 0 or iou < iou_threshold:
            tp.append(0), fp.append(1)
        elif difficult[image_id][best]:
            continue  # matched to a difficult box: ignored
        elif best in matched[image_id]:
            tp.append(0), fp.append(1)  # duplicate detection
        else:
            matched[image_id].add(best)
            tp.append(1), fp.append(0)
    return tp, fp


def _matches(truth, results: list[dict], category_id: int, iou_threshold: float) -> tuple[list[int], list[int], int]:
    """VOC matching of one class's detections by descending score: true and false positive
    flags per counted detection, and the number of positives."""
    nearest, positives = _nearest(truth, results, category_id)
    return (*_match_nearest(nearest, truth[1], iou_threshold), positives)


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
        nearest, positives = _nearest(truth, results, cid)  # once per class, read at every threshold
        if positives == 0:
            continue
        precision, recall, _ = _curve(*_match_nearest(nearest, truth[1], 0.5), positives)
        all_point.append(all_point_ap(precision, recall))
        eleven.append(eleven_point_ap(precision, recall))
        multi.append(np.mean([eleven[-1]] + [eleven_point_ap(*_curve(*_match_nearest(nearest, truth[1], iou), positives)[:2]) for iou in TFA_IOUS[1:]]))
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
