"""Class-head surgery and named parameter sets, for every detector family in one place.

The parameter sets are what adaptation trains (`adapt.params`) and what a meta-learner's
inner loop adapts (`algorithm.inner_params`):

| set | RetinaNet, FCOS | Faster R-CNN |
|---|---|---|
| all | every parameter that is not frozen | the same |
| heads | the dense head (class and box towers) | RPN and RoI heads |
| class_head | the class tower and its output layer | the box predictor (class scores and class-specific boxes) |

SSD's sets are RetinaNet's: heads = its multi-box head, class_head = its class convolutions.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD

from fsx.models.cosine import CosinePredictor
from fsx.models.detectors import box_predictor

PRIOR_PROBABILITY = 0.01  # a dense head's initial foreground probability (focal-loss paper)
TRAINABLE = ("all", "heads", "class_head")


def _prefixes(model: nn.Module, which: str) -> tuple[str, ...]:
    if which not in TRAINABLE:
        raise ValueError(f"unknown parameter set {which!r}; choose one of {TRAINABLE}")
    if which == "all":
        return ("",)
    if isinstance(model, FasterRCNN):
        return ("rpn.", "roi_heads.") if which == "heads" else ("roi_heads.box_predictor.",)
    if isinstance(model, (RetinaNet, FCOS, SSD)):
        return ("head.",) if which == "heads" else ("head.classification_head.",)
    raise TypeError(f"no parameter sets known for {type(model).__name__}")


def parameter_names(model: nn.Module, which: str = "all") -> list[str]:
    """Names of the parameters in set `which` that are not frozen (requires_grad at build)."""
    prefixes = _prefixes(model, which)
    return [n for n, p in model.named_parameters() if n.startswith(prefixes) and (p.requires_grad or which != "all")]


def trainable_parameters(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    names = set(parameter_names(model, which))
    return [p for n, p in model.named_parameters() if n in names]


def select_trainable(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Freeze every parameter outside set `which` (so backward skips them) and return the rest."""
    return select_named(model, parameter_names(model, which))


def select_named(model: nn.Module, names) -> list[nn.Parameter]:
    """Freeze every parameter not named in `names` and return the named ones, in model order."""
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return [p for n, p in model.named_parameters() if n in keep]


def num_classes(model: nn.Module) -> int:
    if isinstance(model, FasterRCNN):
        return model.roi_heads.box_predictor.cls_score.out_features - 1
    if isinstance(model, SSD):
        return model.head.classification_head.num_columns - 1  # softmax over background + classes
    return model.head.classification_head.num_classes


def predictor_spec(model: nn.Module) -> dict:
    """The detector keys that describe a Faster R-CNN's box predictor as it is now (its
    classifier kind and cosine scale), for the spec of a checkpoint; {} for other families."""
    if not isinstance(model, FasterRCNN):
        return {}
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, CosinePredictor):
        return {"classifier": "cos", "cosine_scale": float(predictor.scale.detach()), "learn_scale": isinstance(predictor.scale, nn.Parameter)}
    return {"classifier": "fc"}


def reset_class_head(model: nn.Module, num_classes: int, generator: torch.Generator | None = None, classifier: dict | None = None, keep: list[int | None] | None = None) -> None:
    """Replace the class output layer with a fresh one for `num_classes` classes.

    `keep` is checkpoint surgery (TFA's `randinit`): new class j starts from old class
    keep[j]'s rows (class scores, and class boxes where they are class-specific) when that is
    not None; the background rows are carried too; the other rows are fresh. A fully
    connected stage-1 row becomes a cosine prototype as it is (its bias is dropped).

    RetinaNet/FCOS: a new class-logit conv at the 0.01 foreground prior; boxes are
    class-agnostic there, so the box branch is kept. Faster R-CNN: a new box predictor
    (class scores and class-specific boxes), initialised as TFA's surgery does: N(0, 0.01)
    scores, N(0, 0.001) boxes, zero biases; of the kind `classifier` asks for
    ({"classifier": "fc" | "cos", "cosine_scale", "learn_scale"}), else of the same kind.
    """
    before = _class_rows(model)
    _fresh_class_head(model, num_classes, generator, classifier)
    if keep is not None:
        if len(keep) != num_classes:
            raise ValueError(f"keep names {len(keep)} classes for a head of {num_classes}")
        copy_class_rows(before, model, dict(enumerate(keep)), background=True)


