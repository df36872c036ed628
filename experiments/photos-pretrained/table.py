"""The study's tables from the MLflow store: per evaluated setting (detector, backbone, start,
adaptation recipe), its pretraining (base AP50 on held-out base images, minutes, s/step) and
novel AP50 mean ± 95% CI over the sampled tasks at every milestone; then the paired
differences to the first setting (Lite0 from ImageNet, every parameter adapted) on the same
tasks.

    python experiments/photos-pretrained/table.py [--uri sqlite:///mlflow.db] [--experiment photos-pretrained] [--plot curves.png]
"""

from __future__ import annotations

import argparse
import csv
import io

from fsx import tracking
from fsx.evaluation.aggregate import paired_difference, summarize
from fsx.evaluation.plots import curve_png


def label(tags: dict) -> str:
    start = "ImageNet" if tags.get("fsx.weights") == "imagenet" else tags.get("fsx.weights", "scratch")
    adaptation = tags.get("fsx.adapt_optimizer", "?")
    return f"{tags['fsx.detector']} {tags['fsx.backbone']} from {start}; adapt: {adaptation}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="photos-pretrained")
    parser.add_argument("--metric", default="AP50")
    parser.add_argument("--plot", help="also draw the curves with their 95%% CI bands into this PNG")
    args = parser.parse_args()
    evals = tracking.search_runs(args.uri, args.experiment, "tags.`fsx.command` = 'eval' and attributes.status = 'FINISHED'")
    newest: dict[str, dict] = {}
    for run in evals:  # oldest first: a rerun of a setting replaces it
        newest[label(run["tags"])] = run
    order = sorted(newest, key=lambda name: (newest[name]["tags"].get("fsx.weights") != "imagenet", name))
    order = sorted(order, key=lambda name: "fasterrcnn" in name)  # the FCOS rows first, the ImageNet ones first among them
    values, pretraining = {}, {}
    for name in order:
        run = newest[name]
        table = list(csv.DictReader(io.StringIO(tracking.artifact_text(args.uri, run["id"], "eval/repeats.csv"))))
        values[name] = {(int(r["milestone"]), int(r["task_seed"])): float(r[args.metric]) for r in table}
        source = run["tags"]["fsx.source_run"]
        pretraining[name] = (source, tracking.run_record(args.uri, source))
    milestones = sorted({m for v in values.values() for m, _ in v})
    seeds = sorted({s for v in values.values() for _, s in v})
    print(f"novel {args.metric} on the microcontroller boards' test-test images, mean ± 95% CI over {len(seeds)} tasks "
          f"(task seeds {seeds[0]}..{seeds[-1]}, the same support sets for every row); base AP50 on the held-out base images\n")
    print("| setting | pretraining | base AP50 | " + " | ".join(f"novel @ {m}" for m in milestones) + " |")
    print("|---|---|---|" + "---|" * len(milestones))
    for name in order:
        source, record = pretraining[name]
        metrics = record["metrics"]
        steps = int(record["params"].get("train.steps_run", 0))
        seconds = metrics.get("train/seconds", float("nan"))
        cells = []
        for m in milestones:
            s = summarize(values[name].get((m, t), float("nan")) for t in seeds)
            cells.append(f"{s['mean']:.3f} ± {s['ci95']:.3f}")
        print(f"| {name} | {steps} steps, {seconds / 60:.0f} min ({seconds / max(steps, 1):.2f} s/step), run {source[:8]} | {metrics.get('val/AP50', float('nan')):.3f} | " + " | ".join(cells) + " |")
    base = order[0]
    print(f"\npaired differences to `{base}` over the same tasks: mean ± 95% CI (paired t-test p)\n")
    print("| difference | " + " | ".join(f"@ {m}" for m in milestones) + " |")
    print("|---|" + "---|" * len(milestones))
    for name in order[1:]:
        cells = []
        for m in milestones:
            d = paired_difference([values[base].get((m, t), float("nan")) for t in seeds], [values[name].get((m, t), float("nan")) for t in seeds])
            cells.append(f"{d['mean']:+.3f} ± {d['ci95']:.3f} (p {d['p']:.2g})")
        print(f"| {name} − base | " + " | ".join(cells) + " |")
    if args.plot:
        curves = {n: {m: summarize(values[n].get((m, t), float("nan")) for t in seeds) for m in milestones} for n in order}
        print(f"\nplot: {curve_png(args.plot, curves, args.metric, f'novel {args.metric}, 4 microcontroller boards, {len(seeds)} tasks')}")


if __name__ == "__main__":
    main()
