"""A Hydra callback that gives a multirun one MLflow parent run; each job's run is its child.

Jobs find the parent's id in the sweep directory (any launcher) or the environment (same
process). A job that fails appends a line to `fsx_failed_jobs.txt` there; the parent run
ends FAILED when any job failed, FINISHED otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fsx import tracking

FAILURES_FILE = "fsx_failed_jobs.txt"
PARENT_RUN_ENV = "FSX_PARENT_RUN_ID"  # how a job finds its parent run in the same process
PARENT_RUN_FILE = "fsx_parent_run_id"  # ... and in the sweep directory (any launcher)
LAST_SWEEP: dict[str, str] = {}  # the sweep this process started: parent id, store, directory


def failures(sweep_dir: Path) -> list[str]:
    path = Path(sweep_dir) / FAILURES_FILE
    return path.read_text().splitlines() if path.is_file() else []


def finish_sweep() -> tuple[str, list[dict], list[str]] | None:
    """End the parent run of this process's sweep (once); (parent id, children, failures)."""
    if not LAST_SWEEP.get("parent"):
        return None
    parent, uri, sweep_dir = LAST_SWEEP["parent"], LAST_SWEEP["tracking_uri"], Path(LAST_SWEEP["sweep_dir"])
    failed = failures(sweep_dir)
    children = tracking.finish_parent_run(uri, parent, failed=bool(failed))
    LAST_SWEEP.clear()
    os.environ.pop(PARENT_RUN_ENV, None)
    return parent, children, failed


class ParentRunCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / FAILURES_FILE).unlink(missing_ok=True)
        run_id = tracking.create_parent_run(
            config.mlflow.tracking_uri,
            config.mlflow.experiment,
            run_name=f"{config.command} multirun",
            tags={
                "fsx.command": config.command,
                "fsx.multirun": "parent",
                "fsx.sweep": " ".join(config.hydra.overrides.task),
                "fsx.sweep_dir": str(sweep_dir),
            },
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        os.environ[PARENT_RUN_ENV] = run_id
        LAST_SWEEP.update(parent=run_id, tracking_uri=str(config.mlflow.tracking_uri), sweep_dir=str(sweep_dir))
        print(f"fsx {config.command} multirun: MLflow parent run {run_id}", flush=True)
