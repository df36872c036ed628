"""fsx detect: a checkpoint on images (the Reptile thesis's detect job and Detection tab, RT
section 5, without a server).

`detect.images` is a folder (searched recursively), one image file, or a COCO JSON whose
annotations, when it has any, are the ground truth. Images are fed at their own size (the
model's transform resizes them and maps the boxes back to the input's pixels), decoded one
batch at a time. Files that cannot be read are skipped with one counted warning. Written to
`detect.out` (default: the Hydra run dir) and logged to MLflow under `detect/`:

- detections.json: COCO results [{image_id, category_id, bbox [x, y, w, h], score}] with
  every detection the model returns (with ground truth: of the classes it has, with its ids);
- images.json: a COCO dict (images with file names and sizes, categories, the ground truth's
  annotations or none), so the results describe themselves and COCOeval takes the pair;
- detections.csv: one row per image, in `detect.sort` order;
- rendered/<image>.png: boxes, class names and scores >= detect.score_threshold drawn at the
  input's pixel size (the first detect.max_render images in that order);
- detections.html: one self-contained page (thumbnails and data inline, no external URL)
  that browses the same images by image or by detection, sorted by confidence, uncertainty
  or image id, with a score slider and the ground truth beside the detections.

Uncertainty of an image is least confidence: 1 - the highest score of its detections (1 for
an image without any). torchvision's detectors return only the winning class's score per
box, not the distribution over classes, so margin and entropy cannot be computed from them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from PIL import Image

from fsx.data.classes import same_class_names
from fsx.data.coco import CocoSet
from fsx.data.image_folder import ImageFiles, Images, list_images
from fsx.engine.checkpoint import load_model, read_checkpoint
from fsx.engine.device import resolve_device
from fsx.errors import UsageError
from fsx.evaluation.detections_page import PAGE_DETECTION_CARDS, PALETTE, page_html, page_image, render
from fsx.models.export import EXPORTED_SUFFIXES
from fsx.models.heads import num_classes
from fsx.progress import progress
from fsx.run.checks import check_detect
from fsx.run.wiring import output_dir, plain, recorded_run


def class_categories(classes: list[str], outputs: int, ground_truth: CocoSet | None) -> tuple[list[dict], list[int]]:
    """The categories of the model's labels (label i is the checkpoint's class i), and the ids
    among them that the ground truth has. With ground truth a class takes the id of the
    ground-truth category of its name (case aside; a VOC 'sofa' is a COCO 'couch'); others get
    ids after the ground truth's. Without, ids are 1..M."""
    names = [classes[i] if i < len(classes) else f"label {i}" for i in range(outputs)]
    if ground_truth is None:
        return [{"id": i + 1, "name": n} for i, n in enumerate(names)], []
    by_name = {c["name"].lower(): c["id"] for c in ground_truth.categories}
    next_id = max([c["id"] for c in ground_truth.categories] + [0]) + 1
    categories, matched = [], []
    for name in names:
        found = next((by_name[a.lower()] for a in sorted(same_class_names(name)) if a.lower() in by_name), None)
        if found is None or found in matched:
            categories.append({"id": next_id, "name": name})
            next_id += 1
        else:
            categories.append({"id": found, "name": name})
            matched.append(found)
    return categories, matched


def image_rows(images: list[dict], by_image: dict[int, list[dict]], threshold: float, ground_truth: CocoSet | None) -> list[dict]:
    """One row per image: detections >= threshold, the highest and their mean score, and the
    least-confidence uncertainty 1 - highest score (over every detection of the image)."""
    rows = []
    for img in images:
        scores = [d["score"] for d in by_image.get(img["id"], [])]
        kept = [s for s in scores if s >= threshold]
        top = max(scores, default=0.0)
        row = {
            "image_id": img["id"],
            "file_name": img["file_name"],
            "width": img["width"],
            "height": img["height"],
            "detections": len(kept),
            "max_score": round(top, 6),
            "mean_score": round(sum(kept) / len(kept), 6) if kept else "",
            "uncertainty": round(1.0 - top, 6),
        }
        if ground_truth is not None:
            row["ground_truth"] = len(ground_truth.annotations(img["id"]))
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], order: str) -> list[dict]:
    if order == "confidence":
        return sorted(rows, key=lambda r: (-r["max_score"], r["image_id"]))
    if order == "uncertainty":
        return sorted(rows, key=lambda r: (-r["uncertainty"], r["image_id"]))
    return sorted(rows, key=lambda r: r["image_id"])


def rendered_name(file_name: str, image_id: int, taken: set[str]) -> str:
    """rendered/<the image's relative path with .png>; `<stem>_<id>.png` where two would meet."""
    parts = [p for p in Path(file_name).parts if p not in ("", ".", "..", "/") and not p.endswith(":\\")]
    relative = Path(*parts) if parts else Path(f"image_{image_id}")
    name = relative.with_suffix(".png").as_posix()
    if name in taken:
        name = relative.with_name(f"{relative.stem}_{image_id}.png").as_posix()
    taken.add(name)
    return name


