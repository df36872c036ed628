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


def flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU. A trained detector's gradients (confident
    negatives under focal loss, decayed weights) are full of denormals, which made a trained
    RetinaNet's CPU step twice as slow as a fresh one's (FINDINGS.md). Call it at process
    start, before torch's first parallel work: OpenMP worker threads inherit the flag from
    the thread that creates them; set later, it reaches only the calling thread."""
    torch.set_flush_denormal(True)
