"""COCO metrics on hand-made cases and the over-repeats summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fsx.data.coco import CocoSet
from fsx.evaluation.aggregate import adaptation_speed, cumulative, summarize
from fsx.evaluation.coco_metrics import COCO_STATS, coco_metrics

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval's 101-point interpolation


def gt_set(objects: dict[int, list[tuple[str, list[float]]]], size: int = 200) -> CocoSet:
    """{image_id: [(class name, xywh), ...]} with classes A (id 1) and B (id 2)."""
    cats = [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in objects]
    anns = []
    for i, objs in objects.items():
        for name, box in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 if name == "A" else 2, "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0})
    return CocoSet({"images": images, "annotations": anns, "categories": cats}, ".")


def det(image_id: int, category_id: int, box, score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


# Medium-sized objects (32^2 < area <= 96^2), so the area-range stats are defined for "medium" only.
BOX_A = [10.0, 10.0, 40.0, 40.0]
BOX_B = [100.0, 100.0, 50.0, 40.0]


@pytest.fixture()
def two_images() -> CocoSet:
    return gt_set({1: [("A", BOX_A), ("B", BOX_B)], 2: [("A", [60.0, 20.0, 45.0, 45.0])]})


def test_perfect_detections(two_images):
    results = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in two_images.coco["annotations"]]
    m = coco_metrics(two_images, results)
    assert set(COCO_STATS) <= set(m)
    for key in ("AP", "AP50", "AP75", "APm", "AR1", "AR10", "AR100", "ARm", "AP/A", "AP/B", "AP50/A", "AP50/B"):
        assert m[key] == pytest.approx(1.0), key
    # no small or large objects: COCOeval's -1 becomes NaN
    for key in ("APs", "APl", "ARs", "ARl"):
        assert math.isnan(m[key]), key


def test_no_detections(two_images):
    m = coco_metrics(two_images, [])
    for key in ("AP", "AP50", "AP75", "APm", "AR1", "AR10", "AR100", "ARm", "AP/A", "AP/B", "AP50/A", "AP50/B"):
        assert m[key] == 0.0, key
    assert set(m) == set(COCO_STATS) | {"AP/A", "AP/B", "AP50/A", "AP50/B"}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]) for k in a)


def test_no_detections_reports_like_a_useless_detection():
    gt = gt_set({1: [("A", BOX_A)]})  # one medium A, no B, nothing small or large
    useless = coco_metrics(gt, [det(1, 1, [150.0, 150.0, 40.0, 40.0], 0.01)])
    assert useless["AP"] == 0.0 and math.isnan(useless["APl"]) and math.isnan(useless["AP/B"])
    assert _same(coco_metrics(gt, []), useless)


def test_detections_of_the_wrong_class_score_zero(two_images):
    results = [det(a["image_id"], 3 - a["category_id"], a["bbox"], 0.9) for a in two_images.coco["annotations"]]
    m = coco_metrics(two_images, results)
    assert m["AP50"] == 0.0 and m["AP"] == 0.0 and m["AP50/A"] == 0.0


def test_iou_above_one_half_only_counts_for_ap50():
    gt = gt_set({1: [("A", BOX_A)]})
    # same top-left corner, 25 of 40 wide: IoU = 25*40 / (40*40) = 0.625
    m = coco_metrics(gt, [det(1, 1, [10.0, 10.0, 25.0, 40.0], 0.9)])
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == 0.0
    # thresholds 0.50, 0.55, 0.60 of the ten 0.50:0.05:0.95 match
    assert m["AP"] == pytest.approx(0.3)
    assert m["AP50/A"] == pytest.approx(1.0)
    assert m["AP/A"] == pytest.approx(0.3)
    assert math.isnan(m["AP/B"])  # no ground truth for B


def test_a_higher_scored_false_positive_halves_ap50():
    gt = gt_set({1: [("A", BOX_A)]})
    results = [det(1, 1, [150.0, 150.0, 40.0, 40.0], 0.9), det(1, 1, BOX_A, 0.8)]
    # ranked: FP (precision 0, recall 0), TP (precision 1/2, recall 1); the interpolated
    # precision is 1/2 at every recall threshold
    m = coco_metrics(gt, results)
    assert m["AP50"] == pytest.approx(0.5)
    assert m["AP50/A"] == pytest.approx(0.5)
    # the false positive ranked below the true positive costs nothing
    results[0]["score"] = 0.7
    assert coco_metrics(gt, results)["AP50"] == pytest.approx(1.0)


def test_a_false_positive_between_two_true_positives():
    gt = gt_set({1: [("A", BOX_A)], 2: [("A", BOX_A)]})
    results = [det(1, 1, BOX_A, 0.9), det(1, 1, [150.0, 150.0, 40.0, 40.0], 0.8), det(2, 1, BOX_A, 0.7)]
    # ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated precision
    # is 1 for recall thresholds <= 1/2 and 2/3 above, averaged over the 101 thresholds
    low = int(np.sum(RECALL_THRESHOLDS <= 0.5))
    assert low == 51
    expected = (low * 1.0 + (101 - low) * 2 / 3) / 101
    m = coco_metrics(gt, results)
    assert m["AP50"] == pytest.approx(expected)
    assert m["AP50"] == pytest.approx(0.834983, abs=1e-6)
    assert m["AP50/A"] == pytest.approx(expected)


def test_per_class_keys_and_category_subset(two_images):
    results = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in two_images.coco["annotations"] if a["category_id"] == 1]
    m = coco_metrics(two_images, results)
    assert m["AP50/A"] == pytest.approx(1.0) and m["AP50/B"] == 0.0
    assert m["AP50"] == pytest.approx(0.5)  # mean over the two classes
    only_a = coco_metrics(two_images, results, category_ids=[1])
    assert only_a["AP50"] == pytest.approx(1.0)
    assert "AP50/A" in only_a and "AP50/B" not in only_a


# --- summarize ---------------------------------------------------------------------------


def test_summarize_matches_scipy():
    values = [0.31, 0.42, 0.38, 0.29, 0.45, 0.40]
    s = summarize(values)
    x = np.array(values)
    assert s["n"] == 6
    assert s["mean"] == pytest.approx(x.mean())
    assert s["std"] == pytest.approx(np.sqrt(((x - x.mean()) ** 2).sum() / 5))
    half = stats.t.ppf(0.975, 5) * s["std"] / math.sqrt(6)
    assert s["ci95"] == pytest.approx(half)
    assert s["ci95"] == pytest.approx(2.570582 * s["std"] / math.sqrt(6), rel=1e-6)
    lo, hi = stats.t.interval(0.95, 5, loc=x.mean(), scale=stats.sem(x))
    assert (s["mean"] - s["ci95"], s["mean"] + s["ci95"]) == pytest.approx((lo, hi))


def test_summarize_ignores_nan():
    s = summarize([1.0, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0
    assert s["std"] == pytest.approx(math.sqrt(2))
    assert s["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))


def test_summarize_one_value():
    s = summarize([0.7])
    assert s["n"] == 1 and s["mean"] == 0.7
    assert math.isnan(s["std"]) and math.isnan(s["ci95"])


def test_summarize_nothing():
    for values in ([], [float("nan")] * 3):
        s = summarize(values)
        assert s["n"] == 0
        assert math.isnan(s["mean"]) and math.isnan(s["std"]) and math.isnan(s["ci95"])


def test_summarize_constant_values_have_no_spread():
    s = summarize(iter([0.5] * 4))  # any iterable
    assert s == {"mean": 0.5, "std": 0.0, "ci95": 0.0, "n": 4, "q1": 0.5, "median": 0.5, "q3": 0.5, "ci95_tfa": 0.0}


# --- VOC AP at IoU 0.5 (our own code), on hand-computed cases ---------------------------

def _voc_set(boxes, difficult=()):
    """One image, one class 'x' (id 1); `boxes` are xywh ground truths."""
    from fsx.data.coco import CocoSet

    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0, "difficult": int(i in difficult)}
        for i, b in enumerate(boxes)
    ]
    return CocoSet({"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}], "annotations": anns, "categories": [{"id": 1, "name": "x"}]}, ".")


def _det(box, score):
    return {"image_id": 1, "category_id": 1, "bbox": list(box), "score": score}


def test_voc_ap_tp_fp_tp_by_hand():
    from fsx.evaluation.voc import voc_metrics

    gt = _voc_set([(0, 0, 10, 10), (50, 50, 10, 10)])
    results = [_det((0, 0, 10, 10), 0.9), _det((80, 80, 10, 10), 0.8), _det((50, 50, 10, 10), 0.7)]
    m = voc_metrics(gt, results)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: all-point = 0.5*1 + 0.5*(2/3)
    assert m["vocAP50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: recall >= 0..0.5 -> 1 (6 points), 0.6..1.0 -> 2/3 (5 points)
    assert m["voc07AP50"] == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_ap_difficult_boxes_and_duplicates():
    from fsx.evaluation.voc import voc_metrics

    gt = _voc_set([(0, 0, 10, 10), (50, 50, 10, 10)], difficult={1})
    # the difficult box's detection is ignored, so the only positive is found first: AP 1
    assert voc_metrics(gt, [_det((50, 50, 10, 10), 0.95), _det((0, 0, 10, 10), 0.9)])["vocAP50"] == pytest.approx(1.0)
    # a second detection of the same box is a false positive; it comes after the TP, so AP stays 1
    assert voc_metrics(gt, [_det((0, 0, 10, 10), 0.9), _det((1, 0, 10, 10), 0.8)])["vocAP50"] == pytest.approx(1.0)
    # ...but ranked first, the duplicate's twin is the TP and an earlier FP costs precision
    gt2 = _voc_set([(0, 0, 10, 10)])
    m = voc_metrics(gt2, [_det((80, 80, 10, 10), 0.99), _det((0, 0, 10, 10), 0.9)])
    assert m["vocAP50"] == pytest.approx(0.5) and m["voc07AP50"] == pytest.approx(0.5)


def test_voc_ap_iou_threshold_and_no_detections():
    from fsx.evaluation.voc import voc_metrics

    gt = _voc_set([(0, 0, 10, 10)])
    assert voc_metrics(gt, [_det((0, 0, 10, 6), 0.9)])["vocAP50"] == pytest.approx(1.0)  # IoU 0.6
    assert voc_metrics(gt, [_det((0, 0, 10, 4), 0.9)])["vocAP50"] == 0.0  # IoU 0.4
    assert voc_metrics(gt, []) == {"vocAP50": 0.0, "voc07AP50": 0.0, "voc07AP": 0.0}


def test_tfa_voc_ap_averages_eleven_point_ap_over_ten_ious_by_hand():
    """One box of 10x10 and one detection of 10xh at its corner: IoU = h / 10. The 11-point AP
    is 1 at every threshold <= IoU and 0 above, so "AP" = the share of the 10 thresholds
    0.50, 0.55, ..., 0.95 that the IoU reaches."""
    from fsx.evaluation.voc import voc_metrics

    gt = _voc_set([(0, 0, 10, 10)])
    for h, passed in ((10, 10), (7.2, 5), (5.2, 1), (4, 0)):  # IoU 1.0, 0.72, 0.52, 0.4
        got = voc_metrics(gt, [_det((0, 0, 10, h), 0.9)])
        assert got["voc07AP"] == pytest.approx(passed / 10), h
        assert got["voc07AP50"] == (1.0 if passed else 0.0)
    # a false positive ranked above the match at 0.5: precision 0.5 at recall 1 -> 11-point AP 0.5
    two = voc_metrics(gt, [_det((60, 60, 10, 10), 0.95), _det((0, 0, 10, 10), 0.9)])
    assert two["voc07AP50"] == pytest.approx(0.5) and two["voc07AP"] == pytest.approx(0.5)


def test_coco_metrics_ignore_difficult_boxes_as_voc_does():
    from fsx.evaluation.coco_metrics import coco_metrics

    gt = _voc_set([(0, 0, 10, 10), (50, 50, 20, 20)], difficult=(1,))
    found = coco_metrics(gt, [_det((0, 0, 10, 10), 0.9)])  # the difficult box missed: no penalty
    assert found["AP50"] == pytest.approx(1.0) and found["AP"] == pytest.approx(1.0)
    both = coco_metrics(gt, [_det((0, 0, 10, 10), 0.9), _det((50, 50, 20, 20), 0.95)])  # a hit on it is no false positive
    assert both["AP50"] == pytest.approx(1.0)


def test_pr_curves_per_class():
    from fsx.evaluation.voc import pr_curves

    gt = _voc_set([(0, 0, 10, 10), (50, 50, 10, 10)])
    curves = pr_curves(gt, [_det((0, 0, 10, 10), 0.9), _det((80, 80, 10, 10), 0.8), _det((50, 50, 10, 10), 0.7)], [1])
    x = curves["x"]
    assert list(x["precision"]) == pytest.approx([1.0, 0.5, 2 / 3]) and list(x["recall"]) == pytest.approx([0.5, 0.5, 1.0])
    assert x["positives"] == 2 and x["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_paired_difference_matches_scipy_and_a_hand_computed_interval():
    from scipy import stats as st

    from fsx.evaluation.aggregate import paired_difference

    a = [0.30, 0.42, 0.35, 0.50, 0.28]
    b = [0.36, 0.45, 0.41, 0.52, 0.37]
    d = [y - x for x, y in zip(a, b)]
    out = paired_difference(a, b)
    mean = sum(d) / 5
    sd = (sum((v - mean) ** 2 for v in d) / 4) ** 0.5
    assert out["n"] == 5 and out["mean"] == pytest.approx(mean)
    assert out["ci95"] == pytest.approx(2.7764451 * sd / 5**0.5, rel=1e-6)  # t(0.975, 4)
    assert out["p"] == pytest.approx(st.ttest_rel(b, a).pvalue)
    assert paired_difference([0.1, float("nan"), 0.3], [0.2, 0.5, 0.45])["n"] == 2


def test_summarize_quartiles_and_tfa_interval():
    x = [0.2, 0.4, 0.5, 0.9]
    s = summarize(x)
    assert (s["q1"], s["median"], s["q3"]) == pytest.approx(tuple(np.percentile(x, [25, 50, 75])))
    assert s["ci95_tfa"] == pytest.approx(1.96 * np.std(x) / 2)  # population std, sqrt(4) = 2
    assert s["ci95_tfa"] < s["ci95"]  # the normal interval with population std is narrower at n = 4


def test_cumulative_summaries_grow_one_repeat_at_a_time():
    running = cumulative([0.5, 0.7, 0.6])
    assert [r["n"] for r in running] == [1, 2, 3]
    assert [r["mean"] for r in running] == pytest.approx([0.5, 0.6, 0.6])
    assert math.isnan(running[0]["ci95"]) and running[2]["ci95"] == pytest.approx(summarize([0.5, 0.7, 0.6])["ci95"])


def test_adaptation_speed_by_hand():
    curve = {0: 0.0, 10: 0.5, 50: 0.8, 200: 0.9}
    speed = adaptation_speed(curve, seconds={0: 0.0, 10: 2.0, 50: 9.0, 200: 40.0})
    area = (10 * 0.25 + 40 * 0.65 + 150 * 0.85) / 200
    assert speed["auc"] == pytest.approx(area)
    assert speed["steps_to_50pct"] == 10 and speed["seconds_to_50pct"] == 2.0  # 0.5 >= 0.45
    assert speed["steps_to_90pct"] == 200  # 0.8 < 0.81
    flat = adaptation_speed({0: 0.0, 10: 0.0})
    assert flat["auc"] == 0 and math.isnan(flat["steps_to_50pct"])
    assert math.isnan(adaptation_speed({0: 0.3})["auc"])


def test_precision_recall_f1_at_a_score_threshold_by_hand():
    from fsx.evaluation.voc import threshold_metrics

    gt = _voc_set([(0, 0, 10, 10), (50, 50, 10, 10), (80, 80, 10, 10)])
    dets = [_det((0, 0, 10, 10), 0.9), _det((20, 20, 10, 10), 0.8), _det((50, 50, 10, 10), 0.3)]
    high = threshold_metrics(gt, dets, [1], score_threshold=0.5)  # keeps one hit and one miss
    assert high == pytest.approx({"precision_at_score": 0.5, "recall_at_score": 1 / 3, "F1_at_score": 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)})
    low = threshold_metrics(gt, dets, [1], score_threshold=0.0)
    assert low["precision_at_score"] == pytest.approx(2 / 3) and low["recall_at_score"] == pytest.approx(2 / 3)
    none = threshold_metrics(gt, dets, [1], score_threshold=0.95)
    assert math.isnan(none["precision_at_score"]) and none["recall_at_score"] == 0 and none["F1_at_score"] == 0