def detect(cfg) -> dict:
    check_detect(cfg)
    d = cfg.detect
    threshold = float(d.score_threshold)
    out = Path(str(d.out)).expanduser() if d.out else output_dir()
    listing = list_images(str(d.images), d.image_root, exclude=out)
    path, run_id = _checkpoint(cfg)
    if Path(path).suffix in EXPORTED_SUFFIXES:  # an fsx export: onnxruntime or torch.jit runs it
        payload, model = exported_model(Path(path))
        outputs = len(payload["classes"])
    else:
        payload = read_checkpoint(path)
        model = load_model(payload)
        outputs = num_classes(model)
    classes = list(payload["classes"])
    if outputs != len(classes):
        print(f"note: the checkpoint's head has {outputs} outputs for {len(classes)} listed classes; labels beyond the list are named 'label <i>'", file=sys.stderr)
    gt = listing.ground_truth
    categories, matched = class_categories(classes, outputs, gt)
    if gt is not None and not matched:
        print(f"note: the ground truth of {listing.source} has none of the checkpoint's classes: it is shown beside the detections, not scored", file=sys.stderr)
    if not listing.images:
        _warn_skipped(listing.skipped, len(listing.skipped))
        raise UsageError(f"detect.images={d.images}: none of its {len(listing.skipped)} image files can be read")
    device = resolve_device(str(cfg.device))
    model = model.to(device)

    stored = (payload.get("config") or {}).get("dataset") or plain(cfg.dataset)
    dataset = {"name": "unknown", **stored, "fold": stored.get("fold")}  # the tags say what the model was trained on
    spec = payload["model_spec"]
    checkpoint_config = {"detector": spec["detector"], "backbone": spec["backbone"], **(payload.get("config") or {})}
    tags = {"fsx.checkpoint": str(cfg.checkpoint), "fsx.detect_images": listing.source, "fsx.detect_ground_truth": str(gt is not None).lower(), **({"fsx.source_run": run_id} if run_id else {})}
    run_name = f"detect {Path(listing.source).name} ({len(listing.images)} images)"
    with recorded_run(cfg, "detect", dataset, run_name=run_name, extra_tags=tags, checkpoint_config=checkpoint_config) as run:
        from fsx.evaluation.predict import predict

        files = ImageFiles(listing.images, [c["id"] for c in categories])
        started = time.monotonic()
        results = predict(model, files, device, int(d.batch_size), bool(cfg.amp), desc="detect")
        seconds = time.monotonic() - started
        skipped = listing.skipped + [(img["file_name"], files.failed[img["id"]]) for img in listing.images if img["id"] in files.failed]
        images = [img for img in listing.images if img["id"] not in files.failed]
        _warn_skipped(skipped, len(skipped) + len(images))
        if not images:
            raise UsageError(f"detect.images={d.images}: none of its {len(skipped)} image files can be read")
        results = [
            {"image_id": r["image_id"], "category_id": r["category_id"], "bbox": [round(v, 2) for v in r["bbox"]], "score": round(r["score"], 6)}
            for r in results
            if r["image_id"] not in files.failed
        ]
        by_image: dict[int, list[dict]] = {}
        for r in results:
            by_image.setdefault(r["image_id"], []).append(r)
        rows = sort_rows(image_rows(images, by_image, threshold, gt), str(d.sort))

        # with ground truth the files are COCOeval's pair: its ids, its categories, its images
        kept_ids = [img["id"] for img in images]
        written = [r for r in results if not matched or r["category_id"] in matched]
        if matched:
            described = gt.restrict(kept_ids).coco
        else:
            described = {"images": [_plain_image(i) for i in images], "annotations": [], "categories": categories}
        out.mkdir(parents=True, exist_ok=True)
        (out / "detections.json").write_text(json.dumps(written))
        (out / "images.json").write_text(json.dumps(described))

        names = {c["id"]: c["name"] for c in categories}
        colours = {c["id"]: PALETTE[k % len(PALETTE)] for k, c in enumerate(categories)}
        info = {img["id"]: img for img in images}
        page_images, rendered, taken = [], [], set()
        for row in progress(rows[: int(d.max_render)], desc="render"):
            img = info[row["image_id"]]
            try:
                with Image.open(img["path"]) as im:
                    picture = im.convert("RGB")
            except Exception:  # noqa: BLE001 - it was read a moment ago; gone or changed since
                continue
            dets = by_image.get(img["id"], [])
            page_images.append(page_image(img, picture, dets, gt))
            if d.render:
                name = rendered_name(img["file_name"], img["id"], taken)
                render(picture, [x for x in dets if x["score"] >= threshold], names, colours, out / "rendered" / name)
                row["rendered"] = f"rendered/{name}"
                rendered.append(name)
        for row in rows:
            row.setdefault("rendered", "")
        (out / "detections.csv").write_text(_csv(rows))
        page = {
            "title": f"fsx detect: {listing.source}",
            "checkpoint": str(cfg.checkpoint),
            "threshold": threshold,
            "sort": str(d.sort),
            "total_images": len(images),
            "skipped": len(skipped),
            "has_ground_truth": gt is not None,
            "classes": {str(k): v for k, v in names.items()},
            "colours": {str(k): "#%02x%02x%02x" % c for k, c in colours.items()},
            "ground_truth_classes": {str(c["id"]): c["name"] for c in gt.categories} if gt is not None else {},
            "max_cards": PAGE_DETECTION_CARDS,
            "images": page_images,
        }
        (out / "detections.html").write_text(page_html(page), encoding="utf-8")

        above = sum(r["detections"] for r in rows)
        metrics = {
            "detect/images": len(images),
            "detect/skipped": len(skipped),
            "detect/detections": len(results),
            "detect/detections_above_threshold": above,
            "detect/seconds": seconds,
            "detect/images_per_s": len(images) / seconds if seconds > 0 else 0.0,
            "detect/mean_uncertainty": sum(r["uncertainty"] for r in rows) / len(rows),
        }
        run.log_metrics(metrics)
        scores = {}
        if matched:
            from fsx.evaluation.coco_metrics import detection_metrics

            scores = detection_metrics(gt.restrict(kept_ids), written, matched, float(cfg.eval.score_threshold))
            run.log_metrics({k: v for k, v in scores.items() if isinstance(v, (int, float)) and not math.isnan(v)})
        manifest = {"kind": "detect", "source": listing.source, "images": [_plain_image(i) for i in images], "skipped": [{"file_name": f, "why": w} for f, w in skipped]}
        run.log_dict(manifest, "manifest.json")
        for file in ("detections.json", "images.json", "detections.csv", "detections.html"):
            run.log_file(out / file, "detect")
        for name in rendered:
            run.log_file(out / "rendered" / name, Path("detect/rendered", name).parent.as_posix())

    others = len(results) - len(written)
    print(summary(listing, images, skipped, results, above, threshold, seconds, rows, scores, out, len(rendered)))
    if others:
        print(f"{others} detections of classes the ground truth does not have are in the page, the table and the PNGs, not in detections.json")
    print(f"MLflow run: {run.id}")
    return {"run_id": run.id, "out": out, "rows": rows, "results": written, "skipped": skipped, "metrics": metrics, "scores": scores}




