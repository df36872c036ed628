"""The letters-detectors table from the MLflow store: per pretrained detector, seconds per
training step, base AP50 on the held-out base images, and novel AP50 (mean ± 95% CI over
the sampled tasks) at each evaluated adaptation step.

    python experiments/letters-detectors/table.py [--uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import csv
import io

from fsx import tracking
from fsx.evaluation.aggregate import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="letters-detectors")
    args = parser.parse_args()
    evals = tracking.newest_runs_by_tag(args.uri, args.experiment, "eval", "fsx.source_run")
    rows = []
    for pretrain_id, eval_id in evals.items():
        pre = tracking.run_record(args.uri, pretrain_id)
        p = pre["params"]
        name = p["detector.name"] + (f" (head_norm {p['detector.head_norm']}, {p['detector.box_loss']} boxes)" if "detector.head_norm" in p else "")
        repeats = list(csv.DictReader(io.StringIO(tracking.artifact_text(args.uri, eval_id, "eval/repeats.csv"))))
        novel = {}
        for m in sorted({int(r["milestone"]) for r in repeats}):
            novel[m] = summarize(float(r["AP50"]) for r in repeats if int(r["milestone"]) == m)
        rows.append((name, p["backbone.name"], p["model.parameters"], 1 / pre["metrics"]["train/steps_per_second"], pre["metrics"].get("val/AP50", float("nan")), novel))
    milestones = sorted({m for row in rows for m in row[5]})
    n = max(s["n"] for row in rows for s in row[5].values())
    print(f"base AP50 on held-out base images; novel AP50, mean ± 95% CI over {n} tasks, after 10/50/200 adaptation steps\n")
    print("| detector | backbone | parameters | s/step (batch 16) | base AP50 | " + " | ".join(f"novel AP50 @ {m}" for m in milestones) + " |")
    print("|---|---|---|---|---|" + "---|" * len(milestones))
    for name, backbone, params, seconds, base, novel in sorted(rows):
        cells = [f"{novel[m]['mean']:.3f} ± {novel[m]['ci95']:.3f}" if m in novel else "" for m in milestones]
        print(f"| {name} | {backbone} | {int(params) / 1e6:.2f} M | {seconds:.3f} | {base:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
