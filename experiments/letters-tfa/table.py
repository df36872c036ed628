"""The letters-tfa table from the MLflow store: per evaluated variant, its pretraining's
algorithm, effective LR, seconds per training step and base AP50 on the held-out base
images; how it adapted (fsx.adapt_optimizer); novel AP50 (mean ± 95% CI over the sampled
tasks) at each milestone; and seconds per adaptation step (adaptation only, scoring
excluded, mean over tasks at the last milestone).

    python experiments/letters-tfa/table.py [--uri sqlite:///mlflow.db] LABEL=EVAL_RUN_ID ...

An eval run that did not finish (stopped before its last task) is read from its per-task
metrics (repeat_<rr>/AP50 at each milestone) and marked with the number of tasks it has.
"""

from __future__ import annotations

import argparse
import csv
import io

from fsx import tracking
from fsx.evaluation.aggregate import summarize


def novel_rows(uri: str, run_id: str) -> tuple[list[dict], bool]:
    """(rows of milestone, task_seed, AP50, adapt_seconds; finished?) of one eval run."""
    status, _ = tracking.run_state(uri, run_id)
    if status == "FINISHED":
        return list(csv.DictReader(io.StringIO(tracking.artifact_text(uri, run_id, "eval/repeats.csv")))), True
    client = tracking._client(uri)  # noqa: SLF001 - the per-task metrics of a run that stopped early
    metrics = client.get_run(run_id).data.metrics
    rows = []
    for key in sorted(k for k in metrics if k.startswith("repeat_") and k.endswith("/AP50")):
        r = int(key.split("/")[0][len("repeat_") :])
        for m in client.get_metric_history(run_id, key):
            rows.append({"milestone": m.step, "task_seed": r, "AP50": m.value, "adapt_seconds": ""})
    return rows, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("runs", nargs="+", help="LABEL=EVAL_RUN_ID, in the table's order")
    args = parser.parse_args()
    table = []
    for item in args.runs:
        label, run_id = item.rsplit("=", 1)
        ev = tracking.run_record(args.uri, run_id)
        pre = tracking.run_record(args.uri, ev["tags"]["fsx.source_run"])
        p, pm = pre["params"], pre["metrics"]
        rows, finished = novel_rows(args.uri, run_id)
        milestones = sorted({int(r["milestone"]) for r in rows})
        novel = {m: summarize(float(r["AP50"]) for r in rows if int(r["milestone"]) == m) for m in milestones}
        last = milestones[-1] if milestones else 0
        seconds = [float(r["adapt_seconds"]) / last for r in rows if int(r["milestone"]) == last and r["adapt_seconds"] not in ("", None) and last]
        table.append(
            {
                "label": label + ("" if finished else f" (unfinished: {max(s['n'] for s in novel.values()) if novel else 0} tasks)"),
                "run": run_id,
                "pretrain": f"{p['algorithm.name']} {ev['tags']['fsx.source_run'][:8]}",
                "lr": p.get("algorithm.effective_lr", p.get("algorithm.lr", "")).split(" ")[0],
                "s_step": 1 / pm["train/steps_per_second"] if pm.get("train/steps_per_second") else float("nan"),
                "base": pm.get("val/AP50", float("nan")),
                "adapt": ev["tags"].get("fsx.adapt_optimizer", ""),
                "novel": novel,
                "s_adapt": summarize(seconds)["mean"] if seconds else float("nan"),
            }
        )
    milestones = sorted({m for row in table for m in row["novel"]})
    n = max(s["n"] for row in table for s in row["novel"].values())
    print(f"base AP50 on the held-out base images; novel AP50, mean ± 95% CI over up to {n} tasks, after {'/'.join(map(str, milestones))} adaptation steps\n")
    print("| variant | pretraining (run) | pretrain LR | s/pretrain step | base AP50 | adaptation | " + " | ".join(f"novel AP50 @ {m}" for m in milestones) + " | s/adapt step | eval run |")
    print("|---|---|---|---|---|---|" + "---|" * len(milestones) + "---|---|")
    for row in table:
        cells = [f"{row['novel'][m]['mean']:.3f} ± {row['novel'][m]['ci95']:.3f}" if m in row["novel"] else "" for m in milestones]
        print(
            f"| {row['label']} | {row['pretrain']} | {row['lr']} | {row['s_step']:.2f} | {row['base']:.3f} | {row['adapt']} | "
            + " | ".join(cells)
            + f" | {row['s_adapt']:.2f} | {row['run'][:8]} |"
        )


if __name__ == "__main__":
    main()
