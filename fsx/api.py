"""fsx from Python: the CLI's verbs as functions that take the same Hydra overrides, compose
the same config tree, write the same MLflow record, and return the verb's result instead of
printing only. No subprocess: the verb runs in this process.

    import fsx
    pre = fsx.pretrain("experiment=demo", "train.steps=200")
    ev = fsx.evaluate(f"checkpoint=runs:/{pre['run_id']}", "eval.repeats=3")
    ev["rows"]            # the table eval prints, as dicts (milestone, metric, mean, ci95, ...)

Bad input raises `fsx.UsageError` with the message the CLI prints (the CLI exits 2 there).
One call runs one job; a sweep (`-m`) stays the CLI's (Hydra's launchers and sweepers).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from fsx.errors import UsageError
from fsx.run.overrides import CONFIG_MODULE, validate

# verb -> (module in fsx.run, function)
VERBS = {
    "pretrain": ("pretrain", "pretrain"),
    "adapt": ("adapt", "adapt"),
    "eval": ("eval", "evaluate"),
    "detect": ("detect", "detect"),
    "acquire": ("acquire", "acquire"),
    "loop": ("loop", "loop"),
    "export": ("export", "export"),
}


@contextlib.contextmanager
def _as_hydra_job(verb: str, overrides: list[str]) -> Iterator:
    """The verb's config composed as `fsx VERB OVERRIDES` composes it, with the running-job
    record (HydraConfig: the overrides, the output folder) set as Hydra sets it for a job, so
    the run records the same tags and config; the job's config (without `hydra`) inside."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=verb, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).resolve())
        cfg.hydra.job.name = f"fsx-{verb}"
    Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
    hydra = HydraConfig.instance()
    before = hydra.cfg
    hydra.set_config(cfg)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        yield job
    finally:
        hydra.cfg = before


def run(verb: str, *overrides: str) -> dict:
    """Run one fsx verb with Hydra overrides, as `fsx VERB OVERRIDES...` does; return its result."""
    import importlib

    if verb not in VERBS:
        raise UsageError(f"no verb {verb!r}; choose one of {', '.join(VERBS)}")
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise UsageError(f"overrides are strings such as 'train.steps=100', not {bad[0]!r}")
    overrides = list(overrides)
    if any(o in ("-m", "--multirun") for o in overrides):
        raise UsageError("a sweep (-m) runs from the command line, where Hydra's launchers and sweepers are: fsx " + " ".join([verb, *overrides]))
    validate(verb, overrides, multirun=False)
    from fsx.engine.device import flush_denormals
    from fsx.tracking import check_store

    module, function = VERBS[verb]
    runner = getattr(importlib.import_module(f"fsx.run.{module}"), function)
    flush_denormals()
    with _as_hydra_job(verb, overrides) as cfg:
        check_store(str(cfg.mlflow.tracking_uri))
        return runner(cfg)


def pretrain(*overrides: str) -> dict:
    """`fsx pretrain`: {run_id, steps, final_loss, val, checkpoint, objective}."""
    return run("pretrain", *overrides)


def adapt(*overrides: str) -> dict:
    """`fsx adapt`: {run_id, metrics, steps_run, checkpoint}."""
    return run("adapt", *overrides)


def evaluate(*overrides: str) -> dict:
    """`fsx eval`: {run_id, table (as printed), rows (one dict per milestone and metric), objective}."""
    return run("eval", *overrides)


def detect(*overrides: str) -> dict:
    """`fsx detect`: {run_id, out (the folder written), rows, results, skipped, metrics, scores}."""
    return run("detect", *overrides)


def acquire(*overrides: str) -> dict:
    """`fsx acquire`: the chosen images and their scores."""
    return run("acquire", *overrides)


def loop(*overrides: str) -> dict:
    """`fsx loop`: the rounds of the simulated feedback loop."""
    return run("loop", *overrides)


def export(*overrides: str) -> dict:
    """`fsx export`: {run_id, file, sha256, agreement (the check's numbers)}."""
    return run("export", *overrides)
