"""fsx report over a real MLflow store: eval runs made by the real `pretrain` and `evaluate`
(called in this process, as Hydra would call them, on tiny letters budgets: two pretrainings
and three evaluations in about half a minute), then the table checked against what those runs
logged, the CSV parsed, every PNG opened, paired differences drawn only over identical tasks,
and bad input refused with exit code 2."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL
from PIL import Image
from scipy import stats

from fsx import tracking
from fsx.errors import UsageError
from fsx.evaluation.compare import Evaluation
from fsx.evaluation.report import Record, build_report
from fsx.run.report import run_report

pytestmark = pytest.mark.slow

SMALL = [*LETTERS_SMALL, *KEEP_LOW_SCORES]  # low-confidence boxes kept: a barely trained model scores above zero
TRAIN = {"standard": ["algorithm.batch_size=8", "train.steps=4", "train.val_images=0"], "joint": ["algorithm.inner_batch=8", "algorithm.shots=2", "train.steps=2", "train.val_images=0"]}
MILESTONES = [0, 3]
PNG_SIZE = (600, 400)  # fsx.evaluation.plots: 6 x 4 inches at 100 dpi


@dataclass
class Store:
    uri: str
    evals: dict[str, str]  # "standard", "joint" (task seeds 1, 2), "joint_other" (task seeds 5, 6)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    import torch
    from hydra import compose, initialize_config_module

    from fsx.run.eval import evaluate
    from fsx.run.pretrain import pretrain

    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = [f"mlflow.tracking_uri={uri}", f"dataset.cache_dir={root / 'letters'}", "device=cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch, initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        patch.chdir(root)  # outside Hydra a run writes its outputs/ into the working directory
        patch.setenv("FSX_CACHE", str(root / "cache"))
        patch.setenv("FSX_PROGRESS", "plain")
        pretrained = {a: pretrain(compose("pretrain", [f"algorithm={a}", *SMALL, *TRAIN[a], *common]))["run_id"] for a in TRAIN}

        def evaluated(algorithm: str, task_seed: int) -> str:
            overrides = [f"checkpoint=runs:/{pretrained[algorithm]}", "shots=2", "eval.repeats=2", f"eval.milestones=[{','.join(map(str, MILESTONES))}]", f"task_seed={task_seed}"]
            return evaluate(compose("eval", [*overrides, *common]))["run_id"]

        evals = {"standard": evaluated("standard", 1), "joint": evaluated("joint", 1), "joint_other": evaluated("joint", 5)}
    torch.set_num_threads(threads)
    return Store(uri, evals)


def logged(uri: str, run_id: str, name: str) -> dict[int, float]:
    """A metric's history of one run: {MLflow step: value}."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, name)}


