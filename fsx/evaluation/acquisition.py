"""Active-learning acquisition: detections -> a per-image uncertainty score -> the images to
annotate next; and CEAL's pseudo-labels for the confident ones. Pure functions over COCO
results ({image_id, category_id, bbox, score}); no model, no files.

torchvision's detectors return one score per box, the winning class's (after a per-class
sigmoid for FCOS and RetinaNet, a softmax for Faster R-CNN), not the distribution over
classes. So every rule here is defined on that one score s of a box, read as the binary
distribution (s, 1 - s) "this box is the class it says / it is not":

- least_confidence  1 - s                      (largest for the faintest boxes)
- margin            1 - |s - (1 - s)| = 1 - |2s - 1|   (1 at s = 0.5, 0 at s = 0 or 1)
- entropy           -s log2 s - (1 - s) log2 (1 - s)   (bits; 1 at s = 0.5, 0 at s = 0 or 1)
- random            a seeded uniform number per image (the baseline every rule must beat)

Margin and entropy therefore rank a box the model is torn about (s near 0.5) above one it
barely fires on; least confidence ranks the faintest box highest. Margins between boxes of
different classes at the same place are not used: the detectors' per-class NMS keeps such
pairs only sometimes, so the second-best class is usually not there to compare with.

An image's score aggregates its boxes scored >= `min_score`: max (its least sure box), mean,
or sum (also grows with the number of uncertain boxes). An image with no such box gets
`empty_score`; None means "most uncertain": ranked before every image with boxes (the model
sees nothing there: it may be blind to the class, or the image may be empty).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

RULES = ("random", "least_confidence", "margin", "entropy")
AGGREGATES = ("max", "mean", "sum")


def box_uncertainty(score: float, rule: str) -> float:
    """The uncertainty of one box of score `score` in [0, 1] under `rule` (not random)."""
    s = min(max(float(score), 0.0), 1.0)
    # rounded: s and 1 - s are equally sure, and must tie exactly despite floating point
    if rule == "least_confidence":
        return round(1.0 - s, 12)
    if rule == "margin":
        return round(1.0 - abs(2.0 * s - 1.0), 12)
    if rule == "entropy":
        return round(-sum(p * math.log2(p) for p in (s, 1.0 - s) if p > 0.0), 12)
    raise ValueError(f"rule={rule}: choose one of {', '.join(r for r in RULES if r != 'random')}")


def aggregate(values: list[float], how: str) -> float:
    if how == "max":
        return max(values)
    if how == "mean":
        return sum(values) / len(values)
    if how == "sum":
        return sum(values)
    raise ValueError(f"aggregate={how}: choose one of {', '.join(AGGREGATES)}")


def image_scores(
    image_ids: Iterable[int], detections: list[dict], rule: str, how: str = "max", *, seed: int = 0, min_score: float = 0.0, empty_score: float | None = None
) -> dict[int, dict]:
    """image id -> {"score": its uncertainty, "detections": boxes counted, "top_score": the
    highest box score (0 without boxes)}. `score` is +inf for an image without boxes when
    `empty_score` is None. Random ignores the detections: a uniform number per image, drawn in
    the order of `image_ids` from `seed`."""
    ids = list(image_ids)
    if rule not in RULES:
        raise ValueError(f"rule={rule}: choose one of {', '.join(RULES)}")
    if how not in AGGREGATES:
        raise ValueError(f"aggregate={how}: choose one of {', '.join(AGGREGATES)}")
    by_image: dict[int, list[float]] = {i: [] for i in ids}
    for d in detections:
        if d["image_id"] in by_image and d["score"] >= min_score:
            by_image[d["image_id"]].append(float(d["score"]))
    draws = np.random.default_rng(seed).random(len(ids)) if rule == "random" else None
    out: dict[int, dict] = {}
    for k, i in enumerate(ids):
        scores = by_image[i]
        if draws is not None:
            value = float(draws[k])
        elif scores:
            value = aggregate([box_uncertainty(s, rule) for s in scores], how)
        else:
            value = math.inf if empty_score is None else float(empty_score)
        out[i] = {"score": value, "detections": len(scores), "top_score": max(scores, default=0.0)}
    return out


def rank_images(scores: dict[int, dict]) -> list[dict]:
    """The images most uncertain first (ties: the smaller image id first), each row
    {"rank": 1.., "image_id", "score", "detections", "top_score"}."""
    order = sorted(scores, key=lambda i: (-scores[i]["score"], i))
    return [{"rank": r, "image_id": i, **scores[i]} for r, i in enumerate(order, start=1)]


def select(image_ids: Iterable[int], detections: list[dict], rule: str, how: str, k: int, **options) -> tuple[list[int], list[dict]]:
    """The k images to annotate next and the whole ranking (`image_scores` options pass on)."""
    ranking = rank_images(image_scores(image_ids, detections, rule, how, **options))
    return [row["image_id"] for row in ranking[:k]], ranking


def pseudo_labels(detections: list[dict], threshold: float, exclude: Iterable[int] = ()) -> list[dict]:
    """CEAL's pseudo-labels: every detection scored >= `threshold` on an image not in
    `exclude` (the annotated images, and those about to be), as a COCO annotation marked
    `"pseudo": true` with its score. Ids are left to `merge_pseudo_labels`."""
    skip = set(exclude)
    out = []
    for d in detections:
        if d["image_id"] in skip or d["score"] < threshold:
            continue
        x, y, w, h = (float(v) for v in d["bbox"])
        out.append({"image_id": d["image_id"], "category_id": d["category_id"], "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "score": float(d["score"]), "pseudo": True})
    return out


def merge_pseudo_labels(coco: dict, pseudo: list[dict], images: list[dict] = ()) -> dict:
    """A new COCO dict: `coco` unchanged (every real annotation kept as it is), plus the
    pseudo-labels of images that have no real annotation in it. An image with even one real
    label is never given pseudo-labels: a real label is never overwritten nor mixed with
    guesses. `images` adds the image records the pseudo-labels refer to that `coco` lacks."""
    real = {a["image_id"] for a in coco["annotations"]}
    known = {img["id"] for img in coco["images"]}
    added_images = [img for img in images if img["id"] not in known and any(p["image_id"] == img["id"] for p in pseudo)]
    next_id = max([a["id"] for a in coco["annotations"]] + [0]) + 1
    merged = []
    for p in pseudo:
        if p["image_id"] in real:
            continue
        merged.append({**p, "id": next_id, "pseudo": True})
        next_id += 1
    return {**coco, "images": list(coco["images"]) + added_images, "annotations": list(coco["annotations"]) + merged}
