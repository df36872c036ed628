"""fsx detect: COCO results that COCOeval takes, PNGs at the input's size, the per-image table,
unreadable files counted, an MLflow run, and the self-contained page, checked in a real
headless Chromium when one is here or can be installed."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import cli_env, explain, run_fsx
from PIL import Image

from fsx.engine.checkpoint import save_checkpoint
from fsx.errors import UsageError
from fsx.models.detectors import build_detector, model_spec
from fsx.run.detect import class_categories, image_rows, list_images, rendered_name, sort_rows

CONF = Path(__file__).resolve().parents[1] / "conf"
CLASSES = ["A", "B", "C"]
THRESHOLD = 0.08  # a fresh FCOS scores about 0.05-0.11: some detections on each side
SIZES = {"a.png": (64, 48), "sub/b.JPG": (120, 200), "sub/deeper/c.png": (77, 33)}  # readable: (width, height)
TIMEOUT = 300


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("detect")


@pytest.fixture(scope="module")
def checkpoint(workspace) -> Path:
    """A fresh tiny FCOS: its detections are arbitrary, but real detections in real formats."""
    detector = yaml.safe_load((CONF / "detector" / "fcos.yaml").read_text())
    backbone = {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]}
    spec = model_spec(detector, backbone, len(CLASSES), 64, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    return save_checkpoint(workspace / "model.pt", build_detector(spec), spec, CLASSES, {}, kind="pretrain")


@pytest.fixture(scope="module")
def images(workspace) -> Path:
    """Three images of different sizes and modes (one upper-case suffix, two in subfolders), a
    file that is no image, a PNG cut in half (its header reads, its pixels do not), a text
    file and a hidden folder (neither is an image file of the folder)."""
    root = workspace / "images"
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if name.endswith("c.png"):
            image = image.convert("L")
        image.save(path, "JPEG" if name.lower().endswith(".jpg") else "PNG")
    (root / "broken.jpg").write_text("this is not a JPEG")
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(whole, "PNG")
    (root / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.new("RGB", (10, 10)).save(root / ".hidden" / "x.png")
    return root


@pytest.fixture(scope="module")
def ground_truth(workspace, images) -> Path:
    """COCO annotations for two of the images and one that is missing; classes A and B are
    the checkpoint's, Z is not, and the checkpoint's C is not in it."""
    coco = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 20, "file_name": "sub/b.JPG", "width": 120, "height": 200},
            {"id": 30, "file_name": "gone.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 5, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 20, "category_id": 3, "bbox": [10, 20, 60, 90], "area": 5400, "iscrowd": 0},
            {"id": 3, "image_id": 20, "category_id": 9, "bbox": [70, 100, 40, 80], "area": 3200, "iscrowd": 0},
            {"id": 4, "image_id": 30, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "A"}, {"id": 7, "name": "b"}, {"id": 9, "name": "Z"}],
    }
    path = workspace / "labels" / "gt.json"
    path.parent.mkdir()
    path.write_text(json.dumps(coco))
    return path


def fsx(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_fsx(args, cwd, env, TIMEOUT)


@pytest.fixture(scope="module")
def folder_run(workspace, checkpoint, images) -> dict:
    """`fsx detect` on the folder, as a user types it (the issue's short images= spelling)."""
    cwd = workspace / "folder-run"
    uri = f"sqlite:///{(cwd / 'mlflow.db').resolve()}"
    result = fsx(
        ["detect", f"checkpoint={checkpoint}", f"images={images}", "detect.out=out", f"detect.score_threshold={THRESHOLD}", "device=cpu", f"mlflow.tracking_uri={uri}"],
        cwd,
        cli_env(workspace / "cache"),
    )
    assert result.returncode == 0, explain(result)
    run_id = re.findall(r"^MLflow run: (\w+)$", result.stdout, re.M)
    assert run_id, explain(result)
    return {"out": cwd / "out", "result": result, "uri": uri, "run_id": run_id[-1]}


@pytest.fixture(scope="module")
def gt_run(workspace, checkpoint, images, ground_truth, folder_run) -> dict:
    """detect on a COCO JSON with ground truth, in this process (no second interpreter), into
    the folder run's store (created and migrated once)."""
    from hydra import compose, initialize_config_module

    from fsx.run.detect import detect

    out = workspace / "gt-run"
    overrides = [
        f"checkpoint={checkpoint}", f"detect.images={ground_truth}", f"detect.image_root={images}", f"detect.out={out}",
        f"detect.score_threshold={THRESHOLD}", "detect.sort=uncertainty", "device=cpu", f"mlflow.tracking_uri={folder_run['uri']}",
    ]
    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        cfg = compose(config_name="detect", overrides=overrides)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = detect(cfg)
    return {**result, "printed": printed.getvalue()}


def page_data(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    assert found, "the page has no inline data"
    return json.loads(found.group(1).replace("<\\/", "</"))


# --------------------------------------------------------------------------- the folder


def test_the_folder_run_counts_the_unreadable_files_once(folder_run):
    stderr = folder_run["result"].stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1, stderr
    assert "skipped 2 of 5 image files" in warnings[0] and "broken.jpg" in warnings[0] and "truncated.png" in warnings[0]
    stdout = folder_run["result"].stdout
    assert "3 images of" in stdout and "2 unreadable files skipped" in stdout and "1 other file ignored" in stdout
    assert "wrote out: detections.json, images.json, detections.csv, detections.html, rendered/ (3 PNGs)" in stdout


def test_the_results_are_coco_and_describe_themselves(folder_run):
    from pycocotools.coco import COCO

    out = folder_run["out"]
    results = json.loads((out / "detections.json").read_text())
    described = json.loads((out / "images.json").read_text())
    assert results and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    assert {(i["file_name"], i["width"], i["height"]) for i in described["images"]} == {(n, w, h) for n, (w, h) in SIZES.items()}
    assert [c["name"] for c in described["categories"]] == CLASSES
    assert {r["category_id"] for r in results} <= {c["id"] for c in described["categories"]}
    # every box in the image's own pixels
    sizes = {i["id"]: (i["width"], i["height"]) for i in described["images"]}
    for r in results:
        x, y, w, h = r["bbox"]
        assert -0.01 <= x <= x + w <= sizes[r["image_id"]][0] + 0.01 and -0.01 <= y <= y + h <= sizes[r["image_id"]][1] + 0.01
    gt = COCO()
    gt.dataset = described
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        assert len(gt.loadRes(results).getAnnIds()) == len(results)


def test_rendered_pngs_have_the_input_size_and_the_table_a_row_per_image(folder_run):
    out = folder_run["out"]
    rows = list(csv.DictReader((out / "detections.csv").open()))
    assert sorted(r["file_name"] for r in rows) == sorted(SIZES)
    assert [int(r["image_id"]) for r in rows] == sorted(int(r["image_id"]) for r in rows)  # detect.sort=image_id
    results = json.loads((out / "detections.json").read_text())
    for row in rows:
        rendered = out / row["rendered"]
        with Image.open(rendered) as im:
            assert im.format == "PNG" and im.size == SIZES[row["file_name"]]
        scores = [r["score"] for r in results if r["image_id"] == int(row["image_id"])]
        assert int(row["detections"]) == sum(s >= THRESHOLD for s in scores)
        assert float(row["uncertainty"]) == pytest.approx(1 - max(scores, default=0.0), abs=1e-6)
    assert (out / "rendered" / "sub" / "deeper" / "c.png").is_file()


def test_the_run_is_in_mlflow_with_its_files_and_counts(folder_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=folder_run["uri"])
    run = client.get_run(folder_run["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["fsx.command"] == "detect"
    assert {"fsx.dataset", "fsx.fold", "fsx.algorithm", "fsx.detector", "fsx.backbone"} <= set(run.data.tags)
    assert run.data.metrics["detect/images"] == 3 and run.data.metrics["detect/skipped"] == 2
    assert run.data.metrics["detect/detections"] == len(json.loads((folder_run["out"] / "detections.json").read_text()))
    assert run.data.metrics["detect/seconds"] > 0 and run.data.metrics["detect/images_per_s"] > 0
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "detect")}
    assert {"detect/detections.json", "detect/images.json", "detect/detections.csv", "detect/detections.html", "detect/rendered"} <= logged
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "manifest.json"}


def test_the_page_is_self_contained(folder_run):
    html = (folder_run["out"] / "detections.html").read_text()
    # nothing to fetch: no address, no linked script, style sheet, font or picture
    for reference in ("http:", "https:", "ftp:", "<script src", "<link", "<img", "url(", "@import", "<iframe"):
        assert reference not in html.lower(), reference
    data = page_data(html)
    assert len(data["images"]) == 3 and data["skipped"] == 2 and data["threshold"] == THRESHOLD
    assert all(img["thumb"].startswith("data:image/jpeg;base64,") for img in data["images"])
    results = json.loads((folder_run["out"] / "detections.json").read_text())
    assert sum(len(img["dets"]) for img in data["images"]) == len(results)


# --------------------------------------------------------------------------- with ground truth


def test_with_ground_truth_the_results_are_scored_by_cocoeval(gt_run, ground_truth, images):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = gt_run["out"]
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["image_id"] for r in results} <= {10, 20}  # the ground truth's ids; gone.png skipped
    assert {r["category_id"] for r in results} <= {3, 7}  # the ground truth's ids for A and B (b, any case); C is not in it
    assert [name for name, _ in gt_run["skipped"]] == ["gone.png"]
    with contextlib.redirect_stdout(io.StringIO()):
        for gt_file in (ground_truth, out / "images.json"):  # the user's annotations, and the pair detect wrote
            gt = COCO(str(gt_file))
            evaluation = COCOeval(gt, gt.loadRes(str(out / "detections.json")), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert len(evaluation.stats) == 12
    assert "AP50" in gt_run["scores"] and "against the ground truth: AP" in gt_run["printed"]
    rows = gt_run["rows"]
    assert [r["uncertainty"] for r in rows] == sorted((r["uncertainty"] for r in rows), reverse=True)  # detect.sort=uncertainty
    assert {r["file_name"]: r["ground_truth"] for r in rows} == {"a.png": 1, "sub/b.JPG": 2}
    data = page_data((out / "detections.html").read_text())
    assert data["has_ground_truth"] and sorted(len(img["gt"]) for img in data["images"]) == [1, 2]
    assert data["ground_truth_classes"] == {"3": "A", "7": "b", "9": "Z"}


def test_class_names_meet_the_ground_truths_categories():
    from fsx.data.coco import CocoSet

    gt = CocoSet({"images": [], "annotations": [], "categories": [{"id": 5, "name": "couch"}, {"id": 8, "name": "Dog"}]}, ".")
    categories, matched = class_categories(["dog", "sofa", "cat"], 4, gt)
    assert categories == [{"id": 8, "name": "dog"}, {"id": 5, "name": "sofa"}, {"id": 9, "name": "cat"}, {"id": 10, "name": "label 3"}]
    assert matched == [8, 5]
    assert class_categories(["x", "y"], 2, None) == ([{"id": 1, "name": "x"}, {"id": 2, "name": "y"}], [])


def test_uncertainty_is_least_confidence_and_sorts_the_table():
    images = [{"id": k, "file_name": f"{k}.png", "width": 1, "height": 1} for k in (1, 2, 3)]
    by_image = {1: [{"score": 0.9}, {"score": 0.2}], 2: [{"score": 0.4}]}
    rows = image_rows(images, by_image, 0.3, None)
    assert [(r["detections"], r["max_score"], r["uncertainty"]) for r in rows] == [(1, 0.9, pytest.approx(0.1)), (1, 0.4, 0.6), (0, 0.0, 1.0)]
    assert rows[2]["mean_score"] == "" and rows[0]["mean_score"] == 0.9
    assert [r["image_id"] for r in sort_rows(rows, "confidence")] == [1, 2, 3]
    assert [r["image_id"] for r in sort_rows(rows, "uncertainty")] == [3, 2, 1]


def test_rendered_names_mirror_the_paths_and_never_meet():
    taken: set[str] = set()
    assert rendered_name("sub/x.jpg", 1, taken) == "sub/x.png"
    assert rendered_name("sub/x.png", 2, taken) == "sub/x_2.png"
    assert rendered_name("../../etc/y.JPG", 3, taken) == "etc/y.png"


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(workspace, checkpoint):
    empty = workspace / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    cwd = workspace / "bad"
    env = cli_env(workspace / "cache")
    for images, expected in ((workspace / "nowhere", "no such folder or file"), (empty, "no image files")):
        result = fsx(["detect", f"checkpoint={checkpoint}", f"detect.images={images}"], cwd, env)
        assert result.returncode == 2, explain(result)
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr and "Traceback" not in result.stderr
    assert not (cwd / "outputs").exists() and not (cwd / "mlflow.db").exists()  # answered before Hydra made anything
    result = fsx(["detect", f"checkpoint={checkpoint}"], cwd, env)
    assert result.returncode == 2 and "needs images" in result.stderr


def test_a_json_that_is_not_coco_is_a_usage_error(workspace):
    no_file_names = json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []})
    for name, text in (("list.json", "[1, 2]"), ("number.json", "5"), ("broken.json", "{"), ("names.json", no_file_names)):
        path = workspace / name
        path.write_text(text)
        with pytest.raises(UsageError, match=name):
            list_images(str(path))


