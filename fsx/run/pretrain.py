"""fsx pretrain: train a detector on a fold's base classes with the configured algorithm."""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fsx import tracking
from fsx.algorithms import PretrainData, build_algorithm
from fsx.data.coco import DetectionDataset
from fsx.data.folds import hold_out
from fsx.data.transforms import build_transform
from fsx.engine import distributed
from fsx.engine.checkpoint import load_model, read_checkpoint, save_checkpoint
from fsx.engine.device import loader_workers, resolve_device, seed_everything
from fsx.errors import UsageError
from fsx.evaluation.coco_metrics import SUMMARY_STATS, detection_metrics
from fsx.evaluation.predict import predict
from fsx.models.heads import frozen_norm_layers
from fsx.run.checks import check_pretrain
from fsx.run.launch import launch
from fsx.run.start import resolve_start
from fsx.run.wiring import benchmark_split, log_checkpoint, output_dir, plain, recorded_run, resumed_config


class Unrecorded:
    """The run a process other than the main one logs to: nothing (rank 0 records the run)."""

    id = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        pass

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        pass


def budget(cfg, algorithm) -> int:
    """Steps (meta-iterations) to run: train.steps, or as many as fit in train.passes
    forward-backward passes of this algorithm (compute matched across algorithms)."""
    if cfg.train.passes is None:
        return int(cfg.train.steps)
    return max(1, round(int(cfg.train.passes) / algorithm.passes_per_step()))


def resume_point(cfg) -> tuple[dict, Path | None, str | None]:
    """(the last.pt payload, where the resumed run keeps writing its last.pt, the interrupted
    MLflow run to continue or None) for resume=<.../last.pt> | runs:/<id> | true (the newest
    interrupted pretrain run here). A run found through the store goes on with its own
    last.pt; a file named on the command line is only read (the new run writes its own)."""
    reference, uri, experiment = str(cfg.resume), str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment)
    run_id = None
    if reference.lower() in ("true", "latest"):
        found = [r for r in tracking.unfinished_runs(uri, experiment, "pretrain") if Path(r["tags"].get("fsx.last_checkpoint", "")).is_file()]
        if not found:
            raise UsageError(f"resume={reference}: no interrupted pretrain run with a last.pt in experiment '{experiment}' at {uri}")
        reference = f"runs:/{found[0]['id']}"
    if reference.startswith("runs:/"):
        run_id = reference[len("runs:/") :].strip("/").split("/")[0]
        status, tags = tracking.run_state(uri, run_id)
        if status == "FINISHED":
            raise UsageError(f"resume={cfg.resume}: run {run_id} finished; its checkpoint is runs:/{run_id}/checkpoints/model.pt")
        path = Path(tags.get("fsx.last_checkpoint", ""))
        if not path.is_file():
            raise UsageError(f"resume={cfg.resume}: run {run_id} left no last.pt (it stopped before its first one was written, or {path} was moved)")
    else:
        path = Path(reference).expanduser()
    own = path if run_id else None
    payload = read_checkpoint(path)
    if "train_state" not in payload:
        raise UsageError(f"resume={cfg.resume} is a final checkpoint, not an interrupted run's last.pt")
    run_id = run_id or payload["train_state"].get("run_id")
    if run_id:
        try:
            status, tags = tracking.run_state(uri, run_id)
        except UsageError:  # a last.pt from another store: go on in a new run
            return payload, own, None
        if status == "FINISHED":
            return payload, own, None
        if tracking.process_alive(tags) and tags.get("fsx.pid") != str(os.getpid()):
            raise UsageError(f"resume={cfg.resume}: run {run_id} is still running (process {tags['fsx.pid']}); stop it first")
    return payload, own, run_id


def pretrain(cfg) -> dict:
    """Pretrain in this process, or as one of the processes torchrun started (WORLD_SIZE > 1),
    or start trainer.devices processes."""
    devices = int(OmegaConf.select(cfg, "trainer.devices", default=1))
    if devices < 1:
        raise UsageError(f"trainer.devices={devices} must be at least 1")
    if devices > 1 and not distributed.launched():
        check_pretrain(cfg)
        build_algorithm(**plain(cfg.algorithm)).distributed_plan(devices)  # refused here, not by every process
        return launch(devices)
    if devices > 1 and int(os.environ["WORLD_SIZE"]) != devices:
        raise UsageError(f"trainer.devices={devices} but torchrun started {os.environ['WORLD_SIZE']} processes: drop trainer.devices when you start torchrun yourself")
    timeout = float(OmegaConf.select(cfg, "trainer.timeout_s", default=distributed.TIMEOUT_S))
    with distributed.process_group(resolve_device(cfg.device), timeout_s=timeout) as device:
        return train_here(cfg, device)


