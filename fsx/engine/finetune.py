"""Adaptation: fine-tune a detector on a support set for a fixed number of steps, with the
thesis's early stopping and rollback, calling back at each evaluation milestone.

Used by `fsx adapt` (one milestone: the end) and `fsx eval` (every milestone of the protocol).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn

from fsx.engine.early_stopping import EarlyStopping
from fsx.engine.loop import infinite_batches, train
from fsx.models.heads import select_trainable


@dataclasses.dataclass
class AdaptSettings:
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    beta1: float = 0.9
    params: str = "all"  # all | heads | class_head
    clip_norm: float | None = 10.0
    early_stopping: bool = True
    window: int = 30
    factor: float = 2.0


@dataclasses.dataclass
class AdaptResult:
    steps_run: int
    stopped_at: int | None  # step where early stopping fired, None if it did not
    rolled_back_to: int | None  # step whose weights were restored
    final_loss: float | None


def set_train_mode(model: nn.Module, params: str) -> None:
    """Train mode for what is trained; a frozen backbone keeps its BN statistics."""
    model.train()
    if params != "all":
        model.backbone.eval()


def adapt(
    model: nn.Module,
    support,
    settings: AdaptSettings,
    device: torch.device,
    *,
    seed: int = 0,
    amp: bool = True,
    milestones: Sequence[int] = (),
    on_milestone: Callable[[int, nn.Module], None] | None = None,
    desc: str = "adapt",
) -> AdaptResult:
    """Fine-tune `model` in place on `support` (a DetectionDataset).

    `on_milestone(step, model)` runs at each milestone <= settings.steps (0 = before any
    step). When early stopping fires, the weights roll back and every remaining milestone
    is scored on the restored weights, as the thesis's fixed-step protocol does.
    """
    params = select_trainable(model, settings.params)
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(settings.beta1, 0.999), weight_decay=settings.weight_decay)
    pending = sorted({m for m in milestones if 0 <= m <= settings.steps})
    stopper = EarlyStopping(settings.window, settings.factor) if settings.early_stopping else None
    if stopper is not None:
        stopper.begin(model)
    last_loss: list[float] = []

    def fire_milestones(up_to: int) -> None:
        while pending and pending[0] <= up_to:
            step = pending.pop(0)
            if on_milestone is not None:
                on_milestone(step, model)
                set_train_mode(model, settings.params)

    fire_milestones(0)
    set_train_mode(model, settings.params)

    def on_step(step: int, losses: dict[str, float]) -> bool:
        last_loss[:] = [losses["loss"]]
        if stopper is not None and stopper.update(step, losses["loss"], model):
            return True
        fire_milestones(step)
        return False

    steps_run = 0
    if settings.steps > 0:
        batches = infinite_batches(support, settings.batch_size, seed)
        steps_run = train(model, optimizer, batches, settings.steps, device, amp=amp, clip_norm=settings.clip_norm, desc=desc, on_step=on_step, stop_on_nonfinite=stopper is None, train_mode=lambda m: set_train_mode(m, settings.params))
    rolled_back_to = None
    if stopper is not None and stopper.fired:
        rolled_back_to = stopper.rollback(model)
    fire_milestones(settings.steps)  # milestones after an early stop see the restored weights
    model.eval()
    return AdaptResult(steps_run, stopper.stopped_at if stopper else None, rolled_back_to, last_loss[0] if last_loss else None)
