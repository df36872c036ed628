"""The study's tables from the MLflow store: per evaluated setting (detector, backbone, start,
adaptation recipe), its pretraining (base AP50 on held-out base images, minutes, s/step) and
novel AP50 mean ± 95% CI over the sampled tasks at every milestone; then the paired
differences to the first setting (FCOS on Lite0 from ImageNet, every parameter adapted) on
the same tasks.

    python experiments/photos-pretrained/table.py [--uri sqlite:///mlflow.db] [--experiment photos-pretrained] [--plot curves.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tables  # noqa: E402 - experiments/tables.py


def label(tags: dict, _pretraining: dict) -> str:
    start = "ImageNet" if tags.get("fsx.weights") == "imagenet" else tags.get("fsx.weights", "scratch")
    return f"{tags['fsx.detector']} {tags['fsx.backbone']} from {start}; adapt: {tags.get('fsx.adapt_optimizer', '?')}"


def pretraining(setting: tables.Setting) -> str:
    steps = int(setting.pretraining["params"].get("train.steps_run", 0))
    seconds = setting.pretraining["metrics"].get("train/seconds", float("nan"))
    return f"{steps} steps, {seconds / 60:.0f} min ({seconds / max(steps, 1):.2f} s/step), run {setting.pretraining_id[:8]}"


def main() -> None:
    args = tables.arguments(__doc__, "photos-pretrained")
    rows = tables.settings(args.uri, args.experiment, label, args.metric)
    # the FCOS rows first, the ImageNet ones first among them
    rows = dict(sorted(rows.items(), key=lambda kv: ("fasterrcnn" in kv[0], kv[1].eval_run["tags"].get("fsx.weights") != "imagenet", kv[0])))
    _, seeds = tables.grid(rows)
    print(f"novel {args.metric} on the microcontroller boards' test-test images, mean ± 95% CI over {len(seeds)} tasks "
          f"(task seeds {seeds[0]}..{seeds[-1]}, the same support sets for every row); base AP50 on the held-out base images\n")
    tables.print_means(rows, f"novel {args.metric}", {"pretraining": pretraining, "base AP50": lambda s: f"{s.pretraining['metrics'].get('val/AP50', float('nan')):.3f}"})
    tables.print_differences(rows, base=next(iter(rows)))
    if args.plot:
        tables.plot(rows, args.plot, args.metric, f"novel {args.metric}, 4 microcontroller boards")


if __name__ == "__main__":
    main()
