"""Pictures of evaluations: a metric against adaptation steps (or against the number of
repeats so far), mean with its 95% CI band, as PNG files (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path


def _axes():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4), dpi=100)


def _band(ax, xs: list[int], stats: list[dict[str, float]], label: str | None = None) -> None:
    """A line through the means and a shaded band of +- ci95 (none where ci95 is NaN)."""
    mean = [s["mean"] for s in stats]
    ci = [s["ci95"] if s["ci95"] == s["ci95"] else 0.0 for s in stats]
    line = ax.plot(xs, mean, marker="o", label=label)[0]
    ax.fill_between(xs, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2)


def _legend(ax, fontsize: int = 8, **where) -> None:
    """The legend inside the axes; long labels (a study's settings) go below them instead,
    one per line, the figure growing to hold them, so no label is cut off or hides a curve."""
    labels = ax.get_legend_handles_labels()[1]
    if max(map(len, labels), default=0) <= 60:
        ax.legend(fontsize=fontsize, **where)
        return
    ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    fig = ax.figure
    fig.set_size_inches(max(fig.get_figwidth(), 0.075 * max(map(len, labels))), fig.get_figheight() + 0.2 * len(labels) + 0.3)


def _save(fig, ax, path: Path | str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def curve_png(path: Path | str, curves: dict[str, dict[int, dict[str, float]]], metric: str, title: str, xlabel: str = "adaptation steps", log_x: bool = True) -> Path:
    """For each name, {milestone: {"mean", "ci95"}} as a line with its band, against steps
    (on a symlog axis unless `log_x` is off)."""
    fig, ax = _axes()
    for name, points in curves.items():
        steps = sorted(points)
        _band(ax, steps, [points[s] for s in steps], name)
    if log_x and any(s > 0 for points in curves.values() for s in points) and min(min(points) for points in curves.values()) >= 0:
        ax.set_xscale("symlog", linthresh=10)
    _label_milestones(ax, sorted({s for points in curves.values() for s in points}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_ylim(bottom=0)
    if len(curves) > 1:
        _legend(ax)
    return _save(fig, ax, path, title)


def xy_png(path: Path | str, series: dict[str, tuple[list[float], list[dict[str, float]]]], xlabel: str, metric: str, title: str) -> Path:
    """For each name, (xs, [{"mean", "ci95"}, ...]): the metric against any x (seconds, say),
    a line with its band."""
    fig, ax = _axes()
    for name, (xs, stats) in series.items():
        _band(ax, xs, stats, name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    if len(series) > 1:
        _legend(ax)
    return _save(fig, ax, path, title)


def difference_png(path: Path | str, curves: dict[str, dict[int, dict[str, float]]], metric: str, title: str) -> Path:
    """For each name, {milestone: {"mean", "ci95"}} of a difference, with a line at zero:
    where the band leaves zero the difference is significant at 5% (two-sided)."""
    fig, ax = _axes()
    ax.axhline(0.0, color="black", linewidth=0.8)
    for name, points in curves.items():
        steps = sorted(points)
        _band(ax, steps, [points[s] for s in steps], name)
    steps = sorted({s for points in curves.values() for s in points})
    if steps and steps[-1] > 10 and steps[0] >= 0:  # milestones like 0, 10, 100, 1000
        ax.set_xscale("symlog", linthresh=10)
    _label_milestones(ax, steps)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(f"Δ {metric} (mean, 95% CI)")
    _legend(ax)
    return _save(fig, ax, path, title)


def _label_milestones(ax, steps: list[int]) -> None:
    """A labelled tick at every milestone (a symlog axis labels only powers of ten)."""
    if 0 < len(steps) <= 8:
        from matplotlib.ticker import NullLocator

        ax.set_xticks(steps, [str(s) for s in steps])
        ax.xaxis.set_minor_locator(NullLocator())


def repeats_png(path: Path | str, running: list[dict[str, float]], metric: str, title: str) -> Path:
    """The mean and 95% CI of the first k repeats against k (TFA's Fig. 7.3): where the band
    stops narrowing, more repeats stop mattering."""
    fig, ax = _axes()
    _band(ax, list(range(1, len(running) + 1)), running)
    ax.set_xlabel("repeats (tasks) so far")
    ax.set_ylabel(f"{metric}: mean of the first k, 95% CI")
    return _save(fig, ax, path, title)


def pr_png(path: Path | str, curves: dict[str, dict], title: str) -> Path:
    """Precision against recall for each class (VOC matching at IoU 0.5), its AP in the legend."""
    fig, ax = _axes()
    for name, curve in curves.items():
        if len(curve["recall"]):
            ax.plot([0.0, *curve["recall"]], [1.0, *curve["precision"]], drawstyle="steps-post", label=f"{name} (VOC AP50 {curve['ap']:.3f}, {curve['positives']} boxes)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    if any(len(c["recall"]) for c in curves.values()):
        _legend(ax, 7, loc="lower left")
    return _save(fig, ax, path, title)


def pr_csv(curves: dict[str, dict]) -> str:
    """The curves' points as CSV: class, rank (detections by descending score), precision, recall."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "rank", "precision", "recall"])
    for name, curve in curves.items():
        writer.writerows([name, k + 1, f"{p:.6f}", f"{r:.6f}"] for k, (p, r) in enumerate(zip(curve["precision"], curve["recall"])))
    return buffer.getvalue()
