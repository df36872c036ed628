"""Every meta-learner through the CLI, as a user runs it: `fsx pretrain algorithm=<name>`
with a tiny budget, then `fsx eval` of its checkpoint, against a real MLflow store."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_cli import RUN_ID, SCORED, SMALL, client_for, download, explain, fsx_cli, ok, printed_checkpoint_run, sqlite_uri, table_rows

from fsx.engine.checkpoint import load_model, read_checkpoint, save_checkpoint
from fsx.models.heads import num_classes

pytestmark = pytest.mark.slow

TINY = [o for o in SMALL if not o.startswith("algorithm.")]
META = {
    "reptile": ["algorithm.inner_steps=2", "algorithm.inner_batch=4", "algorithm.shots=2"],
    "joint": ["algorithm.inner_batch=4", "algorithm.shots=2"],
    "maml": ["algorithm.inner_batch=4", "algorithm.shots=2", "algorithm.query_shots=2"],
    "fomaml": ["algorithm.inner_steps=2", "algorithm.inner_batch=4", "algorithm.shots=2", "algorithm.query_shots=2"],
    "metasgd": ["algorithm.inner_batch=4", "algorithm.shots=2", "algorithm.query_shots=2"],
    "anil": ["algorithm.inner_batch=4", "algorithm.shots=2", "algorithm.query_shots=2"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "HYDRA_", "MLFLOW_"))}
    out.update(FSX_CACHE=str(tmp_path_factory.mktemp("cache")), FSX_PROGRESS="plain", OMP_NUM_THREADS="1")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env) -> dict[str, dict]:
    """Each algorithm pretrained (3 meta-iterations) and evaluated (2 tasks), three at a time."""
    base = tmp_path_factory.mktemp("meta")

    def chain(name: str) -> dict:
        cwd = base / name
        pre = ok(fsx_cli(["pretrain", f"algorithm={name}", *TINY, *SCORED, *META[name], "train.steps=3", "train.log_every=1"], cwd, env))
        run_id = printed_checkpoint_run(pre.stdout)
        ev = ok(fsx_cli(["eval", f"checkpoint=runs:/{run_id}", "shots=2", "eval.repeats=2", "eval.milestones=[0,2]"], cwd, env))
        return {"cwd": cwd, "uri": sqlite_uri(cwd / "mlflow.db"), "pretrain": pre, "run_id": run_id, "eval": ev}

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(META, pool.map(chain, META)))


@pytest.mark.parametrize("name", list(META))
def test_meta_learner_pretrains_and_evaluates(name, runs, tmp_path):
    done = runs[name]
    client = client_for(done["uri"])
    run = client.get_run(done["run_id"])
    assert run.data.tags["fsx.algorithm"] == name
    params = run.data.params
    assert params["algorithm.name"] == name and "algorithm.bn_policy" in params, sorted(params)
    assert sorted(m.step for m in client.get_metric_history(done["run_id"], "train/loss")) == [1, 2, 3]

    payload = read_checkpoint(download(client, done["run_id"], "checkpoints/model.pt", tmp_path))
    assert payload["adapt_head"] == "keep" and payload["config"]["algorithm"]["name"] == name
    assert num_classes(load_model(payload)) == 5  # one output per task class, not per base class
    assert ("inner_lr" in payload) == (name == "metasgd")

    out = done["eval"].stdout
    assert table_rows(out) == [0, 2], explain(done["eval"])
    (eval_id,) = re.findall(rf"^MLflow run: ({RUN_ID})$", out, re.M)
    tags = client.get_run(eval_id).data.tags
    assert tags["fsx.algorithm"] == name
    assert tags["fsx.adapt_recipe"] == name  # adapted as it was meta-trained (adapt.recipe=auto)
    assert tags["fsx.adapt_optimizer"] == OWN_RECIPE[name], tags["fsx.adapt_optimizer"]


# how each checkpoint adapts by default: Reptile and joint with their inner Adam (beta1 0,
# lr 1e-3 in conf/algorithm/reptile.yaml), the MAML family with SGD at the inner lr 0.01 on
# their inner parameter set, Meta-SGD with its learned rates
OWN_RECIPE = {
    "reptile": "adam lr 0.001 beta1 0",
    "joint": "adam lr 0.001 beta1 0",
    "maml": "sgd lr 0.01",
    "fomaml": "sgd lr 0.01",
    "metasgd": "learned step sizes from the checkpoint (80 tensors)",
    "anil": "sgd lr 0.01, trains heads only",
}


def test_the_common_recipe_and_command_line_keys_override_the_checkpoints(runs, env):
    done = runs["reptile"]
    client = client_for(done["uri"])
    for extra, recipe, optimizer in (
        (["adapt.recipe=none"], "common", "adam lr 0.001"),
        (["adapt.lr=0.0005"], "reptile (command line: adapt.lr)", "adam lr 0.0005 beta1 0"),
    ):
        result = ok(fsx_cli(["adapt", f"checkpoint=runs:/{done['run_id']}", "shots=2", "adapt.steps=2", *extra], done["cwd"], env))
        (run_id,) = re.findall(rf"MLflow run ({RUN_ID})", result.stdout)
        tags = client.get_run(run_id).data.tags
        assert (tags["fsx.adapt_recipe"], tags["fsx.adapt_optimizer"]) == (recipe, optimizer)


@pytest.mark.parametrize("name", ["reptile", "fomaml"])
def test_a_fixed_head_meta_learner_pretrains_validates_and_evaluates(name, env, tmp_path):
    pre = ok(fsx_cli(["pretrain", f"algorithm={name}", "algorithm.head=fixed", *TINY, *SCORED, *META[name], "train.steps=2", "train.val_images=8"], tmp_path, env))
    run_id = printed_checkpoint_run(pre.stdout)
    client = client_for(sqlite_uri(tmp_path / "mlflow.db"))
    run = client.get_run(run_id)
    assert run.data.params["algorithm.head_policy"].startswith("fixed: one output row per base class")
    assert "val/AP50" in run.data.metrics  # one row per base class: the checkpoint detects them all
    payload = read_checkpoint(download(client, run_id, "checkpoints/model.pt", tmp_path))
    assert payload["adapt_head"] == "reset" and num_classes(load_model(payload)) == len(payload["classes"]) > 5
    ev = ok(fsx_cli(["eval", f"checkpoint=runs:/{run_id}", "shots=2", "eval.repeats=1", "eval.milestones=[0,1]"], tmp_path, env))
    assert table_rows(ev.stdout) == [0, 1], explain(ev)


def test_learned_rates_can_be_switched_off(runs, env):
    done = runs["metasgd"]
    result = ok(fsx_cli(["adapt", f"checkpoint=runs:/{done['run_id']}", "shots=2", "adapt.steps=2", "adapt.learned_lr=false"], done["cwd"], env))
    (run_id,) = re.findall(rf"MLflow run ({RUN_ID})", result.stdout)
    # its recipe without the learned rates: SGD steps of the initial inner lr
    assert client_for(done["uri"]).get_run(run_id).data.tags["fsx.adapt_optimizer"] == "sgd lr 0.01"


def test_maml_on_faster_rcnn_is_refused_with_the_way_out(env, tmp_path):
    result = fsx_cli(["pretrain", "algorithm=maml", "detector=fasterrcnn", *TINY, "train.steps=1"], tmp_path, env)
    assert result.returncode == 2, explain(result)
    assert "RoIAlign" in result.stderr and "algorithm=fomaml" in result.stderr and "Traceback" not in result.stderr


def test_a_meta_learner_resumes_from_its_last_checkpoint(env, tmp_path: Path):
    spec = {
        "detector": {"name": "retinanet", "anchor_scale": 1.5},
        "backbone": {"name": "tiny", "out_channels": 64, "widths": [16, 32, 64, 128, 128], "extra_levels": 0},
        "num_classes": 5, "image_size": 64, "image_mean": [0.92] * 3, "image_std": [0.25] * 3,
    }
    from fsx.models.detectors import build_detector

    torch.manual_seed(0)
    base = [c for c in "ACDEFGIJKLNOPQSTUVXYZ"]
    last = save_checkpoint(tmp_path / "last.pt", build_detector(spec), spec, base, {"algorithm": {"name": "reptile"}}, kind="pretrain", train_state={"step": 2, "algorithm": {}})
    result = ok(fsx_cli(["pretrain", "algorithm=reptile", *TINY, *META["reptile"], "train.steps=4", "train.log_every=1", f"resume={last}"], tmp_path, env))
    client = client_for(sqlite_uri(tmp_path / "mlflow.db"))
    (run,) = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/beta")) == [3, 4]
    assert "steps" in result.stdout
    wrong = fsx_cli(["pretrain", "algorithm=maml", *TINY, f"resume={last}"], tmp_path, env)
    assert wrong.returncode == 2 and "written by algorithm=reptile" in wrong.stderr, explain(wrong)


def test_models_lists_every_detector_and_backbone_with_what_runs_on_it(env, tmp_path):
    from fsx.models.backbones import BACKBONES
    from fsx.models.detectors import DETECTORS

    out = ok(fsx_cli(["models"], tmp_path, env)).stdout
    rows = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    assert set(rows) == {(d, b) for d in DETECTORS for b in BACKBONES}, out
    assert re.search(r"fcos\s+tiny\s+1\.03 M\s+standard, reptile, joint, maml, fomaml, metasgd, anil$", rows[("fcos", "tiny")])
    assert rows[("fasterrcnn", "tiny")].endswith("maml, metasgd with detector.roi_align=grid")
    assert ", tfa;" in rows[("fasterrcnn", "tiny")]  # TFA is defined for Faster R-CNN only
