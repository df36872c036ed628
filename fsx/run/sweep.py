"""A Hydra callback that gives a multirun one MLflow parent run; each job's run is its child.

Jobs find the parent's id in the sweep directory (any launcher) or the environment (same
process). A job that fails appends a line to `fsx_failed_jobs.txt` there; one that fails before
its own run opens (a bad value, a missing file) is still recorded as a FAILED child run with
its overrides and the error (`fsx.error`). The parent run ends FAILED when any job failed,
FINISHED otherwise.

Rerunning a sweep does only what is missing: every run is tagged with a hash of the config
its command line composed (`fsx.config_hash`); a job whose hash already has a FINISHED run
in the experiment is skipped (listed in `fsx_skipped_jobs.txt`; `skip_finished=false` runs
it again), and a pretrain job whose run was interrupted resumes it from its last.pt.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fsx import tracking

FAILURES_FILE = "fsx_failed_jobs.txt"
SKIPPED_FILE = "fsx_skipped_jobs.txt"
UNHASHED = ("mlflow", "resume", "skip_finished", "hydra")  # where and how a run is recorded, not what it computes
PARENT_RUN_ENV = "FSX_PARENT_RUN_ID"  # how a job finds its parent run in the same process
PARENT_RUN_FILE = "fsx_parent_run_id"  # ... and in the sweep directory (any launcher)
LAST_SWEEP: dict[str, str] = {}  # the sweep this process started: parent id, store, directory
JOB_RUN: dict[str, str] = {}  # the run the current job opened, if it got that far (a worker runs jobs one after another)


def failures(sweep_dir: Path, name: str = FAILURES_FILE) -> list[str]:
    path = Path(sweep_dir) / name
    return path.read_text().splitlines() if path.is_file() else []


def config_hash(config: dict) -> str:
    """A short hash of what a job computes: its composed config without where it is recorded."""
    import hashlib
    import json

    kept = {k: v for k, v in config.items() if k not in UNHASHED}
    if isinstance(kept.get("dataset"), dict):  # the cache folder is this machine's, not the data
        kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k != "cache_dir"}
    if isinstance(kept.get("trainer"), dict):  # how long processes wait for each other changes no result
        kept["trainer"] = {k: v for k, v in kept["trainer"].items() if k != "timeout_s"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_job(config: dict, command: str) -> tuple[str, str | None]:
    """("skip", run id) when a FINISHED run of this command has the job's config hash,
    ("resume", run id) for a pretrain run of that hash that was interrupted and left its
    last.pt, else ("run", None)."""
    if not config.get("skip_finished", True):
        return "run", None
    uri, experiment = str(config["mlflow"]["tracking_uri"]), str(config["mlflow"]["experiment"])
    try:
        twins = tracking.search_runs(uri, experiment, f"tags.`fsx.config_hash` = '{config_hash(config)}' and tags.`fsx.command` = '{command}'")
    except Exception:  # noqa: BLE001 - no experiment yet (a first sweep): nothing to skip
        return "run", None
    done = [r for r in twins if r["status"] == "FINISHED"]
    if done:
        return "skip", done[-1]["id"]
    stopped = [r for r in twins if r["status"] in ("KILLED", "FAILED") and Path(r["tags"].get("fsx.last_checkpoint", "")).is_file()]
    if command == "pretrain" and stopped and not config.get("resume"):
        return "resume", stopped[-1]["id"]
    return "run", None


def hydra_job():
    """The running Hydra job's config (HydraConfig), or None when fsx is called from Python."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - ValueError outside Hydra
        return None


def _in_multirun(hc) -> bool:
    from hydra.types import RunMode

    return hc is not None and hc.mode == RunMode.MULTIRUN


def parent_run_id() -> str | None:
    """The parent run of the multirun this job belongs to; None outside a multirun."""
    hc = hydra_job()
    if not _in_multirun(hc):
        return None
    marker = Path(hc.sweep.dir) / PARENT_RUN_FILE
    return marker.read_text().strip() if marker.is_file() else os.environ.get(PARENT_RUN_ENV)


def job_tags() -> dict[str, str]:
    """The overrides this command line gave (`fsx.overrides`, all but the mlflow.* ones: where
    a run is recorded is not what it computes) and, in a multirun, the job's number in the
    sweep (`fsx.job`)."""
    hc = hydra_job()
    if hc is None:
        return {}
    shown = [o for o in hc.overrides.task if not o.lstrip("+~").startswith("mlflow.")]  # a URI may hold credentials
    tags = {"fsx.overrides": " ".join(shown)}
    if _in_multirun(hc):
        tags["fsx.job"] = str(hc.job.num)
    return tags


