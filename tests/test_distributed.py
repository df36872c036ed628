"""Several processes training one model (torchrun; gloo on the CPU, 2 processes).

Distributed Reptile shares a meta-batch's tasks among the processes and lands on the weights one
process reaches on the same tasks; standard training under DDP records exactly one MLflow run
(rank 0's) with its world size and effective batch; every helper is a no-op in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_helpers import free_port

from fsx.algorithms import build_algorithm
from fsx.engine import distributed
from fsx.engine.checkpoint import read_checkpoint
from fsx.engine.loop import infinite_batches
from fsx.errors import UsageError

SMALL = [
    "dataset.generator.num_images=200",
    "dataset.image_size=64",
    "dataset.generator.min_font=12",
    "dataset.generator.max_font=32",
    "train.val_images=0",
    "train.log_every=1",
    "device=cpu",
]
REPTILE = ["algorithm=reptile", "train.steps=2", "algorithm.meta_batch=2", "algorithm.inner_steps=2", "algorithm.inner_batch=2", "algorithm.shots=2"]
TIMEOUT = 300


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "HYDRA_", "MLFLOW_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # one thread per process: the same kernels in one process and in two, and no oversubscription
    return {**env, "FSX_CACHE": str(root / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}


def start(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    """The stdout of a command that must succeed within TIMEOUT seconds."""
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"command: {' '.join(process.args)}\nexit code {process.returncode}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
    return out


def fsx(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return start([sys.executable, "-m", "fsx", *args], cwd, env)


def torchrun(processes: int, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    rendezvous = [f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    return start([sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "fsx", *args], cwd, env)


def store(cwd: Path) -> str:
    return f"sqlite:///{(cwd / 'mlflow.db').resolve()}"


def the_run(uri: str):
    """The one run of the store, and its final checkpoint."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"{len(runs)} runs in {uri}: {[r.info.run_name for r in runs]}"
    run = runs[0]
    assert run.info.status == "FINISHED"
    path = client.download_artifacts(run.info.run_id, "checkpoints/model.pt", str(Path(uri[len("sqlite:///") :]).parent / "download"))
    return run, read_checkpoint(path)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_distributed_reptile_lands_on_the_weights_of_one_process(tmp_path):
    env = env_for(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    # side by side: they share only the letters cache (generated once, under a file lock)
    alone = fsx(["pretrain", *REPTILE, *SMALL, f"mlflow.tracking_uri={store(one)}"], one, env)
    together = torchrun(2, ["pretrain", *REPTILE, *SMALL, f"mlflow.tracking_uri={store(two)}"], two, env)
    finish(alone)
    out = finish(together)
    assert "2 processes (gloo)" in out and "tasks_per_process 1" in out, out

    run_one, single = the_run(store(one))
    run_two, shared = the_run(store(two))
    assert run_one.data.params["distributed.world_size"] == "1" and run_two.data.params["distributed.world_size"] == "2"
    assert single["state_dict"].keys() == shared["state_dict"].keys()
    # Both processes start from the same θ and run the same tasks (drawn from (seed, iteration,
    # task) alone) as the single process; the all-reduce sums the adapted weights in its own
    # order, which for other meta-batch sizes rounds float32 differently (about 1 ulp per
    # addition and meta-iteration: 3e-8 for 3 tasks on 2 ranks, in the last test here), hence a
    # tolerance rather than equality. With 2 tasks on 2 ranks the sums are the same.
    worst = max(float((single["state_dict"][k].double() - shared["state_dict"][k].double()).abs().max()) for k in single["state_dict"])
    print(f"largest difference of a weight or buffer between 1 and 2 processes: {worst:.3g}")
    for name, value in single["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(value, shared["state_dict"][name], rtol=0, atol=1e-5), name
        else:  # batch-norm step counters count every process's inner steps, as one process does
            assert torch.equal(value, shared["state_dict"][name]), name
    # the logged losses are the mean over all tasks, as in one process
    for key in ("train/loss", "train/first_step_loss"):
        assert run_two.data.metrics[key] == pytest.approx(run_one.data.metrics[key], rel=1e-5)


@pytest.mark.slow
def test_standard_ddp_on_two_processes_records_one_run(tmp_path):
    env, cwd = env_for(tmp_path), tmp_path / "ddp"
    out = finish(fsx(["pretrain", "trainer.devices=2", *SMALL, "algorithm.batch_size=2", "train.steps=2", f"mlflow.tracking_uri={store(cwd)}"], cwd, env))
    assert "torch.distributed.run" in out and "effective_batch 4" in out, out
    assert out.count("checkpoint: runs:/") == 1, out  # rank 0 alone reports

    run, checkpoint = the_run(store(cwd))  # exactly one run: the other rank never touched the store
    params = run.data.params
    assert params["distributed.world_size"] == "2" and params["distributed.backend"] == "gloo"
    assert params["distributed.batch_per_process"] == "2" and params["distributed.effective_batch"] == "4"
    assert float(params["distributed.lr"]) == pytest.approx(1e-3) and params["distributed.lr_scaling"].startswith("none")
    assert params["trainer.devices"] == "2"
    from mlflow.tracking import MlflowClient

    assert [m.step for m in MlflowClient(store(cwd)).get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert checkpoint["step"] == 2
    assert not list(cwd.glob("outputs/*/*/checkpoints/last.pt"))


@pytest.mark.slow
def test_torchrun_with_one_process_runs_the_distributed_path(tmp_path):
    """torchrun --nproc_per_node=1 joins a process group of one and trains under DDP (make
    gpu-check's DDP on one GPU through NCCL is this test on CUDA)."""
    env, cwd = env_for(tmp_path), tmp_path / "one"
    out = finish(torchrun(1, ["pretrain", *SMALL, "algorithm.batch_size=2", "train.steps=2", f"mlflow.tracking_uri={store(cwd)}"], cwd, env))
    assert "fsx pretrain: 1 process (gloo): batch_per_process 2; effective_batch 2" in out, out
    run, checkpoint = the_run(store(cwd))
    assert run.data.params["distributed.world_size"] == "1" and run.data.params["distributed.backend"] == "gloo"
    assert checkpoint["step"] == 2


# --------------------------------------------------------------------------- one process


def refuse():
    raise UsageError("found by rank 0")


def test_helpers_are_no_ops_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not distributed.launched() and not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main(), distributed.backend()) == (1, 0, True, "none")
    tensors = [torch.tensor([1.0, 2.0]), torch.tensor([3], dtype=torch.int64)]
    distributed.all_reduce_mean(tensors)
    distributed.all_reduce_sum(tensors)
    distributed.broadcast_from_main(tensors)
    assert torch.equal(tensors[0], torch.tensor([1.0, 2.0])) and torch.equal(tensors[1], torch.tensor([3]))
    model = torch.nn.Linear(2, 2)
    assert distributed.data_parallel(model, torch.device("cpu")) is model
    assert distributed.on_main(lambda: 7) == 7
    with pytest.raises(UsageError, match="found by rank 0"):
        distributed.on_main(refuse)
    with distributed.process_group(torch.device("cpu")) as device, distributed.main_first():
        assert device == torch.device("cpu") and not distributed.is_distributed()
    distributed.barrier()


def test_two_processes_draw_together_the_batches_of_one():
    data = [(i, {"id": i}) for i in range(10)]  # (image, target) pairs, as a DetectionDataset gives
    one = infinite_batches(data, 4, seed=3, skip=1)
    shards = [infinite_batches(data, 2, seed=3, skip=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # epochs of 2 global batches: the permutation changes between them
        whole = list(next(one)[0])
        halves = [list(next(s)[0]) for s in shards]
        assert sorted(halves[0] + halves[1]) == sorted(whole) and len(halves[0]) == len(halves[1]) == 2
        assert halves[0] == whole[0::2] and halves[1] == whole[1::2]


def test_the_plan_logs_the_effective_batch_and_scales_only_tfa_lr():
    assert build_algorithm("standard", batch_size=8, lr=1e-3).distributed_plan(2) == {
        "batch_per_process": 8,
        "effective_batch": 16,
        "lr": 1e-3,
        "lr_scaling": "none: the configured lr at any world size (more processes = a larger effective batch at the same lr)",
    }
    tfa = build_algorithm("tfa", batch_size=8, lr=0.02, reference_batch=16)
    assert tfa.distributed_plan(1)["lr"] == pytest.approx(0.01) and tfa.distributed_plan(2)["lr"] == pytest.approx(0.02)
    assert "x effective batch 16 / reference_batch 16" in tfa.distributed_plan(2)["lr_scaling"]
    assert build_algorithm("reptile", meta_batch=3).distributed_plan(2)["tasks_per_process"] == "2 or 1"


def test_what_cannot_be_shared_among_processes_is_refused():
    with pytest.raises(UsageError, match="algorithm=maml trains in one process"):
        build_algorithm("maml").distributed_plan(2)
    with pytest.raises(UsageError, match="meta_batch=2 tasks cannot be shared among 4 processes"):
        build_algorithm("reptile", meta_batch=2).distributed_plan(4)
    with pytest.raises(UsageError, match="inner_state=carry"):
        build_algorithm("reptile", inner_state="carry").distributed_plan(2)
    assert build_algorithm("maml").distributed_plan(1) == {}


def test_a_multirun_under_torchrun_is_refused_once_before_any_job(tmp_path):
    """Each torchrun process would otherwise start the whole sweep and record its jobs."""
    env = {**env_for(tmp_path), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "fsx", "pretrain", "-m", "seed=0,1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "torchrun runs one configuration, not a multirun (-m)" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


HELPERS_IN_TWO_PROCESSES = textwrap.dedent(
    """
    import torch
    from torch import nn
    from fsx.algorithms.episodes import Episode
    from fsx.algorithms.reptile import Reptile
    from fsx.engine import distributed
    from fsx.errors import UsageError

    class Toy(nn.Module):  # model(images, targets) -> {"loss": ...}, with batch-norm buffers
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear, self.norm = nn.Linear(3, 4), nn.BatchNorm1d(4)

        def forward(self, images, targets):
            out = self.norm(self.linear(torch.stack(images))).sum(1)
            return {"loss": ((out - torch.stack([t["y"] for t in targets])) ** 2).mean()}

    def task(t):
        g = torch.Generator().manual_seed(t)
        return Episode(t, [], 0, [(torch.randn(3, generator=g), {"y": torch.randn((), generator=g)}) for _ in range(4)], None)

    # 3 tasks on 2 processes (2 + 1): the all-reduce must weigh them as one process does
    tasks, reptile = [task(t) for t in range(3)], dict(inner_steps=2, inner_batch=2, inner_lr=0.05, meta_batch=3)
    alone = Toy()
    losses = Reptile(**reptile).meta_step(alone, tasks, torch.device("cpu"), beta=0.5, amp=False)

    with distributed.process_group(torch.device("cpu"), timeout_s=60):
        r = distributed.rank()
        shared = Toy()
        shared_losses = Reptile(**reptile).meta_step(shared, tasks[r::2], torch.device("cpu"), beta=0.5, amp=False)
        for (name, a), b in zip(alone.state_dict().items(), shared.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-6) if a.is_floating_point() else torch.equal(a, b), name
        assert abs(losses["loss"] - shared_losses["loss"]) < 1e-5 and abs(losses["first_step_loss"] - shared_losses["first_step_loss"]) < 1e-5
        worst = max(float((a - b).abs().max()) for a, b in zip(alone.state_dict().values(), shared.state_dict().values()))
        print("uneven reptile step: largest difference", worst)

        r = distributed.rank()
        assert distributed.world_size() == 2 and distributed.backend() == "gloo" and distributed.is_main() == (r == 0)
        floats, ints = torch.full((2, 3), float(r + 1)), torch.tensor([r + 1])
        distributed.all_reduce_sum([floats, ints])
        assert torch.equal(floats, torch.full((2, 3), 3.0)) and torch.equal(ints, torch.tensor([3]))
        mean = [torch.tensor([float(r), 10.0 * r])]
        distributed.all_reduce_mean(mean)
        assert torch.equal(mean[0], torch.tensor([0.5, 5.0]))
        weights = [torch.full((3,), float(r))]
        distributed.broadcast_from_main(weights)
        assert torch.equal(weights[0], torch.zeros(3))
        assert distributed.on_main(lambda: distributed.rank()) == 0
        def refuse():
            raise UsageError("found by rank 0")

        try:
            distributed.on_main(refuse)
            raise AssertionError("no error")
        except UsageError as e:
            assert str(e) == "found by rank 0"
    assert not distributed.is_distributed()
    print("rank", r, "ok")
    """
)


def test_helpers_and_an_uneven_reptile_step_in_two_processes(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS_IN_TWO_PROCESSES)
    base = {**env_for(tmp_path), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [subprocess.Popen([sys.executable, str(script)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = []
    try:
        for process in ranks:
            outputs.append(process.communicate(timeout=120)[0])
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    for r, (process, output) in enumerate(zip(ranks, outputs)):
        assert process.returncode == 0 and f"rank {r} ok" in output, output
    print(outputs[0])
