"""fsx benchmarks: costs measured side by side in one process and reported as ratios.

    make bench            # or: python bench/run.py --repeats 5

Each row times two variants of one thing on the same inputs, interleaved (A, B, A, B, ...)
so that machine noise hits both, and reports the median seconds of each and B/A.
On a CUDA machine it adds bf16 autocast vs fp32 and a table of GPU utilisation during
pretraining (fsx's loop with batches built in process and by DataLoader workers). A second table gives the peak memory of a
meta-iteration (MAML, FOMAML, ANIL at 1, 2 and 5 inner steps): peak CUDA memory on a GPU,
peak resident memory above the start on a CPU (each measured in a forked process).
A third table measures the data layer at COCO scale against its aims (load + fold split of
a generated COCO-size annotation file, peak resident memory, sampling one 5-way 5-shot task);
`python bench/run.py --scale-only` runs that table alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fsx.algorithms.episodes import Episode
from fsx.algorithms.maml import MAML
from fsx.algorithms.reptile import Reptile
from fsx.data.coco import CocoSet
from fsx.data.folds import Fold, split_by_fold
from fsx.data.shots import choose_classes, sample_shots
from fsx.engine.device import autocast, flush_denormals, loader_workers, resolve_device
from fsx.engine.loop import train_step
from fsx.models.detectors import build_detector
from fsx.models.heads import select_trainable


def spec(backbone: dict, num_classes: int = 21, detector: dict | None = None, size: int = 128) -> dict:
    return {
        "detector": detector or FCOS,
        "backbone": backbone,
        "num_classes": num_classes,
        "image_size": size,
        "image_mean": [0.92] * 3,
        "image_std": [0.25] * 3,
    }


def batch(n: int, device, size: int = 128):
    """n square images of `size` px with two boxes each (at 128 px; scaled with the size)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(n)]
    scale = size / 128
    boxes = torch.tensor([[10.0, 12, 40, 50], [60, 64, 100, 110]]) * scale
    targets = [{"boxes": boxes.to(device), "labels": torch.tensor([1, 3], device=device)} for _ in range(n)]
    return images, targets


def train_fn(backbone: dict, n: int, device, params: str = "all", amp: bool = True, memory_format=None, detector: dict | None = None, size: int = 128):
    model = build_detector(spec(backbone, detector=detector, size=size)).to(device).train()
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(select_trainable(model, params), lr=1e-4)
    images, targets = batch(n, device, size)
    return lambda: train_step(model, opt, images, targets, device, amp=amp, clip_norm=10.0)


def infer_fn(backbone: dict, n: int, device, amp: bool = True, size: int = 128):
    model = build_detector(spec(backbone, size=size)).to(device).eval()
    images, _ = batch(n, device, size)

    @torch.no_grad()
    def run():
        with autocast(device, amp):
            model(images)

    return run


