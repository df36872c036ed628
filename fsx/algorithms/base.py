"""What every pretraining algorithm receives and promises."""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import torch
from torch import nn

from fsx.data.coco import CocoSet
from fsx.errors import UsageError


@dataclasses.dataclass
class PretrainData:
    """The base-class training data of a fold. Episodic algorithms sample tasks from `source`
    over `class_ids`; plain training uses all of it at once (`dataset`), loaded by `workers`
    DataLoader processes (0: in the training process) into pinned memory when `pin_memory`."""

    source: CocoSet
    class_ids: list[int]
    class_names: list[str]
    dataset: torch.utils.data.Dataset
    workers: int = 0
    pin_memory: bool = False


# on_step(step, losses) -> True to stop early (e.g. a checkpoint hook or a time limit); the
# losses are floats at read-back steps, device tensors between (fsx.engine.loop.train)
StepHook = Callable[[int, dict], bool | None]


class Algorithm(abc.ABC):
    name: str = "algorithm"
    # a meta-learner trains on sampled tasks (episodes); with head=shuffled its head has one
    # output per task class (ways), kept at adaptation; plain training, and a meta-learner with
    # head=fixed, train one output per base class, replaced at adaptation
    episodic: bool = False
    task_sized_head: bool = False
    ways: int = 0

    def passes_per_step(self) -> int:
        """Forward-backward passes of one `pretrain` step (a meta-iteration for meta-learners):
        the unit of `train.passes`, which matches compute across algorithms."""
        return 1

    def num_outputs(self, data: PretrainData) -> int:
        """How many classes the model's head predicts during pretraining."""
        return self.ways if self.task_sized_head else len(data.class_ids)

    def checkpoint_extras(self) -> dict:
        """What a final checkpoint carries beside the weights for adaptation to use:
        `adapt_head` (keep | reset), the `adapt_recipe` it was trained to adapt with (the
        adapt.* keys it sets, and `from`, who set them) and, for Meta-SGD, the learned
        `inner_lr` per parameter."""
        return {"adapt_head": "keep" if self.task_sized_head else "reset"}

    def describe(self) -> dict[str, str]:
        """Policies worth a line in the MLflow record (logged as params `algorithm.<key>`)."""
        return {}

    def distributed_plan(self, processes: int) -> dict:
        """How `processes` processes share the work: the effective batch, the learning rate
        used and its scaling rule (logged as params `distributed.<key>`). Raises UsageError
        where the algorithm cannot be shared."""
        if processes > 1:
            raise UsageError(f"algorithm={self.name} trains in one process; run it without torchrun or trainer.devices (standard, tfa, reptile and joint train in several)")
        return {}

    @abc.abstractmethod
    def pretrain(self, model: nn.Module, data: PretrainData, steps: int, device: torch.device, *, seed: int, amp: bool = True, start_step: int = 0, on_step: StepHook | None = None, sync_every: int = 1) -> int:
        """Train `model` in place for `steps` budget units (optimiser steps or meta-iterations);
        return the last step run. The losses reach `on_step` as floats every `sync_every`
        steps (fsx.engine.loop.train)."""

    def state_dict(self) -> dict:
        """Optimiser and schedule state for resuming (empty when there is none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
