"""Reports of tracker results (plain numpy): which sequences a split means, result times, scores, tables, CSVs and
plots, and the claim a results folder records of the checkpoint it came from.

``ct-ray eval`` (``ct_ray.orchestration.evaluate``), ``score`` and ``plot`` all use these, so a results folder is
scored the same way whichever command reads it. Scores follow METHOD.md section 8 (``ct_ray.evaluation.metrics``).
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ct_ray.data.sequences import Sequence
from ct_ray.evaluation.metrics import BenchmarkScore, got10k_scores, score_benchmark, trackingnet_scores
from ct_ray.evaluation.results import load_results_dir, time_path
from ct_ray.errors import InputError, MissingFileError
from ct_ray.evaluation.results import ResultsFormatError
from ct_ray.fileio import atomic_write_text, file_sha256

# ``--split`` when none is given: the benchmark split of each dataset kind; ``None`` (every sequence) otherwise.
DEFAULT_SPLITS: dict[str, str | None] = {"lasot": "test", "synthetic": "test", "got10k": "test",
                                         "trackingnet": "test"}
EVAL_MANIFEST = "eval.json"
SCORES_FILE = "scores.json"
PER_SEQUENCE_FILE = "per_sequence.csv"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./ ]")


def resolve_split(kind: str, split: str | None) -> str | None:
    """``--split``: ``None`` -> the dataset kind's default (``DEFAULT_SPLITS``), ``"all"`` -> every sequence."""
    if split is None:
        return DEFAULT_SPLITS.get(kind)
    return None if split == "all" else split


def load_sequences(spec: str, split: str | None = None, max_sequences: int | None = None
                   ) -> tuple[str, str | None, list[Sequence]]:
    """``(kind, split, sequences)`` of ``KIND:PATH`` (sorted by name; the first ``max_sequences`` when given)."""
    from ct_ray.data import load_dataset, parse_dataset_spec

    kind, _ = parse_dataset_spec(spec)
    split = resolve_split(kind, split)
    sequences = list(load_dataset(spec, split).sequences)
    if max_sequences is not None:
        if max_sequences < 1:
            raise InputError(f"--max-sequences must be at least 1, got {max_sequences}")
        sequences = sequences[:max_sequences]
    if not sequences:
        raise InputError(f"{spec} (split {split}): no sequences")
    return kind, split, sequences


def first_frame_only(sequences: Iterable[Sequence]) -> bool:
    """True when the split gives only frame 0's box (GOT-10k test, TrackingNet test): no local scores."""
    return any(bool(s.attributes.get("first_frame_only")) for s in sequences)


def read_times(path: str | Path) -> np.ndarray:
    """A ``<seq>_time.txt`` file (seconds per frame, one per line) as a float array."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"time file not found: {path}")
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise ResultsFormatError(f"{path}: line {number}: not a number: {line!r}") from None
    return np.asarray(values, dtype=np.float64)


def _ms_fps(seconds: list[float] | np.ndarray) -> tuple[float | None, float | None]:
    if len(seconds) == 0:
        return None, None
    ms = float(statistics.median(seconds)) * 1000.0
    return ms, (1000.0 / ms if ms > 0 else None)


def timing_summary(results_dir: str | Path, names: Iterable[str]) -> dict[str, Any]:
    """Median per-frame time of the tracking loop, frame 0 excluded: ``{"tracking_ms", "tracking_fps",
    "frames", "per_sequence": {name: fps}}`` (None where no frame after the first was timed; a sequence without a
    time file is left out)."""
    pooled: list[float] = []
    per_sequence: dict[str, float | None] = {}
    for name in names:
        path = time_path(results_dir, name)
        if not path.is_file():
            per_sequence[name] = None
            continue
        times = read_times(path)[1:]
        per_sequence[name] = _ms_fps(times)[1]
        pooled.extend(times.tolist())
    ms, fps = _ms_fps(pooled)
    return {"tracking_ms": ms, "tracking_fps": fps, "frames": len(pooled), "per_sequence": per_sequence}


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ScoreReport:
    """The scores of one results folder: ``benchmark`` (pytracking definition) and, for GOT-10k / TrackingNet,
    that benchmark's own scores. ``to_dict`` is the JSON of ``ct-ray score --json`` and of ``scores.json``."""

    benchmark: BenchmarkScore
    kind: str
    split: str | None
    extra: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.benchmark.to_dict()
        out.update(self.extra)
        out["dataset_kind"] = self.kind
        out["split"] = self.split
        return out

    def metrics(self) -> dict[str, float]:
        """Flat scalar scores (percent): auc, precision, norm_precision, op50, op75 [, ao, sr50, sr75]
        [, success_auc, precision_auc, norm_precision_auc]."""
        out = dict(self.benchmark.scores())
        for values in self.extra.values():
            out.update(values)
        return out


