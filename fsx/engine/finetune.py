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
from fsx.engine.loop import infinite_batches, optimizer_step, train
from fsx.models.heads import select_named, select_trainable

OPTIMIZERS = ("adam", "sgd")


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
    optimizer: str = "adam"  # adam | sgd (steps of size lr, as MAML's inner loop; with momentum, TFA's)
    momentum: float = 0.0  # sgd only
    # Meta-SGD's learned step sizes (parameter name -> rate tensor): when given, adaptation
    # takes plain gradient steps of these sizes on exactly these parameters
    learned_rates: dict[str, torch.Tensor] | None = None
    # where these settings came from: "common" (the adapt.* keys), or the checkpoint's recipe
    # ("reptile", "tfa stage 2", ...) and which keys the command line set over it
    recipe: str = "common"


class LearnedRateSGD(torch.optim.Optimizer):
    """θ ← θ − α ⊙ ∇θ with a fixed step-size tensor α per parameter (Meta-SGD's inner loop)."""

    def __init__(self, params: list[nn.Parameter], rates: list[torch.Tensor]):
        super().__init__([{"params": [p], "rate": r.to(p.device)} for p, r in zip(params, rates)], {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (p,) = group["params"]
            if p.grad is not None:
                p.sub_(group["rate"] * p.grad)


def _rate_for(rate: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The learned rate if it fits the parameter; its mean where the parameter was resized
    (a class head reset for a task with another number of classes)."""
    try:
        if torch.broadcast_shapes(rate.shape, param.shape) == param.shape:
            return rate
    except RuntimeError:
        pass
    return rate.mean()


def adaptation_optimizer(model: nn.Module, settings: AdaptSettings) -> tuple[torch.optim.Optimizer, str]:
    """The optimiser adaptation uses, and the parameter set it trains (for BN modes)."""
    if settings.learned_rates:
        own = dict(model.named_parameters())
        names = [n for n in settings.learned_rates if n in own]
        params = select_named(model, names)
        # a class head resized for the task no longer matches its per-element rates: use their mean
        rates = [_rate_for(settings.learned_rates[n], own[n]) for n in names]
        which = "all" if any(n.startswith("backbone.") for n in names) else "heads"
        return LearnedRateSGD(params, rates), which
    params = select_trainable(model, settings.params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay), settings.params
    return torch.optim.Adam(params, lr=settings.lr, betas=(settings.beta1, 0.999), weight_decay=settings.weight_decay), settings.params


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
    optimizer, trained = adaptation_optimizer(model, settings)
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
                set_train_mode(model, trained)

    fire_milestones(0)
    set_train_mode(model, trained)

    def on_step(step: int, losses: dict[str, float]) -> bool:
        last_loss[:] = [losses["loss"]]
        if stopper is not None and stopper.update(step, losses["loss"], model):
            return True
        fire_milestones(step)
        return False

    steps_run = 0
    if settings.steps > 0:
        batches = infinite_batches(support, settings.batch_size, seed)
        steps_run = train(model, optimizer_step(model, optimizer, device, amp, settings.clip_norm), batches, settings.steps, desc=desc, on_step=on_step, stop_on_nonfinite=stopper is None, train_mode=lambda m: set_train_mode(m, trained))
    rolled_back_to = None
    if stopper is not None and stopper.fired:
        rolled_back_to = stopper.rollback(model)
    fire_milestones(settings.steps)  # milestones after an early stop see the restored weights
    model.eval()
    return AdaptResult(steps_run, stopper.stopped_at if stopper else None, rolled_back_to, last_loss[0] if last_loss else None)
