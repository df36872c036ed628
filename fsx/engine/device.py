"""Where a run computes, and in what precision."""

from __future__ import annotations

import contextlib

import torch

from fsx.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={name} but no CUDA device is visible to PyTorch; use device=auto or device=cpu")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UsageError(f"device={name}: write cuda or cuda:<index>") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    raise UsageError(f"device={name}: choose auto, cpu or cuda")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
