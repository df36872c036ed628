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

import base64
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from fsx.data.classes import same_class_names
from fsx.data.coco import CocoSet
from fsx.engine.checkpoint import load_model, read_checkpoint
from fsx.engine.device import resolve_device
from fsx.errors import UsageError
from fsx.models.heads import num_classes
from fsx.progress import progress
from fsx.run.checks import IMAGE_SUFFIXES, check_detect
from fsx.run.wiring import output_dir, plain, recorded_run

THUMBNAIL_SIDE = 512  # the page's pictures: JPEG, longest side in pixels
PAGE_DETECTION_CARDS = 300  # the page's by-detection view shows at most this many
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
GROUND_TRUTH_COLOUR = "#00c853"


@dataclass
class Images:
    """What detect runs on: readable images {id, file_name, width, height, path}, in order."""

    images: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    ignored: int = 0  # files of a folder that are not images by their suffix
    ground_truth: CocoSet | None = None
    source: str = ""


def _why(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(error).split("\n")[0]
    return text[:80] if text else type(error).__name__


def _header(path: Path) -> tuple[int, int]:
    """The image's size from its header (cheap: nothing is decoded); raises if it is none."""
    with Image.open(path) as im:
        return im.size


def _folder_files(folder: Path, exclude: Path | None) -> tuple[list[Path], int]:
    """Image files under `folder` by suffix (any case) in sorted order, hidden files and folders
    and `exclude` (the output folder) left out; and how many other files there were."""
    found, ignored = [], 0
    exclude = exclude.resolve() if exclude else None
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or (Path(here) / d).resolve() != exclude))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(here) / name)
            else:
                ignored += 1
    return found, ignored


def list_images(images: str, image_root: str | None = None, exclude: Path | None = None) -> Images:
    """The images of a folder, an image file or a COCO JSON, each header read once; files
    that are not images, or are missing, go to `skipped`."""
    path = Path(str(images)).expanduser()
    if not path.exists():
        raise UsageError(f"detect.images={images}: no such folder or file")
    listed: list[dict] = []
    ground_truth = None
    ignored = 0
    if path.is_dir():
        files, ignored = _folder_files(path, exclude)
        listed = [{"file_name": f.relative_to(path).as_posix(), "path": f} for f in files]
    elif path.suffix.lower() == ".json":
        try:
            ground_truth = CocoSet.load(path, Path(str(image_root)).expanduser() if image_root else None)
            root = ground_truth.image_root
            listed = [{"id": img["id"], "file_name": img["file_name"], "path": root / img["file_name"]} for img in ground_truth.coco["images"]]
        except (KeyError, TypeError) as e:  # a JSON that is a list or a number, images without ids or file names
            what = f" (no {e})" if isinstance(e, KeyError) else ""
            raise UsageError(f"detect.images={images} is not a COCO annotation file: images with id and file_name, annotations, categories{what}") from None
        if not listed:
            raise UsageError(f"detect.images={images}: the COCO file lists no images")
    else:
        listed = [{"file_name": path.name, "path": path}]
    readable, skipped = [], []
    for k, item in enumerate(listed, start=1):
        try:
            width, height = _header(item["path"])
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
            skipped.append((item["file_name"], _why(e)))
            continue
        readable.append({"id": item.get("id", k), "file_name": item["file_name"], "width": width, "height": height, "path": item["path"]})
    if ground_truth is not None and not ground_truth.coco["annotations"]:
        ground_truth = None  # an image list without boxes: nothing to show beside or score
    return Images(readable, skipped, ignored, ground_truth, str(path))