def pretraining_passes(uri: str, eval_run: str) -> str:
    """The forward-backward passes the pretraining behind an eval run logged (train.passes_run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    source = client.get_run(eval_run).data.tags["fsx.source_run"]
    return client.get_run(source).data.params["train.passes_run"]


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def number(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == PNG_SIZE, (path, image.format, image.size)


# --------------------------------------------------------------------------- from the store


def test_the_table_holds_what_the_runs_logged(store, tmp_path):
    out = tmp_path / "paired"
    text = run_report(store.uri, filter_string="params.task_seed = '1'", out=out)
    rows = csv_rows((out / "report.csv").read_text())
    assert [(r["algorithm"], r["run_ids"]) for r in rows] == [("standard", store.evals["standard"]), ("joint", store.evals["joint"])]
    markdown = (out / "report.md").read_text()
    for row in rows:
        assert (row["detector"], row["backbone"], row["dataset"], row["fold"], row["ways"], row["shots"], row["runs"], row["n"]) == ("fcos", "tiny", "letters", "1", "5", "2", "1", "2")
        means, cis = logged(store.uri, row["run_ids"], "AP50_mean"), logged(store.uri, row["run_ids"], "AP50_ci95")
        assert sorted(means) == MILESTONES
        cells = []
        for m in MILESTONES:
            assert number(row[f"AP50_mean@{m}"]) == pytest.approx(means[m], abs=1e-12)
            assert number(row[f"AP50_ci95@{m}"]) == pytest.approx(cis[m], abs=1e-12, nan_ok=True)
            cells.append(f"{means[m]:.3f} ± {cis[m]:.3f}")
        assert row["passes"] == pretraining_passes(store.uri, row["run_ids"])  # the checkpoint's lineage, as the pretraining logged it
        line = f"| {row['algorithm']} | fcos | tiny | scratch | letters | 1 | 5 | 2 | {row['passes']} | 1 | 2 | {' | '.join(cells)} |"
        assert line in markdown.splitlines(), markdown
        assert line in text.splitlines()  # printed too
    assert "| algorithm | detector | backbone | weights | dataset | fold | ways | shots | passes | runs | n | AP50 @0 | AP50 @3 |" in markdown
    assert f"wrote {out}/" in text


def test_the_paired_difference_is_over_the_same_tasks(store, tmp_path):
    out = tmp_path / "paired"
    run_report(store.uri, filter_string="params.task_seed = '1'", out=out, log=False)
    markdown = (out / "report.md").read_text()
    first = {m: [] for m in MILESTONES}
    for name in ("standard", "joint"):
        for m in MILESTONES:
            first[m].append([logged(store.uri, store.evals[name], f"repeat_{r:02d}/AP50")[m] for r in (1, 2)])
    line = next(line for line in markdown.splitlines() if line.startswith("| letters | 1 | 5 | 2 | joint − standard | 2 |"))
    for m in MILESTONES:
        diff = np.array(first[m][1]) - np.array(first[m][0])
        assert f"{diff.mean():+.3f}" in line.split(" | ")[6 + MILESTONES.index(m)]
    assert "skipped" not in markdown
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["AP50-letters-fold1-5way2shot-difference.png", "AP50-letters-fold1-5way2shot.png"]
    for png in out.glob("*.png"):
        assert_png(png)
        assert f"]({png.name})" in markdown  # the Markdown shows it


def test_runs_on_other_tasks_are_not_differenced(store, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.uri)
    for name in ("standard", "joint_other"):  # chosen by a tag, as a user would mark a study
        client.set_tag(store.evals[name], "study", "unpaired")
    out = tmp_path / "unpaired"
    run_report(store.uri, filter_string="tags.study = 'unpaired'", out=out, log=False)
    markdown = (out / "report.md").read_text()
    assert "- skipped: letters fold 1, 5-way 2-shot: no paired difference joint − standard: they share no task seed" in markdown
    assert "| difference |" not in markdown
    assert sorted(p.name for p in out.glob("*.png")) == ["AP50-letters-fold1-5way2shot.png"]
    assert_png(out / "AP50-letters-fold1-5way2shot.png")


def test_a_sweep_parent_and_pooled_runs(store, tmp_path):
    from mlflow.tracking import MlflowClient

    # an `fsx eval -m` sweep: a parent run as fsx.run.sweep makes it, and jobs tagged with its id
    parent = tracking.create_parent_run(store.uri, "fsx", "eval multirun", {"fsx.command": "eval", "fsx.multirun": "parent"})
    for name in ("joint", "joint_other"):
        MlflowClient(store.uri).set_tag(store.evals[name], "mlflow.parentRunId", parent)
    tracking.finish_parent_run(store.uri, parent)
    out = tmp_path / "sweep"
    run_report(store.uri, parent=parent, out=out, log=False)
    (row,) = csv_rows((out / "report.csv").read_text())
    # the two joint runs share every label: one row, their four tasks pooled
    assert (row["algorithm"], row["runs"], row["n"], set(row["run_ids"].split())) == ("joint", "2", "4", {store.evals["joint"], store.evals["joint_other"]})
    at3 = [logged(store.uri, store.evals[name], f"repeat_{r:02d}/AP50")[3] for name in ("joint", "joint_other") for r in (1, 2)]
    assert number(row["AP50_mean@3"]) == pytest.approx(np.mean(at3), abs=1e-12)
    assert number(row["AP50_ci95@3"]) == pytest.approx(stats.t.ppf(0.975, 3) * np.std(at3, ddof=1) / 2, abs=1e-12)
    # the whole experiment: the finished parent is no evaluation of its own and is left out
    everything = csv_rows(run_report(store.uri, out=tmp_path / "all", log=False) and (tmp_path / "all" / "report.csv").read_text())
    assert [(r["algorithm"], r["runs"]) for r in everything] == [("standard", "1"), ("joint", "2")]


def test_the_report_is_logged_as_a_run(store, tmp_path):
    from mlflow.tracking import MlflowClient

    text = run_report(store.uri, filter_string="params.task_seed = '1'", metric="AR100", out=tmp_path / "logged")
    run_id = text.splitlines()[-1].removeprefix("MLflow run: ")
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("fsx.command", "fsx.metric", "fsx.dataset", "fsx.algorithm")} == {"fsx.command": "report", "fsx.metric": "AR100", "fsx.dataset": "letters", "fsx.algorithm": "standard,joint"}
    stored = {a.path for a in client.list_artifacts(run_id, "report")}
    assert stored == {f"report/{name}" for name in ("report.md", "report.csv", "AR100-letters-fold1-5way2shot.png", "AR100-letters-fold1-5way2shot-difference.png")}
    assert tracking.artifact_text(store.uri, run_id, "report/report.md") == (tmp_path / "logged" / "report.md").read_text()
    assert run_id in [r["id"] for r in tracking.search_runs(store.uri, "fsx", "tags.`fsx.command` = 'report'")]


def test_bad_input_is_a_usage_error(store, tmp_path):
    with pytest.raises(UsageError, match="--metric nope: the eval runs logged AP, AP50"):
        run_report(store.uri, metric="nope", out=tmp_path / "r", log=False)
    with pytest.raises(UsageError, match="no FINISHED eval runs in experiment 'fsx' matching `params.shots = '9'`"):
        run_report(store.uri, filter_string="params.shots = '9'", out=tmp_path / "r", log=False)
    with pytest.raises(UsageError, match="--parent 0123: no run with that id"):
        run_report(store.uri, parent="0123", out=tmp_path / "r", log=False)
    with pytest.raises(UsageError, match="--filter: MLflow cannot use"):
        run_report(store.uri, filter_string="params.shots == 2", out=tmp_path / "r", log=False)
    with pytest.raises(UsageError, match="--baseline: baseline 'maml' is none of the evaluated algorithms: standard, joint"):
        run_report(store.uri, baseline="maml", out=tmp_path / "r", log=False)


def test_the_cli_reports_and_refuses_with_exit_2(store, tmp_path):
    from typer.testing import CliRunner

    from fsx.cli import app

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        good = CliRunner().invoke(app, ["report", "--filter", "params.task_seed = '1'", "--baseline", "joint", "--no-log", "--tracking-uri", store.uri])
    assert good.exit_code == 0, good.output
    assert "| letters | 1 | 5 | 2 | standard − joint | 2 |" in good.stdout and "MLflow run" not in good.stdout
    assert (tmp_path / "report" / "report.csv").is_file()  # the default folder, here
    # a real process, for the real exit code and the one-line message
    env = {**os.environ, "FSX_PROGRESS": "plain"}
    bad = subprocess.run([sys.executable, "-m", "fsx", "report", "--parent", "0123", "--tracking-uri", store.uri], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--parent 0123" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- folds (no store)


def test_an_all_folds_row_averages_the_fold_means(tmp_path):
    def record(fold: str, ap50: list[float]) -> Record:
        rows = [{"milestone": 10, "task_seed": s, "AP50": v} for s, v in enumerate(ap50, start=1)]
        labels = {"algorithm": "reptile", "detector": "fcos", "backbone": "tiny", "weights": "scratch", "dataset": "fs_voc", "fold": fold, "ways": "5", "shots": "5"}
        return Record(Evaluation(f"fold {fold}", rows, [{"task_seed": s, "hash": f"{fold}{s}"} for s in range(1, 4)], fold), labels, f"run{fold}")

    folds = {"1": [0.1, 0.2, 0.3], "2": [0.4, 0.5, 0.9], "3": [0.3, 0.3, 0.3]}
    report = build_report([record(f, v) for f, v in folds.items()], "AP50", tmp_path)
    means = [np.mean(v) for v in folds.values()]
    everything = report.rows[-1]
    assert (everything["fold"], everything["n"], everything["runs"]) == ("all", 3, 3)
    assert everything["stats"][10]["mean"] == pytest.approx(np.mean(means))
    assert everything["stats"][10]["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3))
    assert f"| reptile | fcos | tiny | scratch | fs_voc | all | 5 | 5 | – | 3 | 3 | {np.mean(means):.3f} ± {everything['stats'][10]['ci95']:.3f} |" in report.markdown
    assert [r["fold"] for r in csv_rows(report.csv)] == ["1", "2", "3", "all"]
    assert sorted(p.name for p in report.pngs) == sorted([f"AP50-fs_voc-fold{f}-5way5shot.png" for f in folds] + ["AP50-fs_voc-all-folds-5way5shot.png"])
    for png in report.pngs:
        assert_png(png)
