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


def _save(fig, ax, path: Path | str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def curve_png(path: Path | str, curves: dict[str, dict[int, dict[str, float]]], metric: str, title: str) -> Path:
    """For each name, {milestone: {"mean", "ci95"}} as a line with its band, against steps."""
    fig, ax = _axes()
    for name, points in curves.items():
        steps = sorted(points)
        _band(ax, steps, [points[s] for s in steps], name)
    if any(s > 0 for points in curves.values() for s in points) and min(min(points) for points in curves.values()) >= 0:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_ylim(bottom=0)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return _save(fig, ax, path, title)


def repeats_png(path: Path | str, running: list[dict[str, float]], metric: str, title: str) -> Path:
    """The mean and 95% CI of the first k repeats against k (TFA's Fig. 7.3): where the band
    stops narrowing, more repeats stop mattering."""
    fig, ax = _axes()
    _band(ax, list(range(1, len(running) + 1)), running)
    ax.set_xlabel("repeats (tasks) so far")
    ax.set_ylabel(f"{metric}: mean of the first k, 95% CI")
    return _save(fig, ax, path, title)
