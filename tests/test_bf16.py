"""bf16 mixed precision without a GPU. `amp: true` turns on bf16 autocast on CUDA through
fsx.engine.device.autocast; adding "cpu" to its AUTOCAST_DEVICES runs that same code path on
the CPU. Every detector family trains a few steps and predicts under it, and one meta-learner
of each kind (Reptile, FOMAML, second-order MAML) meta-trains: the losses and gradients are
finite, the convolutions really ran in bf16, and what needs precision stays fp32: the losses,
the boxes and scores that reach NMS, the boxes that reach RoIAlign, the detections."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from torchvision.ops import boxes as box_ops
from torchvision.ops import poolers

import fsx.engine.device
from fsx.algorithms import build_algorithm
from fsx.data.coco import DetectionDataset
from fsx.engine.loop import train_step
from fsx.evaluation.predict import predict
from fsx.models.detectors import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
DETECTORS = {
    "fcos": {"name": "fcos"},
    "retinanet": {"name": "retinanet", "anchor_scale": 1.5},
    "fasterrcnn": {"name": "fasterrcnn", "anchor_scale": 3.0, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100},
    "fasterrcnn-cos-grid": {"name": "fasterrcnn", "anchor_scale": 3.0, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100, "roi_align": "grid", "classifier": "cos"},
    "ssd": {"name": "ssd"},
    "ssdlite": {"name": "ssd", "head": "lite"},
}


@pytest.fixture()
def bf16(monkeypatch):
    """bf16 autocast on the CPU through fsx's own switch, and a record of the dtypes that
    reach NMS and RoIAlign and that the first convolution puts out."""
    monkeypatch.setattr(fsx.engine.device, "AUTOCAST_DEVICES", ("cuda", "cpu"))
    seen = collections.defaultdict(set)
    nms, roi_align = box_ops.batched_nms, poolers.roi_align

    def recorded_nms(boxes, scores, idxs, threshold):
        seen["nms"].add((boxes.dtype, scores.dtype))
        return nms(boxes, scores, idxs, threshold)

    def recorded_roi_align(features, boxes, *args, **kwargs):
        seen["roi_align boxes"].update(b.dtype for b in (boxes if isinstance(boxes, (list, tuple)) else [boxes]))
        return roi_align(features, boxes, *args, **kwargs)

    monkeypatch.setattr(box_ops, "batched_nms", recorded_nms)
    monkeypatch.setattr(poolers, "roi_align", recorded_roi_align)
    return seen


def _model(detector: str, num_classes: int, seen) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_detector({
        "detector": {**DETECTORS[detector], "score_thresh": 0.0},
        "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]},
        "num_classes": num_classes, "image_size": 128, "image_mean": [0.92] * 3, "image_std": [0.25] * 3,
    })
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, args, out: seen["conv out"].add(out.dtype))
    return model


def _finite_gradients(model) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("detector", list(DETECTORS))
def test_every_detector_trains_and_predicts_under_bf16_autocast(detector, bf16, letters_data):
    model = _model(detector, len(letters_data.class_ids), bf16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    images, targets = zip(*(letters_data.dataset[i] for i in range(4)))
    for _ in range(2):
        losses = train_step(model, optimizer, list(images), list(targets), CPU, amp=True, clip_norm=10.0)
        assert all(v.dtype == torch.float32 and math.isfinite(float(v)) for v in losses.values()), losses
        assert _finite_gradients(model)
    assert bf16["conv out"] == {torch.bfloat16}  # autocast was on: this is the bf16 path
    few = DetectionDataset(letters_data.source.restrict(image_ids=letters_data.source.image_ids[:4], category_ids=letters_data.class_ids), letters_data.class_ids)
    results = predict(model, few, CPU, batch_size=4, amp=True)
    assert results and all(math.isfinite(r["score"]) and all(map(math.isfinite, r["bbox"])) for r in results)
    assert bf16["nms"] == {(torch.float32, torch.float32)}  # bf16 boxes are 2 px apart at 256 px
    if detector.startswith("fasterrcnn") and "grid" not in detector:
        assert bf16["roi_align boxes"] == {torch.float32}
    model.eval()
    with torch.no_grad(), fsx.engine.device.autocast(CPU, True):
        out = model([images[0]])[0]
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32


@pytest.mark.parametrize("name,settings", [
    ("reptile", dict(inner_steps=2, inner_batch=4, inner_lr=2e-3, shots=2, meta_batch=2)),
    ("fomaml", dict(first_order=True, inner_steps=2, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1)),
    ("maml", dict(inner_steps=1, inner_batch=4, shots=2, query_shots=2, meta_lr=1e-3, warmup=1)),
])
def test_meta_learners_meta_train_under_bf16_autocast(name, settings, bf16, letters_data):
    algorithm = build_algorithm(name, **settings)
    model = _model("fcos", algorithm.num_outputs(letters_data), bf16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    algorithm.pretrain(model, letters_data, 2, CPU, seed=0, amp=True, on_step=lambda step, logged: losses.append(logged))
    assert bf16["conv out"] == {torch.bfloat16}
    assert losses and all(math.isfinite(float(v)) for logged in losses for v in logged.values())
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    assert all(after[k].dtype == before[k].dtype for k in before)  # the weights stay fp32
