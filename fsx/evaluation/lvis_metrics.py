"""LVIS's own evaluation (the `lvis` package: `pip install 'fsx[lvis]'`): federated AP, where
an image counts only for the classes verified present or absent in it, and AP over rare,
common and frequent classes (APr, APc, APf; PROTOCOLS 2.9, 6)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
import warnings
from pathlib import Path

from fsx.data.coco import CocoSet
from fsx.errors import UsageError

LVIS_STATS = ("lvisAP", "lvisAP50", "APr", "APc", "APf")
MAX_DETECTIONS = 300  # LVIS's official detections per image


def lvis_metrics(gt: CocoSet, results: list[dict], category_ids: list[int]) -> dict[str, float]:
    """LVISEval's bbox AP, AP50, APr, APc, APf over `category_ids` (NaN where a frequency
    group has no class here)."""
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError:
        raise UsageError("dataset=lvis_tfa is scored with the lvis package: pip install 'fsx[lvis]'") from None
    logging.getLogger("lvis").setLevel(logging.ERROR)
    dataset = {"images": [], "annotations": [], "categories": gt.categories}
    for image_id in gt.image_ids:
        image = gt.image(image_id)
        dataset["images"].append({**image, "neg_category_ids": image.get("neg_category_ids", []), "not_exhaustive_category_ids": image.get("not_exhaustive_category_ids", [])})
        dataset["annotations"] += [{**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3])} for a in gt.annotations(image_id)]
    if not dataset["annotations"]:
        return {k: float("nan") for k in LVIS_STATS}
    with tempfile.TemporaryDirectory() as tmp:  # the lvis package reads its ground truth from a file
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(dataset))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the package's own logger.warn
            truth = LVIS(str(path))
            detections = LVISResults(truth, [dict(r) for r in results], max_dets=MAX_DETECTIONS) if results else None
            if detections is None:
                return {"lvisAP": 0.0, "lvisAP50": 0.0, **{k: _present(gt, category_ids, k) for k in ("APr", "APc", "APf")}}
            evaluator = LVISEval(truth, detections, "bbox")
            evaluator.params.cat_ids = list(category_ids)
            evaluator.params.img_ids = list(gt.image_ids)
            with _numpy_float_alias():
                evaluator.run()
    r = evaluator.get_results()
    out = {"lvisAP": r["AP"], "lvisAP50": r["AP50"], "APr": r["APr"], "APc": r["APc"], "APf": r["APf"]}
    return {k: (float(v) if v is not None and v >= 0 else float("nan")) for k, v in out.items()}


@contextlib.contextmanager
def _numpy_float_alias():
    """lvis 0.5.3, its last release, calls `np.float`, which NumPy 1.24 removed: lend it the
    alias for the duration of one evaluation only."""
    import numpy as np

    had = "float" in np.__dict__
    np.float = float
    try:
        yield
    finally:
        if not had:
            del np.float


def _present(gt: CocoSet, category_ids: list[int], stat: str) -> float:
    """0 for a frequency group with classes here and no detections, NaN for an empty group."""
    group = {"APr": "r", "APc": "c", "APf": "f"}[stat]
    frequency = {c["id"]: c.get("frequency") for c in gt.categories}
    return 0.0 if any(frequency.get(c) == group for c in category_ids) else math.nan
