"""An interrupted pretraining run continues from its last.pt (written atomically every
train.checkpoint_every steps, and on Ctrl-C)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from fsx.engine.checkpoint import load_model, read_checkpoint, save_checkpoint
from fsx.models.detectors import build_detector

pytestmark = pytest.mark.slow

SMALL = ["dataset.generator.num_images=200", "dataset.image_size=64", "dataset.generator.min_font=12", "dataset.generator.max_font=32", "algorithm.batch_size=4"]


def run_fsx(args, cwd, cache):
    env = {**os.environ, "FSX_CACHE": str(cache), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_pretrain_resumes_from_last_checkpoint(tmp_path):
    spec = {
        "detector": {"name": "retinanet", "anchor_scale": 1.5},
        "backbone": {"name": "tiny", "out_channels": 32},
        "num_classes": 21,
        "image_size": 64,
        "image_mean": [0.92] * 3,
        "image_std": [0.25] * 3,
    }
    torch.manual_seed(0)
    model = build_detector(spec)
    fold1_base = [c for c in "ACDEFGIJKLNOPQSTUVXYZ"]
    last = save_checkpoint(tmp_path / "last.pt", model, spec, fold1_base, {}, kind="pretrain", train_state={"step": 3, "algorithm": {}})

    result = run_fsx(["pretrain", *SMALL, "train.steps=5", "train.log_every=1", f"resume={last}"], tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    assert run.data.tags["fsx.resumed_from"] == str(last)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [4, 5]  # only the steps after the resumed one ran
    final = read_checkpoint(client.download_artifacts(run.info.run_id, "checkpoints/model.pt", str(tmp_path)))
    assert final["step"] == 5
    assert final["model_spec"] == spec  # the resumed model, not the command line's default
    resumed = load_model(final)
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    assert changed  # training went on from the saved weights


def test_resume_refuses_a_final_checkpoint(tmp_path):
    spec = {"detector": {"name": "retinanet", "anchor_scale": 1.5}, "backbone": {"name": "tiny", "out_channels": 32}, "num_classes": 21, "image_size": 64, "image_mean": [0.9] * 3, "image_std": [0.25] * 3}
    final = save_checkpoint(tmp_path / "model.pt", build_detector(spec), spec, list("ACDEFGIJKLNOPQSTUVXYZ"), {}, kind="pretrain", step=5)
    result = run_fsx(["pretrain", *SMALL, f"resume={final}"], tmp_path, tmp_path / "cache")
    assert result.returncode == 2
    assert "not an interrupted run's last.pt" in result.stderr
    assert "Traceback" not in result.stderr
