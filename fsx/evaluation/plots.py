"""Pictures of evaluations: a metric against adaptation steps, mean with its 95% CI band."""

from __future__ import annotations

from pathlib import Path


def curve_png(path: Path | str, curves: dict[str, dict[int, dict[str, float]]], metric: str, title: str) -> Path:
    """Write a PNG: for each name, {milestone: {"mean", "ci95"}} as a line with a shaded band."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in curves.items():
        steps = sorted(points)
        mean = [points[s]["mean"] for s in steps]
        ci = [points[s]["ci95"] if points[s]["ci95"] == points[s]["ci95"] else 0.0 for s in steps]
        line = ax.plot(steps, mean, marker="o", label=name)[0]
        ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2)
    if any(s > 0 for points in curves.values() for s in points) and min(min(points) for points in curves.values()) >= 0:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def repeats_png(path: Path | str, running: list[dict[str, float]], metric: str, title: str) -> Path:
    """Write a PNG of the mean and 95% CI of the first k repeats against k (TFA's Fig. 7.3):
    where the band stops narrowing, more repeats stop mattering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(1, len(running) + 1))
    mean = [s["mean"] for s in running]
    ci = [s["ci95"] if s["ci95"] == s["ci95"] else 0.0 for s in running]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    line = ax.plot(ks, mean, marker="o")[0]
    ax.fill_between(ks, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("repeats (tasks) so far")
    ax.set_ylabel(f"{metric}: mean of the first k, 95% CI")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
