"""Feature-pyramid backbones. Each returns an `FPNBackbone`: an ordered dict of feature maps
with `out_channels` and the `strides` of its levels (the detector sizes anchors from them).

Bodies: fsx's tiny net, torchvision's ResNets, MobileNetV3 and SSD300's VGG16, and any timm
model that gives maps at strides 8, 16 and 32 (`features_only`), EfficientNet-Lite0 among
them. Pretrained weights arrive as a resolved file (`weights_file`, `weights_layout`, from
fsx.models.weights); a bare `weights` value is resolved there first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from fsx.errors import UsageError


class FPNBackbone(nn.Module):
    """A body that gives feature maps (a dict, or a list of which `select` picks the levels)
    under an FPN. `extra_levels`: 0; 1, a max-pooled level over the top map (torchvision's
    Faster R-CNN 'pool'); 2, P6 and P7 from C5 (the RetinaNet paper) or from P5 (torchvision's
    FCOS and RetinaNet v1), as `extra_from` says. `roi_levels` are the maps a RoI pooler reads
    (the pyramid's own, not the extra ones)."""

    def __init__(self, body: nn.Module, in_channels: list[int], strides: list[int], out_channels: int, extra_levels: int = 0, extra_from: str = "c5", select: list[int] | None = None):
        super().__init__()
        self.body = body
        self.select = select
        self.roi_levels = [str(i) for i in range(len(in_channels))]
        if extra_from not in ("c5", "p5"):
            raise UsageError(f"backbone.extra_from={extra_from}: choose c5 (P6 from the last backbone map, the RetinaNet paper) or p5 (from the FPN's top level)")
        extra: nn.Module | None = None
        if extra_levels == 1:
            extra = LastLevelMaxPool()
            strides = strides + [strides[-1] * 2]
        elif extra_levels == 2:
            extra = LastLevelP6P7(in_channels[-1] if extra_from == "c5" else out_channels, out_channels)
            strides = strides + [strides[-1] * 2, strides[-1] * 4]
        elif extra_levels != 0:
            raise UsageError(f"backbone.extra_levels={extra_levels}: choose 0, 1 (a max-pooled level, Faster R-CNN's) or 2 (P6 and P7)")
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.strides = strides

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        if self.select is not None:
            features = OrderedDict((str(j), features[i]) for j, i in enumerate(self.select))
        return self.fpn(features)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBody(nn.Sequential):
    """Ten conv-BN-ReLU layers, five stride-2 stages: small enough to train on a laptop CPU."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 128)):
        w = widths
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(_conv(3, w[0], 2), _conv(w[0], w[0])),  # stride 2
                c2=nn.Sequential(_conv(w[0], w[1], 2), _conv(w[1], w[1])),  # 4
                c3=nn.Sequential(_conv(w[1], w[2], 2), _conv(w[2], w[2])),  # 8
                c4=nn.Sequential(_conv(w[2], w[3], 2), _conv(w[3], w[3])),  # 16
                c5=nn.Sequential(_conv(w[3], w[4], 2), _conv(w[4], w[4])),  # 32
            )
        )


def tiny_backbone(out_channels: int = 64, widths: tuple[int, ...] = (16, 32, 64, 128, 128), extra_levels: int = 0, extra_from: str = "c5") -> FPNBackbone:
    body = IntermediateLayerGetter(TinyBody(tuple(widths)), {"c3": "0", "c4": "1", "c5": "2"})
    return FPNBackbone(body, list(widths[2:]), [8, 16, 32], out_channels, extra_levels, extra_from)


_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
HEADS_OF_CLASSIFIERS = ("fc.", "classifier.")  # ImageNet heads in torchvision's state dicts: not loaded


def read_state_dict(path: str | Path, key: str = "backbone.weights") -> dict:
    """A state dict from a .pth/.pt/.bin (torch.load, tensors only) or .safetensors file; a
    {"state_dict": ...} wrapper is opened."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{key}={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UsageError(f"{key}={path} is not a readable PyTorch state dict: {str(e)[:300]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{key}={path} holds a {type(state).__name__}, not a state dict (parameter names -> tensors)")
    return state


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict in torchvision's layout, its classifier left out."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(HEADS_OF_CLASSIFIERS)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(HEADS_OF_CLASSIFIERS)]
    if missing or unexpected:
        raise UsageError(
            f"backbone.weights={path} does not fit this backbone: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


def _check_norm_and_layers(norm: str, trainable_layers: int, weights) -> str:
    """The norm to build (auto: frozen over loaded weights, as torchvision does; else bn)."""
    if norm not in ("auto", "bn", "frozen_bn"):
        raise UsageError(f"backbone.norm={norm}: choose auto, bn or frozen_bn")
    if not 0 <= trainable_layers <= 5:
        raise UsageError(f"backbone.trainable_layers={trainable_layers}: choose 0..5")
    if norm == "auto":
        return "frozen_bn" if weights else "bn"
    return norm


def resnet_backbone(
    name: str, out_channels: int = 128, weights_file: str | None = None, norm: str = "auto", trainable_layers: int = 5,
    extra_levels: int = 0, extra_from: str = "c5", returned_layers: tuple[int, ...] = (2, 3, 4),
) -> FPNBackbone:
    """A torchvision ResNet under an FPN on `returned_layers` (2, 3, 4: C3-C5, strides 8-32;
    1, 2, 3, 4: C2-C5 as torchvision's Faster R-CNN)."""
    norm = _check_norm_and_layers(norm, trainable_layers, weights_file)
    layers = sorted(int(i) for i in returned_layers)
    if not layers or layers[0] < 1 or layers[-1] > 4 or len(set(layers)) != len(layers):
        raise UsageError(f"backbone.returned_layers={list(returned_layers)}: choose distinct ResNet stages among 1, 2, 3, 4 (e.g. [2, 3, 4])")
    body = _RESNETS[name](weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
    if weights_file:
        load_weights(body, weights_file)
    # Freeze from the stem up, as torchvision's resnet_fpn_backbone does, but explicitly.
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for pname, p in body.named_parameters():
        if not any(pname.startswith(t) for t in trainable) and not (trainable_layers == 5 and pname.startswith("bn1")):
            p.requires_grad_(False)
    stage2 = body.inplanes // 8  # layer1's output width: 64 (18, 34) or 256 (50, 101)
    channels = [stage2 * 2 ** (i - 1) for i in layers]
    getter = IntermediateLayerGetter(body, {f"layer{i}": str(j) for j, i in enumerate(layers)})
    return FPNBackbone(getter, channels, [2 ** (i + 1) for i in layers], out_channels, extra_levels, extra_from)


# MobileNetV3-Large's feature blocks by output stride: 2 (stem, 0-1), 4 (2-3), 8 (4-6),
# 16 (7-12), 32 (13-16); the FPN reads the last block of strides 8, 16 and 32.
_MOBILENET_STAGES = [range(0, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17)]


def mobilenet_v3_backbone(out_channels: int = 128, weights_file: str | None = None, norm: str = "auto", trainable_layers: int = 5, extra_levels: int = 0, extra_from: str = "c5") -> FPNBackbone:
    """MobileNetV3-Large with an FPN on strides 8/16/32 (the SSDlite-style light backbone)."""
    norm = _check_norm_and_layers(norm, trainable_layers, weights_file)
    batch_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's settings for this net
    net = mobilenet_v3_large(weights=None, norm_layer=partial(FrozenBatchNorm2d, eps=0.001) if norm == "frozen_bn" else batch_norm)
    if weights_file:
        load_weights(net, weights_file)
    frozen_blocks = [b for stage in _MOBILENET_STAGES[: 5 - trainable_layers] for b in stage]
    for b in frozen_blocks:
        for p in net.features[b].parameters():
            p.requires_grad_(False)
    body = IntermediateLayerGetter(net.features, {"6": "0", "12": "1", "16": "2"})
    return FPNBackbone(body, [40, 112, 960], [8, 16, 32], out_channels, extra_levels, extra_from)


class SSDVGGBackbone(nn.Module):
    """SSD300's base (PROTOCOLS 5.3): VGG16 to conv5_3 with fc6/fc7 as dilated convolutions
    and SSD's four extra blocks (torchvision's extractor), six maps of 512, 1024, 512, 256,
    256, 256 channels at 300 px. Only detector=ssd reads maps of different widths."""

    def __init__(self, weights_file: str | None = None, trainable_layers: int = 5):
        super().__init__()
        from torchvision.models import vgg16
        from torchvision.models.detection.ssd import _vgg_extractor

        if not 0 <= trainable_layers <= 5:
            raise UsageError(f"backbone.trainable_layers={trainable_layers}: choose 0..5")
        vgg = vgg16(weights=None)
        if weights_file:
            load_weights(vgg, weights_file)
        self.body = _vgg_extractor(vgg, False, trainable_layers)
        self.feature_channels = [512, 1024, 512, 256, 256, 256]
        self.strides = [8, 16, 32, 64, 100, 300]
        self.image_size = 300

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.body(x)


# ----------------------------------------------------------------------------- timm

PYRAMID_STRIDES = (8, 16, 32)


def timm_backbone(
    model: str, out_channels: int = 128, weights_file: str | None = None, weights_layout: str | None = None, norm: str = "auto",
    trainable_layers: int = 5, extra_levels: int = 0, extra_from: str = "c5", image_size: int = 224,
) -> FPNBackbone:
    """A timm model's `features_only` pyramid under fsx's FPN: the maps at strides 8, 16 and
    32, their widths read from timm's `feature_info`. Weights load through timm's own
    pretrained mechanism (its checkpoint filters included) from the resolved file; a
    lukemelas-style EfficientNet-Lite0 state dict is renamed to timm's keys first."""
    import timm

    from fsx.models.weights import check_timm_model

    check_timm_model(model)
    norm = _check_norm_and_layers(norm, trainable_layers, weights_file)
    overlay = None
    if weights_file:
        state = read_state_dict(weights_file)
        if weights_layout == "lite0" or "_conv_stem.weight" in state:
            from fsx.models.efficientnet_lite0 import to_timm

            state = to_timm(state)
        overlay = {"state_dict": state}
    try:
        with _timm_load_report() as report:
            net = timm.create_model(model, pretrained=bool(weights_file), features_only=True, pretrained_cfg_overlay=overlay)
    except (RuntimeError, NotImplementedError, AssertionError, ValueError, KeyError, TypeError) as e:
        text = str(e)
        if weights_file and ("state_dict" in text or "size mismatch" in text or "Missing key" in text or "Unexpected key" in text):
            raise UsageError(f"backbone.weights: {weights_file} does not fit timm's {model}: {text[:300]}") from None
        raise UsageError(f"backbone.model={model}: timm cannot build it as a feature pyramid (features_only): {type(e).__name__}: {text[:300]}") from None
    pretrained_cfg = timm.models.get_pretrained_cfg(model)
    classifier = (pretrained_cfg.classifier if pretrained_cfg else None) or ("fc", "classifier", "head")
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [k for k in report.missing if not k.startswith(tuple(c + "." for c in classifier))]
    if missing:
        # a features_only model loads non-strictly (its classifier is gone), so timm only logs what it could not fill
        raise UsageError(f"backbone.weights: {weights_file} does not fit timm's {model}: {len(missing)} of its tensors are not in the file (e.g. {', '.join(missing[:3])})")
    reductions = list(net.feature_info.reduction())
    missing = [s for s in PYRAMID_STRIDES if s not in reductions]
    if missing:
        raise UsageError(f"backbone.model={model} gives feature maps at strides {reductions}; fsx's FPN needs maps at strides 8, 16 and 32 (a convolutional or hierarchical model)")
    select = [len(reductions) - 1 - reductions[::-1].index(s) for s in PYRAMID_STRIDES]  # the last map of each stride
    channels = [net.feature_info.channels()[i] for i in select]
    if norm == "frozen_bn":
        net = timm.layers.freeze_batch_norm_2d(net)
    _freeze_timm_stages(net, trainable_layers)
    _check_feature_maps(net, model, select, channels, image_size)
    return FPNBackbone(net, channels, list(PYRAMID_STRIDES), out_channels, extra_levels, extra_from, select=select)


class _timm_load_report(logging.Handler):
    """Collects what timm's loader logs while a model is built: for a features_only model it
    loads weights non-strictly and only logs the keys it could not fill ("Missing keys")."""

    LOGGER = "timm.models._builder"

    def __init__(self):
        super().__init__(logging.INFO)
        self.missing: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Missing keys ("):
            self.missing = text[len("Missing keys (") : text.index(")")].split(", ")

    def __enter__(self) -> "_timm_load_report":
        logger = logging.getLogger(self.LOGGER)
        self.level, self.propagate = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        logger.propagate = False  # its "Unexpected keys" warning is the dropped classifier: expected here
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self.level)
        logger.propagate = self.propagate


def _freeze_timm_stages(net: nn.Module, trainable_layers: int) -> None:
    """Freeze from the stem up, as for the ResNets: the top `trainable_layers` of timm's
    feature levels stay trainable. A parameter belongs to the level of the first feature
    module at or after it (stem parameters to the first level)."""
    modules = [m.replace(".", "_") for m in net.feature_info.module_name()]
    levels = len(modules)
    first_trainable = max(0, levels - trainable_layers)
    stage_of_next = levels - 1
    stages: dict[str, int] = {}
    for name, _ in reversed(list(net.named_parameters())):
        flat = name.replace(".", "_")
        own = [i for i, m in enumerate(modules) if flat.startswith(m + "_")]
        if own:
            stage_of_next = own[-1]
        stages[name] = stage_of_next
    for name, p in net.named_parameters():
        if stages[name] < first_trainable:
            p.requires_grad_(False)


def _check_feature_maps(net: nn.Module, model: str, select: list[int], channels: list[int], image_size: int) -> None:
    """One forward pass at the detector's image size: a model whose maps are not channels-first
    of the widths timm reports, or that refuses the size, is a UsageError now, not a traceback
    after the data is loaded."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            maps = net(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, it cannot serve here
        raise UsageError(f"backbone.model={model} does not run on {image_size}x{image_size} images: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        net.train(was_training)
    got = [maps[i].shape[1] if maps[i].dim() == 4 else None for i in select]
    if got != channels:
        raise UsageError(f"backbone.model={model} gives maps of {got} channels where timm reports {channels} (channels-last output?); fsx needs channels-first maps")


BACKBONES = ("tiny", *_RESNETS, "mobilenet_v3", "vgg16", "efficientnet_lite0", "timm")
WEIGHT_KEYS = ("weights", "weights_file", "weights_layout", "weights_source", "weights_sha256")


def build_backbone(name: str, **kwargs) -> nn.Module:
    """The backbone `name` with its config keys. `weights_file` (+ `weights_layout`) is a
    resolved file; a bare `weights` is resolved by fsx.models.weights first."""
    weights_file, layout = kwargs.get("weights_file"), kwargs.get("weights_layout")
    if not weights_file and kwargs.get("weights") not in (None, ""):
        from fsx.models.weights import backbone_weights

        resolved = backbone_weights({"name": name, **kwargs})
        weights_file, layout = resolved.path, resolved.layout
    kwargs = {k: v for k, v in kwargs.items() if k not in WEIGHT_KEYS}
    if name == "tiny":
        allowed = {"out_channels", "widths", "extra_levels", "extra_from"}
        return tiny_backbone(**{k: v for k, v in kwargs.items() if k in allowed})
    if name == "vgg16":
        return SSDVGGBackbone(weights_file, **{k: v for k, v in kwargs.items() if k == "trainable_layers"})
    common = {k: v for k, v in kwargs.items() if k in ("out_channels", "norm", "trainable_layers", "extra_levels", "extra_from")}
    if name == "mobilenet_v3":
        return mobilenet_v3_backbone(weights_file=weights_file, **common)
    if name in _RESNETS:
        return resnet_backbone(name, weights_file=weights_file, returned_layers=tuple(kwargs.get("returned_layers", (2, 3, 4))), **common)
    if name in ("timm", "efficientnet_lite0"):
        model = "efficientnet_lite0" if name == "efficientnet_lite0" else kwargs.get("model")
        return timm_backbone(model, weights_file=weights_file, weights_layout=layout, image_size=int(kwargs.get("image_size", 224)), **common)
    raise UsageError(f"backbone.name={name}: choose one of {', '.join(BACKBONES)}")