def train_here(cfg, device: torch.device) -> dict:
    """The pretraining itself, in this process (one of several when torchrun started it: then
    rank 0 alone opens the MLflow run, logs and writes checkpoints)."""
    main = distributed.is_main()
    # the store is read by the main process only; the others get what it found
    resume, last_path, resume_run = distributed.on_main(lambda: resume_point(cfg)) if cfg.resume else (None, None, None)
    if resume is not None:
        cfg = resumed_config(cfg, resume.get("config"))
    check_pretrain(cfg)
    hashed = plain(cfg)  # what the command line composed: a rerun of the sweep finds this run by it
    start = None
    if resume is None:  # before the data: a bad weight name or a missing file answers in seconds
        with distributed.main_first():  # rank 0 downloads what is missing, the others read its cache
            cfg, start = resolve_start(cfg)
    dataset_cfg = plain(cfg.dataset)
    with distributed.main_first():  # rank 0 generates or converts the data once, the others read it
        split = benchmark_split(dataset_cfg)
    train_set, val_set = hold_out(split.train, int(cfg.train.val_images), int(dataset_cfg["split_seed"]))
    names = list(split.fold.base)
    if not names or not len(split.train):
        raise UsageError(
            f"{dataset_cfg['name']} fold {dataset_cfg['fold']} leaves nothing to pretrain on ({len(names)} base classes, "
            f"{len(split.train)} training images): pretrain on another dataset and adapt its checkpoint to this one"
        )
    class_ids = [split.train.category_id(n) for n in names]
    if resume is not None and list(resume["classes"]) != names:
        raise UsageError(
            f"resume={cfg.resume} was trained on classes {' '.join(resume['classes'])}, but this run's "
            f"{dataset_cfg['name']} fold {dataset_cfg['fold']} has {' '.join(names)}: resume with the interrupted run's dataset settings"
        )
    written_by = ((resume or {}).get("config") or {}).get("algorithm", {}).get("name")
    if written_by not in (None, cfg.algorithm.name):
        raise UsageError(f"resume={cfg.resume} was written by algorithm={written_by}, not {cfg.algorithm.name}: resume with algorithm={written_by}")

    seed_everything(cfg.seed)
    algorithm = build_algorithm(**plain(cfg.algorithm))
    allowed = getattr(algorithm, "detectors", None)
    if allowed and cfg.detector.name not in allowed:
        raise UsageError(f"algorithm={cfg.algorithm.name} is defined for detector={' or '.join(allowed)}, not {cfg.detector.name}: add detector={allowed[0]}")
    steps = budget(cfg, algorithm)
    processes = distributed.world_size()
    plan = {"world_size": processes, "backend": distributed.backend(), **algorithm.distributed_plan(processes)}
    if distributed.is_distributed() and main:  # said, not only logged: the GPU count changes the effective batch
        print(f"fsx pretrain: {processes} process{'es' if processes > 1 else ''} ({plan['backend']}): " + "; ".join(f"{k} {v}" for k, v in plan.items() if k not in ("world_size", "backend")), flush=True)
    transform = build_transform(**dataset_cfg["augment"], seed=cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # convolution algorithms tuned once per input shape
    workers = loader_workers(cfg.get("workers", "auto"), device, processes)
    data = PretrainData(train_set, class_ids, names, DetectionDataset(train_set, class_ids, transform), workers=workers, pin_memory=device.type == "cuda")
    spec = resume["model_spec"] if resume else start.spec(cfg, algorithm.num_outputs(data))
    model = (load_model(resume) if resume else start.model(spec, names, algorithm.task_sized_head)).to(device)
    # what the checkpoints say about where the weights came from (a resumed run keeps its own)
    origin = resume["train_state"].get("origin") if resume else None
    origin = origin or {
        "weights": start.root_weights() if start else "scratch",
        "parents": start.lineage(cfg.algorithm.name, None, 0, dataset_cfg)[:-1] if start else [],
        "seen": start.seen_classes(names) if start else names,
        "tags": start.tags(cfg.algorithm.name) if start else {},
        "params": start.params() if start else {},
    }
    passes = steps * algorithm.passes_per_step()
    start_step = 0
    if resume:
        start_step = int(resume["train_state"]["step"])
        algorithm.load_state_dict(resume["train_state"]["algorithm"])
    config = plain(cfg)
    last_path = last_path or output_dir() / "checkpoints" / "last.pt"
    frozen = frozen_norm_layers(model)
    if frozen and algorithm.episodic and main:
        print(
            f"note: the backbone has {frozen} frozen batch-norm layers (backbone.norm=frozen_bn): their scale and shift are "
            f"buffers, so {cfg.algorithm.name}'s inner loop cannot adapt them; backbone.norm=bn makes them parameters",
            flush=True,
        )

    extra_tags = {"fsx.last_checkpoint": str(last_path.resolve()), **origin["tags"]}
    if resume:
        extra_tags.update({"fsx.resumed_from": str(cfg.resume), "fsx.resumed_at_step": str(start_step)})
    name = f"pretrain {cfg.algorithm.name} {dataset_cfg['name']}/{dataset_cfg['fold']}"
    recording = recorded_run(cfg, "pretrain", dataset_cfg, run_name=name, extra_tags=extra_tags, resume_run_id=resume_run, hashed_config=hashed) if main else contextlib.nullcontext(Unrecorded())
    with recording as run:
        if not resume_run:
            run.log_dict({**split.manifest(), "val": {"image_ids": val_set.image_ids, "hash": val_set.content_hash()}}, "manifest.json")
            run.log_params(
                {
                    "model": {"parameters": sum(p.numel() for p in model.parameters()), "head_classes": spec["num_classes"], "frozen_norm_layers": frozen},
                    "train_images": len(train_set),
                    "device_used": str(device),
                    "algorithm": algorithm.describe(),
                    "train": {"steps_run": steps, "passes_per_step": algorithm.passes_per_step(), "passes_run": passes, "loader_workers": workers},
                    "distributed": plan,
                    **origin["params"],
                }
            )
        window: collections.deque = collections.deque(maxlen=50)  # the last losses (device tensors between read-backs)
        done = [start_step]
        started = time.monotonic()
        augment = getattr(transform, "generator", None)

        def save_last(step: int) -> None:
            # the random states travel with the weights: a resumed run draws what this one would have
            rng = {"torch": torch.get_rng_state(), "augment": augment.get_state() if augment is not None else None}
            state = {"step": step, "algorithm": algorithm.state_dict(), "rng": rng, "run_id": run.id, "origin": origin}
            save_checkpoint(last_path, model, spec, names, config, train_state=state, kind="pretrain")

        if resume and resume["train_state"].get("rng"):
            rng = resume["train_state"]["rng"]
            torch.set_rng_state(rng["torch"])
            if augment is not None and rng.get("augment") is not None:
                augment.set_state(rng["augment"])

        def on_step(step: int, losses: dict[str, float]) -> None:
            done[0] = step
            window.append(losses["loss"])
            if step % cfg.train.log_every == 0 or step == steps:
                run.log_metrics({f"train/{k}": v for k, v in losses.items()}, step=step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < steps and main:
                save_last(step)

        try:
            last = algorithm.pretrain(model, data, steps, device, seed=int(cfg.seed), amp=bool(cfg.amp), start_step=start_step, on_step=on_step, sync_every=int(cfg.train.log_every))
        except KeyboardInterrupt:
            if done[0] > start_step and main:
                save_last(done[0])
                print(f"\ninterrupted after step {done[0]}; continue with: fsx pretrain resume=runs:/{run.id} (or resume={last_path})", flush=True)
            raise
        seconds = time.monotonic() - started
        final_loss = float(sum(window) / len(window)) if window else float("nan")
        run.log_metrics({"train/final_loss": final_loss, "train/seconds": seconds, "train/steps_per_second": (last - start_step) / max(seconds, 1e-9)}, step=last)
        val = {}
        if not main:  # the main process validates and stores the model
            return {"run_id": None, "steps": last, "final_loss": final_loss, "val": val}
        if len(val_set) and not algorithm.task_sized_head:
            results = predict(model, DetectionDataset(val_set, class_ids), device, batch_size=int(cfg.eval.batch_size), amp=bool(cfg.amp), desc="validate", workers=workers)
            val = detection_metrics(val_set, results, class_ids)
            run.log_metrics({f"val/{k}": v for k, v in val.items() if k in SUMMARY_STATS}, step=last)
        with tempfile.TemporaryDirectory() as tmp:
            lineage = origin["parents"] + [{"run_id": run.id, "algorithm": cfg.algorithm.name, "passes": passes, "dataset": dataset_cfg["name"], "fold": str(dataset_cfg["fold"])}]
            path = save_checkpoint(
                Path(tmp) / "model.pt", model, spec, names, config, kind="pretrain", step=last, source_run=run.id,
                start={"weights": origin["weights"]}, lineage=lineage, pretrained_classes=origin["seen"], **algorithm.checkpoint_extras(),
            )
            log_checkpoint(run, path)
        last_path.unlink(missing_ok=True)  # finished: the run's artifact is the checkpoint now

    scored = f"; base AP50 {val['AP50']:.3f} (AP {val['AP']:.3f}) on {len(val_set)} held-out training images" if val else ""
    print(
        f"pretrained {cfg.algorithm.name} on {dataset_cfg['name']} fold {dataset_cfg['fold']} "
        f"({len(names)} base classes, {len(train_set)} images): {last} steps in {seconds:.0f}s on {device}, "
        f"final loss {final_loss:.3f}{scored}\ncheckpoint: runs:/{run.id}/checkpoints/model.pt"
    )
    # what a sweeper optimises: base AP50 on the held-out images (None where none were scored)
    return {"run_id": run.id, "steps": last, "final_loss": final_loss, "val": val, "checkpoint": f"runs:/{run.id}/checkpoints/model.pt", "objective": val.get("AP50")}
