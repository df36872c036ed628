"""Faults and bad input end in a clear exit 2 or a clean resume, quickly, with nothing lost:
unreachable or unusable stores, typos, hostile checkpoints, SIGTERM and SIGKILL mid-training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import free_port

from fsx.engine.checkpoint import read_checkpoint
from fsx.errors import UsageError
from fsx.tracking import check_store

SMALL = [
    "dataset.generator.num_images=200",
    "dataset.image_size=64",
    "dataset.generator.min_font=12",
    "dataset.generator.max_font=32",
    "algorithm.batch_size=4",
    "train.val_images=0",
    "train.log_every=1",
]


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "HYDRA_", "MLFLOW_"))}
    return {**env, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}


def fsx(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=cwd, env=env_for(cwd), capture_output=True, text=True, timeout=timeout)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def one_message(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr and "Retrying" not in result.stdout + result.stderr, explain(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsx: error:")]
    assert len(errors) == 1, explain(result)
    return errors[0]


# --------------------------------------------------------------------------- stores


def test_a_server_that_does_not_answer_is_named_at_once():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(UsageError, match="no MLflow server answers there") as error:
        check_store(uri)
    assert uri in str(error.value) and "mlflow server" in str(error.value)
    assert time.monotonic() - started < 10  # not minutes of HTTP retries


def test_a_database_that_cannot_be_created_is_named(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path}/no/such/folder/mlflow.db")
    if os.path.isdir("/proc"):
        with pytest.raises(UsageError, match="cannot create the database /proc/nope.db"):
            check_store("sqlite:////proc/nope.db")
    with pytest.raises(UsageError, match="is a folder"):
        check_store(f"sqlite:///{tmp_path}")


def test_a_file_that_is_not_a_database_is_named_and_left_untouched(tmp_path):
    db = tmp_path / "mlflow.db"
    garbage = os.urandom(3000)
    db.write_bytes(garbage)
    with pytest.raises(UsageError, match="is not an MLflow database") as error:
        check_store(f"sqlite:///{db}")
    assert str(db) in str(error.value)
    assert db.read_bytes() == garbage


def test_a_good_store_passes_and_nothing_is_created(tmp_path):
    check_store(f"sqlite:///{tmp_path / 'new.db'}")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_bad_stores_before_any_work(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "mlflow.db").write_bytes(b"not a database at all" * 50)
    message = one_message(fsx(["pretrain", "train.steps=1"], tmp_path / "junk"))
    assert "mlflow.db is not an MLflow database" in message
    assert (tmp_path / "junk" / "mlflow.db").read_bytes() == b"not a database at all" * 50
    port = free_port()
    assert f"127.0.0.1:{port}" in one_message(fsx(["pretrain", "train.steps=1", f"mlflow.tracking_uri=http://127.0.0.1:{port}"], tmp_path / "server"))
    assert not list((tmp_path / "server").glob("outputs/*/*/checkpoints"))


# --------------------------------------------------------------------------- typos


@pytest.mark.parametrize("override", ["tarin.steps=5", "+tarin.steps=5"])
def test_a_typo_gets_the_nearest_real_key_never_an_append(override, tmp_path):
    message = one_message(fsx(["pretrain", override], tmp_path))
    assert "did you mean train.steps" in message
    advice = message.split("`:", 1)[1]  # after the echoed command line
    assert "+tarin" not in advice and "append" not in advice
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unknown_group_option_lists_the_options(tmp_path):
    message = one_message(fsx(["pretrain", "detector=fcso"], tmp_path))
    assert "choose one of fasterrcnn, fcos, retinanet" in message and "did you mean detector=fcos" in message
    assert "search path" not in message and "provider" not in message


# --------------------------------------------------------------------------- checkpoints


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_in_one_line_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "fsx-checkpoint-1", "payload": _RunsCode(marker)}, path)
    with pytest.raises(UsageError) as error:
        read_checkpoint(path)
    text = str(error.value)
    assert "not a valid fsx checkpoint" in text and "system" in text
    assert "weights_only" not in text and "\n" not in text
    assert not marker.exists()


# --------------------------------------------------------------------------- SIGTERM, SIGKILL, resume


def start_pretrain(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "fsx", "pretrain", *args], cwd=cwd, env=env_for(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_last_checkpoint(cwd: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(cwd.glob("outputs/*/*/checkpoints/last.pt")):
        assert process.poll() is None, f"finished before its first last.pt: {process.communicate()}"
        assert time.monotonic() < deadline, "no last.pt written"
        time.sleep(0.2)


def store(cwd: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    return client, client.get_experiment_by_name("fsx").experiment_id


def final_weights(client, run_id: str, dst: Path) -> dict:
    return read_checkpoint(client.download_artifacts(run_id, "checkpoints/model.pt", str(dst)))["state_dict"]


# Faster R-CNN draws its RPN and RoI samples from torch's global generator and the jitter
# draws from its own: both states must travel in last.pt for a resume to be exact.
EXACT = [*SMALL, "detector=fasterrcnn", "dataset.augment.brightness=0.3", "train.steps=40", "train.checkpoint_every=2"]


@pytest.mark.slow
def test_sigterm_saves_ends_killed_and_resume_true_continues_the_same_run_to_the_same_weights(tmp_path):
    straight = fsx(["pretrain", *EXACT], tmp_path / "straight")
    assert straight.returncode == 0, explain(straight)

    cwd = tmp_path / "stopped"
    process = start_pretrain(EXACT, cwd)
    wait_for_last_checkpoint(cwd, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, (out, err)
    assert "continue with: fsx pretrain resume=runs:/" in out and "Traceback" not in err
    client, experiment = store(cwd)
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED"
    stopped_at = read_checkpoint(run.data.tags["fsx.last_checkpoint"])["train_state"]["step"]
    assert 2 <= stopped_at < 40

    resumed = fsx(["pretrain", "resume=true"], cwd)  # nothing else: the run's own settings
    assert resumed.returncode == 0, explain(resumed)
    (run,) = client.search_runs([experiment])  # the same run, not a new one
    assert run.info.status == "FINISHED" and "fsx.error" not in run.data.tags
    assert run.data.tags["fsx.resumed_at_step"] == str(stopped_at)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(1, 41))
    assert not Path(run.data.tags["fsx.last_checkpoint"]).exists()  # finished: the artifact is the checkpoint

    s_client, s_experiment = store(tmp_path / "straight")
    (s_run,) = s_client.search_runs([s_experiment])
    a, b = final_weights(s_client, s_run.info.run_id, tmp_path / "a"), final_weights(client, run.info.run_id, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_after_sigkill_runs_clean_marks_the_run_killed_and_it_resumes_by_id(tmp_path):
    cwd = tmp_path / "killed"
    process = start_pretrain([*SMALL, "train.steps=200", "train.checkpoint_every=2"], cwd)
    wait_for_last_checkpoint(cwd, process)
    process.kill()
    process.communicate(timeout=60)
    client, experiment = store(cwd)
    (run,) = client.search_runs([experiment])
    assert run.info.status == "RUNNING"  # nobody could record anything

    dry = fsx(["runs", "clean", "--dry-run"], cwd)
    assert dry.returncode == 0 and "would mark KILLED" in dry.stdout, explain(dry)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    clean = fsx(["runs", "clean"], cwd)
    assert clean.returncode == 0 and f"marked KILLED: {run.info.run_id}" in clean.stdout, explain(clean)
    assert client.get_run(run.info.run_id).info.status == "KILLED"

    resumed = fsx(["pretrain", f"resume=runs:/{run.info.run_id}", "train.steps=6"], cwd)
    assert resumed.returncode == 0, explain(resumed)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([experiment])) == 1

    again = one_message(fsx(["pretrain", f"resume=runs:/{run.info.run_id}"], cwd))
    assert "finished" in again and f"runs:/{run.info.run_id}/checkpoints/model.pt" in again


# --------------------------------------------------------------------------- before any work


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["eval", "checkpoint=latest"], "no MLflow store at sqlite:///mlflow.db"),
        (["adapt", "checkpoint=runs:/0123abcd"], "no MLflow store"),
        (["eval", "checkpoint=missing.pt"], "checkpoint=missing.pt: no such file"),
        (["eval", "checkpoint=missing.pt", "eval.milestones=[-1]"], "eval.milestones"),
        (["adapt", "checkpoint=missing.pt", "ways=0"], "ways=0"),
        (["eval", "checkpoint=missing.pt", "eval.score_threshold=2"], "eval.score_threshold=2"),
        (["pretrain", "-m", "train.log_every=1,0"], "train.log_every=0"),
    ],
)
def test_values_and_references_are_checked_before_anything_is_created(args, culprit, tmp_path):
    cwd = tmp_path / "empty"
    assert culprit in one_message(fsx(args, cwd))
    assert list(cwd.iterdir()) == []  # no mlflow.db, no outputs/ or multirun/ folder


def test_a_full_disk_while_writing_a_checkpoint_leaves_no_file_under_the_real_name(tmp_path, monkeypatch):
    import errno

    from fsx.engine import checkpoint as module
    from fsx.models.detectors import build_detector

    spec = {"detector": {"name": "fcos"}, "backbone": {"name": "tiny", "out_channels": 32}, "num_classes": 3, "image_size": 64, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    model = build_detector(spec)
    good = module.save_checkpoint(tmp_path / "last.pt", model, spec, ["a", "b", "c"], {})
    before = good.read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        module.save_checkpoint(tmp_path / "last.pt", model, spec, ["a", "b", "c"], {})
    assert good.read_bytes() == before  # the previous last.pt is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


# --------------------------------------------------------------------------- the store goes away mid-run


class FlakyClient:
    """An MLflow client whose store answers or not, as the test says."""

    def __init__(self):
        self.up, self.written = True, []

    def log_batch(self, run_id, metrics=(), params=()):
        if not self.up:
            raise ConnectionError("Connection refused")
        self.written += [(m.key, m.step) for m in metrics]


def flaky_run(monkeypatch):
    from fsx import tracking

    run = tracking.Run.__new__(tracking.Run)
    run.tracking_uri, run.id, run._client, run._pending, run._quiet_until = "http://store", "r1", FlakyClient(), [], 0.0
    monkeypatch.setattr(tracking, "RETRY_AFTER_SECONDS", 0)
    return run


def test_metrics_wait_in_memory_while_the_store_is_down_and_go_out_in_order(monkeypatch, capsys):
    run = flaky_run(monkeypatch)
    run.log_metrics({"loss": 1.0}, step=1)
    run._client.up = False
    run.log_metrics({"loss": 0.9}, step=2)
    run.log_metrics({"loss": 0.8}, step=3)
    assert run._client.written == [("loss", 1)] and len(run._pending) == 2
    assert "metrics wait in memory" in capsys.readouterr().err
    run._client.up = True
    run.log_metrics({"loss": 0.7}, step=4)
    assert run._client.written == [("loss", s) for s in (1, 2, 3, 4)] and not run._pending


def test_a_store_still_down_at_the_end_fails_the_run_with_one_message(monkeypatch):
    from fsx.tracking import StoreError

    run = flaky_run(monkeypatch)
    run._client.up = False
    run.log_metrics({"loss": 0.9}, step=2)
    with pytest.raises(StoreError, match="does not answer; 1 metric values of run r1 were not recorded"):
        run.flush()


def test_a_checkpoint_the_store_cannot_take_is_kept_in_the_run_directory(tmp_path, monkeypatch):
    from fsx.run import wiring
    from fsx.tracking import StoreError

    class DeadRun:
        def log_file(self, path, artifact_path=None):
            raise StoreError("the MLflow store at http://store failed while storing model.pt for run r1 (ConnectionError)")

    monkeypatch.setattr(wiring, "output_dir", lambda: tmp_path / "run")
    made = tmp_path / "tmp" / "model.pt"
    made.parent.mkdir()
    made.write_bytes(b"weights")
    with pytest.raises(StoreError, match="the checkpoint is kept at .*run/checkpoints/model.pt"):
        wiring.log_checkpoint(DeadRun(), made)
    assert (tmp_path / "run" / "checkpoints" / "model.pt").read_bytes() == b"weights"


def test_a_failed_job_keeps_the_params_mlflow_can_take(tmp_path):
    """MLflow refuses a whole batch of params for one key it cannot take (a package override,
    `group@pkg`); the failed job's record keeps the others."""
    from mlflow.tracking import MlflowClient

    from fsx import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.create_parent_run(uri, "fsx", "pretrain multirun", {"fsx.multirun": "parent"})
    run_id = tracking.record_failed_run(uri, "fsx", "pretrain job 0 (failed before it started)", {"fsx.error": "boom"}, parent, {"dataset@x": "letters", "seed": "3"})
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["fsx.error"] == "boom" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"seed": "3"}
