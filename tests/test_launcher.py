"""A multirun on a launcher plugin (joblib: jobs in parallel worker processes; submitit)
records the same MLflow shape as the basic launcher: one parent run, one child per job, a
failed job too; parallel jobs lose nothing in the default SQLite file or on an `mlflow
server`; a rerun sweep skips what finished and resumes what was interrupted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_helpers import free_port
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SMALL = ["dataset.generator.num_images=200", "dataset.image_size=64", "dataset.generator.min_font=12", "dataset.generator.max_font=32", "algorithm.batch_size=4", "train.steps=1"]


def test_joblib_launcher_multirun_has_one_parent_and_a_child_per_job_even_a_failed_one(tmp_path):
    """4 jobs in 2 worker processes, 2 of them given a fold that does not exist: the good
    ones finish, each bad one is a FAILED child with its overrides and its error."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-m", "dataset.fold=1,99,2,98", *SMALL, "train.val_images=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    result = subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Joblib" in result.stdout + result.stderr  # the plugin really launched the jobs
    assert "2 of 4 jobs finished" in result.stdout
    assert "failed: job 1 (dataset.fold=99" in result.stderr and "failed: job 3 (dataset.fold=98" in result.stderr

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    parents = [r for r in runs if r.data.tags.get("fsx.multirun") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 5 and len(children) == 4
    status = {r.data.params["dataset.fold"]: r.info.status for r in children}
    assert status == {"1": "FINISHED", "2": "FINISHED", "99": "FAILED", "98": "FAILED"}
    jobs = {"1": "0", "99": "1", "2": "2", "98": "3"}  # the sweep's order
    for run in children:
        fold = run.data.params["dataset.fold"]
        assert run.data.tags["fsx.job"] == jobs[fold]
        assert run.data.tags["fsx.overrides"].startswith(f"dataset.fold={fold} ") and "hydra.launcher.n_jobs=2" not in run.data.tags["fsx.overrides"]
        assert run.data.tags["fsx.command"] == "pretrain"
        if run.info.status == "FAILED":
            assert run.data.tags["fsx.error"] == f"dataset.fold={fold} is not a letters fold: choose one of 1, 2, 3, 4, 5"


def test_submitit_local_preset_runs_each_job_in_its_own_process(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-m", "seed=0,1", *SMALL, "train.val_images=0", "hydra/launcher=local_processes", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    result = subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Submitit 'local'" in result.stdout + result.stderr  # the plugin really launched the jobs
    assert list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))  # one process (and log) per job

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("fsx.multirun") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"] and parent.info.status == "FINISHED"
    assert len({r.data.tags["fsx.pid"] for r in children}) == 2  # two processes, neither of them this sweep's


def test_the_slurm_preset_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "fsx", "pretrain", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "--package", "hydra.launcher"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout and "gpus_per_node: 1" in result.stdout


def test_a_rerun_sweep_skips_finished_jobs_and_resumes_interrupted_ones(tmp_path):
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}

    def sweep(*extra):
        args = ["pretrain", "-m", "seed=0,1", *SMALL, "train.steps=2", "train.checkpoint_every=1", "train.val_images=0", *extra]
        result = subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    sweep()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fsx").experiment_id

    def jobs():
        return [r for r in client.search_runs([experiment]) if r.data.tags.get("fsx.multirun") != "parent"]

    first = {r.data.params["seed"]: r for r in jobs()}
    assert len(first) == 2 and len({r.data.tags["fsx.config_hash"] for r in first.values()}) == 2

    again = sweep()
    assert "0 of 0 jobs finished; 2 more skipped (already finished)" in again and len(jobs()) == 2  # nothing ran twice

    forced = sweep("skip_finished=false")
    assert "skipped" not in forced and len(jobs()) == 4


def test_an_interrupted_pretrain_job_is_resumed_and_other_commands_rerun(tmp_path):
    """The decision only: resuming itself is tests/test_reliability.py's."""
    from fsx.run.sweep import config_hash, plan_job

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"seed": 0, "mlflow": {"tracking_uri": uri, "experiment": "fsx"}, "dataset": {"name": "letters", "cache_dir": "/here"}}
    assert plan_job(config, "pretrain") == ("run", None)  # no store yet
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("fsx")
    last = tmp_path / "last.pt"
    last.write_bytes(b"weights")
    moved = {**config, "dataset": {"name": "letters", "cache_dir": "/elsewhere"}}  # another machine's cache: the same job
    run = client.create_run(experiment, tags={"fsx.config_hash": config_hash(moved), "fsx.command": "pretrain", "fsx.last_checkpoint": str(last)})
    client.set_terminated(run.info.run_id, "KILLED")
    assert plan_job(config, "pretrain") == ("resume", run.info.run_id)
    assert plan_job(config, "eval") == ("run", None)
    assert plan_job({**config, "seed": 1}, "pretrain") == ("run", None)
    last.unlink()  # nothing left to resume from: run again
    assert plan_job(config, "pretrain") == ("run", None)
    assert plan_job({**config, "skip_finished": False}, "pretrain") == ("run", None)


def test_eight_parallel_jobs_on_one_sqlite_file_lose_nothing(tmp_path):
    """8 joblib workers writing params, metrics every step and checkpoints to the default
    SQLite store at once: every run and every metric arrives."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-m", "seed=range(8)", *SMALL, "train.steps=3", "train.log_every=1", "train.val_images=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8"]
    result = subprocess.run([sys.executable, "-m", "fsx", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    children = [r for r in runs if r.data.tags.get("fsx.multirun") != "parent"]
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(8))
    for run in children:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
        assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free localhost port (SQLite behind it), as a team would run
    one; stopped with its workers at the end."""
    import signal
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=1).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 120 s:\n" + (tmp_path / "server.log").read_text()[-3000:])
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_parallel_jobs_against_an_mlflow_server_lose_nothing(tmp_path, mlflow_server):
    """12 jobs in 6 joblib workers against one tracking server: 6 log every step and their
    checkpoints, 6 fail before their runs open (fold 99). Every run, metric and checkpoint
    arrives, and each failed job is a FAILED child there too."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    env = {**os.environ, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    args = ["pretrain", "-m", "seed=range(6)", *SMALL, "train.steps=3", "train.log_every=1", "train.val_images=0",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=6", f"mlflow.tracking_uri={mlflow_server}"]
    result = subprocess.run([sys.executable, "-m", "fsx", *args, "dataset.fold=1,99"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 of 12 jobs finished" in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("fsx.multirun") != "parent"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    failed = [r for r in children if r.info.status == "FAILED"]
    assert sorted(int(r.data.params["seed"]) for r in finished) == list(range(6))
    assert sorted(int(r.data.params["seed"]) for r in failed) == list(range(6))
    assert all(r.data.params["dataset.fold"] == "99" and "not a letters fold" in r.data.tags["fsx.error"] for r in failed)
    for run in finished:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
        assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