class ImageFiles(torch.utils.data.Dataset):
    """(image float CHW in [0, 1] at its own size, {"image_id"}) for `predict`, decoded when
    asked for, so a big folder never sits in memory. A file that fails to decode (truncated,
    damaged) yields a small blank image and is recorded in `failed`; its detections are
    dropped afterwards."""

    def __init__(self, images: list[dict], class_ids: list[int]):
        self.images = images
        self.class_ids = class_ids
        self.failed: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        info = self.images[index]
        try:
            with Image.open(info["path"]) as im:
                pixels = np.array(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            self.failed[info["id"]] = _why(e)
            return torch.zeros(3, 32, 32), {"image_id": info["id"]}
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div_(255), {"image_id": info["id"]}


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


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(image: Image.Image, detections: list[dict], names: dict[int, str], colours: dict[int, tuple], path: Path) -> Path:
    """Boxes with class name and score drawn onto the image at its own pixel size, as PNG."""
    draw = ImageDraw.Draw(image)
    side = max(image.size)
    width, pad = max(2, round(side / 400)), max(1, round(side / 400))
    font = _font(max(11, round(side / 60)))
    for d in sorted(detections, key=lambda d: d["score"]):  # the most confident on top
        x, y, w, h = d["bbox"]
        colour = colours[d["category_id"]]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        label = f"{names[d['category_id']]} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        ty = y - th if y - th >= 0 else y
        draw.rectangle([x, ty, x + tw, ty + th], fill=colour)
        light = sum(c * k for c, k in zip(colour, (0.299, 0.587, 0.114))) > 150
        draw.text((x + pad - left, ty + pad - top), label, fill=(0, 0, 0) if light else (255, 255, 255), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG", compress_level=3)
    return path


def thumbnail(image: Image.Image) -> str:
    """A JPEG data URI of the image, longest side at most THUMBNAIL_SIDE pixels."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
            page_images.append(_page_image(img, picture, dets, gt))
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


def _page_image(img: dict, picture: Image.Image, detections: list[dict], gt: CocoSet | None) -> dict:
    entry = {
        "id": img["id"],
        "file": img["file_name"],
        "w": img["width"],
        "h": img["height"],
        "thumb": thumbnail(picture),
        "dets": [[*d["bbox"], d["score"], d["category_id"]] for d in sorted(detections, key=lambda d: -d["score"])],
    }
    if gt is not None:
        entry["gt"] = [[*a["bbox"], a["category_id"]] for a in gt.annotations(img["id"])]
    return entry


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


def page_html(data: dict) -> str:
    """The page, with `data` inline as JSON (`</` escaped, so no string can end the script)."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")
    title = data["title"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return PAGE.replace("__TITLE__", title).replace("__GT_COLOUR__", GROUND_TRUTH_COLOUR).replace("__DATA__", text)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f3f3f3; color: #222; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 12px; z-index: 1; }
h1 { font-size: 16px; margin: 0 0 6px; word-break: break-all; }
.controls label { margin-right: 16px; white-space: nowrap; }
#summary { margin: 6px 0 0; color: #555; }
#grid { display: flex; flex-wrap: wrap; gap: 10px; padding: 12px; align-items: flex-start; }
.card { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: 6px; width: 300px; }
.card.detection { width: 200px; }
.card svg { width: 100%; height: auto; display: block; background: #ddd; }
.caption { font-size: 12px; margin-top: 4px; word-break: break-all; }
.caption .muted, .muted { color: #777; }
ol.dets { font-size: 12px; margin: 4px 0 0; padding-left: 20px; max-height: 9em; overflow: auto; }
.gtline { font-size: 12px; color: #1b7a3a; margin-top: 2px; }
.swatch { display: inline-block; width: 9px; height: 9px; margin-right: 4px; }
rect.det, rect.gt { fill: none; }
rect.gt { stroke: __GT_COLOUR__; stroke-dasharray: 6 3; }
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<div class="controls">
<label>View <select id="view"><option value="image">by image</option><option value="detection">by detection</option></select></label>
<label>Sort by <select id="sort"><option value="confidence">confidence</option><option value="uncertainty">uncertainty</option><option value="image_id">image id</option></select></label>
<label>Score &ge; <input type="range" id="threshold" min="0" max="1" step="0.01"> <span id="threshold-value"></span></label>
<label id="gt-control"><input type="checkbox" id="gt" checked> ground truth <span class="swatch" style="background:__GT_COLOUR__"></span></label>
</div>
<p id="summary"></p>
</header>
<main id="grid"></main>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent);
  var state = { view: "image", sort: D.sort, threshold: D.threshold, gt: true };
  // the address can choose too: detections.html#view=detection&sort=uncertainty&threshold=0.5&gt=0
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    var kv = part.split("="), key = kv[0], value = decodeURIComponent(kv[1] || "");
    if (key === "view" && (value === "image" || value === "detection")) state.view = value;
    if (key === "sort" && ["confidence", "uncertainty", "image_id"].indexOf(value) >= 0) state.sort = value;
    if (key === "threshold" && value !== "" && !isNaN(Number(value))) state.threshold = Math.min(1, Math.max(0, Number(value)));
    if (key === "gt") state.gt = value !== "0" && value !== "false";
  });
  function $(id) { return document.getElementById(id); }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]; });
  }
  function num(v) { return Number(v).toFixed(2); }
  function score(v) { return Number(v).toFixed(3); }
  function count(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
  function className(id) { return D.classes[id] !== undefined ? D.classes[id] : "class " + id; }
  function gtName(id) { return D.ground_truth_classes[id] !== undefined ? D.ground_truth_classes[id] : "class " + id; }
  function colour(id) { return D.colours[id] || "#ff00ff"; }
  function kept(img) { return img.dets.filter(function (d) { return d[4] >= state.threshold; }); }
  function top(img) { return img.dets.length ? img.dets[0][4] : 0; }
  function iou(a, b) {
    var x1 = Math.max(a[0], b[0]), y1 = Math.max(a[1], b[1]);
    var x2 = Math.min(a[0] + a[2], b[0] + b[2]), y2 = Math.min(a[1] + a[3], b[1] + b[3]);
    var inter = Math.max(0, x2 - x1) * Math.max(0, y2 - y1), union = a[2] * a[3] + b[2] * b[3] - inter;
    return union > 0 ? inter / union : 0;
  }
  function picture(img, dets, box) {
    var side = Math.max(box[2], box[3]), font = side / 24;
    var s = '<svg viewBox="' + box.join(" ") + '" preserveAspectRatio="xMidYMid meet">';
    s += '<image href="' + img.thumb + '" x="0" y="0" width="' + img.w + '" height="' + img.h + '" preserveAspectRatio="none"></image>';
    if (state.gt && img.gt) {
      img.gt.forEach(function (g) {
        s += '<rect class="gt" x="' + g[0] + '" y="' + g[1] + '" width="' + g[2] + '" height="' + g[3] + '" stroke-width="2" vector-effect="non-scaling-stroke"></rect>';
      });
    }
    dets.forEach(function (d) {
      var c = colour(d[5]);
      s += '<rect class="det" x="' + d[0] + '" y="' + d[1] + '" width="' + d[2] + '" height="' + d[3] + '" stroke="' + c + '" stroke-width="2" vector-effect="non-scaling-stroke"></rect>';
      s += '<text x="' + d[0] + '" y="' + Math.max(font, d[1] - font * 0.25) + '" font-size="' + font + '" fill="' + c + '" stroke="#fff" stroke-width="' + font / 12 + '" paint-order="stroke">' + esc(className(d[5])) + " " + num(d[4]) + "</text>";
    });
    return s + "</svg>";
  }
  function gtLine(img) {
    if (!state.gt || !img.gt) return "";
    var names = img.gt.map(function (g) { return gtName(g[4]); });
    return '<div class="gtline">ground truth: ' + (names.length ? esc(names.join(", ")) : "none") + "</div>";
  }
  function imageCard(img) {
    var dets = kept(img);
    var s = '<div class="card image" data-id="' + img.id + '">' + picture(img, dets, [0, 0, img.w, img.h]);
    s += '<div class="caption"><b>' + esc(img.file) + '</b> <span class="muted">id ' + img.id + " &middot; " + img.w + "&times;" + img.h + "</span><br>";
    s += count(dets.length, "detection") + " &middot; top score " + score(top(img)) + " &middot; uncertainty " + score(1 - top(img)) + "</div>";
    if (dets.length) {
      s += '<ol class="dets">' + dets.map(function (d) {
        return '<li><span class="swatch" style="background:' + colour(d[5]) + '"></span>' + esc(className(d[5])) + " " + score(d[4]) + "</li>";
      }).join("") + "</ol>";
    }
    return s + gtLine(img) + "</div>";
  }
  function detectionCard(item) {
    // the box with some of its surroundings, never a crop so small that nothing around it shows
    var img = item.img, d = item.det, margin = Math.max(8, 0.3 * Math.max(d[2], d[3]), 0.06 * Math.max(img.w, img.h));
    var x = Math.max(0, d[0] - margin), y = Math.max(0, d[1] - margin);
    var box = [x, y, Math.min(img.w, d[0] + d[2] + margin) - x, Math.min(img.h, d[1] + d[3] + margin) - y];
    var s = '<div class="card detection" data-id="' + img.id + '">' + picture(img, [d], box);
    s += '<div class="caption"><span class="swatch" style="background:' + colour(d[5]) + '"></span><b>' + esc(className(d[5])) + " " + score(d[4]) + "</b><br>";
    s += esc(img.file) + ' <span class="muted">id ' + img.id + "</span></div>";
    if (state.gt && img.gt) {
      var best = null, overlap = 0;
      img.gt.forEach(function (g) { var o = iou(d, g); if (o > overlap) { overlap = o; best = g; } });
      s += '<div class="gtline">' + (best ? "ground truth: " + esc(gtName(best[4])) + ", IoU " + num(overlap) : "no ground truth box overlaps") + "</div>";
    }
    return s + "</div>";
  }
  function byId(a, b) { return a.id - b.id; }
  function draw() {
    var images = D.images.slice(), html = "", shownDets = 0, total = 0;
    images.forEach(function (img) { total += kept(img).length; });
    if (state.view === "image") {
      if (state.sort === "confidence") images.sort(function (a, b) { return top(b) - top(a) || byId(a, b); });
      else if (state.sort === "uncertainty") images.sort(function (a, b) { return top(a) - top(b) || byId(a, b); });
      else images.sort(byId);
      html = images.map(imageCard).join("");
      shownDets = total;
    } else {
      var items = [];
      images.forEach(function (img) { kept(img).forEach(function (det) { items.push({ img: img, det: det }); }); });
      if (state.sort === "confidence") items.sort(function (a, b) { return b.det[4] - a.det[4] || byId(a.img, b.img); });
      else if (state.sort === "uncertainty") items.sort(function (a, b) { return a.det[4] - b.det[4] || byId(a.img, b.img); });
      else items.sort(function (a, b) { return byId(a.img, b.img) || b.det[4] - a.det[4]; });
      var shown = items.slice(0, D.max_cards);
      shownDets = shown.length;
      html = shown.map(detectionCard).join("");
    }
    $("grid").innerHTML = html || '<p class="muted">nothing to show at this score</p>';
    var text = count(D.images.length, "image") + " shown" + (D.images.length < D.total_images ? " of " + D.total_images : "");
    if (D.skipped) text += " (" + count(D.skipped, "unreadable file") + " skipped)";
    text += " \\u00b7 " + count(total, "detection") + " \\u2265 " + num(state.threshold);
    if (state.view === "detection" && shownDets < total) text += " \\u00b7 the first " + shownDets + " shown";
    text += " \\u00b7 uncertainty = 1 \\u2212 the image's top score";
    $("summary").textContent = text;
    $("threshold-value").textContent = num(state.threshold);
  }
  var pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }
  $("title").textContent = D.title + " \\u2014 checkpoint " + D.checkpoint;
  $("view").value = state.view;
  $("sort").value = state.sort;
  $("threshold").value = state.threshold;
  $("gt").checked = state.gt;
  if (!D.has_ground_truth) $("gt-control").style.display = "none";
  $("view").addEventListener("change", function (e) { state.view = e.target.value; redraw(); });
  $("sort").addEventListener("change", function (e) { state.sort = e.target.value; redraw(); });
  $("threshold").addEventListener("input", function (e) { state.threshold = Number(e.target.value); redraw(); });
  $("gt").addEventListener("change", function (e) { state.gt = e.target.checked; redraw(); });
  draw();
})();
</script>
</body>
</html>
"""
