"""The Reptile thesis's early stopping with rollback for adaptation (PROTOCOLS 4.8).

m_t = mean loss over the last `window` steps; remember the best m_t and the weights at
that step; once m_t >= factor * best, stop and restore those weights.
"""

from __future__ import annotations

import copy
from collections import deque

from torch import nn


class EarlyStopping:
    def __init__(self, window: int = 30, factor: float = 2.0):
        self.window, self.factor = window, factor
        self.losses: deque[float] = deque(maxlen=window)
        self.best = float("inf")
        self.best_step = 0
        self.snapshot: dict | None = None
        self.stopped_at: int | None = None

    def begin(self, model: nn.Module) -> None:
        """Keep the starting weights, so a divergence in the first steps can still roll back."""
        self.snapshot = copy.deepcopy(model.state_dict())
        self.best_step = 0

    @property
    def fired(self) -> bool:
        return self.stopped_at is not None

    def update(self, step: int, loss: float, model: nn.Module) -> bool:
        """Record the loss of `step` (weights already updated); True when training must stop.

        A non-finite loss counts as a divergence and stops at once.
        """
        if loss != loss or loss in (float("inf"), float("-inf")):
            self.stopped_at = step
            return True
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return False
        mean = sum(self.losses) / len(self.losses)
        if mean < self.best:
            self.best, self.best_step = mean, step
            self.snapshot = copy.deepcopy(model.state_dict())
            return False
        if mean >= self.factor * self.best:
            self.stopped_at = step
            return True
        return False

    def rollback(self, model: nn.Module) -> int | None:
        """Restore the best weights seen; returns their step (None if there is no snapshot)."""
        if self.snapshot is None:
            return None
        model.load_state_dict(self.snapshot)
        return self.best_step