# --------------------------------------------------------------------------- the page in a browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_BUDGET_S = 300


def _install_chromium() -> str | None:
    """apt-get install chromium (Debian's package), as root only; the reason it failed, or None."""
    if os.environ.get("FSX_NO_BROWSER_INSTALL"):
        return "FSX_NO_BROWSER_INSTALL is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root, so apt-get install chromium cannot run"
    if not shutil.which("apt-get"):
        return "no apt-get here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    why = ""
    deadline = time.monotonic() + INSTALL_BUDGET_S  # the whole install, so a slow mirror cannot eat the suite's time
    for before in ([], [["apt-get", "update"]]):  # the package lists may be missing or stale
        try:
            for command in before:
                subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(1, deadline - time.monotonic()))
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            return f"`{' '.join(e.cmd)}` did not finish within the {INSTALL_BUDGET_S} s the install may take"
        if result.returncode == 0:
            return None
        why = (result.stderr.strip().splitlines() or ["no message"])[-1]
    return f"apt-get install chromium failed: {why}"


@pytest.fixture(scope="session")
def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found:
        return found
    why = _install_chromium()
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if not found:
        pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} is on PATH and {why or 'the installed package put none there'}")
    return found


def rendered_dom(browser: str, page: Path, fragment: str, profile: Path) -> str:
    """The page's header and grid after its script ran, as headless Chromium shows them."""
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri() + fragment,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{browser} did not dump the page within 90 s")
    assert result.returncode == 0, f"{browser} failed ({result.returncode}): {result.stderr[-2000:]}"
    shown = re.search(r'<header>(.*)</header>\s*<main id="grid">(.*)</main>', result.stdout, re.S)  # not the script's own text
    assert shown, f"no page in what {browser} dumped: {result.stdout[:2000]}"
    return shown.group(1) + shown.group(2)