def denormal_fn(flush: bool, device):
    """A training step at one thread of a model whose weights hold denormal floats (a quarter
    of every conv's filters scaled by 1e-39, as decayed weights of a long run end up), with
    denormals kept or flushed to zero. Whether they cost anything depends on the CPU: FINDINGS
    measured a trained model's step 2x slower without the flush on one machine."""
    model = build_detector(spec(TINY)).to(device).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight[: max(1, m.out_channels // 4)] *= 1e-39
    optimizer = torch.optim.SGD(select_trainable(model, "all"), lr=0.0)
    images, targets = batch(16, device)

    def step():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the flag is per thread: one thread does all the work here
        torch.set_flush_denormal(flush)
        try:
            train_step(model, optimizer, images, targets, device, amp=True, clip_norm=10.0)
        finally:
            torch.set_flush_denormal(True)
            torch.set_num_threads(threads)

    return step


def episodes(count: int, device, seed: int = 0) -> list[Episode]:
    """Tasks of 16 support and 16 query images (5-way labels), as the samplers make them."""
    out = []
    for t in range(count):
        images, targets = batch(32, torch.device("cpu"))
        pairs = [(im, {**tg, "labels": tg["labels"] % 5}) for im, tg in zip(images, targets)]
        out.append(Episode(seed + t, [], 0, pairs[:16], pairs[16:]))
    return out


def reptile_vs_adam(device, inner_steps: int = 5, meta_batch: int = 2):
    """A: inner_steps x meta_batch plain Adam steps; B: one Reptile meta-iteration over the
    same batches (the same model, the same number of forward-backward passes)."""
    tasks = episodes(meta_batch, device)
    model = build_detector(spec(TINY, 5)).to(device).train()
    optimizer = torch.optim.Adam(select_trainable(model, "all"), lr=1e-4, betas=(0.0, 0.999))
    batches = [next(iter(_batches(t.support))) for t in tasks]

    def plain():
        for images, targets in batches:
            for _ in range(inner_steps):
                train_step(model, optimizer, images, targets, device, amp=True, clip_norm=10.0)

    reptile = Reptile(inner_steps=inner_steps, inner_batch=16, inner_lr=1e-4, meta_batch=meta_batch)
    return plain, lambda: reptile.meta_step(model, tasks, device, beta=0.5)


def _batches(dataset):
    from fsx.engine.loop import infinite_batches

    return infinite_batches(dataset, 16, 0)


def maml_fn(device, inner_steps: int, first_order: bool = False, inner_params: str = "all", meta_batch: int = 2):
    tasks = episodes(meta_batch, device)
    model = build_detector(spec(TINY, 5)).to(device).train()
    alg = MAML(first_order=first_order, inner_steps=inner_steps, inner_params=inner_params, meta_batch=meta_batch, inner_batch=16)
    alg.setup(model, device)
    alg._optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return lambda: alg.meta_step(model, tasks, device)


def peak_memory_mb(variant: str, steps: int, device) -> float:
    """Peak memory of two meta-iterations of `variant` (fomaml | maml | anil), measured in a
    fresh Python process (a fork would inherit torch's thread pool and can hang): peak CUDA
    memory allocated on a GPU, resident-set growth (VmHWM - VmRSS before) on a CPU."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", variant, str(steps), "--device", str(device)],
        capture_output=True, text=True, timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {variant} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


MAML_VARIANTS = {"fomaml": {"first_order": True}, "maml": {}, "anil": {"inner_params": "heads"}}


def memory_child(variant: str, steps: int, device) -> None:
    fn = maml_fn(device, steps, **MAML_VARIANTS[variant])
    start = _status_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn(), fn()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else (_status_kb("VmHWM") - start) / 1024
    print(peak)


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


TINY = {"name": "tiny", "out_channels": 64}
# the pretrained backbones as a run from ImageNet builds them (norm=auto: frozen batch norm over loaded weights)
LITE0 = {"name": "efficientnet_lite0", "out_channels": 128, "norm": "frozen_bn"}
R18_FROZEN = {"name": "resnet18", "out_channels": 128, "norm": "frozen_bn"}
FCOS = {"name": "fcos"}
RETINANET = {"name": "retinanet", "anchor_scale": 1.5, "head_norm": "group", "box_loss": "giou"}
FASTER_RCNN = {"name": "fasterrcnn", "anchor_scale": 2.0, "anchor_octaves": 2, "representation_size": 256, "rpn_post_nms_top_n_train": 300, "box_batch_size_per_image": 128}


def letters_dataset(root: Path, images: int = 320, augment: bool = True):
    """A small letters set on disk (generated once under `root`), as pretraining reads it."""
    from fsx.data.coco import CocoSet, DetectionDataset
    from fsx.data.letters import LettersSpec, letters_cache
    from fsx.data.transforms import build_transform

    folder = letters_cache(LettersSpec(num_images=images), root, show_progress=False)
    source = CocoSet.load(folder / "annotations.json", folder)
    transform = build_transform(hflip=0.5, brightness=0.1, contrast=0.1, seed=0) if augment else None
    return DetectionDataset(source, [c["id"] for c in source.categories], transform)


def loop_vs_bare(dataset, device, steps: int = 10):
    """A: a bare torchvision loop (DataLoader, model(images, targets), backward, step); B:
    fsx's loop (infinite_batches, engine.loop.train, train_step with its clipping, losses
    read back every 25 steps), the same model, data, batch and optimiser: what fsx adds to a step."""
    from fsx.data.coco import collate
    from fsx.engine.loop import infinite_batches, optimizer_step, train

    model = build_detector(spec(TINY, 26)).to(device).train()
    opt = torch.optim.Adam(select_trainable(model, "all"), lr=1e-4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=collate, drop_last=True)
    batches = infinite_batches(dataset, 16, 0)

    def bare():
        for k, (images, targets) in enumerate(loader):
            if k == steps:
                break
            images = [im.to(device) for im in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with autocast(device, True):
                losses = model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def fsx_loop():  # losses read back every 25 steps (train.log_every) and at the last
        train(model, optimizer_step(model, opt, device, amp=True, clip_norm=10.0), batches, steps, show_progress=False, sync_every=25)

    return bare, fsx_loop


def in_process_vs_workers(dataset, device, steps: int = 10, workers: int = 2):
    """fsx's loop on the same model and data, its batches built A: in the training process
    between steps (workers=0, fsx's CPU default), B: by `workers` DataLoader processes
    while the model trains (the CUDA default)."""
    from fsx.engine.loop import infinite_batches, optimizer_step, train

    model = build_detector(spec(TINY, 26)).to(device).train()
    opt = torch.optim.Adam(select_trainable(model, "all"), lr=1e-4)
    step = optimizer_step(model, opt, device, amp=True, clip_norm=10.0)
    here = infinite_batches(dataset, 16, 0)
    loaded = infinite_batches(dataset, 16, 0, workers=workers, pin_memory=device.type == "cuda")
    return (lambda: train(model, step, here, steps, show_progress=False, sync_every=25)), (lambda: train(model, step, loaded, steps, show_progress=False, sync_every=25))


def loading_vs_step(dataset, device):
    """A: building one augmented batch of 16 (decoded pixels cached, as from the second epoch
    on); B: one training step on it. B/A is how many times faster the loader is."""
    from fsx.engine.loop import infinite_batches

    batches = infinite_batches(dataset, 16, 0)
    for _ in range(len(dataset) // 16 + 1):  # one epoch: every image decoded once
        next(batches)
    model = build_detector(spec(TINY, 26)).to(device).train()
    opt = torch.optim.Adam(select_trainable(model, "all"), lr=1e-4)
    held = next(batches)
    return lambda: next(batches), lambda: train_step(model, opt, *held, device, amp=True, clip_norm=10.0)


def pretraining_utilisation(dataset, device, backbone: dict, workers: int, steps: int = 40) -> dict:
    """fsx's pretraining loop on letters (batch 16, bf16, batches from `workers` DataLoader
    processes, pinned, or built in process when 0; losses read back every 25 steps): images
    per second unprofiled, then the seconds a profiled run of as many steps kept the GPU
    executing kernels or copies (fsx.engine.utilisation), as a share of the profiled run's
    wall time and of the unprofiled one's (the profiler slows the host, not the kernels)."""
    from fsx.engine.loop import infinite_batches, optimizer_step, train
    from fsx.engine.utilisation import busy_seconds

    model = build_detector(spec(backbone, 26)).to(device).train()
    opt = torch.optim.Adam(select_trainable(model, "all"), lr=1e-4)
    step = optimizer_step(model, opt, device, amp=True, clip_norm=10.0)
    batches = infinite_batches(dataset, 16, 0, workers=workers, pin_memory=device.type == "cuda")

    def run():
        train(model, step, batches, steps, show_progress=False, sync_every=25)

    run()  # warm-up: workers started, every image decoded once, cudnn's algorithms chosen
    seconds = timed(run, device)
    row = {"backbone": backbone["name"], "workers": workers, "images/s": 16 * steps / seconds}
    try:
        busy, profiled = busy_seconds(run, device)
    except RuntimeError as e:  # no GPU events in the trace: say so rather than print 0%
        print(f"GPU utilisation not measured: {e}", file=sys.stderr)
        return {**row, "busy": float("nan"), "busy/unprofiled": float("nan")}
    return {**row, "busy": busy / profiled, "busy/unprofiled": busy / seconds}


def cocoeval_seconds_per_1000(images: int = 1000, seed: int = 0) -> float:
    """detection_metrics (COCOeval's 12 stats, per-class AP, VOC AP in three forms, the
    threshold metrics) on 1,000 images of 5 classes, 3 boxes and 20 detections each."""
    from fsx.data.coco import CocoSet
    from fsx.evaluation.coco_metrics import detection_metrics

    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for i in range(1, images + 1):
        for _ in range(3):
            x, y = rng.uniform(0, 200, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 6)), "bbox": [x, y, 40.0, 30.0], "area": 1200.0, "iscrowd": 0})
        for _ in range(20):
            x, y = rng.uniform(0, 200, 2)
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 6)), "bbox": [x, y, 40.0, 30.0], "score": float(rng.random())})
    gt = CocoSet({"images": [{"id": i, "file_name": f"{i}.jpg", "width": 256, "height": 256} for i in range(1, images + 1)], "annotations": anns,
                  "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}, ".")
    start = time.perf_counter()
    detection_metrics(gt, dets, [1, 2, 3, 4, 5])
    return (time.perf_counter() - start) * 1000 / images


def pretrained_backbone_rows(device, repeats: int) -> list[dict]:
    """The ImageNet backbones' costs (random weights: the cost is the same): an FCOS training
    step at batch 16 with EfficientNet-Lite0 against the tiny net and ResNet-18, at 128 and
    320 px, and inference per image at 320 px (batch 16; images/s = 1 / the figure)."""
    rows = []
    for size in (128, 320):
        for name, other in (("tiny", TINY), ("resnet18", R18_FROZEN)):
            rows.append(compare(f"FCOS train step b16 {size} px: A {name}, B efficientnet_lite0", train_fn(other, 16, device, size=size), train_fn(LITE0, 16, device, size=size), device, repeats, unit="s/step"))
    for name, other in (("tiny", TINY), ("resnet18", R18_FROZEN)):
        rows.append(compare(f"FCOS inference b16 320 px: A {name}, B efficientnet_lite0 (per image)", infer_fn(other, 16, device, size=320), infer_fn(LITE0, 16, device, size=320), device, repeats, 16, 16, "s/image"))
    return rows


def export_rows(device, repeats: int) -> list[dict]:
    """Exported ONNX (onnxruntime, CPU) against PyTorch eager inference, per image at batch 1
    and 8 (the exported graph takes one image per call: 8 calls), for the tiny FCOS at 128 px
    and FCOS on EfficientNet-Lite0 at 320 px (random weights: the cost is the same)."""
    from fsx.models.export import export_file, load_exported

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, backbone, size in (("tiny", TINY, 128), ("efficientnet_lite0", LITE0, 320)):
            model = build_detector(spec(backbone, size=size)).eval()
            images, _ = batch(8, torch.device("cpu"), size)
            path = Path(tmp) / f"{name}.onnx"
            export_file(model, "onnx", images[0], path, {})
            session = load_exported(path)
            for n in (1, 8):

                @torch.no_grad()
                def eager(n=n, model=model, images=images):
                    model(images[:n])

                def onnx(n=n, session=session, images=images):
                    for image in images[:n]:
                        session(image)

                rows.append(compare(f"FCOS {name} inference {size} px b{n} on the CPU: A PyTorch eager, B ONNX Runtime (per image)", eager, onnx, torch.device("cpu"), repeats, n, n, "s/image"))
    return rows


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, a, b, device, repeats: int, per_a: float = 1.0, per_b: float = 1.0, unit: str = "s/call") -> dict:
    for _ in range(2):  # warm-up: allocator, cudnn autotune, lazy init
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, device) / per_a)
        tb.append(timed(b, device) / per_b)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"comparison": name, "A": ma, "B": mb, "B/A": mb / ma, "unit": unit}


