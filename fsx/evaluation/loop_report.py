"""A report over simulated feedback loops (`fsx loop`): per pretraining algorithm and
acquisition rule, the metric after each round and the wall-clock it took to get there —
the measured version of the Reptile thesis's Tables 7.1/7.2.

Plain values in, text and PNG files out (no MLflow): each record is one loop run's rows
(loop/rounds.csv) with its labels. Runs with the same labels (other task or training seeds)
are pooled: every number is the mean over them, ± its 95% CI (Student t) when there are two
or more; n = runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

from fsx.evaluation.aggregate import paired_difference, summarize
from fsx.evaluation.plots import curve_png, xy_png
from fsx.evaluation.report import difference_cell, markdown_table

LOOP_KEYS = ("algorithm", "rule", "start", "added", "detector", "backbone", "dataset", "fold", "ways")
SECONDS = ("acquire_seconds", "adapt_seconds", "eval_seconds", "annotation_seconds")


@dataclasses.dataclass
class LoopRecord:
    """One loop run: its rows (round, images, <metric>, the seconds columns ...) and labels (LOOP_KEYS)."""

    rows: list[dict]
    labels: dict[str, str]
    run_id: str = ""
    task_seed: str = ""  # which start: loops of one setting pair up by it


@dataclasses.dataclass
class LoopReport:
    groups: list[dict]  # LOOP_KEYS, runs, run_ids, rounds: {round: {images, metric, turn, cumulative: summarize()}}
    differences: list[dict]  # name, baseline, stats: {round: paired_difference()}
    rounds: list[int]
    markdown: str
    csv: str
    pngs: list[Path]


def build_loop_report(records: list[LoopRecord], metric: str, out: Path | str, selection: str = "") -> LoopReport:
    """The tables, their Markdown and CSV, and two PNGs written into `out`: the metric
    against the round and against the cumulative seconds, one line per group."""
    missing = [r.run_id for r in records if any(metric not in row for row in r.rows)]
    if missing:
        raise ValueError(f"loop run(s) {', '.join(missing)} have no {metric} per round (loop/rounds.csv holds AP50, AP and loop.metric)")
    grouped: dict[tuple, list[LoopRecord]] = {}
    for record in records:
        grouped.setdefault(tuple(record.labels[k] for k in LOOP_KEYS), []).append(record)
    groups = []
    for key, members in grouped.items():
        rounds = sorted({int(row["round"]) for m in members for row in m.rows})
        per_round = {}
        for r in rounds:
            rows = [row for m in members for row in m.rows if int(row["round"]) == r]
            per_round[r] = {
                "images": summarize(float(row["images"]) for row in rows),
                "metric": summarize(float(row[metric]) for row in rows),
                "turn": summarize(sum(float(row[s]) for s in SECONDS) for row in rows),
                "cumulative": summarize(float(row["cumulative_seconds"]) for row in rows),
            }
        groups.append({**dict(zip(LOOP_KEYS, key)), "runs": len(members), "run_ids": [m.run_id for m in members], "rounds": per_round, "members": members})
    rounds = sorted({r for g in groups for r in g["rounds"]})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {id(g): _name(g, groups) for g in groups}
    differences = _paired_differences(groups, names, rounds, metric)
    pngs = [
        curve_png(out / f"loop_{_slug(metric)}_by_round.png", {names[id(g)]: {r: s["metric"] for r, s in g["rounds"].items()} for g in groups}, metric, f"{metric} after each round of the loop", xlabel="round", log_x=False),
        xy_png(
            out / f"loop_{_slug(metric)}_by_seconds.png",
            {names[id(g)]: ([g["rounds"][r]["cumulative"]["mean"] for r in sorted(g["rounds"])], [g["rounds"][r]["metric"] for r in sorted(g["rounds"])]) for g in groups},
            "cumulative seconds (acquire + adapt + evaluate + simulated annotation)",
            metric,
            f"{metric} against the loop's wall-clock",
        ),
    ]
    markdown = _markdown(groups, differences, rounds, metric, pngs, selection, len(records))
    for g in groups:
        del g["members"]
    return LoopReport(groups, differences, rounds, markdown, _csv(groups, rounds, metric), pngs)


def _paired_differences(groups: list[dict], names: dict, rounds: list[int], metric: str) -> list[dict]:
    """Each group minus the first of its setting (the same start, images per round, model and
    data; another algorithm or rule), round by round, over the task seeds both ran (a seed
    run several times counts as its mean): the paired difference, its 95% CI and p."""
    settings: dict[tuple, list[dict]] = {}
    for g in groups:
        settings.setdefault(tuple(g[k] for k in LOOP_KEYS if k not in ("algorithm", "rule")), []).append(g)
    out = []
    for members in settings.values():
        baseline = members[0]
        for g in members[1:]:
            stats = {}
            for r in rounds:
                a, b = _by_seed(baseline, r, metric), _by_seed(g, r, metric)
                seeds = sorted(set(a) & set(b))
                if len(seeds) >= 2:
                    stats[r] = paired_difference([a[t] for t in seeds], [b[t] for t in seeds])
            if stats:
                out.append({"name": names[id(g)], "baseline": names[id(baseline)], "stats": stats})
    return out


def _by_seed(group: dict, round_: int, metric: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for m in group["members"]:
        for row in m.rows:
            if int(row["round"]) == round_ and m.task_seed:
                values.setdefault(m.task_seed, []).append(float(row[metric]))
    return {seed: sum(v) / len(v) for seed, v in values.items()}


def _name(group: dict, groups: list[dict]) -> str:
    """A short legend label: the keys that differ between groups (algorithm and rule first)."""
    varying = [k for k in LOOP_KEYS if len({g[k] for g in groups}) > 1] or ["algorithm", "rule"]
    return ", ".join(f"+{group[k]} a round" if k == "added" else str(group[k]) for k in varying)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _cell(stats: dict, digits: int = 3) -> str:
    if not stats["n"] or stats["mean"] != stats["mean"]:
        return "–"
    mean = f"{stats['mean']:.{digits}f}"
    return mean if stats["ci95"] != stats["ci95"] else f"{mean} ± {stats['ci95']:.{digits}f}"


def _markdown(groups, differences, rounds, metric, pngs, selection, runs) -> str:
    text = [f"# Feedback loop: {metric} per round", ""]
    if selection:
        text += [f"{runs} loop run(s): {selection}.", ""]
    text += [
        "Each row is one pretraining algorithm × acquisition rule × start (runs with the same labels pooled: mean ± 95% CI over them, "
        "n = runs). `start` is what was annotated before round 1, `added` the images each later round annotates.",
        "",
        f"## {metric} after each round (images annotated)",
        "",
    ]
    label_header = ["algorithm", "rule", "start", "added", "runs"]
    lines = []
    for g in groups:
        cells = [f"{_cell(g['rounds'][r]['metric'])} ({g['rounds'][r]['images']['mean']:.0f})" if r in g["rounds"] else "–" for r in rounds]
        lines.append([str(g[k]) for k in label_header[:-1]] + [str(g["runs"])] + cells)
    text += markdown_table(label_header + [f"round {r}" for r in rounds], lines)
    text += [
        "",
        "## Seconds per round: the turn of the loop",
        "",
        "acquire + adapt + evaluate (measured) + annotate (simulated, images added × loop.annotation_seconds); the thesis's Table 7.1. "
        "The cumulative seconds after the last round close each row.",
        "",
    ]
    lines = []
    for g in groups:
        last = g["rounds"][max(g["rounds"])]
        lines.append([str(g[k]) for k in label_header[:-1]] + [str(g["runs"])] + [_cell(g["rounds"][r]["turn"], 1) if r in g["rounds"] else "–" for r in rounds] + [_cell(last["cumulative"], 1)])
    text += markdown_table(label_header + [f"round {r} s" for r in rounds] + ["cumulative s"], lines)
    if differences:
        text += [
            "",
            "## Paired differences",
            "",
            f"{metric} of a row minus the first row of its setting (same start and images per round), round by round, over the task seeds both ran: "
            "mean ± 95% CI, paired t-test p.",
            "",
        ]
        text += markdown_table(["difference", "n"] + [f"round {r}" for r in rounds], [[f"{d['name']} − {d['baseline']}", str(max(s["n"] for s in d["stats"].values()))] + [difference_cell(d["stats"].get(r)) for r in rounds] for d in differences])
    models = {(g["detector"], g["backbone"], g["dataset"], g["fold"], g["ways"]) for g in groups}
    text += ["", "Detector, backbone, dataset, fold, ways: " + "; ".join(", ".join(m) for m in sorted(models)) + "."]
    if pngs:
        text += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(text) + "\n"


def _csv(groups: list[dict], rounds: list[int], metric: str) -> str:
    """One line per group and round: labels, runs, images, metric, turn and cumulative seconds (mean, ci95)."""
    fields = list(LOOP_KEYS) + ["runs", "round", "images"] + [f"{name}_{stat}" for name in (metric, "turn_seconds", "cumulative_seconds") for stat in ("mean", "ci95")] + ["run_ids"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        for r in rounds:
            if r not in g["rounds"]:
                continue
            s = g["rounds"][r]
            line = {k: g[k] for k in LOOP_KEYS} | {"runs": g["runs"], "round": r, "images": s["images"]["mean"], "run_ids": " ".join(g["run_ids"])}
            for name, key in ((metric, "metric"), ("turn_seconds", "turn"), ("cumulative_seconds", "cumulative")):
                for stat in ("mean", "ci95"):
                    value = s[key][stat]
                    line[f"{name}_{stat}"] = "" if value != value or (isinstance(value, float) and math.isinf(value)) else repr(value)
            writer.writerow(line)
    return buffer.getvalue()
