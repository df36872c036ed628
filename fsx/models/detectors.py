"""Detector x backbone factory over torchvision: RetinaNet, FCOS, Faster R-CNN and SSD.

A detector is described by a plain `spec` dict (no config objects): it is stored in every
checkpoint, so a checkpoint rebuilds its model with no other input. Every detector takes
and returns fsx labels 0..M-1 (label i = the i-th class of the model's class list);
Faster R-CNN's background index 0 exists only inside `ZeroBasedFasterRCNN`.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import MultiScaleRoIAlign

from fsx.errors import UsageError
from fsx.models.backbones import WEIGHT_KEYS, build_backbone
from fsx.models.cosine import CosinePredictor
from fsx.models.roi_align import GridRoIAlign

DETECTORS = ("retinanet", "fcos", "fasterrcnn", "ssd")
TWO_STAGE = ("fasterrcnn",)
BOX_LOSSES = ("l1", "smooth_l1", "giou", "ciou", "diou")
ROI_ALIGNS = ("torchvision", "grid")  # the compiled op, or fsx.models.roi_align (differentiable twice)


class FloatAnchorGenerator(AnchorGenerator):
    """Anchors in fp32 whatever the feature maps' dtype: under bf16 autocast torchvision would
    make bf16 anchors, whose 0.5 px steps above 64 px blur box matching and decoding."""

    def forward(self, image_list, feature_maps):
        shapes = [torch.empty((1, 1, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, shapes)


class FloatDefaultBoxGenerator(DefaultBoxGenerator):
    """SSD's default boxes in fp32 whatever the feature maps' dtype (as FloatAnchorGenerator)."""

    def forward(self, image_list, feature_maps):
        shapes = [torch.empty((1, 1, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        return super().forward(image_list, shapes)


def _to_float(out):
    """Every floating tensor in a head's output (a tensor, or dicts, lists, tuples of them) as fp32."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


def _float_outputs(head_class: type) -> type:
    """A head whose outputs are fp32, so that losses, box decoding, NMS and scores stay fp32
    when the convolutions run in bf16 (torchvision's box coder casts the anchors to the deltas'
    dtype: bf16 boxes are 2 px apart at 256 px). Same parameters and state-dict keys as
    `head_class`; tests/test_bf16.py checks what reaches NMS and RoIAlign."""

    class FloatOutputs(head_class):
        def forward(self, *args, **kwargs):
            return _to_float(super().forward(*args, **kwargs))

    FloatOutputs.__name__ = FloatOutputs.__qualname__ = f"Float{head_class.__name__}"
    return FloatOutputs


FloatOutputHead = _float_outputs(RetinaNetHead)
FloatFCOSHead = _float_outputs(FCOSHead)
FloatRPNHead = _float_outputs(RPNHead)
FloatFastRCNNPredictor = _float_outputs(FastRCNNPredictor)
FloatSSDHead = _float_outputs(SSDHead)
FloatSSDLiteHead = _float_outputs(SSDLiteHead)


class ZeroBased:
    """torchvision's Faster R-CNN and SSD reserve label 0 for the background; fsx labels start
    at 0. Shift by one on the way in and out, here and nowhere else."""

    def forward(self, images, targets=None):
        if targets is not None:
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
        out = super().forward(images, targets)
        if self.training:
            return out
        return [{**o, "labels": o["labels"] - 1} for o in out]


class ZeroBasedFasterRCNN(ZeroBased, FasterRCNN):
    pass


class ZeroBasedSSD(ZeroBased, SSD):
    pass


def anchor_sizes(strides: list[int], scale: float, octaves: int = 3) -> tuple[tuple[float, ...], ...]:
    """RetinaNet anchors per level: `scale * stride` times 2^(i/octaves), i < octaves.

    With the paper's scale 4 this is torchvision's 32..512 on strides 8..128; small images
    with small objects want a smaller scale.
    """
    return tuple(tuple(scale * s * 2 ** (i / octaves) for i in range(octaves)) for s in strides)


