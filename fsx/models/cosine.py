"""TFA's cosine-similarity box predictor for Faster R-CNN (PROTOCOLS 4.6).

Class scores are `scale` times the cosine between the RoI feature and one weight row per
class, background included (no bias; features and rows L2-normalised on every forward, eps
1e-5); box regression is an ordinary biased linear layer on the raw features. The scale is
20, fixed, or a parameter that starts at 20 (`learn_scale`). It is a drop-in for
torchvision's FastRCNNPredictor: forward(x) -> (class scores, box deltas).

TFA's code renormalises the weight rows in place (`weight.data`) before each forward, so its
gradient ignores the normalisation; here the normalisation is part of the graph (no
parameter changes inside forward, which torch.func's meta-gradients need). The scores are
the same; the gradient is the one of the function actually computed.
"""

from __future__ import annotations

import torch
from torch import nn


class CosinePredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, scale: float = 20.0, learn_scale: bool = False):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes, bias=False)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        features = x / (x.norm(dim=1, keepdim=True) + 1e-5)
        weight = self.cls_score.weight
        rows = weight / (weight.norm(dim=1, keepdim=True) + 1e-5)
        # fp32 out, as fsx's other heads (detectors._float_outputs): scores and box decoding stay fp32 under bf16 autocast
        return (self.scale * features @ rows.t()).float(), self.bbox_pred(x).float()
