"""Detector x backbone factory over torchvision.

A detector is described by a plain `spec` dict (no config objects): it is stored in every
checkpoint, so a checkpoint rebuilds its model with no other input.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from fsx.errors import UsageError
from fsx.models.backbones import build_backbone

DETECTORS = ("retinanet",)


class FloatAnchorGenerator(AnchorGenerator):
    """Anchors in fp32 whatever the feature maps' dtype: under bf16 autocast torchvision would
    make bf16 anchors, whose 0.5 px steps above 64 px blur box matching and decoding."""

    def forward(self, image_list, feature_maps):
        shapes = [torch.empty((1, 1, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, shapes)


class FloatOutputHead(RetinaNetHead):
    """RetinaNet's head with fp32 outputs, so that losses, box decoding and scores stay fp32
    when the towers run in bf16. Same parameters and state-dict keys as RetinaNetHead."""

    def forward(self, x):
        return {k: v.float() for k, v in super().forward(x).items()}


def anchor_sizes(strides: list[int], scale: float, octaves: int = 3) -> tuple[tuple[float, ...], ...]:
    """RetinaNet anchors per level: `scale * stride` times 2^(i/octaves), i < octaves.

    With the paper's scale 4 this is torchvision's 32..512 on strides 8..128; small images
    with small objects want a smaller scale.
    """
    return tuple(tuple(scale * s * 2 ** (i / octaves) for i in range(octaves)) for s in strides)


def build_detector(spec: dict) -> nn.Module:
    """spec: {detector: {...}, backbone: {...}, num_classes, image_size, image_mean, image_std}."""
    det = spec["detector"]
    if det["name"] not in DETECTORS:
        raise UsageError(f"detector.name={det['name']}: choose one of {', '.join(DETECTORS)}")
    bb = dict(spec["backbone"])
    backbone = build_backbone(bb.pop("name"), **bb)
    sizes = anchor_sizes(backbone.strides, det["anchor_scale"], det.get("anchor_octaves", 3))
    ratios = (tuple(det.get("aspect_ratios", (0.5, 1.0, 2.0))),) * len(sizes)
    anchors = FloatAnchorGenerator(sizes, ratios)
    size = spec["image_size"]
    model = RetinaNet(
        backbone,
        num_classes=spec["num_classes"],
        min_size=size,
        max_size=size,
        image_mean=list(spec["image_mean"]),
        image_std=list(spec["image_std"]),
        anchor_generator=anchors,
        head=FloatOutputHead(backbone.out_channels, anchors.num_anchors_per_location()[0], spec["num_classes"]),
        score_thresh=det.get("score_thresh", 0.05),
        nms_thresh=det.get("nms_thresh", 0.5),
        detections_per_img=det.get("detections_per_img", 100),
        fg_iou_thresh=det.get("fg_iou_thresh", 0.5),
        bg_iou_thresh=det.get("bg_iou_thresh", 0.4),
        topk_candidates=det.get("topk_candidates", 1000),
    )
    # NHWC convolutions: 12% faster training steps on CPU (make bench), and the layout
    # tensor cores want on CUDA. Weights load into it unchanged.
    return model.to(memory_format=torch.channels_last)


def model_spec(detector: dict, backbone: dict, num_classes: int, image_size: int, image_mean, image_std) -> dict:
    return {
        "detector": copy.deepcopy(dict(detector)),
        "backbone": copy.deepcopy(dict(backbone)),
        "num_classes": int(num_classes),
        "image_size": int(image_size),
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
    }
