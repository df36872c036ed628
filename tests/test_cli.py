"""End-to-end tests of the `fsx` command, run as a user runs it: `python -m fsx <verb> ...` in a
fresh working directory, with the letters data cached in a session temp dir, and the MLflow
store read back with a real `MlflowClient` (no mocks).

To stay fast on a 2-core CPU every run uses a small letters set (300 images of 64 px) and
budgets of a few steps; the pretraining run is made once and reused. Independent commands run
concurrently (a small thread pool of subprocesses), so the file takes about a minute or two.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import string
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL, cli_env, explain, ok, run_fsx

import fsx

pytestmark = pytest.mark.slow

SMALL = [*LETTERS_SMALL, "algorithm.batch_size=8"]
# The end-to-end model keeps its low-confidence boxes (score >= 0.001, 20 per image) and is
# pretrained for 30 steps, so that it scores above zero and the repeats' metrics differ (after
# 6 steps it scored exactly 0 everywhere on some machines: floating-point order differs).
SCORED = KEEP_LOW_SCORES
FOLD1_NOVEL = ["B", "H", "M", "R", "W"]
FOLD1_BASE = [c for c in string.ascii_uppercase if c not in FOLD1_NOVEL]
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
CONTRACT_TAGS = ("fsx.command", "fsx.dataset", "fsx.fold", "fsx.algorithm", "fsx.detector", "fsx.backbone")
RUN_ID = r"[0-9a-f]{32}"
TIMEOUT = 600


# --------------------------------------------------------------------------- helpers


def fsx_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_fsx(args, cwd, env, TIMEOUT)


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def printed_checkpoint_run(stdout: str) -> str:
    found = re.findall(rf"^checkpoint: runs:/({RUN_ID})/checkpoints/model\.pt$", stdout, re.M)
    assert len(found) == 1, f"no single 'checkpoint: runs:/<id>/checkpoints/model.pt' line in:\n{stdout}"
    return found[0]


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def download(client, run_id: str, artifact: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, artifact, str(dst)))


def history(client, run_id: str, metric: str) -> dict[int, float]:
    """step -> value of one metric (each step logged once)."""
    points = client.get_metric_history(run_id, metric)
    steps = [m.step for m in points]
    assert len(steps) == len(set(steps)), f"{metric} logged more than once at a step: {steps}"
    return {m.step: m.value for m in points}


def same(a: float, b: float, tol: float = 1e-6) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def nan_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def table_rows(stdout: str) -> list[int]:
    """The milestone column of the table `fsx eval` prints."""
    lines = stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.split()[:1] == ["steps"] and "AP50" in line]
    assert len(header) == 1, f"no single table header in:\n{stdout}"
    rows = []
    for line in lines[header[0] + 1 :]:
        match = re.match(r"^\s*(\d+)\s+\S", line)
        if not match:
            break
        rows.append(int(match.group(1)))
    return rows


def assert_usage_error(result: subprocess.CompletedProcess, *culprits: str) -> str:
    """Exit code 2, one `fsx: error:` paragraph naming every culprit, no traceback."""
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr + result.stdout, explain(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsx: error:")]
    assert len(errors) == 1, explain(result)
    message = result.stderr[result.stderr.index("fsx: error:") :].strip()
    assert "\n\n" not in message and len(message) < 2000, f"not one short paragraph:\n{message}"
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not named in: {message}"
    return message


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fsx_env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("fsx-cache"))


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=3) as executor:
        yield executor


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fsx-cli")


@pytest.fixture(scope="module")
def launch(pool, fsx_env):
    def start(args: list[str], cwd: Path) -> Future:
        return pool.submit(fsx_cli, list(args), cwd, fsx_env)

    return start


@dataclass
class Sweeps:
    ok_dir: Path
    ok_uri: str
    ok: Future
    failing_dir: Path
    failing: Future


@pytest.fixture(scope="module", autouse=True)
def sweeps(launch, base_dir) -> Sweeps:
    """Both multiruns start first, in the background, while the end-to-end chain runs."""
    ok_dir, failing_dir = base_dir / "sweep-ok", base_dir / "sweep-failing"
    ok_uri = sqlite_uri(base_dir / "stores" / "sweep.db")  # an absolute store outside the cwd
    (base_dir / "stores").mkdir(parents=True, exist_ok=True)
    ok_future = launch(
        ["pretrain", "-m", "backbone=tiny,resnet18", "seed=0,1", *SMALL, "train.steps=1",
         f"hydra.sweep.dir={ok_dir / 'multirun'}", f"mlflow.tracking_uri={ok_uri}"],
        ok_dir,
    )
    failing_future = launch(
        ["pretrain", "-m", "dataset.fold=1,99", *SMALL, "train.steps=1", f"hydra.sweep.dir={failing_dir / 'multirun'}"],
        failing_dir,
    )
    return Sweeps(ok_dir, ok_uri, ok_future, failing_dir, failing_future)


@dataclass
class Done:
    cwd: Path
    uri: str
    run_id: str
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def pretrained(launch, base_dir) -> Done:
    cwd = base_dir / "e2e"
    result = ok(launch(["pretrain", *SMALL, *SCORED, "train.steps=30", "train.log_every=8"], cwd).result())
    return Done(cwd, sqlite_uri(cwd / "mlflow.db"), printed_checkpoint_run(result.stdout), result)


@pytest.fixture(scope="module")
def started_adapt_eval(launch, pretrained) -> dict[str, Future]:
    """adapt and eval from the pretrained run, concurrently (each makes its own run)."""
    ref = f"checkpoint=runs:/{pretrained.run_id}"
    return {
        "adapt": launch(["adapt", ref, "shots=2", "adapt.steps=4"], pretrained.cwd),
        "eval": launch(["eval", ref, "shots=2", "eval.repeats=2", "eval.milestones=[0,3]"], pretrained.cwd),
    }


@pytest.fixture(scope="module")
def adapted(started_adapt_eval, pretrained) -> Done:
    result = ok(started_adapt_eval["adapt"].result())
    return Done(pretrained.cwd, pretrained.uri, printed_checkpoint_run(result.stdout), result)


@pytest.fixture(scope="module")
def evaluated(started_adapt_eval, pretrained) -> Done:
    result = ok(started_adapt_eval["eval"].result())
    found = re.findall(rf"^MLflow run: ({RUN_ID})$", result.stdout, re.M)
    assert len(found) == 1, explain(result)
    return Done(pretrained.cwd, pretrained.uri, found[0], result)


@pytest.fixture(scope="module")
def evaluated_direct(launch, adapted) -> Done:
    result = ok(launch(["eval", f"checkpoint=runs:/{adapted.run_id}", "eval.repeats=2", "eval.milestones=[0,3]"], adapted.cwd).result())
    found = re.findall(rf"^MLflow run: ({RUN_ID})$", result.stdout, re.M)
    assert len(found) == 1, explain(result)
    return Done(adapted.cwd, adapted.uri, found[0], result)


@pytest.fixture(scope="module")
def checkpoint_file(pretrained, base_dir) -> Path:
    return download(client_for(pretrained.uri), pretrained.run_id, "checkpoints/model.pt", base_dir / "files")


# --------------------------------------------------------------------------- 1. pretrain -> adapt -> eval


def test_pretrain_records_run_in_default_store(pretrained):
    out = pretrained.result.stdout
    assert re.search(rf"MLflow run {pretrained.run_id} \(experiment 'fsx' at sqlite:///mlflow.db\)", out), out
    assert (pretrained.cwd / "mlflow.db").is_file()  # the default store, in the working directory
    client = client_for(pretrained.uri)
    run = client.get_run(pretrained.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fsx"
    tags = run.data.tags
    assert {k: tags.get(k) for k in CONTRACT_TAGS} == {
        "fsx.command": "pretrain", "fsx.dataset": "letters", "fsx.fold": "1",
        "fsx.algorithm": "standard", "fsx.detector": "fcos", "fsx.backbone": "tiny",
    }
    assert run.data.params["train.steps"] == "30"
    assert run.data.params["dataset.generator.num_images"] == "300"
    assert tags["fsx.overrides"] == " ".join([*SMALL, *SCORED, "train.steps=30", "train.log_every=8"])
    assert "fsx.job" not in tags  # not a job of a sweep


def test_pretrain_artifacts(pretrained, tmp_path):
    client = client_for(pretrained.uri)
    assert {"config.yaml", "manifest.json", "checkpoints/model.pt"} <= artifact_paths(client, pretrained.run_id)

    config = yaml.safe_load(download(client, pretrained.run_id, "config.yaml", tmp_path).read_text())
    assert config["command"] == "pretrain"
    assert config["train"]["steps"] == 30
    assert config["dataset"]["fold"] == 1 and config["dataset"]["generator"]["num_images"] == 300
    assert "${" not in json.dumps(config), "config.yaml must be resolved"

    manifest = json.loads(download(client, pretrained.run_id, "manifest.json", tmp_path).read_text())
    assert manifest["kind"] == "split"
    assert manifest["dataset"] == "letters" and manifest["fold"] == 1
    assert manifest["base_classes"] == FOLD1_BASE
    assert manifest["novel_classes"] == FOLD1_NOVEL
    assert manifest["train"]["images"] > 0
    adapt_ids, test_ids = manifest["test_adapt"]["image_ids"], manifest["test_test"]["image_ids"]
    assert adapt_ids and test_ids and not set(adapt_ids) & set(test_ids)
    assert manifest["train"]["images"] + len(adapt_ids) + len(test_ids) == 300


def test_pretrain_checkpoint_rebuilds_the_model(checkpoint_file):
    from fsx.engine.checkpoint import load_model, read_checkpoint
    from fsx.models.heads import num_classes

    payload = read_checkpoint(checkpoint_file)
    assert payload["kind"] == "pretrain"
    assert payload["classes"] == FOLD1_BASE and len(payload["classes"]) == 21
    model = load_model(payload)
    assert num_classes(model) == 21
    assert payload["config"]["train"]["steps"] == 30


def test_pretrain_logs_training_losses(pretrained):
    client = client_for(pretrained.uri)
    loss = history(client, pretrained.run_id, "train/loss")
    assert sorted(loss) == [8, 16, 24, 30]  # train.log_every=8, and the last step
    assert all(math.isfinite(v) and v > 0 for v in loss.values())
    assert history(client, pretrained.run_id, "train/final_loss").keys() == {30}


def test_adapt_run(adapted, pretrained, tmp_path):
    assert f"MLflow run {adapted.run_id}" in adapted.result.stdout
    assert "adapted to B, H, M, R, W (2-shot, 10 images, task_seed 1)" in adapted.result.stdout
    client = client_for(adapted.uri)
    run = client.get_run(adapted.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert {k: tags.get(k) for k in CONTRACT_TAGS} == {
        "fsx.command": "adapt", "fsx.dataset": "letters", "fsx.fold": "1",
        "fsx.algorithm": "standard", "fsx.detector": "fcos", "fsx.backbone": "tiny",
    }
    assert tags["fsx.source_run"] == pretrained.run_id
    assert {"config.yaml", "manifest.json", "checkpoints/model.pt"} <= artifact_paths(client, adapted.run_id)

    manifest = json.loads(download(client, adapted.run_id, "manifest.json", tmp_path).read_text())
    assert manifest["kind"] == "task"
    assert (manifest["ways"], manifest["shots"], manifest["task_seed"]) == (5, 2, 1)
    assert manifest["classes"] == FOLD1_NOVEL
    assert len(manifest["image_ids"]) == 10 == len(set(manifest["image_ids"]))
    assert all(n >= 2 for n in manifest["images_per_class"].values())
    assert set(manifest["image_ids"]) <= set(manifest["split"]["test_adapt"]["image_ids"])

    metrics = run.data.metrics
    for name in COCO_STATS:
        assert name in metrics, f"adapt did not log {name}"
    assert 0.0 <= metrics["AP50"] <= 1.0
    assert metrics["adapt/steps_run"] == 4


def test_adapt_checkpoint_holds_the_novel_classes(adapted, tmp_path):
    from fsx.engine.checkpoint import load_model, read_checkpoint
    from fsx.models.heads import num_classes

    path = download(client_for(adapted.uri), adapted.run_id, "checkpoints/model.pt", tmp_path)
    payload = read_checkpoint(path)
    assert payload["kind"] == "adapt"
    assert payload["classes"] == FOLD1_NOVEL
    assert num_classes(load_model(payload)) == 5
    assert payload["task"]["image_ids"] and payload["task"]["shots"] == 2


def test_eval_logs_aggregates_at_each_milestone(evaluated, pretrained):
    client = client_for(evaluated.uri)
    run = client.get_run(evaluated.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["fsx.command"] == "eval" and tags["fsx.eval_mode"] == "adapt"
    assert tags["fsx.source_run"] == pretrained.run_id
    assert all(k in tags for k in CONTRACT_TAGS)
    for name in COCO_STATS:
        for suffix in ("", "_mean", "_std", "_ci95"):
            assert sorted(history(client, evaluated.run_id, name + suffix)) == [0, 3], name + suffix
        for r in (1, 2):
            assert sorted(history(client, evaluated.run_id, f"repeat_{r:02d}/{name}")) == [0, 3]
    assert "repeat_03/AP50" not in run.data.metrics
    assert run.data.metrics["eval/repeats"] == 2


def test_eval_mean_is_the_mean_of_the_repeats(evaluated):
    client = client_for(evaluated.uri)
    differ = 0
    for name in COCO_STATS:
        mean = history(client, evaluated.run_id, f"{name}_mean")
        plain_name = history(client, evaluated.run_id, name)
        std = history(client, evaluated.run_id, f"{name}_std")
        r1 = history(client, evaluated.run_id, f"repeat_01/{name}")
        r2 = history(client, evaluated.run_id, f"repeat_02/{name}")
        for step in (0, 3):
            assert same(mean[step], nan_mean([r1[step], r2[step]])), (name, step, mean[step], r1[step], r2[step])
            assert same(plain_name[step], mean[step])
            if not (math.isnan(r1[step]) or math.isnan(r2[step])):
                assert same(std[step], abs(r1[step] - r2[step]) / math.sqrt(2)), (name, step)  # sample std of 2
            differ += not same(r1[step], r2[step])
    assert differ, "the two repeats scored identically everywhere: this check has lost its teeth (see SCORED)"


def test_eval_artifacts(evaluated, tmp_path):
    client = client_for(evaluated.uri)
    assert {"config.yaml", "manifest.json", "eval/repeats.csv", "eval/summary.csv", "eval/AP50.png", "eval/AP50_vs_repeats.png"} <= artifact_paths(client, evaluated.run_id)
    assert sorted(history(client, evaluated.run_id, "cumulative/AP50_mean")) == [1, 2]
    speed = client.get_run(evaluated.run_id).data.metrics
    assert {"speed/AP50_auc", "speed/AP50_steps_to_90pct", "speed/AP50_seconds_to_90pct"} <= set(speed)

    config = yaml.safe_load(download(client, evaluated.run_id, "config.yaml", tmp_path).read_text())
    assert config["command"] == "eval" and config["eval"]["milestones"] == [0, 3]
    assert config["dataset"]["generator"]["num_images"] == 300  # the checkpoint's dataset, not the default

    manifest = json.loads(download(client, evaluated.run_id, "manifest.json", tmp_path).read_text())
    assert manifest["kind"] == "eval"
    assert manifest["split"]["novel_classes"] == FOLD1_NOVEL
    assert [t["task_seed"] for t in manifest["tasks"]] == [1, 2]  # task_seed + r - 1
    assert all(t["shots"] == 2 and len(t["image_ids"]) == 10 for t in manifest["tasks"])
    assert manifest["tasks"][0]["image_ids"] != manifest["tasks"][1]["image_ids"]

    repeats = list(csv.DictReader(io.StringIO(download(client, evaluated.run_id, "eval/repeats.csv", tmp_path).read_text())))
    assert sorted((int(r["repeat"]), int(r["milestone"])) for r in repeats) == [(1, 0), (1, 3), (2, 0), (2, 3)]
    for row in repeats:
        logged = history(client, evaluated.run_id, f"repeat_{int(row['repeat']):02d}/AP50")[int(row["milestone"])]
        assert same(float(row["AP50"]), logged)
        assert int(row["task_seed"]) == int(row["repeat"])
        assert float(row["adapt_seconds"]) >= 0 and (float(row["adapt_seconds"]) > 0) == (int(row["milestone"]) > 0)

    summary = list(csv.DictReader(io.StringIO(download(client, evaluated.run_id, "eval/summary.csv", tmp_path).read_text())))
    assert [int(r["milestone"]) for r in summary] == [0, 3]
    means = history(client, evaluated.run_id, "AP50_mean")
    for row in summary:
        assert same(float(row["AP50_mean"]), means[int(row["milestone"])])


def test_eval_prints_a_row_per_milestone(evaluated):
    out = evaluated.result.stdout
    assert "5-way 2-shot on test-test (B, H, M, R, W)" in out and "over 2 tasks" in out
    assert table_rows(out) == [0, 3]


def test_eval_of_an_adapted_checkpoint_scores_it_directly(evaluated_direct, adapted):
    client = client_for(evaluated_direct.uri)
    run = client.get_run(evaluated_direct.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fsx.eval_mode"] == "direct"
    assert run.data.tags["fsx.source_run"] == adapted.run_id
    assert run.data.metrics["eval/repeats"] == 1
    assert "repeat_01/AP50" in run.data.metrics and "repeat_02/AP50" not in run.data.metrics
    assert sorted(history(client, evaluated_direct.run_id, "AP50_mean")) == [0]
    assert "scored directly" in evaluated_direct.result.stdout
    assert table_rows(evaluated_direct.result.stdout) == [0]
    # the same weights on the same test-test: the adapt run's own score
    adapt_metrics = client.get_run(adapted.run_id).data.metrics
    for name in ("AP", "AP50", "AP75"):
        assert same(history(client, evaluated_direct.run_id, f"{name}_mean")[0], adapt_metrics[name]), name


# --------------------------------------------------------------------------- 2. multirun


@pytest.fixture(scope="module")
def sweep_ok(sweeps) -> subprocess.CompletedProcess:
    return sweeps.ok.result()


def test_multirun_makes_one_parent_and_a_child_per_job(sweeps, sweep_ok):
    ok(sweep_ok)
    assert not (sweeps.ok_dir / "mlflow.db").exists(), "mlflow.tracking_uri must replace the default store"
    client = client_for(sweeps.ok_uri)
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fsx.multirun") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["fsx.command"] == "pretrain"
    assert re.search(rf"multirun: MLflow parent run {parent.info.run_id}: 4 of 4 jobs finished", sweep_ok.stdout), sweep_ok.stdout
    children = [r for r in runs if r is not parent]
    assert len(children) == 4
    assert all(c.data.tags.get("mlflow.parentRunId") == parent.info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted((c.data.tags["fsx.backbone"], c.data.params["seed"]) for c in children) == [
        ("resnet18", "0"), ("resnet18", "1"), ("tiny", "0"), ("tiny", "1"),
    ]
    for child in children:
        assert child.data.tags["fsx.command"] == "pretrain"
        assert {"config.yaml", "manifest.json", "checkpoints/model.pt"} <= artifact_paths(client, child.info.run_id)
    assert all(c.data.params["backbone.name"] == c.data.tags["fsx.backbone"] for c in children)


def test_multirun_with_a_failing_job(sweeps):
    result = sweeps.failing.result()
    assert result.returncode == 1, explain(result)
    assert re.search(r"failed: job 1 \(dataset\.fold=99\b", result.stderr), explain(result)
    assert "dataset.fold=99 is not a letters fold" in result.stderr
    client = client_for(sqlite_uri(sweeps.failing_dir / "mlflow.db"))  # the default store, in the cwd
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fsx.multirun") == "parent"]
    assert len(parents) == 1
    assert parents[0].info.status == "FAILED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 1 + len(children)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.tags["fsx.fold"] == "1"  # the good job still ran
    failed = [c for c in children if c.info.status == "FAILED"]  # recorded though it never opened a run of its own
    assert len(failed) == 1 and failed[0].data.params["dataset.fold"] == "99"
    assert "dataset.fold=99 is not a letters fold" in failed[0].data.tags["fsx.error"]
    assert "1 of 2 jobs finished" in result.stdout


@pytest.fixture(scope="module")
def adapted_latest(launch, sweeps, sweep_ok, base_dir) -> Done:
    ok(sweep_ok)
    cwd = base_dir / "latest"
    result = ok(launch(
        ["adapt", "checkpoint=latest", "shots=1", "adapt.steps=0", "adapt.evaluate=false", f"mlflow.tracking_uri={sweeps.ok_uri}"], cwd
    ).result())
    return Done(cwd, sweeps.ok_uri, printed_checkpoint_run(result.stdout), result)


def newest_pretrain_child(client):
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("fsx.command") == "pretrain" and "mlflow.parentRunId" in r.data.tags]
    return max(children, key=lambda r: r.info.start_time)


def test_checkpoint_latest_is_the_newest_pretrain_run(adapted_latest):
    client = client_for(adapted_latest.uri)
    newest = newest_pretrain_child(client)  # the sweep's last job: backbone=resnet18 seed=1
    assert (newest.data.tags["fsx.backbone"], newest.data.params["seed"]) == ("resnet18", "1")
    run = client.get_run(adapted_latest.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fsx.checkpoint"] == "latest"
    assert run.data.tags["fsx.source_run"] == newest.info.run_id
    assert not (adapted_latest.cwd / "mlflow.db").exists()


def test_checkpoint_latest_adapt_is_the_newest_adapt_run(launch, adapted_latest, base_dir):
    """`checkpoint=latest:adapt` picks the newest finished adapt run; eval scores it directly."""
    cwd = base_dir / "latest-adapt"
    result = ok(launch(["eval", "checkpoint=latest:adapt", f"mlflow.tracking_uri={adapted_latest.uri}"], cwd).result())
    run_id = re.findall(rf"^MLflow run: ({RUN_ID})$", result.stdout, re.M)[0]
    run = client_for(adapted_latest.uri).get_run(run_id)
    assert run.data.tags["fsx.source_run"] == adapted_latest.run_id
    assert run.data.tags["fsx.eval_mode"] == "direct"
    assert table_rows(result.stdout) == [0]


def test_adapt_tags_describe_the_checkpoints_model(adapted_latest):
    client = client_for(adapted_latest.uri)
    run = client.get_run(adapted_latest.run_id)
    assert run.data.tags["fsx.backbone"] == "resnet18"


# --------------------------------------------------------------------------- 3. help, version, --cfg


@pytest.fixture(scope="module")
def cfg_job(launch, base_dir) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    cases = {"pretrain": ["pretrain", "--cfg", "job"], "eval": ["eval", "--cfg", "job", "shots=3", "eval.milestones=[0,7]"]}
    futures = {k: (base_dir / f"cfg-{k}", launch(args, base_dir / f"cfg-{k}")) for k, args in cases.items()}
    return {k: (cwd, f.result()) for k, (cwd, f) in futures.items()}


def test_cfg_job_prints_the_composed_config(cfg_job):
    cwd, result = cfg_job["pretrain"]
    ok(result)
    config = yaml.safe_load(result.stdout)
    assert "train:" in result.stdout and "steps:" in result.stdout
    assert config["command"] == "pretrain" and config["train"]["steps"] == 1000
    assert config["backbone"]["name"] == "tiny" and config["dataset"]["name"] == "letters"
    assert "hydra" not in config  # --cfg job: the job's config only
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()


def test_cfg_job_shows_overrides(cfg_job):
    cwd, result = cfg_job["eval"]
    config = yaml.safe_load(ok(result).stdout)
    assert config["command"] == "eval" and config["shots"] == 3 and config["eval"]["milestones"] == [0, 7]
    assert not (cwd / "mlflow.db").exists()


@pytest.mark.parametrize("verb", ["pretrain", "adapt", "eval", "detect", "acquire", "loop"])
def test_verb_help(verb, fsx_env, tmp_path):
    result = ok(fsx_cli([verb, "--help"], tmp_path, fsx_env))
    text = " ".join(result.stdout.split())
    assert text.startswith("Usage:") and f" {verb} " in text
    assert "override" in text.lower()
    assert "-m, --multirun" in text and "--cfg job" in text
    assert not (tmp_path / "mlflow.db").exists()


def test_pretrain_help_names_every_algorithm_and_detector(fsx_env, tmp_path):
    from fsx.algorithms import ALGORITHMS
    from fsx.models.detectors import DETECTORS

    text = ok(fsx_cli(["pretrain", "--help"], tmp_path, fsx_env)).stdout
    missing = [name for name in (*ALGORITHMS, *DETECTORS) if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"pretrain --help does not name {missing}:\n{text}"


def test_top_level_help_and_version(fsx_env, tmp_path):
    result = ok(fsx_cli(["--help"], tmp_path, fsx_env))
    assert all(verb in result.stdout for verb in ("pretrain", "adapt", "eval", "detect", "acquire", "loop", "compare", "report", "data", "models", "runs"))
    assert "override" in result.stdout.lower()
    version = ok(fsx_cli(["--version"], tmp_path, fsx_env))
    assert version.stdout.strip() == f"fsx {fsx.__version__}"


def test_console_script_runs(fsx_env, tmp_path):
    script = Path(sys.executable).parent / "fsx"
    if not script.is_file():
        pytest.skip("the fsx console script is not installed next to this Python")
    result = subprocess.run([str(script), "--version"], cwd=tmp_path, env=fsx_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"fsx {fsx.__version__}"


# --------------------------------------------------------------------------- 4. bad input -> exit 2

# name: (arguments, words the message must name, whether mlflow.db must not be created)
BAD_INPUTS = {
    "unknown-key": (["pretrain", "train.stepz=3"], ["train.stepz"], True),
    "unparsable-override": (["pretrain", "train.steps=[1,"], ["train.steps=[1,"], True),
    "unknown-group-option": (["pretrain", "backbone=nope"], ["backbone", "nope"], True),
    "unknown-option-in-sweep": (["pretrain", "-m", "backbone=tiny,nope", "hydra.sweep.dir=multirun"], ["nope"], True),
    "unknown-fold": (["pretrain", *SMALL, "dataset.fold=99"], ["dataset.fold=99"], False),
    "missing-checkpoint-file": (["eval", "checkpoint=/nonexistent.pt"], ["/nonexistent.pt"], False),
    "unknown-run-id": (["eval", "checkpoint=runs:/0123456789abcdef"], ["0123456789abcdef"], False),
    "corrupt-checkpoint": (["eval", "checkpoint={garbage}"], ["{garbage}", "not a valid fsx checkpoint"], False),
    "eval-without-checkpoint": (["eval"], ["checkpoint="], False),
    "adapt-without-checkpoint": (["adapt"], ["checkpoint="], False),
    "too-many-shots": (["adapt", "checkpoint={checkpoint}", "shots=500"], ["shots=500"], False),
    "negative-milestone": (["eval", "checkpoint={checkpoint}", "eval.milestones=[-1]"], ["eval.milestones"], False),
    "wrong-value-type": (["pretrain", *SMALL, "train.steps=abc"], ["train.steps"], True),
    "zero-ways": (["adapt", "checkpoint={checkpoint}", "ways=0", "adapt.steps=1"], ["ways=0"], False),
    "zero-log-every": (["pretrain", *SMALL, "train.log_every=0"], ["train.log_every=0"], False),
    "unknown-adapt-params": (["adapt", "checkpoint={checkpoint}", "adapt.params=foo"], ["adapt.params=foo"], False),
    "zero-batch-size": (["pretrain", *SMALL, "algorithm.batch_size=0"], ["algorithm.batch_size=0"], False),
    "letters-too-large": (["pretrain", *SMALL, "dataset.generator.max_font=200"], ["max_font=200"], False),
    "other-fold-than-checkpoint": (["eval", "checkpoint={checkpoint}", "dataset.fold=2"], ["dataset.fold=2", "fold 1"], False),
}
KNOWN_BUGS: dict[str, str] = {}  # name -> reason, for a bad input fsx does not handle yet


@pytest.fixture(scope="module")
def bad_results(launch, base_dir, checkpoint_file) -> dict[str, tuple[Path, subprocess.CompletedProcess, dict]]:
    garbage = base_dir / "files" / "garbage.pt"
    garbage.parent.mkdir(parents=True, exist_ok=True)
    garbage.write_bytes(b"this is not a checkpoint\x00\x01\x02\xff" * 20)
    values = {"garbage": str(garbage), "checkpoint": str(checkpoint_file)}
    futures = {}
    for name, (args, _, _) in BAD_INPUTS.items():
        cwd = base_dir / f"bad-{name}"
        futures[name] = (cwd, launch([a.format(**values) for a in args], cwd))
    return {name: (cwd, future.result(), values) for name, (cwd, future) in futures.items()}


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else []) for name in BAD_INPUTS],
)
def test_bad_input_exits_2_with_one_message(case, bad_results):
    cwd, result, values = bad_results[case]
    _, culprits, no_store = BAD_INPUTS[case]
    assert_usage_error(result, *(c.format(**values) for c in culprits))
    if no_store:
        assert not (cwd / "mlflow.db").exists(), "a config error must stop before the MLflow store is touched"
