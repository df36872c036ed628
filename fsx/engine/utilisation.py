"""How busy a device is while some work runs: the fraction of wall time in which at least
one operation was executing on it, read from the PyTorch profiler's trace.

On CUDA this is the time covered by kernels, memory copies and sets, which is what
`nvidia-smi` calls utilisation (NVML samples whether any kernel ran), measured over exactly
the window of the work instead of a sampling period. On the CPU it is the time covered by
operators on the calling thread; it is there so that the trace reading is exercised where no
GPU is. The profiler adds its own cost per operation and per kernel launch, which stretches
the wall time of host-bound work while the kernels' own time stays the same: divide the busy
seconds by the wall time of an unprofiled run of the same work for the truer share.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

_WINDOW = "fsx.utilisation.window"
_DEVICE_WORK = {"kernel", "gpu_memcpy", "gpu_memset"}


def covered(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of `intervals`, clipped to [start, end]."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


def busy_seconds(work: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Run `work()` once under the profiler; (seconds during which `device` was executing
    something, wall seconds of the run). On CUDA the window closes after a synchronise, so
    kernels still queued at the end of `work` are counted, and a trace without a single GPU
    event (CUPTI missing, or taken by another profiler) is an error, not an idle GPU.

    It reads the profiler's Chrome trace, the export whose categories ("kernel", "gpu_memcpy",
    "cpu_op", "user_annotation") have stayed the same across PyTorch versions."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        if cuda:  # one kernel before the window: proof that the trace sees the GPU at all
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)
        with record_function(_WINDOW):
            work()
            if cuda:
                torch.cuda.synchronize(device)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    window = next((e for e in events if e.get("cat") == "user_annotation" and e.get("name") == _WINDOW), None)
    if window is None:
        raise RuntimeError("the profiler recorded no window around the work")
    start, end = float(window["ts"]), float(window["ts"]) + float(window["dur"])
    if cuda:  # not the window's own range on the GPU's timeline (a "gpu_user_annotation")
        mine = [e for e in events if e.get("cat") in _DEVICE_WORK]
        if not mine:
            raise RuntimeError("the profiler recorded no GPU activity at all (CUPTI missing, or in use by another profiler)")
    else:
        mine = [e for e in events if e.get("cat") == "cpu_op" and e.get("tid") == window.get("tid")]
    busy = covered(((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in mine), start, end)
    return busy / 1e6, max(end - start, 0.0) / 1e6  # the trace counts microseconds


def busy_fraction(work: Callable[[], object], device: torch.device) -> float:
    """The share (0 to 1) of `work()`'s wall time during which `device` was executing
    something; see busy_seconds."""
    busy, wall = busy_seconds(work, device)
    return busy / wall if wall > 0 else 0.0