def _anchor_sizes(det: dict, strides: list[int], octaves: int) -> tuple[tuple[float, ...], ...]:
    """`detector.anchor_sizes` (one list per level, as torchvision's builders write them) when
    given, else computed from anchor_scale and anchor_octaves."""
    given = det.get("anchor_sizes")
    if given is None:
        return anchor_sizes(strides, det["anchor_scale"], det.get("anchor_octaves", octaves))
    sizes = tuple(tuple(float(v) for v in level) for level in given)
    if len(sizes) != len(strides) or len({len(level) for level in sizes}) != 1:
        raise UsageError(f"detector.anchor_sizes={[list(s) for s in sizes]}: give one list of sizes per feature level ({len(strides)} levels, strides {strides}), each of the same length")
    return sizes


def _head_norm(name: str | None, channels: int):
    """The norm layer of a dense head's towers: none (RetinaNet v1) or group norm (v2, FCOS)."""
    if name in (None, "none"):
        return None
    if name == "group":
        return partial(nn.GroupNorm, min(32, channels))
    raise UsageError(f"detector.head_norm={name}: choose none or group")


def _transform_args(spec: dict) -> dict:
    size = spec["image_size"]
    return {"min_size": size, "max_size": size, "image_mean": list(spec["image_mean"]), "image_std": list(spec["image_std"])}


def _dense_postprocess_args(det: dict, nms: float, topk: int = 1000) -> dict:
    """Score threshold, NMS and detection counts of a one-stage detector (0.05: FCOS's own
    default of 0.2 cuts recall and lowers AP)."""
    return {
        "score_thresh": det.get("score_thresh", 0.05),
        "nms_thresh": det.get("nms_thresh", nms),
        "detections_per_img": det.get("detections_per_img", 100),
        "topk_candidates": det.get("topk_candidates", topk),
    }


def _retinanet(backbone, det: dict, num_classes: int, spec: dict) -> nn.Module:
    sizes = _anchor_sizes(det, backbone.strides, 3)
    anchors = FloatAnchorGenerator(sizes, (tuple(det.get("aspect_ratios", (0.5, 1.0, 2.0))),) * len(sizes))
    head = FloatOutputHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=_head_norm(det.get("head_norm"), backbone.out_channels))
    loss = det.get("box_loss", "l1")
    if loss not in BOX_LOSSES:
        raise UsageError(f"detector.box_loss={loss}: choose one of {', '.join(BOX_LOSSES)}")
    head.regression_head._loss_type = loss
    return RetinaNet(
        backbone,
        num_classes=num_classes,
        anchor_generator=anchors,
        head=head,
        fg_iou_thresh=det.get("fg_iou_thresh", 0.5),
        bg_iou_thresh=det.get("bg_iou_thresh", 0.4),
        **_dense_postprocess_args(det, nms=0.5),
        **_transform_args(spec),
    )


def _fcos(backbone, det: dict, num_classes: int, spec: dict) -> nn.Module:
    # FCOS "anchors" are one point per location whose size sets the level's scale range
    # (a level takes boxes whose largest centre-to-edge distance is 4-8x the size).
    scale = det.get("anchor_scale", 1.0)
    anchors = FloatAnchorGenerator(tuple((scale * s,) for s in backbone.strides), ((1.0,),) * len(backbone.strides))
    head = FloatFCOSHead(backbone.out_channels, 1, num_classes, num_convs=det.get("num_convs", 4))
    return FCOS(
        backbone,
        num_classes=num_classes,
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=det.get("center_sampling_radius", 1.5),
        **_dense_postprocess_args(det, nms=0.6),
        **_transform_args(spec),
    )


CLASSIFIERS = ("fc", "cos")


def box_predictor(in_features: int, num_classes: int, det: dict) -> nn.Module:
    """Faster R-CNN's last layers for `num_classes` classes plus background: an ordinary
    linear classifier (`detector.classifier=fc`) or TFA's cosine one (`cos`)."""
    kind = det.get("classifier", "fc")
    if kind not in CLASSIFIERS:
        raise UsageError(f"detector.classifier={kind}: choose one of {', '.join(CLASSIFIERS)}")
    if kind == "cos":
        return CosinePredictor(in_features, num_classes + 1, float(det.get("cosine_scale", 20.0)), bool(det.get("learn_scale", False)))
    return FloatFastRCNNPredictor(in_features, num_classes + 1)


