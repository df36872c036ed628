"""fsx export: a checkpoint (pretrained, adapted, meta-learned, TFA) written as one ONNX or
TorchScript file holding the whole detector (fsx/models/export.py), checked before it gets
its final name: the file is run back (onnxruntime, `torch.jit.load`) on check images next to
the PyTorch model, and every detection clearly above the cut-offs must agree in label, box
and score. A file that disagrees is kept as `<name>.disagrees<suffix>` for inspection and
the command fails. Recorded as an MLflow run tagged fsx.command=export with the file as an
artifact and its sha256 as a param."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from fsx import tracking
from fsx.engine.checkpoint import load_model, read_checkpoint
from fsx.errors import UsageError
from fsx.models.export import EXPORTED_SUFFIXES, FORMATS, agreement, export_file, load_exported
from fsx.run.wiring import benchmark_split, dataset_for_checkpoint, output_dir, plain, recorded_run


class CheckFailed(UsageError):
    """The exported file does not reproduce the model: not bad usage, a failure (exit 1)."""

    exit_code = 1


def cut_offs(model) -> tuple[float, int]:
    """(score threshold, detections kept per image) of a torchvision detector."""
    owner = model.roi_heads if hasattr(model, "roi_heads") else model
    return float(owner.score_thresh), int(owner.detections_per_img)


def check_images(cfg, payload: dict) -> tuple[list[torch.Tensor], str]:
    """The images the export is checked on: export.images (a folder, a file or a COCO JSON),
    else the first export.check_images of the checkpoint's test-test images."""
    count = int(cfg.export.check_images)
    if cfg.export.images:
        from fsx.data.image_folder import ImageFiles, list_images

        listing = list_images(str(cfg.export.images), None)
        files = ImageFiles(listing.images[:count], [])
        images = [files[i][0] for i in range(len(files)) if listing.images[i]["id"] not in files.failed]
        if not images:
            raise UsageError(f"export.images={cfg.export.images}: no readable image to check the export on")
        return images, str(cfg.export.images)
    from fsx.data.coco import DetectionDataset

    try:
        split = benchmark_split(dataset_for_checkpoint(cfg, payload.get("config")))
    except UsageError as e:
        raise UsageError(f"the export is checked on images and the checkpoint's dataset cannot give them ({e}): add export.images=<a folder of images>") from None
    test = split.test_test
    chosen = DetectionDataset(test.restrict(test.image_ids[:count]), [])
    return [chosen[i][0] for i in range(len(chosen))], f"{split.fold.dataset} test-test (first {len(chosen)} images)"


def export(cfg) -> dict:
    fmt = str(cfg.export.format)
    if fmt not in FORMATS:
        raise UsageError(f"export.format={fmt}: choose one of {', '.join(FORMATS)}")
    path, run_id = tracking.resolve_checkpoint(cfg.checkpoint, cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    if Path(path).suffix in EXPORTED_SUFFIXES:
        raise UsageError(f"checkpoint={cfg.checkpoint} is already an exported file; export an fsx checkpoint (.pt, runs:/<id>)")
    payload = read_checkpoint(path)
    model = load_model(payload).eval()
    spec = payload["model_spec"]
    images, where = check_images(cfg, payload)
    suffix = FORMATS[fmt]
    out = Path(str(cfg.export.out)).expanduser() if cfg.export.out else output_dir() / f"model{suffix}"
    if out.suffix != suffix:
        raise UsageError(f"export.out={cfg.export.out}: an {fmt} file ends in {suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "classes": list(payload["classes"]), "model_spec": spec, "source_run": run_id, "checkpoint": str(cfg.checkpoint), "kind": payload.get("kind"), "format": fmt,
        "config": {"dataset": (payload.get("config") or {}).get("dataset")},
    }
    partial = out.with_name(f".{out.stem}.partial{suffix}")  # renamed once checked

    stored = (payload.get("config") or {}).get("dataset") or plain(cfg.dataset)
    dataset = {"name": "unknown", **stored, "fold": stored.get("fold")}
    config = {"detector": spec["detector"], "backbone": spec["backbone"], **(payload.get("config") or {})}
    tags = {"fsx.checkpoint": str(cfg.checkpoint), "fsx.export_format": fmt, **({"fsx.source_run": run_id} if run_id else {})}
    family = f"detector={spec['detector']['name']} on backbone={spec['backbone']['name']}"
    with recorded_run(cfg, "export", dataset, run_name=f"export {fmt} {spec['detector']['name']}/{spec['backbone']['name']}", extra_tags=tags, checkpoint_config=config) as run:
        started = time.monotonic()
        try:
            export_file(model, fmt, images[0], partial, metadata)
        except Exception as e:  # noqa: BLE001 - the exporters raise many kinds of errors
            partial.unlink(missing_ok=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"{family} cannot be exported to {fmt}: {first[:300]} (try export.format={'torchscript' if fmt == 'onnx' else 'onnx'})") from None
        seconds = time.monotonic() - started
        exported = load_exported(partial)
        with torch.no_grad():
            pairs = [(model([image])[0], exported(image)) for image in images]
        floor, cap = cut_offs(model)
        check = agreement(pairs, floor, cap)
        run.log_metrics({**check.metrics(), "export/seconds": seconds})
        if not check.ok:
            kept = out.with_name(f"{out.stem}.disagrees{suffix}")
            os.replace(partial, kept)
            raise CheckFailed(
                f"the {fmt} file does not reproduce the model on {check.images} check images: {check.unmatched} of {check.compared} detections "
                f"have no counterpart within {check.box_tolerance} px and {check.score_tolerance} in score; kept for inspection as {kept}"
            )
        os.replace(partial, out)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        run.log_params({"export": {"file": str(out.resolve()), "sha256": digest, "bytes": out.stat().st_size, "checked_on": where}})
        run.log_file(out, "export")
    print(
        f"exported {family} ({len(payload['classes'])} classes) to {out} ({out.stat().st_size / 1e6:.1f} MB, {fmt}) in {seconds:.0f}s\n"
        f"checked on {check.images} images ({where}): {check.compared} detections above score {floor:g} compared, all matched; "
        f"largest differences {check.max_box_diff:.2g} px, {check.max_score_diff:.2g} in score\nsha256 {digest}\nMLflow run: {run.id}"
    )
    return {"run_id": run.id, "file": out, "sha256": digest, "agreement": check.metrics()}
