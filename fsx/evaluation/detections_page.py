"""What `fsx detect` shows: detections drawn onto an image at its own pixel size, and one
self-contained HTML page (thumbnails and data inline, no external URL) to browse them by
image or by detection."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fsx.data.coco import CocoSet

THUMBNAIL_SIDE = 512  # the page's pictures: JPEG, longest side in pixels
PAGE_DETECTION_CARDS = 300  # the page's by-detection view shows at most this many
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
GROUND_TRUTH_COLOUR = "#00c853"


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


def page_image(img: dict, picture: Image.Image, detections: list[dict], gt: CocoSet | None) -> dict:
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