def class_rows(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None, int, int, int]]:
    """A detached copy of the model's per-class output rows, for `copy_class_rows`."""
    return [(w.detach().clone(), None if b is None else b.detach().clone(), a, r, bg) for w, b, a, r, bg in _class_rows(model)]


def copy_class_rows(source, model: nn.Module, mapping: dict[int, int | None], background: bool) -> None:
    """Set the model's class j rows to class mapping[j]'s rows of `source` (a `class_rows`
    list of a head of the same family), and its background rows too if asked. TFA's
    `combine`: base rows from stage 1, novel rows from a novel-only predictor."""
    with torch.no_grad():
        for (old_w, old_b, anchors, rows, slots), (new_w, new_b, _, _, _) in zip(source, _class_rows(model)):
            old_k = old_w.shape[0] // anchors // rows - slots
            new_k = new_w.shape[0] // anchors // rows - slots
            pairs = [(b, b) for b in range(slots if background else 0)] + [(slots + j, slots + k) for j, k in mapping.items() if k is not None]
            for a in range(anchors):
                for new_slot, old_slot in pairs:
                    n0 = (a * (new_k + slots) + new_slot) * rows
                    o0 = (a * (old_k + slots) + old_slot) * rows
                    new_w[n0 : n0 + rows] = old_w[o0 : o0 + rows].reshape(new_w[n0 : n0 + rows].shape)
                    if new_b is not None and old_b is not None:
                        new_b[n0 : n0 + rows] = old_b[o0 : o0 + rows]


