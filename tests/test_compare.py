"""fsx compare: several eval runs side by side with paired differences over identical tasks,
refused (or Welch's, when asked) for runs that did not see the same tasks; and the curves."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from fsx import tracking
from fsx.errors import UsageError
from fsx.evaluation.compare import Evaluation, compare, mismatched_tasks
from fsx.evaluation.plots import curve_png
from fsx.run.compare import run_compare

SEEDS = [1, 2, 3, 4, 5]


def evaluation(name: str, ap50: dict[int, list[float]], hashes=None, test_hash="T") -> Evaluation:
    rows = [{"milestone": m, "task_seed": s, "AP50": v} for m, values in ap50.items() for s, v in zip(SEEDS, values)]
    tasks = [{"task_seed": s, "hash": (hashes or {}).get(s, f"h{s}")} for s in SEEDS]
    return Evaluation(name, rows, tasks, test_hash)


A = {0: [0.1, 0.2, 0.15, 0.1, 0.2], 50: [0.5, 0.6, 0.55, 0.52, 0.58]}
B = {0: [0.1, 0.2, 0.15, 0.1, 0.2], 50: [0.6, 0.65, 0.6, 0.6, 0.7]}


def test_the_difference_is_paired_over_the_same_tasks():
    rows = compare([evaluation("a", A), evaluation("b", B)], "AP50")
    at50 = next(r for r in rows if r["milestone"] == 50)
    diff = np.array(B[50]) - np.array(A[50])
    assert at50["b - a"]["mean"] == pytest.approx(diff.mean())
    assert at50["b - a"]["p"] == pytest.approx(stats.ttest_rel(B[50], A[50]).pvalue)
    assert at50["b - a"]["ci95"] == pytest.approx(stats.t.ppf(0.975, 4) * diff.std(ddof=1) / np.sqrt(5))
    assert at50["a"]["mean"] == pytest.approx(np.mean(A[50]))
    at0 = next(r for r in rows if r["milestone"] == 0)
    assert at0["b - a"]["mean"] == 0 and at0["b - a"]["p"] == 1.0  # identical on every task


def test_unpaired_is_welch():
    rows = compare([evaluation("a", A), evaluation("b", B)], "AP50", paired=False)
    at50 = next(r for r in rows if r["milestone"] == 50)
    assert at50["b - a"]["p"] == pytest.approx(stats.ttest_ind(B[50], A[50], equal_var=False).pvalue)


def test_runs_on_other_tasks_are_told_apart():
    a = evaluation("a", A)
    assert mismatched_tasks(a, evaluation("b", B)) == []
    assert "task seed(s) 3 differ" in " ".join(mismatched_tasks(a, evaluation("b", B, hashes={3: "other"})))
    assert "different test images" in " ".join(mismatched_tasks(a, evaluation("b", B, test_hash="U")))


def test_the_curve_is_a_png(tmp_path):
    path = curve_png(tmp_path / "c.png", {"a": {0: {"mean": 0.1, "ci95": 0.02}, 50: {"mean": 0.5, "ci95": float("nan")}}}, "AP50", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# --------------------------------------------------------------------------- from the store


def log_eval(uri: str, algorithm: str, ap50: dict[int, list[float]], hashes=None) -> str:
    """An eval run as fsx logs it (tags, eval/repeats.csv, manifest.json), without the training."""
    rows = [{"repeat": i + 1, "task_seed": s, "milestone": m, "AP50": v, "AP": v / 2} for m, values in ap50.items() for i, (s, v) in enumerate(zip(SEEDS, values))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    manifest = {"kind": "eval", "split": {"test_test": {"hash": "T"}}, "tasks": [{"task_seed": s, "hash": (hashes or {}).get(s, f"h{s}")} for s in SEEDS]}
    with tracking.open_run(uri, "fsx", f"eval {algorithm}", {"fsx.command": "eval", "fsx.algorithm": algorithm}) as run:
        run.log_text(buffer.getvalue(), "eval/repeats.csv")
        run.log_dict(manifest, "manifest.json")
    return run.id


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {
        "standard": log_eval(uri, "standard", A),
        "reptile": log_eval(uri, "reptile", B),
        "other": log_eval(uri, "anil", B, hashes={2: "x"}),
    }
    with tracking.open_run(uri, "fsx", "pretrain", {"fsx.command": "pretrain"}) as run:
        ids["pretrain"] = run.id
    return uri, ids


def test_compare_reads_the_runs_and_draws_them(store, tmp_path):
    uri, ids = store
    text = run_compare(["latest:eval:standard", f"runs:/{ids['reptile']}"], uri, "fsx", plot=str(tmp_path / "p.png"))
    assert "paired over the same tasks" in text and "Δ reptile" in text
    line50 = next(line for line in text.splitlines() if line.split()[:1] == ["50"])
    assert f"{np.mean(np.array(B[50]) - np.array(A[50])):+.3f}" in line50
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert run_compare([ids["standard"], ids["reptile"]], uri, "fsx", metric="AP").startswith("AP: ")


def test_compare_refuses_what_cannot_be_paired(store):
    uri, ids = store
    with pytest.raises(UsageError, match="did not evaluate identical tasks.*task seed\\(s\\) 2 differ.*--unpaired"):
        run_compare([ids["standard"], ids["other"]], uri, "fsx")
    assert "UNPAIRED" in run_compare([ids["standard"], ids["other"]], uri, "fsx", unpaired=True)
    with pytest.raises(UsageError, match="is a 'pretrain' run"):
        run_compare([ids["standard"], ids["pretrain"]], uri, "fsx")
    with pytest.raises(UsageError, match="--metric nope: the eval runs logged AP50, AP"):
        run_compare([ids["standard"], ids["reptile"]], uri, "fsx", metric="nope")


def test_the_cli_compares_and_refuses_with_exit_2(store, tmp_path):
    uri, ids = store
    env = {**os.environ, "FSX_PROGRESS": "plain"}
    good = subprocess.run([sys.executable, "-m", "fsx", "compare", ids["standard"], ids["reptile"], "--tracking-uri", uri], capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 0 and "Δ reptile" in good.stdout, good.stderr
    one = subprocess.run([sys.executable, "-m", "fsx", "compare", ids["standard"], "--tracking-uri", uri], capture_output=True, text=True, env=env, timeout=120)
    assert one.returncode == 2 and "at least two eval runs" in one.stderr and "Traceback" not in one.stderr