# The 80 COCO 2017 detection categories (id, name); ids are not contiguous.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"), (8, "truck"),
    (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"),
    (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]
# The 20 PASCAL VOC classes under their COCO names: the novel classes of the usual COCO few-shot split.
VOC_IN_COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat",
    "dog", "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv",
)
COCO_VOC_FOLD = Fold("coco", 0, tuple(n for _, n in COCO_CATEGORIES if n not in VOC_IN_COCO), VOC_IN_COCO)
SCALE_AIMS = {"load_s": 60.0, "peak_rss_gb": 4.0, "task_ms": 50.0}  # issue 7


def write_coco_size(path: Path, images: int = 118_287, seed: int = 0) -> int:
    """A COCO train2017-size annotation file: `images` 640x480 images (ids drawn like COCO's,
    not contiguous) with 1-15 boxes each (mean 7.3, ~860k in all), classes skewed so that
    'person' is the most common (a 1/rank law over the 80 categories, person first), and the
    annotation list in random order as in COCO's own file. No segmentation polygons. Returns
    the number of boxes."""
    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(600_000, size=images, replace=False)) + 1
    counts = 1 + rng.binomial(14, 0.448, size=images)
    n = int(counts.sum())
    ranks = np.concatenate([[0], 1 + rng.permutation(len(COCO_CATEGORIES) - 1)])
    weights = 1.0 / (1 + ranks)
    cats = np.array([c for c, _ in COCO_CATEGORIES])[rng.choice(len(COCO_CATEGORIES), size=n, p=weights / weights.sum())]
    w, h = rng.uniform(4, 400, n), rng.uniform(4, 300, n)
    x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
    owner = np.repeat(image_ids, counts)
    order = rng.permutation(n)
    with open(path, "w") as f:
        f.write('{"info": {"description": "fsx bench: COCO-size synthetic"}, "images": [')
        f.write(",".join(f'{{"id": {i}, "file_name": "{i:012d}.jpg", "width": 640, "height": 480}}' for i in image_ids.tolist()))
        f.write('], "categories": [')
        f.write(",".join(json.dumps({"id": c, "name": name}) for c, name in COCO_CATEGORIES))
        f.write('], "annotations": [')
        for start in range(0, n, 100_000):
            part = order[start : start + 100_000]
            rows = zip((part + 1).tolist(), owner[part].tolist(), cats[part].tolist(), x[part].tolist(), y[part].tolist(), w[part].tolist(), h[part].tolist())
            f.write(("," if start else "") + ",".join(
                f'{{"id": {k}, "image_id": {i}, "category_id": {c}, "bbox": [{bx:.2f}, {by:.2f}, {bw:.2f}, {bh:.2f}], "area": {bw * bh:.2f}, "iscrowd": 0}}'
                for k, i, c, bx, by, bw, bh in rows
            ))
        f.write("]}")
    return n


