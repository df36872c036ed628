"""The study's table from the MLflow store: per algorithm and milestone, novel AP50 mean ±
95% CI over the sampled tasks, and the paired difference to `standard` on the same tasks.

    python experiments/letters-adaptation-speed/table.py [--uri sqlite:///mlflow.db] [--metric AP50] [--plot curves.png]
"""

from __future__ import annotations

import argparse
import csv
import io

from fsx import tracking
from fsx.evaluation.aggregate import paired_difference, summarize
from fsx.evaluation.plots import curve_png

ORDER = ("standard", "joint", "reptile", "fomaml", "maml", "metasgd", "anil")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="letters-speed")
    parser.add_argument("--metric", default="AP50")
    parser.add_argument("--plot", help="also draw the curves with their 95%% CI bands into this PNG")
    args = parser.parse_args()
    runs = tracking.newest_runs_by_tag(args.uri, args.experiment, "eval", "fsx.algorithm")
    rows = {}
    for algorithm in [a for a in ORDER if a in runs] + sorted(set(runs) - set(ORDER)):
        table = list(csv.DictReader(io.StringIO(tracking.artifact_text(args.uri, runs[algorithm], "eval/repeats.csv"))))
        rows[algorithm] = {(int(r["milestone"]), int(r["task_seed"])): float(r[args.metric]) for r in table}
    milestones = sorted({m for values in rows.values() for m, _ in values})
    seeds = sorted({s for values in rows.values() for _, s in values})
    print(f"novel {args.metric}, mean ± 95% CI over {len(seeds)} tasks (task seeds {seeds[0]}..{seeds[-1]}); "
          "Δ = paired difference to standard on the same tasks (95% CI, paired t-test p)\n")
    print("| algorithm | " + " | ".join(f"step {m}" for m in milestones) + " |")
    print("|---|" + "---|" * len(milestones))
    for algorithm, values in rows.items():
        cells = []
        for m in milestones:
            s = summarize(values.get((m, t), float("nan")) for t in seeds)
            cell = f"{s['mean']:.3f} ± {s['ci95']:.3f}"
            if algorithm != "standard" and "standard" in rows:
                d = paired_difference([rows["standard"].get((m, t), float("nan")) for t in seeds], [values.get((m, t), float("nan")) for t in seeds])
                cell += f"<br>Δ {d['mean']:+.3f} ± {d['ci95']:.3f} (p {d['p']:.2g})"
            cells.append(cell)
        print(f"| {algorithm} | " + " | ".join(cells) + " |")
    if args.plot:
        curves = {a: {m: summarize(v.get((m, t), float("nan")) for t in seeds) for m in milestones} for a, v in rows.items()}
        print(f"\nplot: {curve_png(args.plot, curves, args.metric, f'novel {args.metric}, letters fold 1, {len(seeds)} tasks')}")


if __name__ == "__main__":
    main()