def exported_model(path: Path):
    """A file `fsx export` wrote, as the model `predict` runs and the checkpoint fields detect
    reads (the class names, the model spec and the training dataset from its metadata)."""
    from fsx.models.export import ExportedModel, load_exported

    try:
        runner = load_exported(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime and torch.jit raise many kinds
        raise UsageError(f"checkpoint={path}: not a file onnxruntime or torch.jit can load ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None
    meta = runner.metadata
    if not meta.get("classes"):
        raise UsageError(f"checkpoint={path} carries no fsx metadata (class names): write it with fsx export")
    return {"classes": meta["classes"], "model_spec": meta["model_spec"], "config": meta.get("config") or {}}, ExportedModel(runner)


def _checkpoint(cfg) -> tuple[Path, str | None]:
    from fsx import tracking

    return tracking.resolve_checkpoint(cfg.checkpoint, cfg.mlflow.tracking_uri, cfg.mlflow.experiment)


def _plain_image(img: dict) -> dict:
    return {"id": img["id"], "file_name": img["file_name"], "width": img["width"], "height": img["height"]}


def _warn_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    named = "; ".join(f"{f} ({why})" for f, why in skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    print(f"warning: skipped {len(skipped)} of {total} image files that cannot be read: {named}", file=sys.stderr, flush=True)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def summary(listing: Images, images, skipped, results, above, threshold, seconds, rows, scores, out: Path, rendered: int) -> str:
    notes = [f"{len(skipped)} unreadable file{'s' * (len(skipped) != 1)} skipped"] if skipped else []
    if listing.ignored:
        notes.append(f"{listing.ignored} other file{'s' * (listing.ignored != 1)} ignored")
    lines = [
        f"{len(images)} images of {listing.source}" + (f" ({', '.join(notes)})" if notes else "") + f": {len(results)} detections, "
        f"{above} scored >= {threshold:g}; {seconds:.1f} s ({len(images) / max(seconds, 1e-9):.1f} images/s)"
    ]
    if scores:
        lines.append("against the ground truth: " + ", ".join(f"{k} {scores[k]:.3f}" for k in ("AP", "AP50", "vocAP50") if k in scores))
    unsure = sorted(rows, key=lambda r: (-r["uncertainty"], r["image_id"]))[:3]
    lines.append("least sure (1 - top score): " + ", ".join(f"{r['file_name']} {r['uncertainty']:.2f}" for r in unsure))
    wrote = "detections.json, images.json, detections.csv, detections.html" + (f", rendered/ ({rendered} PNG{'s' * (rendered != 1)})" if rendered else "")
    lines.append(f"wrote {out}: {wrote}")
    return "\n".join(lines)


