"""The statistics of a study (plain numpy): per-tracker results, seed means and spreads, and paired AUC differences
with bootstrap intervals over the test sequences."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class TrackerResult:
    """The test scores, speed and size of one trained tracker."""

    label: str
    seed: int | None
    run_name: str
    checkpoint: str
    depth: int
    auc: float
    precision: float
    norm_precision: float
    tracking_ms: float  # median whole tracking step at batch 1 (measure_speed)
    flops: int
    params: int
    mlflow_run_id: str | None
    train_s: float | None = None
    sequence_auc: dict[str, float] = field(default_factory=dict)
    success_curve: list[float] = field(default_factory=list)  # the 21 thresholds of METHOD.md section 8
    precision_curve: list[float] = field(default_factory=list)  # 0 .. 50 px
    deployed: dict[str, Any] | None = None  # {"runtime", "auc", "tracking_ms"} through evaluation.deploy_runtime


@dataclass(frozen=True)
class Difference:
    """An arm's AUC minus the reference arm's: the mean over paired (seed, sequence) scores and a 95% interval."""

    mean: float
    low: float
    high: float
    sequences: int
    seeds: int


def paired_difference(reference: Sequence[TrackerResult], other: Sequence[TrackerResult], resamples: int = 10_000,
                      seed: int = 0) -> Difference | None:
    """``other``'s AUC minus ``reference``'s, paired by seed and by test sequence.

    Per sequence, the AUC differences of the seeds both arms ran are averaged; the estimate is the mean of these
    per-sequence differences (= the difference of the mean AUCs over those seeds). The interval is the 2.5 / 97.5
    percentile of that mean over ``resamples`` bootstrap resamples of the sequences (seeded), so it covers the
    sampling of test sequences and, through the per-sequence averages, part of the seed-to-seed spread. None when
    the arms share no seed or fewer than two scored sequences (no interval).
    """
    by_seed = {r.seed: r.sequence_auc for r in reference}
    pairs = [(by_seed[r.seed], r.sequence_auc) for r in other if r.seed in by_seed]
    if not pairs:
        return None
    names = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)))
    if len(names) < 2:
        return None
    per_sequence = np.array([[b[n] - a[n] for n in names] for a, b in pairs]).mean(axis=0)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    low, high = np.percentile(per_sequence[draws].mean(axis=1), [2.5, 97.5])
    return Difference(float(per_sequence.mean()), float(low), float(high), len(names), len(pairs))


def gap_to(results: Sequence[TrackerResult], single: TrackerResult, resamples: int = 10_000,
           seed: int = 0) -> Difference | None:
    """``single``'s AUC minus the seed-mean AUC of ``results``, paired by test sequence, with the same bootstrap
    interval as ``paired_difference`` (e.g. the teacher against the student trained alone: the accuracy that
    compression has to keep). None with fewer than two shared sequences."""
    names = sorted(set(single.sequence_auc).intersection(*(set(r.sequence_auc) for r in results))) if results else []
    if len(names) < 2:
        return None
    per_sequence = np.array([single.sequence_auc[n] - np.mean([r.sequence_auc[n] for r in results]) for n in names])
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    low, high = np.percentile(per_sequence[draws].mean(axis=1), [2.5, 97.5])
    return Difference(float(per_sequence.mean()), float(low), float(high), len(names), len(results))


@dataclass
class Row:
    """One table row: an arm's results over its seeds (mean and sample standard deviation)."""

    label: str
    depth: int
    seeds: list[int | None]
    auc: tuple[float, float]
    precision: tuple[float, float]
    norm_precision: tuple[float, float]
    fps: float
    speed_up: float | None
    flops_ratio: float | None
    retention: tuple[float, float] | None
    delta: Difference | None = None
    deployed_runtime: str | None = None
    deployed_auc: tuple[float, float] | None = None
    deployed_fps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "depth": self.depth, "seeds": self.seeds,
                "auc_mean": self.auc[0], "auc_std": self.auc[1],
                "precision_mean": self.precision[0], "precision_std": self.precision[1],
                "norm_precision_mean": self.norm_precision[0], "norm_precision_std": self.norm_precision[1],
                "fps": self.fps, "speed_up": self.speed_up, "flops_ratio": self.flops_ratio,
                "auc_retention_mean": self.retention[0] if self.retention else None,
                "auc_retention_std": self.retention[1] if self.retention else None,
                "auc_delta": self.delta.mean if self.delta else None,
                "auc_delta_low": self.delta.low if self.delta else None,
                "auc_delta_high": self.delta.high if self.delta else None,
                "deployed_runtime": self.deployed_runtime,
                "deployed_auc_mean": self.deployed_auc[0] if self.deployed_auc else None,
                "deployed_auc_std": self.deployed_auc[1] if self.deployed_auc else None,
                "deployed_fps": self.deployed_fps}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(teacher: TrackerResult | Sequence[TrackerResult], arms: dict[str, list[TrackerResult]],
              teacher_of: Callable[[TrackerResult], TrackerResult] | None = None) -> list[Row]:
    """The teacher's row, then one row per arm: scores as mean and spread over seeds, tracking FPS (median frame
    time averaged over seeds), speed-up (teacher frame time / the arm's), FLOPs ratio, AUC retention (the arm's
    AUC / the teacher's, per seed) and, from the second arm on, the paired AUC difference to the first arm.

    Several teachers (studies combined, ``ct_ray.studies.combine``): the teacher row is over all of them, the
    speed-up is against their mean frame time, and ``teacher_of`` gives each run its own teacher for retention."""
    teachers = [teacher] if isinstance(teacher, TrackerResult) else list(teacher)
    teacher_ms = statistics.fmean(t.tracking_ms for t in teachers)
    own = teacher_of or (lambda result: teachers[0])
    reference = next(iter(arms.values()), [])

    def row(label: str, results: list[TrackerResult], is_teacher: bool) -> Row:
        ms = statistics.fmean(r.tracking_ms for r in results)
        deployed = [r.deployed for r in results if r.deployed]
        extra = {} if len(deployed) != len(results) else {
            "deployed_runtime": deployed[0]["runtime"], "deployed_auc": _mean_std([d["auc"] for d in deployed]),
            "deployed_fps": 1000.0 / statistics.fmean(d["tracking_ms"] for d in deployed)}
        return Row(**extra, label=label, depth=results[0].depth, seeds=[r.seed for r in results],
                   auc=_mean_std([r.auc for r in results]), precision=_mean_std([r.precision for r in results]),
                   norm_precision=_mean_std([r.norm_precision for r in results]), fps=1000.0 / ms,
                   speed_up=None if is_teacher else teacher_ms / ms,
                   flops_ratio=None if is_teacher else teachers[0].flops / results[0].flops,
                   retention=None if is_teacher or any(own(r).auc <= 0 for r in results) else
                   _mean_std([100.0 * r.auc / own(r).auc for r in results]),
                   delta=None if is_teacher or results is reference else paired_difference(reference, results))

    return [row(f"teacher ({teachers[0].depth} blocks)", teachers, True)] + [
        row(label, results, False) for label, results in arms.items()]


