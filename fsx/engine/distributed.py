"""Several processes training one model: torchrun's environment -> a process group.

`torchrun --nproc_per_node=N -m fsx pretrain ...` starts N copies of fsx with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. `process_group` joins them (gloo on
the CPU, nccl on CUDA, each rank on the GPU of its LOCAL_RANK). torchrun with one process
joins a group of one, so that `torchrun --nproc_per_node=1` runs the distributed path (DDP,
the collectives, NCCL on one GPU) with one process's numbers. Started without a launcher,
every function here is a no-op and fsx runs as one process.

Rank 0 is the main process: it alone talks to MLflow and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from fsx.errors import UsageError

T = TypeVar("T")

# A rank that dies or hangs must not keep the others waiting forever in a collective. torchrun
# stops the survivors when one worker exits; this bounds the rest (a hung rank, another
# launcher). Long enough for rank 0 to prepare a large dataset while the others wait.
TIMEOUT_S = 1800


def launched() -> bool:
    """Whether a launcher started this process as a rank of a process group: torchrun (which
    sets TORCHELASTIC_RUN_ID, also for one process) or any launcher with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def is_distributed() -> bool:
    """Whether this process is in a process group (of one or more)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    """gloo, nccl, or none (one process)."""
    return str(dist.get_backend()) if is_distributed() else "none"


def local_device(device: torch.device) -> torch.device:
    """This rank's device: on CUDA the GPU of its LOCAL_RANK, else `device` itself."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device, timeout_s: float = TIMEOUT_S) -> torch.device:
    """Join torchrun's process group (if launched by it) and return this rank's device."""
    if not launched() or is_distributed():
        return local_device(device)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UsageError(f"started as a rank of a process group (WORLD_SIZE={os.environ.get('WORLD_SIZE', 'unset')}) but {', '.join(missing)} is not set: start several processes with torchrun --nproc_per_node=N -m fsx ...")
    device = local_device(device)
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={device.index} but only {torch.cuda.device_count()} CUDA device(s) are visible: start at most that many processes per node")
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = TIMEOUT_S) -> Iterator[torch.device]:
    """`setup` on entry, `teardown` on exit; yields this rank's device."""
    joined = launched() and not is_distributed()
    device = setup(device, timeout_s)
    try:
        yield device
    finally:
        if joined:
            teardown()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it may create a shared cache), the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def on_main(fn: Callable[[], T]) -> T:
    """fn() run on the main process alone; every process gets its result, or raises its
    exception (a usage error found by rank 0 ends every rank with the same message)."""
    if not is_distributed():
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = (True, fn())
        except Exception as e:  # noqa: BLE001 - handed to every rank and raised there
            box[0] = (False, e)
    dist.broadcast_object_list(box, src=0)
    done, value = box[0]
    if not done:
        raise value
    return value


def _reduce(tensors: list[torch.Tensor], op) -> None:
    """One collective per dtype (in practice one): the tensors are packed into a flat buffer."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=op)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


@torch.no_grad()
def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Replace every tensor, in place, by its sum over the processes."""
    if is_distributed() and tensors:
        _reduce(tensors, dist.ReduceOp.SUM)


@torch.no_grad()
def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Replace every tensor, in place, by its mean over the processes."""
    if is_distributed() and tensors:
        all_reduce_sum(tensors)
        for t in tensors:
            t.div_(world_size())


@torch.no_grad()
def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Give every process the main process's values (e.g. the initial weights)."""
    if is_distributed():
        for t in tensors:
            dist.broadcast(t, src=0)


def averaged_losses(step_fn: Callable[[object], dict], device: torch.device) -> Callable[[object], dict[str, torch.Tensor]]:
    """`step_fn` whose returned losses are the mean over the processes: the record shows the
    whole effective batch, and a loss that turns non-finite on one rank stops every rank."""

    def step(batch) -> dict[str, torch.Tensor]:
        losses = step_fn(batch)
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in losses.values()])
        all_reduce_mean([values])
        return dict(zip(losses, values.unbind()))

    return step


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel when several processes train it (the
    wrapper averages the gradients during backward and starts every rank from rank 0's
    weights), else the model itself. The wrapper shares the model's parameters: checkpoints
    keep saving the bare model."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