def _fasterrcnn(backbone, det: dict, num_classes: int, spec: dict) -> nn.Module:
    sizes = _anchor_sizes(det, backbone.strides, 1)
    anchors = FloatAnchorGenerator(sizes, (tuple(det.get("aspect_ratios", (0.5, 1.0, 2.0))),) * len(sizes))
    levels = list(getattr(backbone, "roi_levels", [str(i) for i in range(len(backbone.strides))]))  # the pyramid's own maps, not P6/P7/pool
    pool = det.get("roi_size", 7)
    rep = det.get("representation_size", 1024)
    kind = det.get("roi_align", "torchvision")
    if kind not in ROI_ALIGNS:
        raise UsageError(f"detector.roi_align={kind}: choose one of {', '.join(ROI_ALIGNS)}")
    pooler = (GridRoIAlign if kind == "grid" else MultiScaleRoIAlign)(featmap_names=levels, output_size=pool, sampling_ratio=2)
    return ZeroBasedFasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=TwoMLPHead(backbone.out_channels * pool * pool, rep),
        box_predictor=box_predictor(rep, num_classes, det),
        # made after the box head and predictor, as FasterRCNN makes its default: the same initial weights for a seed
        rpn_head=FloatRPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=det.get("rpn_pre_nms_top_n_train", 2000),
        rpn_pre_nms_top_n_test=det.get("rpn_pre_nms_top_n_test", 1000),
        rpn_post_nms_top_n_train=det.get("rpn_post_nms_top_n_train", 2000),
        rpn_post_nms_top_n_test=det.get("rpn_post_nms_top_n_test", 1000),
        rpn_batch_size_per_image=det.get("rpn_batch_size_per_image", 256),
        box_batch_size_per_image=det.get("box_batch_size_per_image", 512),
        box_score_thresh=det.get("score_thresh", 0.05),
        box_nms_thresh=det.get("nms_thresh", 0.5),
        box_detections_per_img=det.get("detections_per_img", 100),
        **_transform_args(spec),
    )


def _ssd(backbone, det: dict, num_classes: int, spec: dict) -> nn.Module:
    """SSD's multi-box head on every level the backbone gives: default boxes at `min_ratio`
    .. `max_ratio` of the image (one scale per level), softmax classes with background, hard
    negative mining at 3 negatives per positive, smooth-L1 boxes. Over backbone=vgg16 it is
    SSD300 (its default-box table, 300 px)."""
    size = int(spec["image_size"])
    if hasattr(backbone, "feature_channels"):  # SSD300's VGG base: its own six maps and boxes
        if size != backbone.image_size:
            raise UsageError(f"backbone=vgg16 is SSD300's base and needs dataset.image_size=300, not {size} (experiment=ssd300_vgg16 sets it)")
        channels = backbone.feature_channels
        anchors = FloatDefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=backbone.strides)
    else:
        levels = len(backbone.strides)
        channels = [backbone.out_channels] * levels
        ratios = [list(det.get("aspect_ratios", [2, 3]))] * levels
        anchors = FloatDefaultBoxGenerator(ratios, min_ratio=det.get("min_ratio", 0.1), max_ratio=det.get("max_ratio", 0.6), steps=list(backbone.strides))
    kind = det.get("head", "ssd")
    if kind not in ("ssd", "lite"):
        raise UsageError(f"detector.head={kind}: choose ssd (3x3 convolutions) or lite (SSDlite: depthwise-separable)")
    if kind == "lite":
        head = FloatSSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    else:
        head = FloatSSDHead(channels, anchors.num_anchors_per_location(), num_classes + 1)
    return ZeroBasedSSD(
        backbone,
        anchors,
        (size, size),
        num_classes + 1,
        image_mean=list(spec["image_mean"]),
        image_std=list(spec["image_std"]),
        head=head,
        iou_thresh=det.get("iou_thresh", 0.5),
        positive_fraction=det.get("positive_fraction", 0.25),
        **_dense_postprocess_args(det, nms=0.45, topk=400),
    )


