"""fsx benchmarks: costs measured side by side in one process and reported as ratios.

    make bench            # or: python bench/run.py --repeats 5

Each row times two variants of one thing on the same inputs, interleaved (A, B, A, B, ...)
so that machine noise hits both, and reports the median seconds of each and B/A.
On a CUDA machine it adds bf16 autocast vs fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fsx.engine.device import autocast, resolve_device
from fsx.engine.loop import train_step
from fsx.models.detectors import build_detector
from fsx.models.heads import select_trainable


def spec(backbone: dict, num_classes: int = 21) -> dict:
    return {
        "detector": {"name": "retinanet", "anchor_scale": 1.5},
        "backbone": backbone,
        "num_classes": num_classes,
        "image_size": 128,
        "image_mean": [0.92] * 3,
        "image_std": [0.25] * 3,
    }


def batch(n: int, device):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g).to(device) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[10.0, 12, 40, 50], [60, 64, 100, 110]], device=device), "labels": torch.tensor([1, 3], device=device)} for _ in range(n)]
    return images, targets


def train_fn(backbone: dict, n: int, device, params: str = "all", amp: bool = True, memory_format=None):
    model = build_detector(spec(backbone)).to(device).train()
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(select_trainable(model, params), lr=1e-4)
    images, targets = batch(n, device)
    return lambda: train_step(model, opt, images, targets, device, amp=amp, clip_norm=10.0)


def infer_fn(backbone: dict, n: int, device, amp: bool = True):
    model = build_detector(spec(backbone)).to(device).eval()
    images, _ = batch(n, device)

    @torch.no_grad()
    def run():
        with autocast(device, amp):
            model(images)

    return run


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    tiny, r18 = {"name": "tiny", "out_channels": 64}, {"name": "resnet18", "out_channels": 128}
    rows = [
        compare("train step b16: A tiny, B resnet18", train_fn(tiny, 16, device), train_fn(r18, 16, device), device, args.repeats, unit="s/step"),
        compare("train step tiny: A batch 8, B batch 16 (per image)", train_fn(tiny, 8, device), train_fn(tiny, 16, device), device, args.repeats, 8, 16, "s/image"),
        compare("train step tiny b16: A contiguous, B channels_last", train_fn(tiny, 16, device, memory_format=torch.contiguous_format), train_fn(tiny, 16, device, memory_format=torch.channels_last), device, args.repeats, unit="s/step"),
        compare("adapt step tiny b16: A all params, B class head only", train_fn(tiny, 16, device), train_fn(tiny, 16, device, params="class_head"), device, args.repeats, unit="s/step"),
        compare("inference tiny: A batch 1, B batch 32 (per image)", infer_fn(tiny, 1, device), infer_fn(tiny, 32, device), device, args.repeats, 1, 32, "s/image"),
    ]
    if device.type == "cuda":
        rows.append(compare("train step r18 b16: A fp32, B bf16 autocast", train_fn(r18, 16, device, amp=False), train_fn(r18, 16, device, amp=True), device, args.repeats, unit="s/step"))
    print(f"\nfsx bench on {device} ({torch.get_num_threads()} threads), median of {args.repeats}, interleaved\n")
    print(f"{'comparison':<56} {'A':>10} {'B':>10} {'B/A':>7}  unit")
    for r in rows:
        print(f"{r['comparison']:<56} {r['A']:>10.4f} {r['B']:>10.4f} {r['B/A']:>7.2f}  {r['unit']}")


if __name__ == "__main__":
    main()
