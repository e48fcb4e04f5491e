"""Plots (matplotlib, PNG): success and precision curves of any number of trackers, and speed against accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ct_ray.fileio import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from ct_ray.evaluation.metrics import BenchmarkScore


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


def benchmark_plots(scores: Mapping[str, BenchmarkScore], folder: str | Path, stem: str = ""
                    ) -> tuple[Path, Path]:
    """The success and precision plots of ``{label: BenchmarkScore}`` as ``<folder>/<stem>success.png`` and
    ``<folder>/<stem>precision.png`` (legend values: AUC and precision at 20 px)."""
    from ct_ray.evaluation.metrics import PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS

    folder = Path(folder)
    success = success_plot({label: (SUCCESS_THRESHOLDS, s.success_curve, s.auc) for label, s in scores.items()},
                           folder / f"{stem}success.png")
    precision = precision_plot({label: (PRECISION_THRESHOLDS, s.precision_curve, s.precision)
                                for label, s in scores.items()}, folder / f"{stem}precision.png")
    return success, precision


def training_curves_plot(histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: str | Path,
                         title: str = "Training") -> Path:
    """The training loss (left) and the validation AUC (right) per epoch of several runs:
    ``{run: {"loss_total": [(epoch, value)], "val_auc": [(epoch, value)]}}``."""
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for label, metrics in histories.items():
        for axis, name in ((loss_axis, "loss_total"), (auc_axis, "val_auc")):
            points = sorted(metrics.get(name, []))
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="." if name == "val_auc" else None,
                          label=label)
    loss_axis.set(xlabel="epoch", ylabel="training loss (total)", title=f"{title}: loss")
    auc_axis.set(xlabel="epoch", ylabel="validation AUC [%]", title=f"{title}: validation")
    for axis in (loss_axis, auc_axis):
        axis.grid(alpha=0.3)
    auc_axis.legend(fontsize=7)
    return _save(figure, path)