def scale_child(path: str, tasks: int = 50) -> None:
    """Load + fold split + `tasks` sampled 5-way 5-shot tasks in this (fresh) process; prints
    the timings and the peak resident memory as one JSON line."""
    start_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    source = CocoSet.load(path)
    t1 = time.perf_counter()
    split = split_by_fold(source, COCO_VOC_FOLD, seed=0)
    t2 = time.perf_counter()
    times = []
    for seed in range(tasks):
        t = time.perf_counter()
        sample_shots(split.test_adapt, choose_classes(list(COCO_VOC_FOLD.novel), 5, seed), 5, seed)
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "load_s": t1 - t0, "split_s": t2 - t1, "peak_rss_gb": _status_kb("VmHWM") / 2**20, "start_rss_gb": start_kb / 2**20,
        "first_task_ms": times[0] * 1e3, "task_ms": statistics.median(times) * 1e3,
        "sizes": {"train": len(split.train), "test_adapt": len(split.test_adapt), "test_test": len(split.test_test)},
    }))


SCALE_ROWS = (  # (label, value key, aim key or None)
    ("load (CocoSet.load), s", "load_s", None),
    ("fold split (split_by_fold), s", "split_s", None),
    ("load + fold split, s", "load_split_s", "load_s"),
    ("peak resident memory, GB", "peak_rss_gb", "peak_rss_gb"),
    ("first 5-way 5-shot task (indexes the pool), ms", "first_task_ms", None),
    ("5-way 5-shot task on test_adapt, median of 50, ms", "task_ms", "task_ms"),
)


