"""`fsx runs sweep`: a sweep's jobs read back from the store, whatever state they are in."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from cli_helpers import cli_env, explain
from mlflow.tracking import MlflowClient

from fsx import tracking
from fsx.errors import UsageError
from fsx.run.sweep import SKIPPED_FILE
from fsx.run.sweep_status import split_overrides, sweep_status


def test_overrides_split_between_overrides_only():
    assert split_overrides("a=1 b=[1, 2] +c.d=x ~e ++f@g=h  eval.milestones=[0,50]") == ["a=1", "b=[1, 2]", "+c.d=x", "~e", "++f@g=h", "eval.milestones=[0,50]"]
    assert split_overrides("") == []


def dead_pid() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return str(child.pid)


@pytest.fixture()
def store(tmp_path):
    """A sweep of 5 jobs: 0 finished, 1 failed before its run opened, 2 left RUNNING by a
    process that is gone, 3 skipped (a FINISHED twin exists), 4 finished; and an older sweep."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.create_parent_run(uri, "fsx", "pretrain multirun", {"fsx.multirun": "parent", "fsx.command": "pretrain"})  # older, empty
    sweep_dir = tmp_path / "multirun"
    sweep_dir.mkdir()
    parent = tracking.create_parent_run(uri, "fsx", "pretrain multirun", {
        "fsx.multirun": "parent", "fsx.command": "pretrain", "fsx.sweep": "seed=0,1,2,3,4 dataset.fold=1,99 train.steps=5", "fsx.sweep_dir": str(sweep_dir),
    })

    def job(n: int, overrides: str) -> dict[str, str]:
        return {"fsx.job": str(n), "fsx.overrides": overrides, "fsx.command": "pretrain"}

    for n in (4, 0):  # recorded out of order: the table sorts by job number
        with tracking.open_run(uri, "fsx", "pretrain standard letters/1", job(n, f"seed={n} dataset.fold=1 train.steps=5"), parent):
            pass
    tracking.record_failed_run(uri, "fsx", "pretrain job 1 (failed before it started)",
                               {**job(1, "seed=1 dataset.fold=99 train.steps=5"), "fsx.error": "dataset.fold=99 is not a letters fold\nsecond line"}, parent, {"seed": "1"})
    client = MlflowClient(uri)
    client.create_run(client.get_experiment_by_name("fsx").experiment_id, run_name="pretrain standard letters/1",
                      tags={**job(2, "seed=2 dataset.fold=1 train.steps=5"), "mlflow.parentRunId": parent, "fsx.host": socket.gethostname(), "fsx.pid": dead_pid()})
    (sweep_dir / SKIPPED_FILE).write_text(f"job 3 (seed=3 dataset.fold=1 train.steps=5): identical to FINISHED run {'ab' * 16}\n")
    return uri, parent


def test_every_job_has_a_row_in_sweep_order_with_its_state(store):
    uri, parent = store
    text = sweep_status(uri, "fsx")  # the newest sweep
    assert text == sweep_status(uri, "fsx", parent)
    assert text.splitlines()[0].startswith(f"sweep {parent} (pretrain; parent RUNNING): seed=0,1,2,3,4")
    assert "  every job: train.steps=5" in text
    assert "  5 job(s): 2 FINISHED, 1 SKIPPED, 1 FAILED, 1 RUNNING?" in text
    table = text.split("overrides / error\n", 1)[1].splitlines()
    rows = [line.split() for line in table if line[:4].strip().isdigit()]
    assert [(r[0], r[1], r[4:]) for r in rows] == [
        ("0", "FINISHED", ["seed=0", "dataset.fold=1"]),
        ("1", "FAILED", ["seed=1", "dataset.fold=99"]),
        ("2", "RUNNING?", ["seed=2", "dataset.fold=1"]),
        ("3", "SKIPPED", ["seed=3", "dataset.fold=1"]),
        ("4", "FINISHED", ["seed=4", "dataset.fold=1"]),
    ]
    assert rows[3][3] == "abababab"  # the finished twin's run
    lines = text.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.split()[:2] == ["1", "FAILED"])
    assert lines[failed + 1].strip() == "dataset.fold=99 is not a letters fold"  # the error's first line, under its job
    assert "fsx runs clean" in text  # what to do about RUNNING?


def test_what_is_not_a_sweep_is_named(store, tmp_path):
    uri, _ = store
    child = tracking.search_runs(uri, "fsx", "tags.`fsx.job` = '0'")[0]["id"]
    with pytest.raises(UsageError, match="not the parent run of a sweep"):
        sweep_status(uri, "fsx", child)
    with pytest.raises(UsageError, match="no run 'nope'"):
        sweep_status(uri, "fsx", "nope")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with tracking.open_run(empty, "fsx", "pretrain", {}):
        pass
    with pytest.raises(UsageError, match="no sweep"):
        sweep_status(empty, "fsx")


def test_the_command_prints_the_table_and_exits_2_on_a_bad_id(store, tmp_path):
    uri, parent = store
    env = cli_env(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-m", "fsx", "runs", "sweep", "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, explain(result)
    assert f"sweep {parent}" in result.stdout and "RUNNING?" in result.stdout
    result = subprocess.run([sys.executable, "-m", "fsx", "runs", "sweep", "nope", "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"fsx: error: no run 'nope' in the MLflow store at {uri}", explain(result)
