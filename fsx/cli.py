"""The `fsx` command: one typer command per verb. Arguments are Hydra overrides and Hydra
flags, handed to Hydra unchanged, so `-m` is Hydra's own multirun (sweepers and launcher
plugins work) and `--cfg job`, `--info`, `--resolve` do what Hydra's docs say."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

import typer

from fsx import __version__
from fsx.errors import UsageError
from fsx.run.overrides import validate

app = typer.Typer(
    name="fsx",
    help=(
        "Few-shot object detection experiments: pretrain a detector on a fold's base classes, "
        "adapt it to K-shot tasks of the novel classes, and evaluate how fast and how well it "
        "adapts, then run it on your own images (fsx detect), every run recorded in MLflow (default store: "
        "sqlite:///mlflow.db here).\n\n"
        "Arguments are Hydra overrides (key=value, group=option); -m sweeps over comma lists.\n\n"
        "\b\n"
        "  fsx pretrain                                # letters fold 1, tiny FCOS, CPU\n"
        "  fsx adapt checkpoint=runs:/<id> shots=5     # 5-way 5-shot on the novel letters\n"
        "  fsx eval checkpoint=latest eval.repeats=10 eval.milestones=[0,50,200]\n"
        "  fsx detect checkpoint=latest:adapt images=photos/   # boxes on your images, a browsable page\n"
        "  fsx export checkpoint=latest:adapt export.format=onnx   # one ONNX file, checked against PyTorch\n"
        "  fsx loop checkpoint=latest experiment=loop_letters  # simulated annotate -> adapt -> evaluate loop\n"
        "  fsx pretrain -m backbone=tiny,resnet18 seed=0,1\n"
        "  fsx runs sweep                                # that sweep's jobs: status, time, errors\n\n"
        "`fsx VERB --cfg job` prints every key. Exit codes: 0 ok, 2 bad usage or input, 130/143 "
        "stopped by Ctrl-C/SIGTERM (resumable), 1 other failures. `fsx runs clean` marks runs of "
        "killed processes KILLED. Set FSX_DEBUG=1 for full tracebacks."
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
    if multirun:
        from fsx.engine.distributed import launched

        if launched():  # refused once here, not by every process as a failed job
            _fail("torchrun runs one configuration, not a multirun (-m): start torchrun once per configuration", 2)
    if not (known.cfg or known.info or known.help or known.hydra_help or known.shell_completion or known.config_dir or known.config_name):
        validate(verb, list(known.overrides), multirun)

    from fsx.tracking import StoreError

    def task(cfg):
        def failed(message: str) -> None:
            from fsx.run.sweep import record_job_failure

            record_job_failure(message, cfg, verb)

        try:
            from fsx.run.sweep import start_job
            from fsx.tracking import check_store

            start_job()

            check_store(str(cfg.mlflow.tracking_uri))  # before minutes of work, not after
            if multirun:  # a rerun sweep does only what is missing
                from omegaconf import OmegaConf

                from fsx.run.sweep import plan_job, record_skip

                action, run_id = plan_job(OmegaConf.to_container(cfg, resolve=True), verb)
                if action == "skip":
                    record_skip(f"identical to FINISHED run {run_id}")
                    typer.echo(f"fsx: skipped: run {run_id} already did this job (skip_finished=false runs it again)")
                    return None
                if action == "resume":
                    cfg.resume = f"runs:/{run_id}"
                    typer.echo(f"fsx: resuming the interrupted run {run_id}")
            result = runner(cfg)
            # what Hydra's sweepers optimise (eval: eval.objective; pretrain: validation AP50)
            return result.get("objective") if isinstance(result, dict) else result
        except UsageError as e:
            if not multirun:
                _fail(str(e), e.exit_code)
            failed(str(e))
            typer.echo(f"fsx: job failed: {e}", err=True)
        except StoreError as e:  # the store went away mid-run: one message, exit 1
            if not multirun:
                _fail(str(e), 1)
            failed(str(e))
            typer.echo(f"fsx: job failed: {e}", err=True)
        except Exception as e:  # noqa: BLE001 - one failed job must not take the sweep down
            if not multirun or os.environ.get("FSX_DEBUG"):
                raise
            traceback.print_exc()
            failed(f"{type(e).__name__}: {e}")
        return None

    task.__module__ = __name__
    from fsx.engine.interrupt import install

    install()
    main = hydra.main(config_path="conf", config_name=verb, version_base="1.3")(task)
    argv = sys.argv
    sys.argv = [f"fsx-{verb}"] + args + (["--multirun"] if multirun and "--multirun" not in args and "-m" not in args else [])
    try:
        main()
    finally:
        sys.argv = argv
        if multirun:
            _finish_multirun()


def _finish_multirun() -> None:
    from fsx.run.sweep import finish_sweep

    finished = finish_sweep()
    if finished is None:
        return
    parent, children, failed, skipped, best = finished
    ok = sum(c["status"] == "FINISHED" for c in children)
    skip = f"; {len(skipped)} more skipped (already finished)" if skipped else ""
    typer.echo(f"\nmultirun: MLflow parent run {parent}: {ok} of {max(len(children), ok + len(failed))} jobs finished{skip}")
    if best:
        typer.echo(f"best trial: {best['overrides']} -> {best['value']}" + (f" (run {best['run']})" if best["run"] else ""))
    for line in failed:
        typer.echo(f"  failed: {line}", err=True)
    if failed:
        raise SystemExit(1)


def _runner(verb: str) -> Callable:
    """The verb's function, imported only when a job runs: torch and mlflow take seconds to
    import, and `--help`, `--cfg job` and bad usage should answer at once."""
    import importlib

    from fsx.engine.interrupt import install

    install()  # in this job's process too (a joblib worker is not the main process)
    from fsx.api import VERBS

    module, function = VERBS[verb]
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
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the shell's code (130, 143), not click's "Aborted!"
            typer.echo(f"fsx: stopped by {e or 'SIGINT'}; the run is recorded KILLED", err=True)
            raise SystemExit(getattr(e, "exit_code", 130)) from None

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
    "                      (tiny FCOS, 2 tasks of 32 images: 0.4 GB at 1 step, 1.2 GB at 5; docs/algorithms.md)\n"
    "            fomaml    first-order MAML: one step's memory\n"
    "            metasgd   MAML with learned inner step sizes (adapt/eval use them)\n"
    "            anil      MAML whose inner loop adapts only the detection head\n"
    "            tfa       TFA stage 1 (Faster R-CNN, SGD, LR scaled to the batch); adapt/eval then\n"
    "                      run stage 2: a fresh cosine box predictor trained alone (adapt.recipe)\n"
    "            Meta-learners: algorithm.head=shuffled (M task slots, classes shuffled per task) | fixed (one\n"
    "            row per base class, each task its rows); their checkpoints adapt as meta-trained (adapt.recipe)\n"
    "detector=   fcos (default) | retinanet | fasterrcnn | ssd\n"
    "backbone=   tiny (default) | resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v3 | vgg16 (SSD300's)\n"
    "            | efficientnet_lite0 | timm (backbone.model=<any timm model>); fsx models lists them.\n"
    "            Presets: experiment=rt_retinanet_r34 | ssd300_vgg16 | ssdlite_mobilenet_v3\n"
    "Starting points (default: random weights):\n"
    "  backbone.weights=imagenet   torchvision's IMAGENET1K_V1 (or an enum name: IMAGENET1K_V2), timm's\n"
    "                              default tag, or efficientnet_lite0's package; or a state dict's path.\n"
    "                              Read from the torch hub / Hugging Face cache, downloaded once unless\n"
    "                              FSX_OFFLINE=1 or HF_HUB_OFFLINE=1; inputs normalised as the weights expect\n"
    "  detector.weights=coco       torchvision's COCO detector (fcos/retinanet/fasterrcnn on resnet50,\n"
    "                              ssd on vgg16), class outputs fresh; adapt/eval refuse COCO-class novel\n"
    "                              classes unless allow_seen_classes=true\n"
    "  init=runs:/<id>             another fsx checkpoint's weights (latest:pretrain:standard, a .pt), any\n"
    "                              algorithm or dataset: e.g. algorithm=reptile init=latest:pretrain:standard\n"
    "                              Tagged fsx.lineage (standard → reptile); fsx report adds the parent's passes\n"
    "train.steps counts meta-iterations for meta-learners; train.passes=N instead gives every\n"
    "algorithm the same N forward-backward passes. Ctrl-C or SIGTERM saves checkpoints/last.pt;\n"
    "resume=true (the newest interrupted run here), resume=runs:/<id> or resume=<last.pt> continues\n"
    "it in the same MLflow run to the same weights. Other keys: dataset.fold, seed, device,\n"
    "algorithm.<hyperparameter>.",
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
    "latest:pretrain:<algorithm> | <file.pt>. A checkpoint adapts with the recipe it carries (TFA's stage 2, "
    "a meta-learner's inner optimiser; adapt.recipe=none: the common one). eval.tasks=validation draws "
    "base-class tasks from the pretraining's held-out images instead, for tuning; eval.objective "
    "(AP50@last | AP50@best | AP@<step>) is what eval returns to a sweeper: "
    "fsx eval -m hydra/sweeper=tune eval.tasks=validation 'adapt.lr=tag(log, interval(1e-4, 1e-2))'.",
)
_verb(
    "detect",
    "Run a checkpoint on images: fsx detect checkpoint=<runs:/<id> | latest:adapt | file.pt> "
    "detect.images=<folder | image | COCO json> (images=... for short). A folder is searched recursively "
    "for image files; a COCO JSON's annotations are the ground truth shown beside the detections and scored "
    "(AP, AP50). Files that cannot be read are skipped with one counted warning. Writes to detect.out "
    "(default: the Hydra run dir) and logs to MLflow under detect/: detections.json (COCO results, every "
    "detection), images.json (the images and categories they refer to), detections.csv (one row per image: "
    "detections >= detect.score_threshold, top and mean score, uncertainty = 1 - top score), rendered/*.png "
    "(boxes, class names and scores at the input's size; detect.render, detect.max_render) and "
    "detections.html (one self-contained page: by image or by detection, sorted by confidence, uncertainty "
    "or image id, a score slider). detect.sort=image_id|confidence|uncertainty orders the table and picks "
    "the images rendered.",
)

_verb(
    "export",
    "Write a checkpoint (pretrained, adapted, meta-learned, TFA) as one deployable file: "
    "export.format=onnx (run with onnxruntime) | torchscript (torch.jit.load). The whole detector: one RGB "
    "image float [3, H, W] in [0, 1] of any size in; boxes (x1, y1, x2, y2 in its pixels), scores and 0-based "
    "labels out; resize, normalisation, decoding and NMS inside; the class names in the file's metadata. "
    "Checked before it gets its name: run back on export.check_images (8) of the checkpoint's test-test "
    "images (or export.images=<folder>) next to the PyTorch model, every detection clearly above the cut-offs "
    "must match in label, box (0.1 px) and score (0.001); a file that disagrees is kept as "
    "<name>.disagrees.<suffix> and the command exits 1. Writes export.out (default: model.onnx in the Hydra run "
    "dir), logs it to MLflow under export/ with its sha256. fsx detect checkpoint=<model.onnx> runs it.",
)
_verb(
    "acquire",
    "Choose the next images to annotate: the task's support (ways, shots, task_seed, sampler: as fsx adapt "
    "samples it) is what is annotated; the pool is the rest of test-adapt. The checkpoint (adapted on the "
    "support first when it is not already adapted to the task's classes) scores the pool, each image gets an "
    "uncertainty (acquire.rule=least_confidence | margin | entropy over each box's score s, read as (s, 1 - s), "
    "aggregated by acquire.aggregate=max | mean | sum; or random), and the top acquire.k go to "
    "acquire/manifest.json and ranking.csv (acquire.out, default the Hydra run dir; logged to MLflow). "
    "acquire.pseudo_threshold=0.8 also writes pseudo_labels.json: confident detections on the other pool "
    "images, marked \"pseudo\": true, never on an annotated image.",
)
_verb(
    "loop",
    "A simulated feedback loop (annotate -> adapt -> evaluate) where the ground truth plays the annotator: "
    "start from the task's support (S images; loop.start=all: all of test-adapt but the later rounds' pool), "
    "then for loop.rounds rounds adapt (loop.steps: a number or {reptile: 10, default: 1000}, default "
    "adapt.steps; loop.warm_start), score test-test, and add acquire.k images of the pool chosen by "
    "acquire.rule (0: adapt again on the same images). Each round logs at MLflow step = round loop/AP50, loop/AP, loop/images, "
    "loop/adapt_seconds, loop/eval_seconds, loop/acquire_seconds, loop/annotation_seconds (images added x "
    "loop.annotation_seconds, default 21 s) and loop/cumulative_seconds; loop/rounds.csv; prints a table. "
    "loop.patience stops once loop.metric gains less than loop.min_delta. Presets: experiment=loop_letters; "
    "the thesis's use cases experiment=uc1_few ... uc4_few and uc1_many ... uc4_many (docs/verbs/acquire-loop.md).",
)


@app.command("models")
def models() -> None:
    """List the detectors and backbones fsx builds (conf/detector, conf/backbone), with their
    parameter counts at the letters defaults (21 classes, 128 px) and the pretraining
    algorithms that run on each."""
    from fsx.run.models import model_table

    typer.echo(model_table())


@app.command("compare")
def compare_command(
    runs: list[str] = typer.Argument(..., help="Eval runs: <run id>, runs:/<id>, or latest:eval:<algorithm>. The first is the baseline."),
    metric: str = typer.Option("AP50", "--metric", help="Any metric of eval/repeats.csv: AP, AP50, AP75, vocAP50, AR100, ..."),
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri", help="The store (fsx's default: ./mlflow.db)."),
    experiment: str = typer.Option("fsx", "--experiment", help="Where latest:eval:<algorithm> looks."),
    unpaired: bool = typer.Option(False, "--unpaired", help="Allow runs that evaluated different tasks (Welch's test instead of the paired one)."),
    plot: str = typer.Option(None, "--plot", help="Also write the curves with their 95% CI bands to this PNG."),
) -> None:
    """Compare eval runs milestone by milestone: each run's mean and 95% CI over its tasks, and
    each run minus the first as a paired difference over the same tasks (mean, 95% CI, paired
    t-test p; scipy). Runs that did not adapt on identical support sets and score the same
    test images are refused unless --unpaired.

    \b
      fsx eval -m checkpoint=latest:pretrain:standard,latest:pretrain:reptile
      fsx compare latest:eval:standard latest:eval:reptile --plot curves.png"""
    from fsx.run.compare import run_compare

    try:
        typer.echo(run_compare(runs, tracking_uri, experiment, metric, unpaired, plot))
    except UsageError as e:
        _fail(str(e), e.exit_code)


@app.command("report")
def report_command(
    parent: str = typer.Option(None, "--parent", help="A sweep's parent run id (fsx eval -m prints it): report on its eval children."),
    experiment: str = typer.Option("fsx", "--experiment", help="The experiment whose eval runs to report on (without --parent)."),
    filter_string: str = typer.Option(None, "--filter", help="An MLflow filter on tags/params, e.g. \"params.shots = '5' and tags.`fsx.fold` = '1'\"."),
    metric: str = typer.Option("AP50", "--metric", help="Any metric of eval/repeats.csv: AP, AP50, AP75, vocAP50, AR100, ..."),
    out: str = typer.Option("report", "--out", help="The folder to write report.md, report.csv and the PNGs to."),
    baseline: str = typer.Option(None, "--baseline", help="The algorithm the paired differences are taken to (default: the first evaluated)."),
    no_log: bool = typer.Option(False, "--no-log", help="Only write the folder; log no MLflow run."),
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri", help="The store (fsx's default: ./mlflow.db)."),
    loops: bool = typer.Option(False, "--loops", help="Report on FINISHED fsx loop runs instead: the metric per round and the loop's seconds, per pretraining algorithm and acquisition rule."),
) -> None:
    """Tables and plots over many FINISHED eval runs: a sweep's children (--parent), an
    experiment, or an MLflow --filter. One row per algorithm, model, dataset, fold, ways and
    shots (runs sharing all of these are pooled), with the metric's mean ± 95% CI at every
    milestone and n; an `all` fold row averages the fold means (CI over folds). PNGs: the
    metric against adaptation steps with CI bands per fold and averaged over folds, and the
    paired difference to the baseline where the runs adapted on identical tasks (skipped, with
    the reason, where not). Writes OUT/report.md, OUT/report.csv and OUT/*.png, logs them in a
    new run tagged fsx.command=report (unless --no-log), and prints the tables.

    \b
      fsx eval -m checkpoint=latest:pretrain:standard,latest:pretrain:reptile eval.repeats=20
      fsx report --parent <parent run id> --out report/
      fsx report --filter "params.shots = '5'" --metric AP --out report-5shot/

    With --loops, over fsx loop runs: per pretraining algorithm x acquisition rule x start
    (runs alike pooled, mean ± 95% CI over them), the metric after each round, the seconds of
    each round (acquire + adapt + evaluate + simulated annotation) and the cumulative seconds;
    PNGs of the metric against the round and against the cumulative seconds.

    \b
      fsx loop -m checkpoint=latest:pretrain:standard,latest:pretrain:reptile acquire.rule=random,entropy
      fsx report --loops --out loop-report/"""
    from fsx.run.report import run_loop_report, run_report

    try:
        if loops:
            if baseline:
                raise UsageError("--baseline is for eval reports (paired differences); a loop report has none")
            typer.echo(run_loop_report(tracking_uri, experiment, parent, filter_string, metric, out, not no_log))
            return
        typer.echo(run_report(tracking_uri, experiment, parent, filter_string, metric, out, not no_log, baseline))
    except UsageError as e:
        _fail(str(e), e.exit_code)


runs_app = typer.Typer(help="Look after the runs of an MLflow store.", no_args_is_help=True, add_completion=False, rich_markup_mode=None)
app.add_typer(runs_app, name="runs")


@runs_app.command("clean")
def runs_clean(
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri", help="The store (fsx's default: ./mlflow.db)."),
    experiment: str = typer.Option(None, "--experiment", help="Only this experiment (default: all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be marked, change nothing."),
) -> None:
    """Mark KILLED the runs left RUNNING by a process that no longer exists (SIGKILL, a crashed
    node). Only runs started on this host can be checked; others are listed and left alone.
    An interrupted pretrain run can still be resumed afterwards: fsx pretrain resume=runs:/<id>."""
    from fsx import tracking

    tracking.check_store(tracking_uri)
    marked = 0
    for run in tracking.unfinished_runs(tracking_uri, experiment):
        if run["status"] != "RUNNING":
            continue
        alive = tracking.process_alive(run["tags"])
        where = f"{run['id']} ({run['experiment']}: {run['name']})"
        if alive is None:
            typer.echo(f"left alone: {where}: started on host {run['tags'].get('fsx.host', 'unknown')}, cannot tell whether it lives")
        elif not alive:
            if not dry_run:
                tracking.mark_killed(tracking_uri, run["id"])
            marked += 1
            typer.echo(f"{'would mark' if dry_run else 'marked'} KILLED: {where}: process {run['tags']['fsx.pid']} is gone")
    typer.echo(f"{marked} run(s) {'to mark' if dry_run else 'marked'} KILLED")


@runs_app.command("sweep")
def runs_sweep(
    parent: str = typer.Argument(None, help="The sweep's parent run id (printed when the sweep starts); default: the newest sweep."),
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", "--tracking-uri", help="The store (fsx's default: ./mlflow.db)."),
    experiment: str = typer.Option("fsx", "--experiment", help="The experiment to look for the newest sweep in."),
) -> None:
    """Where a sweep (fsx ... -m) stands, read from the store alone, so it works while the sweep
    runs, from another machine, or after its launcher died: one row per job with its status,
    how long it took, its run id and the overrides that set it apart, and the error of each
    failed job. RUNNING? marks a run whose process on this host is gone (fsx runs clean marks
    it KILLED; rerunning the sweep resumes it and skips what finished).

    \b
      fsx runs sweep
      fsx runs sweep 45ecdeeaaac84ff3bd97a12b22622f54 --tracking-uri http://127.0.0.1:5000"""
    from fsx import tracking
    from fsx.run.sweep_status import sweep_status

    try:
        tracking.check_store(tracking_uri)
        typer.echo(sweep_status(tracking_uri, experiment, parent))
    except UsageError as e:
        _fail(str(e), e.exit_code)


data_app = typer.Typer(
    help="Look at a dataset before training on it: counts per class and split, optimised folds, pictures with boxes. "
    "OVERRIDES choose the dataset as for every verb (default: the letters, fold 1).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
DATA_ARGS = {"context_settings": PASS_THROUGH, "options_metavar": "[OPTIONS] [OVERRIDES]..."}


def _data(command: str, *args) -> None:
    """Run `fsx.run.data.<command>` and print what it returns; bad input exits 2."""
    import importlib

    try:
        typer.echo(getattr(importlib.import_module("fsx.run.data"), command)(*args))
    except UsageError as e:
        _fail(str(e), e.exit_code)


@data_app.command("stats", **DATA_ARGS)
def data_stats(ctx: typer.Context, csv: str = typer.Option(None, "--csv", help="Also write the table to this CSV file.")) -> None:
    """Images and boxes per class: in the whole source, and in the train / test-adapt / test-test
    split the fold makes (base or novel marked; totals count distinct images). A custom dataset
    without dataset.novel shows the source alone.

    \b
      fsx data stats                                   # the letters, fold 1
      fsx data stats dataset=custom dataset.path=../shared/data/pinochle_cards dataset.novel=[queen,king] --csv cards.csv"""
    _data("data_stats", list(ctx.args), csv)


@data_app.command("folds", **DATA_ARGS)
def data_folds(
    ctx: typer.Context,
    folds: int = typer.Option(4, "--folds", help="How many disjoint novel-class sets (equal sizes, differing by at most one)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random start and the annealing: the same seed, the same folds."),
    iterations: int = typer.Option(10_000, "--iterations", help="At least this many moves (swaps of two classes between folds)."),
    patience: int = typer.Option(5_000, "--patience", help="Then stop after this many moves without improvement."),
    out: str = typer.Option("folds.yaml", "--out", help="Write the folds here as YAML (folds: {1: [classes], ...})."),
) -> None:
    """Partition the dataset's classes into novel sets that take as few images away from
    training as possible: the Reptile thesis's fold optimisation (PROTOCOLS 2.6; simulated
    annealing over the whole source). Prints the folds, the objective against the random start,
    the share of each class's images each fold moves to test, and the override for fold 1.

    \b
      fsx data folds dataset=custom dataset.path=../shared/data/pinochle_cards --folds 3
      fsx pretrain dataset=custom dataset.path=../shared/data/pinochle_cards dataset.novel=[ace,king]"""
    _data("data_folds", list(ctx.args), folds, seed, iterations, patience, out)


@data_app.command("sample", **DATA_ARGS)
def data_sample(
    ctx: typer.Context,
    out: str = typer.Option("shots.json", "--out", help="Write the manifests here (JSON: the split's and one per task)."),
    repeats: int = typer.Option(1, "--repeats", help="Tasks to sample: task seeds task_seed .. task_seed + repeats - 1, as eval.repeats does."),
) -> None:
    """Sample K-shot support sets exactly as `fsx adapt` and `fsx eval` would (ways, shots,
    task_seed, sampler, sample_lists, sample_records, generalized) and write their manifests:
    every image and, for the instance sampler, every chosen box, with a content hash.

    \b
      fsx data sample sampler=instance shots=3 --repeats 10 --out letters-3shot.json
      fsx data sample dataset=voc_tfa dataset.root=/data/VOCdevkit task_seed=0 sample_lists=/data/vocsplit shots=10"""
    _data("data_sample", list(ctx.args), out, repeats)


@data_app.command("show", **DATA_ARGS)
def data_show(
    ctx: typer.Context,
    split: str = typer.Option("train", "--split", help="train | test_adapt | test_test | task (the support set `fsx adapt` samples: ways, shots, task_seed)."),
    count: int = typer.Option(16, "--count", help="Draw the split's first N images."),
    out: str = typer.Option(None, "--out", help="The PNG to write (default: data-<split>.png here)."),
) -> None:
    """Draw a split's first images with their boxes and class names into one PNG (train shows
    base boxes only, test-adapt and test-test novel boxes only), or a sampled task's support set.

    \b
      fsx data show --split task ways=3 shots=2 task_seed=4 --out task.png
      fsx data show dataset=custom dataset.path=../shared/data/bccd/BCCD dataset.novel=[WBC] --split test_adapt"""
    _data("data_show", list(ctx.args), split, count, out)


def main() -> None:
    try:
        app()
    except UsageError as e:
        typer.echo(f"fsx: error: {e}", err=True)
        sys.exit(2)

