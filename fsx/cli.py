"""The `fsx` command: one typer command per verb. Arguments are Hydra overrides and Hydra
flags, handed to Hydra unchanged, so `-m` is Hydra's own multirun (sweepers and launcher
plugins work) and `--cfg job`, `--info`, `--resolve` do what Hydra's docs say."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import typer

from fsx import __version__
from fsx.errors import UsageError

CONFIG_MODULE = "fsx.conf"

app = typer.Typer(
    name="fsx",
    help=(
        "Few-shot object detection experiments: pretrain a detector on a fold's base classes, "
        "adapt it to K-shot tasks of the novel classes, and evaluate how fast and how well it "
        "adapts, every run recorded in MLflow (default store: sqlite:///mlflow.db here).\n\n"
        "Arguments are Hydra overrides (key=value, group=option); -m sweeps over comma lists.\n\n"
        "\b\n"
        "  fsx pretrain                                # letters fold 1, tiny RetinaNet, CPU\n"
        "  fsx adapt checkpoint=runs:/<id> shots=5     # 5-way 5-shot on the novel letters\n"
        "  fsx eval checkpoint=latest eval.repeats=10 eval.milestones=[0,50,200]\n"
        "  fsx pretrain -m backbone=tiny,resnet18 seed=0,1\n\n"
        "`fsx VERB --cfg job` prints every key. Exit codes: 0 ok, 2 bad usage or input, 1 other "
        "failures. Set FSX_DEBUG=1 for full tracebacks."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

HYDRA_FLAGS = (
    "\n\nOVERRIDES are Hydra overrides (key=value, group=option). Hydra flags pass through: "
    "--cfg job|hydra|all (print the composed config and exit), --resolve, --info, "
    "-cn/--config-name, -cd/--config-dir DIR (search your own config tree too)."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fsx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    pass


def _fail(message: str, code: int = 2) -> None:
    if os.environ.get("FSX_DEBUG") and sys.exc_info()[0] is not None:
        traceback.print_exc()
    typer.echo(f"fsx: error: {message}", err=True)
    raise SystemExit(code)


def _job_overrides(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will make them (for validation)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def validate(verb: str, overrides: list[str], multirun: bool) -> int:
    """Compose the config of every job before anything runs, so that an unknown key, group
    option or value type exits 2 with one message instead of failing mid-sweep.
    Returns the number of jobs (1 for a single run)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        jobs = _job_overrides(overrides) if multirun else [overrides]
    except OverrideParseException as e:
        _fail(f"cannot parse the overrides {' '.join(overrides)}: {e}")
    except Exception:  # noqa: BLE001 - sweeper-specific syntax (ranges, intervals): Hydra validates it
        return 0
    wrong: list[str] = []
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            from omegaconf import OmegaConf

            groups = set(compose(config_name=verb, return_hydra_config=True).hydra.runtime.choices)
            for job in jobs[:200]:
                cfg = compose(config_name=verb, overrides=list(job))
                # resolve interpolations now: a bad ${...} is a usage error too
                chosen = OmegaConf.to_container(cfg, resolve=True)
                # a value must keep its default's type (train.steps=abc is not a step count)
                selections = [o for o in job if o.split("=", 1)[0].split("@", 1)[0].lstrip("+~") in groups]
                reference = OmegaConf.to_container(compose(config_name=verb, overrides=selections), resolve=True)
                wrong += [w for w in _type_errors(reference, chosen) if w not in wrong]
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(" ".join(str(part).split()) for part in (e, e.__cause__ or "") if str(part).strip())
        if "Could not override" in message or "not in struct" in message:
            message += " (run `fsx %s --cfg job` to see every key)" % verb
        _fail(f"bad configuration for `fsx {verb} {' '.join(overrides)}`: {message}")
    if wrong:
        _fail(f"bad value for `fsx {verb} {' '.join(overrides)}`: {'; '.join(wrong)} (run `fsx {verb} --cfg job` to see every key)")
    return len(jobs)


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (list, "a list"), (dict, "a mapping"))


def _type_errors(reference: dict, chosen: dict, prefix: str = "") -> list[str]:
    """Keys whose chosen value has another type than their default (null is not checked)."""
    errors: list[str] = []
    for key, default in reference.items():
        value, name = chosen.get(key), f"{prefix}{key}"
        if default is None or value is None:
            continue
        if isinstance(default, dict) and isinstance(value, dict):
            errors += _type_errors(default, value, name + ".")
            continue
        for kind, words in _KINDS:
            if isinstance(default, kind):
                fits = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
                if not fits:
                    errors.append(f"{name}={value!r} should be {words} (default {default!r})")
                break
    return errors


def run_verb(verb: str, args: list[str], multirun: bool, runner: Callable) -> None:
    """Hand `args` to Hydra's real entry point, with `runner(cfg)` as the task function."""
    import hydra
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    try:
        known = parser.parse_args(args + (["--multirun"] if multirun else []))
    except SystemExit as e:
        _fail(f"cannot parse the arguments {' '.join(args)} (see `fsx {verb} --help`)", 2 if e.code else 0)
    multirun = bool(known.multirun)
    if not (known.cfg or known.info or known.help or known.hydra_help or known.shell_completion or known.config_dir or known.config_name):
        validate(verb, list(known.overrides), multirun)

    def task(cfg):
        try:
            return runner(cfg)
        except UsageError as e:
            if not multirun:
                _fail(str(e), e.exit_code)
            _record_job_failure(str(e))
            typer.echo(f"fsx: job failed: {e}", err=True)
        except Exception as e:  # noqa: BLE001 - one failed job must not take the sweep down
            if not multirun or os.environ.get("FSX_DEBUG"):
                raise
            traceback.print_exc()
            _record_job_failure(f"{type(e).__name__}: {e}")
        return None

    task.__module__ = __name__
    main = hydra.main(config_path="conf", config_name=verb, version_base="1.3")(task)
    argv = sys.argv
    sys.argv = [f"fsx-{verb}"] + args + (["--multirun"] if multirun and "--multirun" not in args and "-m" not in args else [])
    try:
        main()
    finally:
        sys.argv = argv
        if multirun:
            _finish_multirun()