def _class_rows(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None, int, int, int]]:
    """The layers whose output rows are per class: (weight, bias, anchors, rows per class,
    background slots) with output row (a * (K + background) + slot) * rows + i."""
    if isinstance(model, FasterRCNN):
        p = model.roi_heads.box_predictor
        return [(p.cls_score.weight, p.cls_score.bias, 1, 1, 1), (p.bbox_pred.weight, p.bbox_pred.bias, 1, 4, 1)]
    if isinstance(model, SSD):
        head = model.head.classification_head
        layers = [level[-1] if isinstance(level, nn.Sequential) else level for level in head.module_list]
        return [(c.weight, c.bias, c.out_channels // head.num_columns, 1, 1) for c in layers]
    head = model.head.classification_head
    return [(head.cls_logits.weight, head.cls_logits.bias, head.num_anchors, 1, 0)]


def _fresh_class_head(model: nn.Module, num_classes: int, generator: torch.Generator | None, classifier: dict | None) -> None:
    if isinstance(model, FasterRCNN):
        old = model.roi_heads.box_predictor
        new = box_predictor(old.cls_score.in_features, num_classes, classifier or predictor_spec(model))
        with torch.no_grad():
            new.cls_score.weight.normal_(0.0, 0.01, generator=generator)
            new.bbox_pred.weight.normal_(0.0, 0.001, generator=generator)
            if new.cls_score.bias is not None:
                new.cls_score.bias.zero_()
            new.bbox_pred.bias.zero_()
        model.roi_heads.box_predictor = new.to(old.cls_score.weight.device)
        return
    if isinstance(model, SSD):  # SSD: a 3x3 conv per level; SSDlite: depthwise block + 1x1 conv
        head = model.head.classification_head
        for i, level in enumerate(head.module_list):
            old = level[-1] if isinstance(level, nn.Sequential) else level
            new = nn.Conv2d(old.in_channels, old.out_channels // head.num_columns * (num_classes + 1), old.kernel_size, old.stride, old.padding)
            with torch.no_grad():
                new.weight.normal_(0.0, 0.01, generator=generator)
                new.bias.zero_()
            new = new.to(old.weight.device, memory_format=torch.channels_last)
            if isinstance(level, nn.Sequential):
                level[-1] = new
            else:
                head.module_list[i] = new
        head.num_columns = num_classes + 1
        return
    head = model.head.classification_head
    old = head.cls_logits
    new = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
    with torch.no_grad():
        new.weight.normal_(0.0, 0.01, generator=generator)
        new.bias.fill_(-math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
    head.cls_logits = new.to(old.weight.device, memory_format=torch.channels_last)
    head.num_classes = num_classes


@contextlib.contextmanager
def only_class_rows(model: nn.Module, rows: list[int]) -> Iterator[None]:
    """Within the block the model predicts only the classes of head rows `rows`, in that
    order: task label j is the head's class rows[j] (a fixed-slot meta-learner's task,
    PROTOCOLS 10.2's "global head + masking"). Forward hooks narrow the class outputs, so
    losses, gradients (zero for the other rows) and `torch.func.functional_call` all see an
    M-class head, and the weights keep one row per base class.

    RetinaNet/FCOS: the class-logit channels of the rows (per anchor); SSD: the background
    column and the rows' columns of every level; Faster R-CNN: the box predictor's background
    and rows' scores and their class-specific boxes."""
    handles: list = []
    restore: list[tuple[object, str, int]] = []
    total = num_classes(model)
    bad = [r for r in rows if not 0 <= r < total]
    if bad or len(set(rows)) != len(rows):
        raise ValueError(f"rows {rows} must be distinct head rows of a {total}-class head")

    def narrow(module: nn.Module, index: torch.Tensor, dim: int = 1) -> None:
        def hook(_module, _args, output):
            return output.index_select(dim, index.to(output.device))

        handles.append(module.register_forward_hook(hook))

    if isinstance(model, FasterRCNN):
        keep = torch.tensor([0] + [r + 1 for r in rows])  # background first, as the predictor has it
        boxes = (keep[:, None] * 4 + torch.arange(4)).reshape(-1)

        def predictor_hook(_module, _args, output):
            scores, deltas = output
            if deltas.shape[-1] == 4 * (total + 1):  # class-specific boxes
                deltas = deltas.index_select(1, boxes.to(deltas.device))
            return scores.index_select(1, keep.to(scores.device)), deltas

        handles.append(model.roi_heads.box_predictor.register_forward_hook(predictor_hook))
    elif isinstance(model, SSD):
        head = model.head.classification_head
        columns = head.num_columns
        keep = [0] + [r + 1 for r in rows]
        for level in head.module_list:
            conv = level[-1] if isinstance(level, nn.Sequential) else level
            anchors = conv.out_channels // columns
            narrow(conv, torch.tensor([a * columns + c for a in range(anchors) for c in keep]))
        restore.append((head, "num_columns", columns))
        head.num_columns = len(rows) + 1
    else:
        head = model.head.classification_head
        narrow(head.cls_logits, torch.tensor([a * total + r for a in range(head.num_anchors) for r in rows]))
        restore.append((head, "num_classes", total))
        head.num_classes = len(rows)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for obj, attr, value in restore:
            setattr(obj, attr, value)


def frozen_norm_layers(model: nn.Module) -> int:
    """How many frozen batch-norm layers the model has (torchvision's FrozenBatchNorm2d, timm's
    FrozenBatchNorm2d and FrozenBatchNormAct2d): their affine terms are buffers, not
    parameters, so no optimiser (and no meta-learner's inner loop) ever changes them."""
    return sum(type(m).__name__.startswith("FrozenBatchNorm") for m in model.modules())


def upstream_of_roi_align(model: nn.Module, names: list[str]) -> list[str]:
    """The parameters among `names` whose gradient flows back through a compiled RoIAlign (a
    two-stage detector's backbone; the RPN's proposals are detached, so its head is not among
    them): torchvision's op has no double backward, so second-order meta-gradients cannot
    pass through them. `detector.roi_align=grid` pools with differentiable ops instead."""
    from fsx.models.roi_align import GridRoIAlign

    if not isinstance(model, FasterRCNN) or isinstance(model.roi_heads.box_roi_pool, GridRoIAlign):
        return []
    return [n for n in names if not n.startswith(("rpn.", "roi_heads."))]