def start_job() -> None:
    JOB_RUN.clear()


def note_job_run(run_id: str) -> None:
    JOB_RUN["id"] = run_id


def record_job_failure(message: str, cfg, command: str) -> None:
    """List the failed job in the sweep directory and, when it failed before opening its own
    run, record it in the store as a FAILED child of the sweep's parent run. The list comes
    first, and nothing here raises: a job's failure must not become the sweep's."""
    import contextlib

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    with open(Path(hc.sweep.dir) / FAILURES_FILE, "a") as f:
        f.write(f"job {hc.job.num} ({' '.join(overrides)}): {message}\n")
    parent = parent_run_id()
    if JOB_RUN.get("id") or not parent:
        return
    params = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    tags = {"fsx.command": command, **job_tags(), "fsx.error": message[:5000]}
    with contextlib.suppress(Exception):  # a store that cannot be reached (or named) has the failures file
        tracking_uri, experiment = str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment)
        tracking.check_store(tracking_uri)  # at once, not after the client's retries
        tracking.record_failed_run(tracking_uri, experiment, f"{command} job {hc.job.num} (failed before it started)", tags, parent, params)


def record_skip(message: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    with open(Path(hc.sweep.dir) / SKIPPED_FILE, "a") as f:
        f.write(f"job {hc.job.num} ({' '.join(hc.overrides.task)}): {message}\n")


OPTUNA_RESULTS = "optimization_results.yaml"  # where Hydra's Optuna sweeper writes its best trial


def best_trial(sweep_dir: Path, children: list[dict]) -> dict | None:
    """An Optuna sweep's best trial: {overrides, value, run} (the child run whose params hold
    the best parameters), or None for a sweep without an optimiser."""
    path = sweep_dir / OPTUNA_RESULTS
    if not path.is_file():
        return None
    import yaml

    results = yaml.safe_load(path.read_text()) or {}
    params = results.get("best_params") or {}
    if not params:
        return None

    def same(stored: str | None, wanted) -> bool:
        if stored is None:
            return False
        try:
            return abs(float(stored) - float(wanted)) <= 1e-9 * max(1.0, abs(float(wanted)))
        except (TypeError, ValueError):
            return str(stored) == str(wanted)

    run = next((c["id"] for c in children if c["status"] == "FINISHED" and all(same(c.get("params", {}).get(k), v) for k, v in params.items())), None)
    return {"overrides": " ".join(f"{k}={v}" for k, v in params.items()), "value": results.get("best_value"), "run": run}


def finish_sweep() -> tuple[str, list[dict], list[str], list[str], dict | None] | None:
    """End the parent run of this process's sweep (once); (parent id, children, failures,
    skipped jobs, the best trial of an Optuna sweep, which is tagged on the parent)."""
    if not LAST_SWEEP.get("parent"):
        return None
    parent, uri, sweep_dir = LAST_SWEEP["parent"], LAST_SWEEP["tracking_uri"], Path(LAST_SWEEP["sweep_dir"])
    failed, skipped = failures(sweep_dir), failures(sweep_dir, SKIPPED_FILE)
    children = tracking.finish_parent_run(uri, parent, failed=bool(failed))
    best = best_trial(sweep_dir, children)
    if best:
        tracking.set_run_tags(uri, parent, {"fsx.best_overrides": best["overrides"], "fsx.best_value": best["value"], **({"fsx.best_run": best["run"]} if best["run"] else {})})
    LAST_SWEEP.clear()
    os.environ.pop(PARENT_RUN_ENV, None)
    return parent, children, failed, skipped, best


class ParentRunCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / FAILURES_FILE).unlink(missing_ok=True)
        (sweep_dir / SKIPPED_FILE).unlink(missing_ok=True)
        run_id = tracking.create_parent_run(
            config.mlflow.tracking_uri,
            config.mlflow.experiment,
            run_name=f"{config.command} multirun",
            tags={
                "fsx.command": config.command,
                "fsx.multirun": "parent",
                "fsx.sweep": " ".join(config.hydra.overrides.task),
                "fsx.sweep_dir": str(sweep_dir.resolve()),
            },
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id)
        os.environ[PARENT_RUN_ENV] = run_id
        LAST_SWEEP.update(parent=run_id, tracking_uri=str(config.mlflow.tracking_uri), sweep_dir=str(sweep_dir))
        print(f"fsx {config.command} multirun: MLflow parent run {run_id}", flush=True)
