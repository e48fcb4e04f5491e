"""Plots (matplotlib, PNG): success and precision curves of any number of trackers, and speed against accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ct_ray.fileio import atomic_path  # noqa: E402


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def curve_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | Path,
               xlabel: str, ylabel: str, title: str, legend_value: str) -> Path:
    """One line per tracker: ``{label: (x, y in [0, 1], headline value)}``; the legend is sorted by the value."""
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for label, (x, y, value) in sorted(curves.items(), key=lambda item: -item[1][2]):
        axis.plot(list(x), [100 * v for v in y], linewidth=2, label=f"{label} [{legend_value} {value:.1f}]")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left" if "Success" in title else "lower right", fontsize=8)
    return _save(figure, path)


def success_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | Path,
                 title: str = "Success plot") -> Path:
    return curve_plot(curves, path, "Overlap threshold", "Overlap precision [%]", title, "AUC")


def precision_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | Path,
                   title: str = "Precision plot") -> Path:
    return curve_plot(curves, path, "Location error threshold [px]", "Distance precision [%]", title, "P@20")


def speed_accuracy_plot(points: Mapping[str, tuple[float, float]], path: str | Path,
                        title: str = "Speed against accuracy") -> Path:
    """One labelled point per model: ``{label: (fps, auc)}``."""
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for label, (fps, auc) in points.items():
        axis.scatter([fps], [auc], s=40)
        axis.annotate(label, (fps, auc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axis.set_xlabel("Frames per second (tracking loop)")
    axis.set_ylabel("AUC [%]")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return _save(figure, path)
