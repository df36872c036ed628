"""The one checkpoint format: weights, class list, model spec and the run's config.

Written atomically (temp file + rename): a crash never leaves a half-written checkpoint
under the real name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fsx import __version__
from fsx.errors import UsageError
from fsx.filemodes import give_usual_mode
from fsx.models.detectors import WEIGHT_KEYS, build_detector

FORMAT = "fsx-checkpoint-1"


def save_checkpoint(path: Path | str, model: nn.Module, spec: dict, classes: list[str], config: dict, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "fsx_version": __version__,
        "model_spec": spec,
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        **extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        give_usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        # weights_only: a checkpoint from a shared store must not be able to run code here
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise many kinds of errors
        raise UsageError(f"checkpoint {path} is not a valid fsx checkpoint: {_why_unloadable(e)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} is not an fsx checkpoint (expected format '{FORMAT}')")
    missing = [k for k in ("model_spec", "state_dict", "classes") if k not in payload]
    if missing:
        raise UsageError(f"checkpoint {path} is incomplete: it has no {', '.join(missing)}")
    return payload


def _why_unloadable(error: Exception) -> str:
    """One clause for a file torch.load refused. torch's own message advises loading with
    weights_only=False, which runs any code a malicious file holds: never repeat it."""
    import re

    text = str(error)
    # "... unsupported GLOBAL posix.system whose ..." (newer torch), "Unsupported global: GLOBAL posix.system was ..." (2.4)
    foreign = re.search(r"unsupported global:? (?:GLOBAL )?(\S+)", text, re.IGNORECASE)
    if foreign:
        return f"it holds Python objects ({foreign.group(1)}) that fsx does not load; fsx checkpoints hold only tensors and plain values"
    if "Weights only load failed" in text or isinstance(error, EOFError) or "zip" in text.lower() or "magic" in text.lower():
        return "it is not a PyTorch file, or it is truncated or damaged"
    return f"it cannot be read ({type(error).__name__})"


def load_model(payload: dict) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    spec = dict(payload["model_spec"])
    for part in ("backbone", "detector"):  # the weights come from the state dict, not the files the run started from
        spec[part] = {k: v for k, v in spec[part].items() if k not in WEIGHT_KEYS}
    try:
        model = build_detector(spec)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise UsageError(f"checkpoint does not match its own model spec ({type(e).__name__}: {str(e)[:300]})") from None
    return model
