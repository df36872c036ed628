"""Checkpoint references: runs:/, latest, and plain files (against a real SQLite store)."""

from __future__ import annotations

import pytest

from fsx import tracking
from fsx.errors import UsageError


def test_a_file_named_latest_something_is_a_file_not_the_latest_run(tmp_path):
    path = tmp_path / "latest_model.pt"
    path.write_bytes(b"x")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_checkpoint(str(path), uri, "fsx") == (path, None)


def test_latest_without_runs_names_the_reference(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(UsageError, match="checkpoint=latest:adapt: no finished 'adapt' run"):
        tracking.resolve_checkpoint("latest:adapt", uri, "fsx")


def test_runs_reference_downloads_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSX_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"weights")
    with tracking.open_run(uri, "fsx", "a run", {"fsx.command": "pretrain"}) as run:
        run.log_file(artifact, "checkpoints")
    for _ in range(2):
        local, run_id = tracking.resolve_checkpoint(f"runs:/{run.id}", uri, "fsx")
        assert run_id == run.id and local.read_bytes() == b"weights"
    assert local == tmp_path / "cache" / "checkpoints" / run.id / "checkpoints" / "model.pt"
    assert tracking.resolve_checkpoint("latest", uri, "fsx")[1] == run.id


def test_latest_of_an_algorithm_is_the_newest_run_of_that_algorithm(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for algorithm in ("reptile", "standard", "reptile"):
        with tracking.open_run(uri, "fsx", "r", {"fsx.command": "pretrain", "fsx.algorithm": algorithm}) as run:
            ids.setdefault(algorithm, []).append(run.id)
    client = tracking._client(uri)
    assert tracking.latest_run_id(uri, "fsx", "pretrain", "reptile") == ids["reptile"][-1]
    assert tracking.latest_run_id(uri, "fsx", "pretrain", "standard") == ids["standard"][0]
    assert client.get_run(ids["reptile"][-1]).data.tags["fsx.algorithm"] == "reptile"
    with pytest.raises(UsageError, match="checkpoint=latest:pretrain:maml: no finished 'pretrain' run of algorithm maml"):
        tracking.resolve_checkpoint("latest:pretrain:maml", uri, "fsx")


def test_processes_started_at_once_on_a_new_store_all_record_their_run(tmp_path):
    """A parallel sweep's first jobs create the SQLite store together: MLflow's migrations
    must run once, not race (they used to crash one job of two)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'new.db'}"
    code = "import sys; from fsx import tracking\nwith tracking.open_run(sys.argv[1], 'fsx', 'r', {'fsx.command': 'pretrain'}) as run: print(run.id)"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    client = tracking._client(uri)
    runs = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in outs)
