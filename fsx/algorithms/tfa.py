"""TFA stage 1 (TFA thesis §7.2, PROTOCOLS 4.6): Faster R-CNN trained on the base classes
with SGD (momentum 0.9, weight decay 1e-4, LR 0.02 at batch 16 scaled linearly to the real
batch), a linear warm-up and a step schedule, and an ordinary FC classifier.

Stage 2 is adaptation: a TFA checkpoint carries its recipe (`adapt_recipe`), which `fsx
adapt` and `fsx eval` follow unless told otherwise (`adapt.recipe=none`, or any `adapt.*`
key set on the command line): a fresh box predictor for the task's classes (TFA's cosine
classifier by default), everything else frozen (backbone, FPN, RPN, RoI feature head), SGD
with momentum at the stage-1 LR / 20. `adapt.params=all` with the same recipe is TFA's
"FRCN+ft-full" baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from fsx.algorithms.standard import Standard
from fsx.errors import UsageError
from fsx.models.detectors import CLASSIFIERS


class TFA(Standard):
    name = "tfa"
    detectors = ("fasterrcnn",)  # what this algorithm is defined for

    def __init__(
        self,
        name: str = "tfa",
        lr: float = 0.02,
        reference_batch: int = 16,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        batch_size: int = 16,
        decay_at: list[float] = (0.667, 0.889),
        gamma: float = 0.1,
        warmup: int = 100,
        clip_norm: float | None = None,
        classifier: str = "cos",
        cosine_scale: float = 20.0,
        learn_scale: bool = False,
        finetune_lr_factor: float = 0.05,
    ):
        if classifier not in CLASSIFIERS:
            raise UsageError(f"algorithm.classifier={classifier}: choose one of {', '.join(CLASSIFIERS)}")
        if reference_batch < 1 or not finetune_lr_factor > 0 or not 0 <= momentum < 1:
            raise UsageError("algorithm.reference_batch must be >= 1, finetune_lr_factor > 0 and 0 <= momentum < 1")
        super().__init__(lr=lr, weight_decay=weight_decay, batch_size=batch_size, decay_at=decay_at, gamma=gamma, warmup=warmup, clip_norm=clip_norm)
        self.name = name
        self.reference_batch, self.momentum = reference_batch, momentum
        self.classifier, self.cosine_scale, self.learn_scale = classifier, cosine_scale, learn_scale
        self.finetune_lr_factor = finetune_lr_factor

    @property
    def effective_lr(self) -> float:
        """The linear scaling rule: LR x real batch / the batch the LR was tuned for. The real
        batch is the effective one (batch_size x processes), so 2 processes of batch 8 train,
        and write the stage-2 recipe, exactly as 1 process of batch 16."""
        return self.lr * self.effective_batch / self.reference_batch

    def distributed_plan(self, processes: int) -> dict:
        effective = self.batch_size * processes
        return {
            **super().distributed_plan(processes),
            "lr": self.lr * effective / self.reference_batch,
            "lr_scaling": f"linear: lr {self.lr:g} x effective batch {effective} / reference_batch {self.reference_batch}",
        }

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.effective_lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def checkpoint_extras(self) -> dict:
        recipe = {
            "params": "class_head",
            "optimizer": "sgd",
            "momentum": self.momentum,
            "lr": self.effective_lr * self.finetune_lr_factor,
            "weight_decay": self.weight_decay,
            "beta1": 0.9,
            "classifier": {"classifier": self.classifier, "cosine_scale": self.cosine_scale, "learn_scale": self.learn_scale},
            "from": "tfa stage 2",
        }
        return {**super().checkpoint_extras(), "adapt_recipe": recipe}

    def describe(self) -> dict[str, str]:
        return {
            "optimizer": f"sgd momentum {self.momentum}, weight decay {self.weight_decay}",
            "effective_batch": str(self.effective_batch),
            "effective_lr": f"{self.effective_lr:g} (lr {self.lr:g} at batch {self.reference_batch}, scaled linearly)",
            "stage2": f"box predictor only ({self.classifier} classifier), sgd lr {self.effective_lr * self.finetune_lr_factor:g}",
        }
