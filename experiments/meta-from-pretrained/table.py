"""A part's tables from the MLflow store: per evaluated setting (the checkpoint's lineage from
its start, the passes of pretraining in all, the head policy, and whose adaptation recipe was
used), novel AP50 mean ± 95% CI over the sampled tasks at every milestone; then the paired
differences on the same tasks to standard pretraining with the most passes.

    python experiments/meta-from-pretrained/table.py --experiment meta-letters|meta-budget|meta-photos [--uri sqlite:///mlflow.db] [--plot curves.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tables  # noqa: E402 - experiments/tables.py


def label(tags: dict, pretraining: dict) -> str:
    start = tags.get("fsx.weights", "scratch")
    head = pretraining["params"].get("algorithm.head")
    fixed = ", fixed head" if head == "fixed" else ""
    return f"{start} → {tags.get('fsx.lineage', '?')}, {tags.get('fsx.passes', '?')} passes{fixed}; adapt: {tags.get('fsx.adapt_recipe', '?')}"


def passes(setting: tables.Setting) -> int:
    return int(setting.eval_run["tags"].get("fsx.passes", 0))


def main() -> None:
    args = tables.arguments(__doc__)
    rows = tables.settings(args.uri, args.experiment, label, args.metric)
    if not rows:
        sys.exit(f"no finished eval runs in experiment {args.experiment} at {args.uri}")
    # standard first, then by lineage and passes; the own recipe before the common one
    rows = dict(sorted(rows.items(), key=lambda kv: (kv[1].eval_run["tags"].get("fsx.lineage") != "standard", kv[1].eval_run["tags"].get("fsx.lineage", ""), -passes(kv[1]), kv[0].endswith("common"))))
    standard = [n for n, s in rows.items() if s.eval_run["tags"].get("fsx.lineage") == "standard"]
    base = max(standard, key=lambda n: passes(rows[n])) if standard else next(iter(rows))
    _, seeds = tables.grid(rows)
    print(f"novel {args.metric}, mean ± 95% CI over {len(seeds)} tasks (task seeds {seeds[0]}..{seeds[-1]}, the same support sets for every row)\n")
    tables.print_means(rows, args.metric, {"pretraining (last stage)": tables.pretraining_cell, "adaptation": lambda s: s.eval_run["tags"].get("fsx.adapt_optimizer", "?")})
    tables.print_differences(rows, base)
    if args.plot:
        tables.plot(rows, args.plot, args.metric, f"novel {args.metric}, {args.experiment}")


if __name__ == "__main__":
    main()
