"""Class-head surgery and which parameters a phase trains."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.detection import RetinaNet

PRIOR_PROBABILITY = 0.01  # RetinaNet's initial foreground probability (focal-loss paper)


def reset_class_head(model: RetinaNet, num_classes: int, generator: torch.Generator | None = None) -> None:
    """Replace the class-confidence output layer with a fresh one for `num_classes` classes.

    Box regression and the shared towers are kept: boxes are class-agnostic in RetinaNet.
    """
    head = model.head.classification_head
    old = head.cls_logits
    num_anchors = head.num_anchors
    new = nn.Conv2d(old.in_channels, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
    with torch.no_grad():
        new.weight.normal_(0.0, 0.01, generator=generator)
        new.bias.fill_(-math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
    head.cls_logits = new.to(old.weight.device)
    head.num_classes = num_classes


def num_classes(model: RetinaNet) -> int:
    return model.head.classification_head.num_classes


TRAINABLE = ("all", "heads", "class_head")


def trainable_parameters(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """all: every parameter that is not frozen; heads: the detection head (class and box
    towers); class_head: the class tower and its output layer only."""
    if which == "all":
        return [p for p in model.parameters() if p.requires_grad]
    if which == "heads":
        return list(model.head.parameters())
    if which == "class_head":
        return list(model.head.classification_head.parameters())
    raise ValueError(f"unknown parameter set {which!r}; choose one of {TRAINABLE}")


def select_trainable(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Freeze every parameter outside `which` (so backward skips them) and return the rest."""
    params = trainable_parameters(model, which)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params