def test_the_page_shows_the_detections_in_a_real_browser(browser, folder_run, gt_run, tmp_path):
    page = folder_run["out"] / "detections.html"
    data = page_data(page.read_text())
    above = sum(d[4] >= THRESHOLD for img in data["images"] for d in img["dets"])

    dom = rendered_dom(browser, page, "", tmp_path / "p1")
    assert dom.count('class="card image"') == 3
    assert dom.count('<rect class="det"') == above
    assert f"3 images shown (2 unreadable files skipped) · {above} detection{'s' * (above != 1)} ≥ {THRESHOLD:.2f}" in dom
    assert 'class="gt"' not in dom and "http" not in re.sub(r'data:image/jpeg;base64,[A-Za-z0-9+/=]+', "", dom)

    # by detection, at the median score (the slider's state from the address)
    scores = sorted(d[4] for img in data["images"] for d in img["dets"])
    median = scores[len(scores) // 2]
    wanted = sum(s >= median for s in scores)
    dom = rendered_dom(browser, page, f"#view=detection&sort=uncertainty&threshold={median}", tmp_path / "p2")
    assert dom.count('class="card detection"') == min(wanted, data["max_cards"]) and dom.count('<rect class="det"') == min(wanted, data["max_cards"])
    shown = re.findall(r'<div class="card detection" data-id="\d+">.*?<b>[^<]* ([0-9.]+)</b>', dom)
    assert [float(s) for s in shown] == sorted(float(s) for s in shown)  # the least confident first

    # with ground truth: its boxes beside the detections, and off when asked
    gt_page = gt_run["out"] / "detections.html"
    dom = rendered_dom(browser, gt_page, "", tmp_path / "p3")
    assert dom.count('class="card image"') == 2 and dom.count('<rect class="gt"') == 3 and "ground truth: A, Z" in dom
    dom = rendered_dom(browser, gt_page, "#gt=0&view=detection&threshold=0", tmp_path / "p4")
    assert '<rect class="gt"' not in dom and dom.count('class="card detection"') == min(sum(len(img["dets"]) for img in page_data(gt_page.read_text())["images"]), 300)
