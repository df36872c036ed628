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