def _record_job_failure(message: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    from fsx.run.sweep import FAILURES_FILE

    hc = HydraConfig.get()
    with open(Path(hc.sweep.dir) / FAILURES_FILE, "a") as f:
        f.write(f"job {hc.job.num} ({' '.join(hc.overrides.task)}): {message}\n")


def _finish_multirun() -> None:
    from fsx.run.sweep import finish_sweep

    finished = finish_sweep()
    if finished is None:
        return
    parent, children, failed = finished
    ok = sum(c["status"] == "FINISHED" for c in children)
    typer.echo(f"\nmultirun: MLflow parent run {parent}: {ok} of {max(len(children), ok + len(failed))} jobs finished")
    for line in failed:
        typer.echo(f"  failed: {line}", err=True)
    if failed:
        raise SystemExit(1)


def _runner(verb: str) -> Callable:
    """The verb's function, imported only when a job runs: torch and mlflow take seconds to
    import, and `--help`, `--cfg job` and bad usage should answer at once."""
    import importlib

    module, function = {"pretrain": ("pretrain", "pretrain"), "adapt": ("adapt", "adapt"), "eval": ("eval", "evaluate")}[verb]
    runner = getattr(importlib.import_module(f"fsx.run.{module}"), function)
    from fsx.engine.device import flush_denormals

    flush_denormals()  # before any torch work starts its worker threads
    return runner


def _verb(name: str, summary: str) -> Callable:
    def command(
        ctx: typer.Context,
        multirun: bool = typer.Option(False, "-m", "--multirun", help="Hydra multirun: one job per combination of comma-separated override values; one MLflow parent run + a child per job."),
    ) -> None:
        try:
            run_verb(name, list(ctx.args), multirun, lambda cfg: _runner(name)(cfg))
        except UsageError as e:
            _fail(str(e), e.exit_code)

    command.__doc__ = summary + HYDRA_FLAGS
    return app.command(name=name, context_settings=PASS_THROUGH, options_metavar="[OPTIONS] [OVERRIDES]...")(command)


_verb(
    "pretrain",
    "Pretrain a detector on the base classes of a dataset fold with the configured algorithm. "
    "Logs the checkpoint as checkpoints/model.pt in a new MLflow run and prints its id.\n\n"
    "\b\n"
    "algorithm=  standard  plain training on all base classes (train.steps = optimiser steps)\n"
    "            reptile   Reptile, RT's settings: n inner Adam steps per task, meta step annealed\n"
    "            joint     Reptile with one inner step\n"
    "            maml      second-order MAML (torch.func); memory grows linearly with inner_steps\n"
    "                      (tiny FCOS, 2 tasks of 32 images: 0.4 GB at 1 step, 1.2 GB at 5; README)\n"
    "            fomaml    first-order MAML: one step's memory\n"
    "            metasgd   MAML with learned inner step sizes (adapt/eval use them)\n"
    "            anil      MAML whose inner loop adapts only the detection head\n"
    "detector=   fcos (default) | retinanet | fasterrcnn\n"
    "backbone=   tiny (default) | resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v3 (fsx models lists them)\n"
    "train.steps counts meta-iterations for meta-learners; train.passes=N instead gives every\n"
    "algorithm the same N forward-backward passes. resume=<.../checkpoints/last.pt> continues an\n"
    "interrupted run. Other keys: dataset.fold, seed, device, algorithm.<hyperparameter>.",
)
_verb(
    "adapt",
    "Adapt a checkpoint to one K-shot task of the fold's novel classes: sample `ways` x `shots` "
    "support images from test-adapt (task_seed), make the class head ready (a fresh one; a meta-learner's "
    "task-sized head is kept unless adapt.head=reset), fine-tune for adapt.steps with early stopping and "
    "rollback (a Meta-SGD checkpoint with its learned step sizes unless adapt.learned_lr=false), score "
    "test-test, and log the adapted checkpoint. Needs checkpoint=runs:/<id> | latest | "
    "latest:pretrain:<algorithm> | <file.pt>.",
)
_verb(
    "eval",
    "The few-shot protocol: for eval.repeats sampled tasks (task seeds task_seed, task_seed+1, ...: the "
    "same tasks for every checkpoint), adapt from the checkpoint as `fsx adapt` does and score all of "
    "test-test with COCOeval after each of eval.milestones adaptation steps; logs every repeat and the "
    "mean, std and 95% CI, and prints a table. Needs checkpoint=runs:/<id> | latest | "
    "latest:pretrain:<algorithm> | <file.pt>.",
)


@app.command("models")
def models() -> None:
    """List the detectors and backbones fsx builds (conf/detector, conf/backbone), with their
    parameter counts at the letters defaults (21 classes, 128 px) and the pretraining
    algorithms that run on each."""
    from fsx.run.models import model_table

    typer.echo(model_table())


def main() -> None:
    try:
        app()
    except UsageError as e:
        typer.echo(f"fsx: error: {e}", err=True)
        sys.exit(2)
