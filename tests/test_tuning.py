"""Tuning without peeking: eval.tasks=validation draws base-class tasks from the images the
pretraining held out, every verb that scores returns its objective to Hydra, Optuna sweeps
(hydra/sweeper=tune) record their trials as child runs and their best trial on the parent,
and `fsx report` never mixes validation and test runs."""

from __future__ import annotations

import re

import pytest
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL, cli_env, explain, ok, run_fsx
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fsx.data.coco import CocoSet
from fsx.data.folds import hold_out, letters_fold, split_by_fold, validation_split
from fsx.errors import UsageError
from fsx.run.checks import objective_milestone
from fsx.run.eval import objective_value


def objective_cfg(objective: str, milestones=(0, 10, 50)):
    return OmegaConf.create({"eval": {"objective": objective, "milestones": list(milestones)}})


def test_the_objective_names_a_metric_at_a_milestone():
    assert objective_milestone(objective_cfg("AP50@last")) == ("AP50", 50)
    assert objective_milestone(objective_cfg("AP@10")) == ("AP", 10)
    assert objective_milestone(objective_cfg("AP50@best")) == ("AP50", None)
    table = {0: {"AP50": 0.1}, 10: {"AP50": 0.4}, 50: {"AP50": 0.4}}  # ties: the earliest step
    assert objective_value(objective_cfg("AP50@best"), table) == (0.4, 10)
    assert objective_value(objective_cfg("AP50@last"), table) == (0.4, 50)
    for bad, message in (("AP50", "write <metric>@<milestone>"), ("mAP@last", "write <metric>@<milestone>"), ("AP50@20", "must be one of eval.milestones")):
        with pytest.raises(UsageError, match=message):
            objective_milestone(objective_cfg(bad))


def test_validation_tasks_are_the_base_classes_on_the_images_pretraining_held_out(letters_source):
    source = CocoSet.load(letters_source / "annotations.json", letters_source)
    split = split_by_fold(source, letters_fold(1), 0)
    val = validation_split(split, 30, 0)
    _, held = hold_out(split.train, 30, 0)
    assert val.fold.novel == split.fold.base and not val.fold.base
    assert sorted(val.test_adapt.image_ids + val.test_test.image_ids) == sorted(held.image_ids)
    assert not set(val.test_adapt.image_ids) & set(val.test_test.image_ids)
    novel = {source.category_id(c) for c in split.fold.novel}
    assert not any(a["category_id"] in novel for s in (val.test_adapt, val.test_test) for a in s.coco["annotations"])  # no novel box anywhere
    assert not set(held.image_ids) & set(split.test_adapt.image_ids + split.test_test.image_ids)
    with pytest.raises(UsageError, match="held out none"):
        validation_split(split, 0, 0)


@pytest.mark.slow
def test_validation_eval_an_optuna_sweep_and_a_report_that_refuses_to_mix(tmp_path):
    env = cli_env(tmp_path / "cache")
    letters = [o for o in LETTERS_SMALL if not o.startswith("dataset.generator.num_images")] + ["dataset.generator.num_images=600"]
    pre = ok(run_fsx(["pretrain", *letters, *KEEP_LOW_SCORES, "algorithm.batch_size=8", "train.steps=6", "train.val_images=120"], tmp_path, env))
    run_id = re.search(r"checkpoint: runs:/([0-9a-f]{32})/", pre.stdout).group(1)
    small = ["ways=3", "shots=1", "eval.repeats=1", "eval.milestones=[0,2]"]
    val = ok(run_fsx(["eval", f"checkpoint=runs:/{run_id}", "eval.tasks=validation", *small], tmp_path, env))
    assert "on validation tasks: base classes on held-out images" in val.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fsx").experiment_id
    (val_run,) = client.search_runs([experiment], "tags.`fsx.command` = 'eval'")
    assert val_run.data.tags["fsx.task_pool"] == "validation"
    test = ok(run_fsx(["eval", f"checkpoint=runs:/{run_id}", *small], tmp_path, env))
    assert "on test-test" in test.stdout
    ignored = run_fsx(["eval", f"checkpoint=runs:/{run_id}", "adapt.steps=50"], tmp_path, env)
    assert ignored.returncode == 2 and "set eval.milestones=[...,N] instead" in ignored.stderr, explain(ignored)
    mixed = run_fsx(["report"], tmp_path, env)
    assert mixed.returncode == 2 and "scored on validation tasks" in mixed.stderr, explain(mixed)

    sweep = run_fsx(
        ["eval", "-m", "hydra/sweeper=tune", "hydra.sweeper.n_trials=3", f"checkpoint=runs:/{run_id}", "eval.tasks=validation", *small, "adapt.lr=tag(log, interval(1e-4, 1e-2))"],
        tmp_path, env,
    )
    assert sweep.returncode == 0, explain(sweep)
    (parent,) = client.search_runs([experiment], "tags.`fsx.multirun` = 'parent'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3 and all(c.data.tags["fsx.task_pool"] == "validation" for c in children)
    tags = parent.data.tags
    best = client.get_run(tags["fsx.best_run"])  # Optuna's best: AP50 at the last milestone, the highest
    assert best.data.metrics["AP50"] == pytest.approx(max(c.data.metrics["AP50"] for c in children))
    assert float(tags["fsx.best_value"]) == pytest.approx(best.data.metrics["AP50"])
    key, value = tags["fsx.best_overrides"].split("=")
    assert key == "adapt.lr" and float(value) == pytest.approx(float(best.data.params["adapt.lr"]))
    assert f"best trial: {tags['fsx.best_overrides']}" in sweep.stdout