def score_results(results_dir: str | Path, sequences: list[Sequence], kind: str, split: str | None = None,
                  exclude_invalid: bool = False) -> ScoreReport:
    """Reads ``<dir>/<seq>.txt`` of every sequence and scores them (``score_benchmark``; plus ``got10k_scores`` for
    GOT-10k and ``trackingnet_scores`` for TrackingNet). A malformed file raises ``ResultsFormatError`` naming the
    file and line; a split with first-frame-only ground truth a ``ValueError``."""
    if first_frame_only(sequences):
        raise InputError(f"{kind} split {split!r} has ground truth for the first frame only: it cannot be scored "
                         "locally (submit the server layout: ct-ray eval --got10k-submission / "
                         "--trackingnet-submission)")
    results = load_results_dir(results_dir, [s.name for s in sequences], {s.name: len(s) for s in sequences})
    benchmark = score_benchmark(results, sequences, exclude_invalid=exclude_invalid)
    extra: dict[str, dict[str, float]] = {}
    if kind == "got10k":
        extra["got10k"] = got10k_scores(results, sequences)
    elif kind == "trackingnet":
        extra["trackingnet"] = trackingnet_scores(results, sequences)
    return ScoreReport(benchmark, kind, split, extra)


def format_score_table(report: ScoreReport) -> str:
    """Per-sequence rows and the overall row (percent)."""
    sequences = report.benchmark.sequences
    overall = f"overall ({len(sequences)} sequences)"
    width = max([len("sequence"), len(overall), *(len(str(s.name)) for s in sequences)])
    header = (f"{'sequence':<{width}}  {'frames':>6}  {'AUC':>6}  {'OP50':>6}  {'OP75':>6}  {'Prec':>6}  "
              f"{'NPrec':>6}")
    lines = [header, "-" * len(header)]

    def row(name: str, frames: str, s) -> str:
        return (f"{name:<{width}}  {frames:>6}  {s.auc:6.2f}  {s.op50:6.2f}  {s.op75:6.2f}  {s.precision:6.2f}  "
                f"{s.norm_precision:6.2f}")

    for s in sequences:
        lines.append(row(str(s.name), str(s.num_frames), s))
    lines.append("-" * len(header))
    lines.append(row(overall, str(sum(s.num_frames for s in sequences)), report.benchmark))
    if "got10k" in report.extra:
        g = report.extra["got10k"]
        lines.append(f"GOT-10k: AO {g['ao']:.2f}  SR0.5 {g['sr50']:.2f}  SR0.75 {g['sr75']:.2f}")
    if "trackingnet" in report.extra:
        t = report.extra["trackingnet"]
        lines.append(f"TrackingNet: success {t['success_auc']:.2f}  precision {t['precision_auc']:.2f}  "
                     f"normalised precision {t['norm_precision_auc']:.2f}")
    if report.benchmark.exclude_invalid:
        lines.append("(frames without a valid visible GT box excluded from the denominators)")
    return "\n".join(lines)


def write_per_sequence_csv(report: ScoreReport, path: str | Path,
                           fps: Mapping[str, float | None] | None = None) -> Path:
    """The per-sequence table as CSV (percent scores; ``tracking_fps`` when ``fps`` is given)."""
    columns = ["name", "auc", "precision", "norm_precision", "op50", "op75", "num_frames", "num_valid",
               "num_scored"]
    if fps is not None:
        columns.append("tracking_fps")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for s in report.benchmark.sequences:
        row = s.to_dict()
        if fps is not None:
            row["tracking_fps"] = fps.get(s.name)
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------------------------------

def metric_prefix(name: str | None, split: str | None, kind: str) -> str:
    """``--name``, else the split, else the dataset kind; characters MLflow refuses in a metric name become ``_``."""
    return _METRIC_NAME.sub("_", name or split or kind)


def claim_results_dir(results_dir: Path, checkpoint: str | Path, spec: str, split: str | None,
                      runtime: str = "torch") -> None:
    """Records which checkpoint (and runtime) the results in ``results_dir`` come from, and refuses to resume (skip
    complete sequences) from results of another checkpoint or runtime."""
    results_dir.mkdir(parents=True, exist_ok=True)
    checksum = file_sha256(checkpoint)
    manifest = results_dir / EVAL_MANIFEST
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("checkpoint_sha256") not in (None, checksum):
            raise InputError(f"{results_dir} holds results of another checkpoint ({previous.get('checkpoint')}); "
                             "pass another --out (or --name), or remove that folder")
        if previous.get("runtime", "torch") != runtime:
            raise InputError(f"{results_dir} holds results tracked with runtime {previous.get('runtime', 'torch')!r},"
                             f" not {runtime!r}; pass another --out (or --name), or remove that folder")
    atomic_write_text(manifest, json.dumps({"checkpoint": str(Path(checkpoint).resolve()),
                                            "checkpoint_sha256": checksum, "dataset": spec, "split": split,
                                            "runtime": runtime},
                                           indent=2) + "\n")


def plot_results(results_dirs: list[str | Path], labels: list[str] | None, dataset: str, out: str | Path,
                 split: str | None = None, max_sequences: int | None = None,
                 exclude_invalid: bool = False) -> tuple[Path, Path]:
    """Success and precision plots (``<out>/success.png``, ``<out>/precision.png``) comparing result folders."""
    from ct_ray.evaluation.plots import benchmark_plots

    labels = list(labels or [])
    if labels and len(labels) != len(results_dirs):
        raise InputError(f"{len(labels)} --label for {len(results_dirs)} --results: give one per folder or none")
    labels = labels or [Path(d).resolve().name for d in results_dirs]
    if len(set(labels)) != len(labels):
        raise InputError(f"labels must differ, got {labels} (pass --label)")
    kind, split, sequences = load_sequences(dataset, split, max_sequences)
    scores = {label: score_results(d, sequences, kind, split, exclude_invalid).benchmark
              for label, d in zip(labels, results_dirs)}
    return benchmark_plots(scores, out)


# --------------------------------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------------------------------