_BUILDERS = {"retinanet": _retinanet, "fcos": _fcos, "fasterrcnn": _fasterrcnn, "ssd": _ssd}


# The layers whose shape is the class count: not loaded from a detector trained on other classes.
CLASS_OUTPUTS = {
    "retinanet": ("head.classification_head.cls_logits.",),
    "fcos": ("head.classification_head.cls_logits.",),
    "fasterrcnn": ("roi_heads.box_predictor.",),
    "ssd": ("head.classification_head.",),
}


def build_detector(spec: dict) -> nn.Module:
    """spec: {detector: {...}, backbone: {...}, num_classes, image_size, image_mean, image_std}.
    Weights named in the spec (backbone.weights_file, detector.weights_file) are loaded;
    a checkpoint's spec has none (its state dict follows)."""
    det = {k: v for k, v in spec["detector"].items() if k not in WEIGHT_KEYS}
    if det["name"] not in _BUILDERS:
        raise UsageError(f"detector={det['name']}: choose one of {', '.join(DETECTORS)}")
    bb = dict(spec["backbone"])
    name = bb.pop("name")
    if name == "timm" or name == "efficientnet_lite0":
        bb["image_size"] = int(spec["image_size"])  # timm's maps are checked with one forward pass at this size
    backbone = build_backbone(name, **bb)
    if hasattr(backbone, "feature_channels") and det["name"] != "ssd":
        raise UsageError(f"backbone=vgg16 is SSD300's base (maps of different widths, no feature pyramid): use it with detector=ssd, not {det['name']}")
    model = _BUILDERS[det["name"]](backbone, det, int(spec["num_classes"]), spec)
    whole = spec["detector"].get("weights_file")
    if whole:
        load_detector_weights(model, det["name"], whole, str(spec["detector"].get("weights", whole)))
    # NHWC convolutions: 12% faster training steps on CPU (make bench), and the layout
    # tensor cores want on CUDA. Weights load into it unchanged.
    return model.to(memory_format=torch.channels_last)


def load_detector_weights(model: nn.Module, family: str, path: str, name: str) -> None:
    """A whole detector's state dict in torchvision's layout (its COCO detectors): every tensor
    but the class outputs must fit; those stay fresh for this model's classes. SSD300's VGG
    keys gain fsx's `body.` level."""
    from fsx.models.backbones import read_state_dict

    state = read_state_dict(path, key="detector.weights")
    mine = model.state_dict()
    renamed = {}
    for key, value in state.items():
        if key not in mine and key.startswith("backbone.") and "backbone.body." + key[len("backbone.") :] in mine:
            key = "backbone.body." + key[len("backbone.") :]
        renamed[key] = value
    skip = CLASS_OUTPUTS[family]
    renamed = {k: v for k, v in renamed.items() if not k.startswith(skip)}
    wrong = [k for k, v in renamed.items() if k in mine and mine[k].shape != v.shape]
    missing = [k for k in mine if k not in renamed and not k.startswith(skip) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in renamed if k not in mine and not k.endswith("num_batches_tracked")]
    if wrong or missing or unexpected:
        raise UsageError(
            f"detector.weights={name} does not fit this {family}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict({k: v for k, v in renamed.items() if k in mine}, strict=False)


def model_spec(detector: dict, backbone: dict, num_classes: int, image_size: int, image_mean, image_std) -> dict:
    """Everything needed to rebuild the model. `backbone.norm=auto` is resolved here (frozen
    batch norm over loaded ImageNet weights, trainable otherwise), so a checkpoint, which
    rebuilds without the weights file, names the norm it was trained with."""
    backbone = copy.deepcopy(dict(backbone))
    if backbone.get("norm") == "auto":
        backbone["norm"] = "frozen_bn" if backbone.get("weights") or backbone.get("weights_file") else "bn"
    return {
        "detector": copy.deepcopy(dict(detector)),
        "backbone": backbone,
        "num_classes": int(num_classes),
        "image_size": int(image_size),
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
    }
