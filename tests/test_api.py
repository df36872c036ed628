"""fsx from Python (fsx/api.py): the verbs as functions with the CLI's overrides, the same
config tree and MLflow record, no subprocess; bad input raises fsx.UsageError with the CLI's
message."""

from __future__ import annotations

import math

import pytest
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL, cli_env, ok, run_fsx
from mlflow.tracking import MlflowClient

import fsx

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
PRETRAIN = [*LETTERS_SMALL, *KEEP_LOW_SCORES, "algorithm.batch_size=8", "train.steps=6", "train.val_images=20"]
EVAL = ["shots=2", "eval.repeats=2", "eval.milestones=[0,3]"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A working directory and letters cache of its own, as a user's notebook would have."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FSX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    return tmp_path


def test_pretrain_and_evaluate_from_python_record_what_the_cli_records(home):
    pre = fsx.pretrain(*PRETRAIN)
    assert pre["checkpoint"] == f"runs:/{pre['run_id']}/checkpoints/model.pt" and pre["steps"] == 6
    assert pre["objective"] == pre["val"]["AP50"]  # base AP50 on the held-out images
    ev = fsx.evaluate(f"checkpoint=runs:/{pre['run_id']}", *EVAL)
    assert sorted(ev["table"]) == [0, 3] and math.isclose(ev["objective"], ev["table"][3]["AP50"])
    assert len(ev["rows"]) == 4  # 2 tasks x 2 milestones

    # the same eval from the command line, in the same store
    cli = ok(run_fsx(["eval", f"checkpoint=runs:/{pre['run_id']}", *EVAL], home, cli_env(home / "cache")))
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("fsx").experiment_id], "tags.`fsx.command` = 'eval'")}
    (cli_id,) = set(runs) - {ev["run_id"]}
    assert f"MLflow run: {cli_id}" in cli.stdout
    mine, theirs = runs[ev["run_id"]].data, runs[cli_id].data
    assert mine.params == theirs.params  # the same composed config
    skip = ("fsx.last_checkpoint", "fsx.pid", "fsx.host", "mlflow.source.name", "mlflow.source.type", "mlflow.user")  # which process ran it
    assert {k: v for k, v in mine.tags.items() if k not in skip and not k.startswith("fsx.process")} == {k: v for k, v in theirs.tags.items() if k not in skip and not k.startswith("fsx.process")}
    for key in ("AP50", "AP"):
        assert math.isclose(mine.metrics[key], theirs.metrics[key], abs_tol=1e-6), key


def test_bad_input_raises_usage_error_with_the_clis_message(home):
    with pytest.raises(fsx.UsageError, match="fsx has no key train.stepz: did you mean train.steps"):
        fsx.pretrain("train.stepz=3")
    with pytest.raises(fsx.UsageError, match="this command needs a checkpoint"):
        fsx.evaluate()
    with pytest.raises(fsx.UsageError, match="runs from the command line"):
        fsx.evaluate("-m", "checkpoint=latest")
    with pytest.raises(fsx.UsageError, match="not 3"):
        fsx.pretrain(3)
    assert not (home / "mlflow.db").exists()  # nothing ran
