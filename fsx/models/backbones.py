"""Feature-pyramid backbones. Each returns an `FPNBackbone`: an ordered dict of feature maps
with `out_channels` and the `strides` of its levels (the detector sizes anchors from them).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from fsx.errors import UsageError


class FPNBackbone(nn.Module):
    def __init__(self, body: nn.Module, return_layers: dict[str, str], in_channels: list[int], strides: list[int], out_channels: int, extra_levels: int = 0):
        super().__init__()
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        extra = None
        if extra_levels:
            if extra_levels != 2:
                raise UsageError(f"backbone.extra_levels={extra_levels}: only 0 or 2 (P6 and P7) are supported")
            extra = LastLevelP6P7(in_channels[-1], out_channels)  # from C5, as in the RetinaNet paper
            strides = strides + [strides[-1] * 2, strides[-1] * 4]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.strides = strides

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


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


def tiny_backbone(out_channels: int = 64, widths: tuple[int, ...] = (16, 32, 64, 128, 128), extra_levels: int = 0) -> FPNBackbone:
    return FPNBackbone(TinyBody(tuple(widths)), {"c3": "0", "c4": "1", "c5": "2"}, list(widths[2:]), [8, 16, 32], out_channels, extra_levels)


_RESNETS = {
    "resnet18": (resnet18, [128, 256, 512]),
    "resnet34": (resnet34, [128, 256, 512]),
    "resnet50": (resnet50, [512, 1024, 2048]),
    "resnet101": (resnet101, [512, 1024, 2048]),
}
HEADS_OF_CLASSIFIERS = ("fc.", "classifier.")  # ImageNet heads in torchvision's state dicts: not loaded


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local ImageNet state dict (torchvision's layout). Never downloads anything."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"backbone.weights={path}: no such file (fsx never downloads weights; give a local state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UsageError(f"backbone.weights={path} is not a readable PyTorch state dict: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"backbone.weights={path} holds a {type(state).__name__}, not a state dict (parameter names -> tensors)")
    state = {k: v for k, v in state.items() if not k.startswith(HEADS_OF_CLASSIFIERS)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(HEADS_OF_CLASSIFIERS)]
    if missing or unexpected:
        raise UsageError(
            f"backbone.weights={path} does not fit this backbone: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


def _check_norm_and_layers(norm: str, trainable_layers: int, weights: str | None) -> str:
    """The norm to build (auto: frozen over loaded weights, as torchvision does; else bn)."""
    if norm not in ("auto", "bn", "frozen_bn"):
        raise UsageError(f"backbone.norm={norm}: choose auto, bn or frozen_bn")
    if not 0 <= trainable_layers <= 5:
        raise UsageError(f"backbone.trainable_layers={trainable_layers}: choose 0..5")
    if norm == "auto":
        return "frozen_bn" if weights else "bn"
    return norm


def resnet_backbone(name: str, out_channels: int = 128, weights: str | None = None, norm: str = "auto", trainable_layers: int = 5, extra_levels: int = 0) -> FPNBackbone:
    norm = _check_norm_and_layers(norm, trainable_layers, weights)
    factory, in_channels = _RESNETS[name]
    body = factory(weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
    if weights:
        load_weights(body, weights)
    # Freeze from the stem up, as torchvision's resnet_fpn_backbone does, but explicitly.
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for pname, p in body.named_parameters():
        if not any(pname.startswith(t) for t in trainable) and not (trainable_layers == 5 and pname.startswith("bn1")):
            p.requires_grad_(False)
    return FPNBackbone(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels, [8, 16, 32], out_channels, extra_levels)


# MobileNetV3-Large's feature blocks by output stride: 2 (stem, 0-1), 4 (2-3), 8 (4-6),
# 16 (7-12), 32 (13-16); the FPN reads the last block of strides 8, 16 and 32.
_MOBILENET_STAGES = [range(0, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17)]


def mobilenet_v3_backbone(out_channels: int = 128, weights: str | None = None, norm: str = "auto", trainable_layers: int = 5, extra_levels: int = 0) -> FPNBackbone:
    """MobileNetV3-Large with an FPN on strides 8/16/32 (the SSDlite-style light backbone)."""
    norm = _check_norm_and_layers(norm, trainable_layers, weights)
    batch_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's settings for this net
    net = mobilenet_v3_large(weights=None, norm_layer=partial(FrozenBatchNorm2d, eps=0.001) if norm == "frozen_bn" else batch_norm)
    if weights:
        load_weights(net, weights)
    frozen_blocks = [b for stage in _MOBILENET_STAGES[: 5 - trainable_layers] for b in stage]
    for b in frozen_blocks:
        for p in net.features[b].parameters():
            p.requires_grad_(False)
    return FPNBackbone(net.features, {"6": "0", "12": "1", "16": "2"}, [40, 112, 960], [8, 16, 32], out_channels, extra_levels)


class SSDVGGBackbone(nn.Module):
    """SSD300's base (PROTOCOLS 5.3): VGG16 to conv5_3 with fc6/fc7 as dilated convolutions
    and SSD's four extra blocks (torchvision's extractor), six maps of 512, 1024, 512, 256,
    256, 256 channels at 300 px. Only detector=ssd reads maps of different widths."""

    def __init__(self, weights: str | None = None, trainable_layers: int = 5):
        super().__init__()
        from torchvision.models import vgg16
        from torchvision.models.detection.ssd import _vgg_extractor

        if not 0 <= trainable_layers <= 5:
            raise UsageError(f"backbone.trainable_layers={trainable_layers}: choose 0..5")
        vgg = vgg16(weights=None)
        if weights:
            load_weights(vgg, weights)
        self.body = _vgg_extractor(vgg, False, trainable_layers)
        self.feature_channels = [512, 1024, 512, 256, 256, 256]
        self.strides = [8, 16, 32, 64, 100, 300]
        self.image_size = 300

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.body(x)


BACKBONES = ("tiny", *_RESNETS, "mobilenet_v3", "vgg16")


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name == "tiny":
        allowed = {"out_channels", "widths", "extra_levels"}
        return tiny_backbone(**{k: v for k, v in kwargs.items() if k in allowed})
    if name == "mobilenet_v3":
        return mobilenet_v3_backbone(**kwargs)
    if name in _RESNETS:
        return resnet_backbone(name, **kwargs)
    if name == "vgg16":
        return SSDVGGBackbone(**{k: v for k, v in kwargs.items() if k in ("weights", "trainable_layers")})
    raise UsageError(f"backbone.name={name}: choose one of {', '.join(BACKBONES)}")
