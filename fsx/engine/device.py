"""Where a run computes, and in what precision."""

from __future__ import annotations

import contextlib
import os

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


def loader_workers(setting: int | str, device: torch.device, processes: int = 1) -> int:
    """DataLoader worker processes for a training process: a number (checked by
    fsx.run.checks), or auto = none on the CPU (there the cores that would decode are the ones
    training the model; the batch is built between steps) and up to 4 on CUDA, sharing the
    machine's cores with the other training processes."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) // max(processes, 1) - 1))


# Where `amp` turns bf16 autocast on. CPUs without bf16 units run it slower than fp32, so
# only CUDA; tests/test_bf16.py adds "cpu" to run the same code path without a GPU.
AUTOCAST_DEVICES = ("cuda",)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if enabled and device.type in AUTOCAST_DEVICES:
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