def measure_scale() -> dict:
    """Generates the COCO-size file in a temp dir and measures it in a fresh Python process
    (nothing else loaded: the peak resident memory is the data layer's plus the imports')."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances_train_synthetic.json"
        t = time.perf_counter()
        boxes = write_coco_size(path)
        written = time.perf_counter() - t
        result = subprocess.run([sys.executable, __file__, "--scale-of", str(path)], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"the scale measurement failed:\n{result.stderr[-2000:]}")
    r = json.loads(result.stdout.strip().splitlines()[-1])
    return {**r, "boxes": boxes, "written_s": written, "load_split_s": r["load_s"] + r["split_s"]}


def _scale_heading(scale: dict) -> str:
    sizes = ", ".join(f"{k} {v}" for k, v in scale["sizes"].items())
    return (
        f"Data at COCO scale: 118,287 images, {scale['boxes']:,} boxes, 80 classes, fold novel = the 20 VOC classes "
        f"(file written in {scale['written_s']:.0f} s); split: {sizes} images; {scale['start_rss_gb']:.2f} GB resident at start"
    )


def _aim(key: str | None) -> str:
    return f"<= {int(SCALE_AIMS[key])}" if key else ""


def scale_table(scale: dict) -> None:
    print(f"\n{_scale_heading(scale)}\n")
    print(f"{'measure':<50} {'measured':>10} {'aim':>10}")
    for label, key, aim in SCALE_ROWS:
        print(f"{label:<50} {scale[key]:>10.{2 if key == 'peak_rss_gb' else 1}f} {_aim(aim):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale-only", action="store_true", help="only the COCO-scale data table")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "README.md"),
                        help="also write the tables here, with the machine and the date (default: experiments/benchmarks/README.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--memory-of", nargs=2, metavar=("VARIANT", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--scale-of", metavar="ANNOTATIONS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_of:
        return scale_child(args.scale_of)
    if args.scale_only:
        return scale_table(measure_scale())
    flush_denormals()
    device = resolve_device(args.device)
    if args.memory_of:
        return memory_child(args.memory_of[0], int(args.memory_of[1]), device)
    tiny, r18 = TINY, {"name": "resnet18", "out_channels": 128}
    plain, reptile = reptile_vs_adam(device)
    rows = [
        compare("10 Adam steps b16: A plain, B as 1 Reptile meta-iteration (5 x 2)", plain, reptile, device, args.repeats, unit="s/10 steps"),
        compare("meta-iteration, 1 inner step: A FOMAML, B MAML", maml_fn(device, 1, True), maml_fn(device, 1), device, args.repeats, unit="s/iter"),
        compare("meta-iteration, 2 inner steps: A FOMAML, B MAML", maml_fn(device, 2, True), maml_fn(device, 2), device, args.repeats, unit="s/iter"),
        compare("meta-iteration, 5 inner steps: A FOMAML, B MAML", maml_fn(device, 5, True), maml_fn(device, 5), device, args.repeats, unit="s/iter"),
        compare("meta-iteration, 5 inner steps: A FOMAML, B ANIL (2nd order)", maml_fn(device, 5, True), maml_fn(device, 5, inner_params="heads"), device, args.repeats, unit="s/iter"),
        compare("train step b16: A tiny, B resnet18", train_fn(tiny, 16, device), train_fn(r18, 16, device), device, args.repeats, unit="s/step"),
        compare("train step tiny: A batch 8, B batch 16 (per image)", train_fn(tiny, 8, device), train_fn(tiny, 16, device), device, args.repeats, 8, 16, "s/image"),
        compare("train step tiny b16: A FCOS, B RetinaNet", train_fn(tiny, 16, device), train_fn(tiny, 16, device, detector=RETINANET), device, args.repeats, unit="s/step"),
        compare("train step tiny b16: A FCOS, B Faster R-CNN", train_fn(tiny, 16, device), train_fn(tiny, 16, device, detector=FASTER_RCNN), device, args.repeats, unit="s/step"),
        compare("train step tiny b16: A FCOS, B SSD", train_fn(tiny, 16, device), train_fn(tiny, 16, device, detector={"name": "ssd"}), device, args.repeats, unit="s/step"),
        compare("Faster R-CNN step b16: A torchvision RoIAlign, B grid", train_fn(tiny, 16, device, detector=FASTER_RCNN), train_fn(tiny, 16, device, detector={**FASTER_RCNN, "roi_align": "grid"}), device, args.repeats, unit="s/step"),
        compare("step b16, 1 thread, denormal weights: A kept, B flushed", denormal_fn(False, device), denormal_fn(True, device), device, args.repeats, unit="s/step"),
        compare("train step tiny b16: A contiguous, B channels_last", train_fn(tiny, 16, device, memory_format=torch.contiguous_format), train_fn(tiny, 16, device, memory_format=torch.channels_last), device, args.repeats, unit="s/step"),
        compare("adapt step tiny b16: A all params, B class head only", train_fn(tiny, 16, device), train_fn(tiny, 16, device, params="class_head"), device, args.repeats, unit="s/step"),
        compare("inference tiny: A batch 1, B batch 32 (per image)", infer_fn(tiny, 1, device), infer_fn(tiny, 32, device), device, args.repeats, 1, 32, "s/image"),
        *pretrained_backbone_rows(device, args.repeats),
        *export_rows(device, args.repeats),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data = letters_dataset(Path(tmp))
        rows.append(compare("10 steps b16 on letters: A bare torchvision loop, B fsx's loop", *loop_vs_bare(data, device), device, args.repeats, unit="s/10 steps"))
        rows.append(compare("letters b16: A build an augmented batch, B train on it", *loading_vs_step(data, device), device, args.repeats, unit="s/batch"))
        rows.append(compare("10 steps b16 on letters: A batches built in process, B 2 DataLoader workers", *in_process_vs_workers(data, device), device, args.repeats, unit="s/10 steps"))
        utilisation = []
        if device.type == "cuda":
            workers = loader_workers("auto", device)
            utilisation = [pretraining_utilisation(data, device, backbone, w) for backbone in (tiny, r18) for w in sorted({0, workers})]
    cocoeval = cocoeval_seconds_per_1000()
    if device.type == "cuda":
        rows.append(compare("train step r18 b16: A fp32, B bf16 autocast", train_fn(r18, 16, device, amp=False), train_fn(r18, 16, device, amp=True), device, args.repeats, unit="s/step"))
        rows.append(compare("train step r18 b64: A fp32, B bf16 autocast", train_fn(r18, 64, device, amp=False), train_fn(r18, 64, device, amp=True), device, args.repeats, unit="s/step"))
    memory = {(variant, steps): peak_memory_mb(variant, steps, device) for steps in (1, 2, 5) for variant in MAML_VARIANTS}
    scale = measure_scale()
    report(rows, memory, cocoeval, scale, utilisation, device, args.repeats)
    if not args.no_write:
        write_readme(Path(args.out), rows, memory, cocoeval, scale, utilisation, device, args.repeats)


def machine(device) -> str:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor() or "unknown CPU")
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} logical cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def write_readme(path: Path, rows, memory, cocoeval, scale, utilisation, device, repeats) -> None:
    """The same measurements as Markdown tables, with the machine and the date."""
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# fsx benchmarks",
        "",
        f"Written by `make bench` (bench/run.py) on {when}, on {machine(device)}; {device}, {torch.get_num_threads()} threads, median of {repeats}.",
        "",
        "Each row runs two variants of one thing on the same inputs, interleaved, and reports the",
        "median of each and B/A; ratios, not absolute times, are what carries over between machines",
        "(and between runs on a busy one). Rerun `make bench` to refresh this file.",
        "",
        "| comparison | A | B | B/A | unit |",
        "|---|---:|---:|---:|---|",
        *(f"| {r['comparison']} | {r['A']:.4f} | {r['B']:.4f} | {r['B/A']:.2f} | {r['unit']} |" for r in rows),
        "",
        f"Scoring (`detection_metrics`: COCOeval + per-class + VOC AP x3 + threshold metrics): {cocoeval:.2f} s per 1,000 images (5 classes, 20 detections each).",
        "",
        f"Meta-iteration memory, tiny FCOS, 2 tasks of 16 + 16 images at 128 px ({_memory_kind(device)}, MB):",
        "",
        "| inner steps | FOMAML | MAML | ANIL | MAML/FOMAML |",
        "|---:|---:|---:|---:|---:|",
    ]
    for steps in (1, 2, 5):
        f, m, a = (memory[(variant, steps)] for variant in ("fomaml", "maml", "anil"))
        lines.append(f"| {steps} | {f:.0f} | {m:.0f} | {a:.0f} | {m / f:.2f} |")
    lines += ["", UTILISATION_HEADING + ":", ""]
    if utilisation:
        lines += ["| backbone | loader workers | images/s | GPU busy, profiled run | GPU busy / unprofiled wall time | aim |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {u['backbone']} | {u['workers']} | {u['images/s']:.0f} | {u['busy']:.0%} | {u['busy/unprofiled']:.0%} | >= 90% |" for u in utilisation]
    else:
        lines.append(NO_GPU)
    lines += ["", _scale_heading(scale) + ":", "", "| measure | measured | aim |", "|---|---:|---|"]
    lines += [f"| {label} | {scale[key]:.{2 if key == 'peak_rss_gb' else 1}f} | {_aim(aim)} |" for label, key, aim in SCALE_ROWS]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {path}")


def _memory_kind(device) -> str:
    return "peak CUDA memory allocated" if device.type == "cuda" else "peak resident memory above the start"


def report(rows, memory, cocoeval, scale, utilisation, device, repeats) -> None:
    print(f"\nfsx bench on {device} ({torch.get_num_threads()} threads), median of {repeats}, interleaved\n")
    print(f"{'comparison':<66} {'A':>10} {'B':>10} {'B/A':>7}  unit")
    for r in rows:
        print(f"{r['comparison']:<66} {r['A']:>10.4f} {r['B']:>10.4f} {r['B/A']:>7.2f}  {r['unit']}")
    print(f"\nscoring (detection_metrics: COCOeval + per-class + VOC AP x3 + threshold metrics): {cocoeval:.2f} s per 1,000 images (5 classes, 20 detections each)")
    print(f"\nmeta-iteration memory, tiny FCOS, 2 tasks of 16 + 16 images at 128 px ({_memory_kind(device)}, MB)\n")
    print(f"{'inner steps':>11} {'FOMAML':>10} {'MAML':>10} {'ANIL':>10} {'MAML/FOMAML':>12}")
    for steps in (1, 2, 5):
        f, m, a = (memory[(variant, steps)] for variant in ("fomaml", "maml", "anil"))
        print(f"{steps:>11} {f:>10.0f} {m:>10.0f} {a:>10.0f} {m / f:>12.2f}")
    print(f"\n{UTILISATION_HEADING}\n")
    if not utilisation:
        print(NO_GPU)
    for u in utilisation:
        print(f"{u['backbone']:<10} {u['workers']:>2} loader workers {u['images/s']:>8.0f} images/s  GPU busy {u['busy']:.0%} profiled, {u['busy/unprofiled']:.0%} of the unprofiled wall time (aim >= 90%)")
    scale_table(scale)


UTILISATION_HEADING = ("GPU utilisation during pretraining (letters, FCOS, batch 16 at 128 px, bf16, 40 steps; the seconds with a kernel or copy "
                       "running, from the profiler's trace, over the profiled run's wall time and over an unprofiled run's)")
NO_GPU = "Not measured: this machine has no GPU. Run `make bench` on a CUDA machine to fill this table (and the fp32 vs bf16 rows)."


if __name__ == "__main__":
    main()
