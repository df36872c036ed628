"""A multirun on a launcher plugin (joblib: jobs in parallel worker processes) records the
same MLflow shape as the basic launcher: one parent run, one child per job."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SMALL = ["dataset.generator.num_images=200", "dataset.image_size=64", "dataset.generator.min_font=12", "dataset.generator.max_font=32", "algorithm.batch_size=4", "train.steps=1"]


def test_joblib_launcher_multirun_has_one_parent_and_a_child_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-m", "seed=0,1", *SMALL, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    result = subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Joblib" in result.stdout + result.stderr  # the plugin really launched the jobs

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    parents = [r for r in runs if r.data.tags.get("fsx.multirun") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(runs) == 3
