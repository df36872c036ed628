"""The study's table from the MLflow store: what each tuning sweep chose (on validation
tasks, and on the test tasks: peeking), the number it reported while choosing, and each choice
scored on the test tasks once (10 tasks), with the peeking choice also on 10 test tasks it
never saw. Peeking's inflation = its reported number − the validation choice's test number.

    python experiments/tune-adaptation/table.py --experiment tune-letters|tune-photos [--uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tables  # noqa: E402 - experiments/tables.py

from fsx import tracking  # noqa: E402


def sweep(uri: str, experiment: str, pool: str) -> dict:
    """The newest finished tuning sweep on `pool`: its best overrides, value and step."""
    parents = [p for p in tracking.search_runs(uri, experiment, "tags.`fsx.multirun` = 'parent'") if f"eval.tasks={pool}" in p["tags"].get("fsx.sweep", "")]
    if not parents or "fsx.best_run" not in parents[-1]["tags"]:
        sys.exit(f"no finished tuning sweep on {pool} tasks in {experiment} at {uri}")
    tags = parents[-1]["tags"]
    best = tracking.run_record(uri, tags["fsx.best_run"])["tags"]
    trials = {}  # each trial's setting (the swept keys) -> (its objective, the milestone it was read at)
    for child in tracking.child_runs(uri, parents[-1]["id"]):
        record = tracking.run_record(uri, child["id"])
        setting = " ".join(f"{k}={float(record['params'][k]):.2g}" if k == "adapt.lr" else f"{k}={record['params'][k]}" for k in ("adapt.lr", "adapt.params"))
        if "objective" in record["metrics"]:
            trials[setting] = (record["metrics"]["objective"], record["tags"].get("fsx.objective_milestone", "?"))
    return {"overrides": tags["fsx.best_overrides"], "value": float(tags["fsx.best_value"]), "step": int(best.get("fsx.objective_milestone", -1)), "trials": len(trials), "scores": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", required=True)
    args = parser.parse_args()
    chosen = {"validation": sweep(args.uri, args.experiment, "validation"), "test": sweep(args.uri, args.experiment, "test")}

    def label(tags: dict, _record: dict) -> str | None:
        if "mlflow.parentRunId" in tags:
            return None  # a trial, not a final evaluation
        overrides = tags.get("fsx.overrides", "")
        fresh = "task_seed=101" in overrides
        pools = [pool for pool, best in chosen.items() if all(o in overrides.split() for o in best["overrides"].split())]
        if pools:  # both sweeps try the same settings (the sampler's seed); they may choose the same
            return f"{' and '.join(pools)} choice ({chosen[pools[0]]['overrides']})" + (", fresh test tasks 101-110" if fresh else "")
        return None if fresh else "defaults (adapt.lr=0.001 adapt.params=all)"

    rows = tables.settings(args.uri, args.experiment, label)
    print("tuning sweeps (5 tasks each, AP50 at the best of 25/50/100/200 steps):\n")
    print("| tuned on | trials | chose | at step | AP50 it reported |")
    print("|---|---|---|---|---|")
    for pool, best in chosen.items():
        print(f"| {pool} tasks | {best['trials']} | {best['overrides']} | {best['step']} | {best['value']:.3f} |")
    print("\nevery trial (the same settings in both sweeps): its AP50 at its best step, on 5 validation and on 5 test tasks:\n")
    print("| setting | validation tasks | test tasks |")
    print("|---|---|---|")
    for setting in sorted(chosen["validation"]["scores"], key=lambda k: -chosen["validation"]["scores"][k][0]):
        v, t = chosen["validation"]["scores"][setting], chosen["test"]["scores"].get(setting, (float("nan"), "?"))
        print(f"| {setting} | {v[0]:.3f} (step {v[1]}) | {t[0]:.3f} (step {t[1]}) |")
    print("\nscored on the test tasks (novel AP50, mean ± 95% CI over 10 tasks):\n")
    tables.print_means(rows, "AP50")
    honest = [n for n in rows if n.startswith("validation") and "fresh" not in n]
    if honest:
        from fsx.evaluation.aggregate import summarize

        step, setting = chosen["validation"]["step"], rows[honest[0]]
        _, seeds = tables.grid({honest[0]: setting})
        value = summarize(setting.values.get((step, t), float("nan")) for t in seeds)["mean"]
        print(f"\npeeking's inflation: the test sweep reported {chosen['test']['value']:.3f}; the validation choice scores "
              f"{value:.3f} on the test tasks at its step {step}: {chosen['test']['value'] - value:+.3f}")


if __name__ == "__main__":
    main()
