"""Standard ("Normal") pretraining: ordinary detection training on all base classes at once
(RT Table 6.3): Adam with weight decay, the learning rate divided by 10 at 60% and 80% of
the budget. A short linear warm-up keeps the first steps of a fresh RetinaNet stable."""

from __future__ import annotations

import torch
from torch import nn

from fsx.algorithms.base import Algorithm, PretrainData, StepHook
from fsx.engine import distributed
from fsx.engine.loop import infinite_batches, optimizer_step, train, warmup_step_schedule
from fsx.errors import UsageError


class Standard(Algorithm):
    name = "standard"

    def __init__(self, name: str = "standard", lr: float = 1e-4, weight_decay: float = 1e-4, batch_size: int = 16, decay_at: list[float] = (0.6, 0.8), gamma: float = 0.1, warmup: int = 100, clip_norm: float | None = 10.0):
        if batch_size < 1:
            raise UsageError(f"algorithm.batch_size={batch_size} must be at least 1")
        if not lr > 0:
            raise UsageError(f"algorithm.lr={lr} must be positive")
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.decay_at, self.gamma, self.warmup, self.clip_norm = list(decay_at), gamma, warmup, clip_norm
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler = None
        self._pending_state: dict | None = None

    def pretrain(self, model: nn.Module, data: PretrainData, steps: int, device: torch.device, *, seed: int, amp: bool = True, start_step: int = 0, on_step: StepHook | None = None, sync_every: int = 1) -> int:
        self._optimizer = self.make_optimizer([p for p in model.parameters() if p.requires_grad])
        self._scheduler = warmup_step_schedule(self._optimizer, steps, min(self.warmup, max(steps // 5, 1)), self.decay_at, self.gamma)
        if self._pending_state:
            self._optimizer.load_state_dict(self._pending_state["optimizer"])
            self._scheduler.load_state_dict(self._pending_state["scheduler"])
        # Several processes: DDP averages the gradients during backward, each process draws its
        # share of every global batch (same order, every world_size-th image), so one step sees
        # effective_batch images; the logged losses are the mean over the processes.
        batches = infinite_batches(
            data.dataset, self.batch_size, seed, skip=start_step, rank=distributed.rank(), world_size=distributed.world_size(), workers=data.workers, pin_memory=data.pin_memory
        )
        trained = distributed.data_parallel(model, device)
        step = optimizer_step(trained, self._optimizer, device, amp, self.clip_norm)
        if distributed.is_distributed():
            step = distributed.averaged_losses(step, device)
        return train(trained, step, batches, steps, scheduler=self._scheduler, start_step=start_step, desc=f"pretrain {self.name}", on_step=on_step, show_progress=distributed.is_main(), sync_every=sync_every)

    @property
    def effective_batch(self) -> int:
        """Images per optimiser step over all the processes of this run."""
        return self.batch_size * distributed.world_size()

    def distributed_plan(self, processes: int) -> dict:
        return {
            "batch_per_process": self.batch_size,
            "effective_batch": self.batch_size * processes,
            "lr": self.lr,
            "lr_scaling": "none: the configured lr at any world size (more processes = a larger effective batch at the same lr)",
        }

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def state_dict(self) -> dict:
        if self._optimizer is None:
            return {}
        return {"optimizer": self._optimizer.state_dict(), "scheduler": self._scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._pending_state = state or None
