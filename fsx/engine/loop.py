"""The optimisation loop: batches in, optimiser steps out. Reads top to bottom."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn

from fsx.data.coco import collate
from fsx.engine.device import autocast
from fsx.engine.interrupt import at_step_boundaries, check
from fsx.progress import progress


def batch_keys(size: int, batch_size: int, seed: int, skip: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[list[tuple[int, int]]]:
    """The keys of `infinite_batches`'s batches: lists of (dataset index, draw), where draw
    numbers the stream's items from 0 (epoch x size + position), so that an item's random
    augmentation depends on its place in the stream, not on which process loads it."""
    generator = torch.Generator().manual_seed(seed)
    if size < world_size:
        raise ValueError(f"{size} images cannot feed {world_size} processes")
    batch_size = min(batch_size * world_size, size)
    epoch = 0
    while True:
        order = torch.randperm(size, generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if skip > 0:
                skip -= 1
                continue
            yield [(order[p], epoch * size + p) for p in range(start + rank, start + batch_size, world_size)]
        epoch += 1


class _Keys(torch.utils.data.Sampler):
    """batch_keys as a DataLoader batch sampler (infinite, so it has no length)."""

    def __init__(self, keys: Iterator[list[tuple[int, int]]]):
        self.keys = keys

    def __iter__(self):
        return self.keys


def infinite_batches(dataset, batch_size: int, seed: int, skip: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0, pin_memory: bool = False) -> Iterator[tuple[list, list]]:
    """Shuffled batches forever, a new permutation each epoch, reproducible from `seed`.

    A batch never repeats an image: with fewer images than `batch_size` it holds them all.
    `skip` batches are passed over without loading them, so a resumed run at step `skip`
    sees exactly the batches the uninterrupted run saw.

    With `world_size` processes, each draws the same global batch of world_size x batch_size
    images (the same seed, the same order) and takes every world_size-th image of it from
    position `rank`: together they see what one process with the global batch would.

    `workers` > 0 decodes and augments in that many DataLoader worker processes (persistent,
    prefetching, pinned memory when asked) while the model trains; the batches are the same
    as with 0, which builds them in this process between steps. A dataset that takes
    (index, draw) keys (`DetectionDataset`) augments each item from its draw number, so the
    augmentation is the same too.
    """
    keys = batch_keys(len(dataset), batch_size, seed, skip, rank, world_size)
    keyed = getattr(dataset, "takes_draw_keys", False)
    if workers <= 0:
        for batch in keys:
            yield collate([dataset[k if keyed else k[0]] for k in batch])
        return
    if not keyed:
        keys = ([k[0] for k in batch] for batch in keys)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=_Keys(keys), num_workers=workers, collate_fn=collate, persistent_workers=True, pin_memory=pin_memory, prefetch_factor=4)
    yield from loader


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images, targets, device: torch.device, amp: bool = True, clip_norm: float | None = None) -> dict[str, torch.Tensor]:
    images, targets = to_device(images, targets, device)
    with autocast(device, amp):
        losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    # the losses stay on the device: reading them back every step would make the host wait for
    # the device every step; `train` reads them every sync_every steps
    return {**{k: v.detach() for k, v in losses.items()}, "loss": loss.detach()}


def warmup_step_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int, decay_at: list[float], gamma: float = 0.1):
    """Linear warm-up over `warmup` steps, then x `gamma` at each fraction of `steps` in `decay_at`
    (RT Table 6.3's 60k/80k of 100k becomes decay_at=[0.6, 0.8] at any budget)."""
    milestones = [int(round(f * steps)) for f in decay_at]

    def factor(step: int) -> float:
        w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return w * gamma ** sum(step >= m for m in milestones)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


Losses = dict[str, "float | torch.Tensor"]
StepFn = Callable[[object], Losses]


def on_host(losses: Losses) -> dict[str, float]:
    """Losses as Python floats (reads device tensors back, waiting for the device)."""
    return {k: float(v) for k, v in losses.items()}


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool = True, clip_norm: float | None = None) -> StepFn:
    """The step function of plain training: one (images, targets) batch -> one optimiser step."""
    return lambda batch: train_step(model, optimizer, *batch, device, amp, clip_norm)


def train(
    model: nn.Module,
    step_fn: StepFn,
    batches: Iterator,
    steps: int,
    *,
    scheduler=None,
    start_step: int = 0,
    desc: str = "train",
    on_step: Callable[[int, Losses], bool | None] | None = None,
    stop_on_nonfinite: bool = True,
    train_mode: Callable[[nn.Module], None] | None = None,
    show_progress: bool = True,
    sync_every: int = 1,
) -> int:
    """Run steps start_step+1..steps: each takes the next item of `batches` and hands it to
    `step_fn`, which updates the model and returns its losses. Every algorithm uses this loop:
    plain training steps once per batch, a meta-learner runs a whole meta-iteration per item.

    The losses are read back to the host every `sync_every` steps and at the last step
    (`train.log_every` in pretraining), so the device is not made to wait each step;
    `on_step(step, losses)` gets floats at those steps and the step function's own values
    (device tensors for plain training) between them, and may return True to stop. Returns
    the last step run. A non-finite loss (seen at a read-back) stops training with a clear
    error, unless `stop_on_nonfinite` is off because the caller handles divergence itself
    (adaptation rolls back). `train_mode(model)` replaces `model.train()` when parts must stay
    in eval mode.
    """
    train_mode(model) if train_mode is not None else model.train()
    bar = progress(total=steps - start_step, desc=desc, enabled=show_progress)
    step = start_step
    with at_step_boundaries():  # Ctrl-C / SIGTERM stop between steps, never inside one
        try:
            for step in range(start_step + 1, steps + 1):
                losses = step_fn(next(batches))
                if step % sync_every == 0 or step == steps:
                    losses = on_host(losses)
                    if stop_on_nonfinite and not math.isfinite(losses["loss"]):
                        raise FloatingPointError(f"{desc}: loss became {losses['loss']} at step {step}; lower the learning rate")
                    bar.set_postfix_str(f"loss {losses['loss']:.3f}")
                if scheduler is not None:
                    scheduler.step()
                bar.update()
                if on_step is not None and on_step(step, losses):
                    break
                check()  # a signal that arrived during this step stops here: step `step` is complete
        finally:
            bar.close()
    return step
